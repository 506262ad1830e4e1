"""One exception hierarchy for the whole gateway.

Every error says whether it is *temporary* (retry later: 4xx at SMTP time, deferral after
queueing) or *permanent* (5xx at SMTP time, DSN after queueing), and carries a stable code
and an RFC 3463 enhanced status, so the SMTP layer and the DSN builder translate it without
knowing where it came from. Messages never carry health content: say what and where, not
the data itself.

`smtp_reply` is the one translation to an SMTP reply (the listeners, the payload-routing
address); `is_temporary` is the one answer to "retry or refuse" for every door (SMTP 4xx/5xx,
the MLLP ACK AE/AR, the drop folder's retry or error/), so they agree for the same error.
"""

from __future__ import annotations

from typing import Literal

#: What an error answers: a recipient (RCPT) or the message (DATA, and anything after it).
SmtpCommand = Literal["RCPT", "DATA"]
#: RFC 5321 4.2.3's 452 "insufficient system storage": RFC 3463 X.3.1 (mail system full) and
#: X.5.3 (too many recipients, RFC 5321 4.5.3.1.10) say the same thing in the enhanced code.
_STORAGE_STATUSES = frozenset({"3.1", "5.3"})
#: What an unexpected fault (a bug, an exception that is no GatewayError) answers: its text never shows.
UNEXPECTED_TEXT = "Temporary failure, try again later"
#: Longest reason text put in a reply (a reply line is at most 512 octets, RFC 5321 4.5.3.1.5).
MAX_REPLY_TEXT = 400


class GatewayError(Exception):
    """Base of all gateway errors."""

    temporary: bool = False
    code: str = "gateway-error"
    #: RFC 3463 enhanced status code used in SMTP replies and DSNs.
    status: str = "5.3.0"

    def __init__(self, message: str, *, temporary: bool | None = None, status: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        if temporary is not None:
            self.temporary = temporary
        if status is not None:
            self.status = status
        elif temporary is not None:
            self.status = ("4" if temporary else "5") + self.status[1:]
        if code is not None:
            self.code = code

    @property
    def reason(self) -> str:
        return str(self)

    def smtp_reply(self, command: SmtpCommand = "DATA") -> str:
        """The SMTP reply line for this error (see `smtp_reply`)."""
        return smtp_reply(self, command)


class TemporaryError(GatewayError):
    temporary = True
    code = "temporary"
    status = "4.3.0"


class PermanentError(GatewayError):
    temporary = False
    code = "permanent"
    status = "5.3.0"


class ConfigError(GatewayError):
    """Invalid configuration; `problems` lists every (file, key, message)."""

    code = "config"
    status = "5.3.5"

    def __init__(self, problems: list[tuple[str, str, str]]) -> None:
        self.problems = problems
        text = "; ".join(f"{f}: {k}: {m}" for f, k, m in problems) or "invalid configuration"
        super().__init__(text)


class SpoolError(TemporaryError):
    """The spool could not store a message durably (disk full, unwritable): never answer 250."""

    code = "spool"
    status = "4.3.1"


class DeliveryError(GatewayError):
    """A delivery attempt failed; `temporary` decides between deferral and bounce."""

    code = "delivery"

    def __init__(self, message: str, *, temporary: bool, status: str | None = None,
                 smtp_code: int | None = None, remote: str | None = None) -> None:
        super().__init__(message, temporary=temporary, status=status or ("4.4.1" if temporary else "5.0.0"))
        self.smtp_code = smtp_code
        self.remote = remote


class PolicyError(PermanentError):
    """A message or recipient is refused by policy (relay denied, no protection possible)."""

    code = "policy"
    status = "5.7.1"


class MalformedInput(PermanentError):
    """A parser met input it cannot accept; says what and where (never the content)."""

    code = "malformed"
    status = "5.6.0"

    def __init__(self, what: str, where: str = "") -> None:
        self.what = what
        self.where = where
        super().__init__(f"{what} at {where}" if where else what)


def as_gateway_error(error: BaseException) -> GatewayError:
    """The typed view of any failure. A GatewayError is itself; anything else is an unexpected local
    fault: temporary (defer, never bounce: resending later costs less than losing the message) and
    with a generic text (an exception's own text may show internals or content)."""
    if isinstance(error, GatewayError):
        return error
    return TemporaryError(UNEXPECTED_TEXT, code="unexpected")


def is_temporary(error: BaseException) -> bool:
    """Retry later (SMTP 4xx, HL7 ACK ``AE``, deferral) or refuse for good (5xx, ``AR``, bounce):
    the one answer every door gives for the same error."""
    return as_gateway_error(error).temporary


def enhanced_status(error: BaseException) -> str:
    """The RFC 3463 status, its class always agreeing with `temporary` (4.x.x or 5.x.x)."""
    err = as_gateway_error(error)
    return ("4" if err.temporary else "5") + err.status[1:]


def reply_code(error: BaseException, command: SmtpCommand = "DATA") -> int:
    """The RFC 5321 basic code for an error, chosen by its temporary flag, its enhanced status
    and what it answers.

    Temporary: 452 "insufficient system storage" when the status says so (4.3.1 mail system full,
    4.5.3 too many recipients), else 451 "local error in processing", at RCPT as at DATA. A full
    spool used to get 452 on the DATA path and 451 on the payload-routing path: 4.3.1 is
    storage, so 452 for both.
    Permanent: 550 for a refused recipient (RCPT) and for a message refused for its content or
    format (X.6.x: an unreadable From: got 550 but an unreadable mailed payload 554 before), else
    554 "transaction failed".
    """
    subject, _, detail = enhanced_status(error)[2:].partition(".")
    if as_gateway_error(error).temporary:
        return 452 if f"{subject}.{detail}" in _STORAGE_STATUSES else 451
    return 550 if command == "RCPT" or subject == "6" else 554


def smtp_reply(error: BaseException, command: SmtpCommand = "DATA", prefix: str = "") -> str:
    """The SMTP reply line for any error: code, enhanced status, ``prefix`` + the reason on one line.

    Never a stack trace nor an unexpected exception's text (see `as_gateway_error`); the reason
    is the error's own text, which by the rule of this module says what and where, not content."""
    err = as_gateway_error(error)
    text = " ".join(f"{prefix}{err.reason}".split())[:MAX_REPLY_TEXT] or UNEXPECTED_TEXT
    return f"{reply_code(err, command)} {enhanced_status(err)} {text}"
