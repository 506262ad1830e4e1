"""Delivery Status Notifications (RFC 3464) as complete 7-bit, CRLF messages. Pure: no I/O.

The report returns the original message's *header block* only (text/rfc822-headers), never a
byte of its body: the body may be health data, possibly already decrypted. The human-readable
part is bilingual (English, then French) because the senders are often French health
professionals. Malformed originals (no header/body separator, bare LF, 8-bit headers) are
sanitised, never a reason to raise: a bounce that cannot be built would be a lost message.

The DSN must be sent with a null envelope sender (MAIL FROM:<>); that is the caller's job, as
is never building one for a message whose own sender was null (``build_dsn`` refuses that).
"""

from __future__ import annotations

import quopri
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, make_msgid
from typing import Literal

Action = Literal["failed", "delayed", "delivered", "relayed"]

_STATUS_RE = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_TYPED_ADDRESS_RE = re.compile(r"(?i)(rfc822|utf-8|x400|unknown|x-[a-z0-9-]+)[ \t]*;")
_TYPED_RE = re.compile(r"[A-Za-z0-9-]+[ \t]*;")  # diagnostic-type / mta-name-type
_HEADER_NAME_RE = re.compile(rb"[!-9;-~]+[ \t]*:")  # RFC 5322 ftext, tolerating "Name :" (obsolete)
_MAX_HEADER_BYTES = 64 * 1024
_MAX_LINE = 998
_MAX_FIELD = 900


@dataclass(frozen=True)
class RecipientReport:
    recipient: str                 # final recipient address
    action: Action
    status: str                    # RFC 3463 e.g. "5.1.1"
    diagnostic: str | None = None  # e.g. "smtp; 550 5.1.1 user unknown"
    remote_mta: str | None = None  # "dns; mx.example.org"
    last_attempt: datetime | None = None
    will_retry_until: datetime | None = None   # for "delayed"
    original_recipient: str | None = None


# --------------------------------------------------------------------------------------------
# Sanitising helpers: everything that reaches a header is one line of printable ASCII.
# --------------------------------------------------------------------------------------------

def _one_line(text: str, limit: int = _MAX_FIELD) -> str:
    """Printable ASCII on one line: controls dropped, whitespace runs folded, non-ASCII -> '?'."""
    text = re.sub(r"[\r\n\t]+", " ", text)
    text = "".join(c if " " <= c <= "~" else "?" for c in text if c >= " " or c == "\t")
    return re.sub(r" {2,}", " ", text).strip()[:limit]


def _hostname(name: str) -> str:
    """A DNS host name usable in From, Message-ID and Reporting-MTA."""
    first = name.split(maxsplit=1)[0] if name.split() else ""  # anything after whitespace is junk
    try:
        ascii_name = first.rstrip(".").encode("idna").decode("ascii")
    except UnicodeError:
        ascii_name = ""
    ascii_name = re.sub(r"[^A-Za-z0-9.-]", "", ascii_name)
    return ascii_name or "localhost"


def _xtext_utf8(address: str) -> str:
    """RFC 6533 utf-8-addr-xtext: non-ASCII, '\\', '+', '=' and controls as \\x{HEX}."""
    return "".join(c if "!" <= c <= "~" and c not in "\\+=" else f"\\x{{{ord(c):X}}}" for c in address)


def _address_field(address: str) -> str:
    """`rfc822; addr` for ASCII addresses, `utf-8; <xtext>` (RFC 6533) otherwise."""
    address = address.strip()
    if _TYPED_ADDRESS_RE.match(address):  # already typed, e.g. "rfc822; a@b"
        kind, _, value = address.partition(";")
        return f"{_one_line(kind)}; {_one_line(value)}"
    address = re.sub(r"[\x00-\x20\x7f]", "", address).removeprefix("<").removesuffix(">")
    if address.isascii():
        return f"rfc822; {address[:_MAX_FIELD]}"
    return f"utf-8; {_xtext_utf8(address)[:_MAX_FIELD]}"


def _display_address(address: str) -> str:
    """The address for the human-readable text (real characters; it is UTF-8 QP-encoded)."""
    return re.sub(r"[\x00-\x1f\x7f]", "", address).strip()[:_MAX_FIELD]


def _status(status: str, action: Action) -> str:
    status = status.strip()
    if _STATUS_RE.fullmatch(status):
        return status
    return {"failed": "5.0.0", "delayed": "4.0.0"}.get(action, "2.0.0")


