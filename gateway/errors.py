"""One exception hierarchy for the whole gateway.

Every error says whether it is *temporary* (retry later: 4xx at SMTP time, deferral after
queueing) or *permanent* (5xx at SMTP time, DSN after queueing), and carries a stable code
and an RFC 3463 enhanced status, so the SMTP layer and the DSN builder translate it without
knowing where it came from. Messages never carry health content: say what and where, not
the data itself.
"""

from __future__ import annotations


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

    def smtp_reply(self) -> str:
        """The SMTP reply line for this error (never includes a stack trace)."""
        basic = "451" if self.temporary else "554"
        return f"{basic} {self.status} {self.reason}"


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