def _typed(value: str, default_type: str) -> str:
    value = _one_line(value)
    return value if _TYPED_RE.match(value) else f"{default_type}; {value}"


def _diagnostic(value: str) -> str:
    value = _one_line(value)
    if _TYPED_RE.match(value):
        return value
    return f"smtp; {value}" if re.match(r"[2-5]\d\d\b", value) else f"x-msgw; {value}"


def _date(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return format_datetime(value)


def _fold(name: str, value: str) -> str:
    """`Name: value`, folded at spaces so no line exceeds 78 characters where possible."""
    words = value.split(" ")
    lines, current = [], f"{name}:"
    for word in words:
        if len(current) + 1 + len(word) > 78 and current.strip() and current != f"{name}:":
            lines.append(current)
            current = " " + word
        else:
            current += " " + word
    lines.append(current)
    return "\r\n".join(lines)


# --------------------------------------------------------------------------------------------
# The original's header block
# --------------------------------------------------------------------------------------------

def header_block(original: bytes) -> bytes:
    """The header lines at the start of `original`, CRLF-terminated, never a body byte.

    Lines are taken while they look like header fields or their continuations; the first empty
    line *or the first line that is not a header* ends the block (so a message without a
    separator, or a body-only one, gives up at the first body-like line). Bare CR/LF become CRLF,
    control characters are dropped, over-long lines are cut, the total is capped.
    """
    kept: list[bytes] = []
    size = 0
    # Look only at the start: the block is capped anyway, and a 50 MB body is not split into lines.
    for line in re.split(rb"\r\n|\n|\r", bytes(original[: 2 * _MAX_HEADER_BYTES])):
        if not line.strip(b" \t"):
            break
        is_continuation = line[:1] in (b" ", b"\t")
        if not (_HEADER_NAME_RE.match(line) or (is_continuation and kept)):
            break
        line = re.sub(rb"[\x00-\x08\x0b-\x1f\x7f]", b"", line)[:_MAX_LINE]
        if size + len(line) + 2 > _MAX_HEADER_BYTES:
            break
        kept.append(line)
        size += len(line) + 2
    return b"".join(line + b"\r\n" for line in kept)


#: The original headers a DSN returns: enough to identify the message, nothing that may carry
#: health content (a Subject often names the patient or the result, so it is not returned).
RETURNED_HEADERS = frozenset({"from", "to", "cc", "date", "message-id", "in-reply-to", "references"})


def returned_headers(original: bytes, names: frozenset[str] = RETURNED_HEADERS) -> bytes:
    """The header block of `original` reduced to the fields in `names` (with their continuations)."""
    out: list[bytes] = []
    keep = False
    for line in header_block(original).split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            if keep:
                out.append(line)
            continue
        keep = line.split(b":", 1)[0].strip().decode("ascii", "replace").lower() in names
        if keep:
            out.append(line)
    return b"".join(line + b"\r\n" for line in out)


def _headers_part(original: bytes) -> str:
    """The text/rfc822-headers part: 7bit if ASCII, else UTF-8 quoted-printable (8-bit sanitised)."""
    block = header_block(original)
    if block.isascii():
        return ("Content-Type: text/rfc822-headers\r\nContent-Transfer-Encoding: 7bit\r\n"
                "Content-Description: Undelivered Message Headers\r\n\r\n" + block.decode("ascii") + "\r\n")
    text = block.decode("utf-8", "replace")
    return ('Content-Type: text/rfc822-headers; charset="utf-8"\r\n'
            "Content-Transfer-Encoding: quoted-printable\r\n"
            "Content-Description: Undelivered Message Headers\r\n\r\n" + _quoted_printable(text) + "\r\n")


def _quoted_printable(text: str) -> str:
    encoded = quopri.encodestring(text.replace("\r\n", "\n").encode("utf-8")).decode("ascii")
    encoded = encoded.replace("\r\n", "\n").replace("\n", "\r\n")
    return encoded if encoded.endswith("\r\n") else encoded + "\r\n"


# --------------------------------------------------------------------------------------------
# Human-readable part (English, then French)
# --------------------------------------------------------------------------------------------

_REASONS: dict[str, tuple[str, str]] = {
    "1.1": ("the mailbox does not exist", "la boîte aux lettres n'existe pas"),
    "1.2": ("the destination domain does not exist or cannot receive mail",
            "le domaine de destination n'existe pas ou ne reçoit pas de courrier"),
    "1.3": ("the recipient address is invalid", "l'adresse du destinataire est invalide"),
    "1.10": ("the destination domain does not accept mail", "le domaine de destination n'accepte pas de courrier"),
    "2.1": ("the mailbox is disabled", "la boîte aux lettres est désactivée"),
    "2.2": ("the mailbox is full", "la boîte aux lettres est pleine"),
    "3.1": ("the mail system is full", "le système de messagerie est saturé"),
    "3.4": ("the message is too large", "le message est trop volumineux"),
    "4.1": ("the receiving server did not answer", "le serveur destinataire ne répond pas"),
    "4.2": ("the connection was lost", "la connexion a été interrompue"),
    "4.3": ("a DNS lookup failed", "une résolution DNS a échoué"),
    "4.4": ("no route to the destination", "aucune route vers la destination"),
    "4.7": ("the message expired in the queue", "le message a expiré dans la file d'attente"),
    "5.0": ("the receiving server refused the message", "le serveur destinataire a refusé le message"),
    "7.0": ("refused for security reasons", "refusé pour des raisons de sécurité"),
    "7.1": ("delivery not authorised (policy)", "remise non autorisée (politique de sécurité)"),
    "7.5": ("encryption or signature failed", "le chiffrement ou la signature a échoué"),
}
_GENERIC = {"5": ("delivery failed permanently", "échec définitif de la remise"),
            "4": ("delivery is temporarily impossible", "remise temporairement impossible"),
            "2": ("delivered", "remis")}

_INTRO = {
    "failed": ("Your message could not be delivered to the following recipient(s). It will not be retried.",
               "Votre message n'a pas pu être remis au(x) destinataire(s) suivant(s). "
               "Il ne sera pas renvoyé."),
    "delayed": ("Delivery to the following recipient(s) is delayed. The mail system keeps trying; "
                "you do not need to send the message again yet.",
                "La remise au(x) destinataire(s) suivant(s) est retardée. Le système de messagerie "
                "continue d'essayer ; inutile de renvoyer le message pour l'instant."),
    "delivered": ("Your message was delivered to the following recipient(s).",
                  "Votre message a été remis au(x) destinataire(s) suivant(s)."),
    "relayed": ("Your message was relayed to the following recipient(s); no further notification "
                "may be sent.",
                "Votre message a été transmis au(x) destinataire(s) suivant(s) ; aucune autre "
                "notification ne sera peut-être envoyée."),
}
_ORDER: tuple[Action, ...] = ("failed", "delayed", "delivered", "relayed")


def _reason(report: RecipientReport, status: str, french: bool) -> str:
    klass, _, rest = status.partition(".")
    pair = _REASONS.get(rest) or _GENERIC.get(klass, _GENERIC["5"])
    text = f"{pair[1] if french else pair[0]} ({status})"
    if report.diagnostic:
        server = "réponse du serveur" if french else "server said"
        text += f"; {server}: {_one_line(report.diagnostic.partition(';')[2] or report.diagnostic, 300)}"
    return text


def _human_date(value: datetime, french: bool) -> str:
    value = (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
    return value.strftime("%d/%m/%Y à %H:%M UTC" if french else "%Y-%m-%d %H:%M UTC")


def _recipient_lines(report: RecipientReport, french: bool) -> list[str]:
    status = _status(report.status, report.action)
    lines = [f"  <{_display_address(report.recipient)}>: {_reason(report, status, french)}"]
    if report.action == "delayed" and report.will_retry_until is not None:
        lines.append(("    nouvelles tentatives jusqu'au " if french else "    will retry until ")
                     + _human_date(report.will_retry_until, french))
    return lines


def _human_text(reporting_mta: str, recipients: Sequence[RecipientReport]) -> str:
    english = [f"This is the mail system at host {reporting_mta}.", ""]
    french = [f"Ceci est le système de messagerie du serveur {reporting_mta}.", ""]
    for action in _ORDER:
        group = [r for r in recipients if r.action == action]
        if group:
            english += [_INTRO[action][0], ""] + [x for r in group for x in _recipient_lines(r, False)] + [""]
            french += [_INTRO[action][1], ""] + [x for r in group for x in _recipient_lines(r, True)] + [""]
    english += ["For your privacy, the content of your message is not included in this report "
                "(it may contain health data); only its headers are attached.", ""]
    french += ["Par confidentialité, le contenu de votre message n'est pas joint à ce rapport "
               "(il peut contenir des données de santé) ; seuls ses en-têtes sont joints.", ""]
    return "\n".join(english + ["--- Version française ---", ""] + french)


# --------------------------------------------------------------------------------------------
# Machine-readable part and assembly
# --------------------------------------------------------------------------------------------

def _recipient_fields(report: RecipientReport) -> list[str]:
    fields = []
    if report.original_recipient:
        fields.append(_fold("Original-Recipient", _address_field(report.original_recipient)))
    fields.append(_fold("Final-Recipient", _address_field(report.recipient)))
    fields.append(f"Action: {report.action}")
    fields.append(f"Status: {_status(report.status, report.action)}")
    if report.remote_mta:
        fields.append(_fold("Remote-MTA", _typed(report.remote_mta, "dns")))
    if report.diagnostic:
        fields.append(_fold("Diagnostic-Code", _diagnostic(report.diagnostic)))
    if report.last_attempt is not None:
        fields.append(f"Last-Attempt-Date: {_date(report.last_attempt)}")
    if report.action == "delayed" and report.will_retry_until is not None:
        fields.append(f"Will-Retry-Until: {_date(report.will_retry_until)}")
    return fields


def _status_part(envelope_id: str, reporting_mta: str, arrival: datetime,
                 recipients: Sequence[RecipientReport]) -> str:
    per_message = [f"Reporting-MTA: dns; {reporting_mta}"]
    envid = _one_line(envelope_id)
    if envid:
        per_message.append(_fold("Original-Envelope-Id", envid))
    per_message.append(f"Arrival-Date: {_date(arrival)}")
    blocks = ["\r\n".join(per_message)] + ["\r\n".join(_recipient_fields(r)) for r in recipients]
    return ("Content-Type: message/delivery-status\r\nContent-Transfer-Encoding: 7bit\r\n"
            "Content-Description: Delivery report\r\n\r\n" + "\r\n\r\n".join(blocks) + "\r\n\r\n")


def _subject(recipients: Sequence[RecipientReport]) -> str:
    actions = {r.action for r in recipients}
    if actions == {"failed"}:
        return "Undelivered Mail Returned to Sender"
    if actions == {"delayed"}:
        return "Delayed Mail (still being retried)"
    if actions <= {"delivered", "relayed"}:
        return "Successful Mail Delivery Report"
    if "failed" in actions:
        return "Undelivered Mail Returned to Sender (partial failure)"
    return "Delivery Status Notification (mixed)"


def _to_header(envelope_from: str) -> str:
    address = re.sub(r"[\x00-\x20\x7f<>]", "", envelope_from)
    return f"To: <{address}>" if address.isascii() else "To: undisclosed-recipients:;"


def build_dsn(*, original: bytes, envelope_id: str, envelope_from: str, reporting_mta: str,
              recipients: Sequence[RecipientReport], arrival: datetime, now: datetime | None = None) -> bytes:
    """A complete RFC 3464 report (multipart/report; report-type=delivery-status), 7-bit, CRLF.

    Raises ValueError only for a null `envelope_from` (never bounce a bounce) or no recipients;
    never for anything in `original`.
    """
    if not envelope_from.strip().strip("<>").strip():
        raise ValueError("no DSN for a null envelope sender")
    if not recipients:
        raise ValueError("a DSN needs at least one recipient report")
    mta = _hostname(reporting_mta)
    now = now or datetime.now(UTC)
    parts = [
        'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n'
        "Content-Description: Notification\r\n\r\n" + _quoted_printable(_human_text(mta, recipients)),
        _status_part(envelope_id, mta, arrival, recipients),
        _headers_part(original),
    ]
    boundary = f"=_msgw_dsn_{secrets.token_hex(12)}"
    while any(boundary in part for part in parts):  # pragma: no cover - 96 random bits
        boundary = f"=_msgw_dsn_{secrets.token_hex(12)}"
    headers = [
        f"From: Mail Delivery System <MAILER-DAEMON@{mta}>",
        _to_header(envelope_from),
        f"Date: {_date(now)}",
        f"Message-ID: {make_msgid('dsn', domain=mta)}",
        f"Subject: {_subject(recipients)}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n boundary="{boundary}"',
        "Content-Transfer-Encoding: 7bit",
    ]
    body = "".join(f"--{boundary}\r\n{part}" for part in parts) + f"--{boundary}--\r\n"
    text = "\r\n".join(headers) + "\r\n\r\nThis is a MIME-encapsulated delivery status report.\r\n\r\n" + body
    return text.encode("ascii")
