"""What comes back to the CI-SIS application mailbox: delivery reports (RFC 3464 DSN) and read
receipts (RFC 8098 MDN), read into `Return` values the ledger turns into ZAM^Z02 / ZAM^Z03.

Why a parser of its own: the ledger needs four facts per recipient (which message, who, ok or
not, the error code) and nothing else; the rest of a report (the human text, the returned body,
the re-attached documents of an MSSanté MDN) is health content and is never looked at. Pure: bytes
in, values out. Errors say what and where (the MIME part), never a header value.

An MDN's error follows the trans-lps IG (``struct-msg-mdn.md``): ``Disposition: ...;
processed/Error: <code>^<label>`` with the codes 900-906 of its ``error-codes`` page; an
``Error:`` field (RFC 8098 §3.2.7) in the same form is read too.
"""

from __future__ import annotations

import email
import email.errors
import email.header
import re
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser
from email.policy import compat32
from typing import Literal

from gateway.routing.model import PayloadError

#: An MDN that is not ok and names no code gets the IG's "other" code.
OTHER_ERROR = "906"
_OK_DISPOSITIONS = frozenset({"displayed", "processed", "dispatched"})
_FINAL_ACTIONS = {"failed": False, "delivered": True, "relayed": True, "expanded": True}
_SMTP_CODE = re.compile(r"^\s*([245]\d\d)(?:[ -]+(.*))?$", re.DOTALL)
_MAX_TEXT = 200


class ReturnError(PayloadError):
    """Mail to the application mailbox that is not a DSN or an MDN msgw can read."""

    code = "cisis-return"
    status = "5.7.1"


@dataclass(frozen=True)
class Return:
    """One recipient's outcome reported back: ``code``/``text`` are an SMTP reply code and its
    text (DSN) or an IG error code and label (MDN); empty when ``ok``."""

    kind: Literal["dsn", "mdn"]
    original_message_id: str
    recipient: str
    ok: bool
    code: str = ""
    text: str = ""


def message_id_key(value: str) -> str:
    """A Message-ID as the ledger stores it: no angle brackets, no spaces."""
    return value.strip().strip("<>").strip()


def _text(value: object) -> str:
    """A header value as one line of text (RFC 2047 words decoded, 8-bit kept as UTF-8)."""
    raw = str(value or "")
    try:
        raw = str(email.header.make_header(email.header.decode_header(raw)))
    except (ValueError, LookupError, email.errors.HeaderParseError):
        pass
    raw = raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return " ".join(raw.split())


def _field(block: Message, name: str) -> str:
    """A field's raw value (8-bit kept: an MSSanté MDN writes its labels in UTF-8)."""
    lname = name.lower()
    return next((str(v) for k, v in block.raw_items() if k.lower() == lname), "")


def _address(value: object) -> str:
    """``rfc822; a@b`` → ``a@b`` (lower-cased)."""
    text = _text(value)
    return text.split(";", 1)[1].strip().strip("<>").lower() if ";" in text else text.strip("<>").lower()


def _parts(msg: Message) -> list[Message]:
    """The sub-parts of a multipart (or a message/*) part; [] for a leaf."""
    payload = msg.get_payload()
    return [p for p in payload if isinstance(p, Message)] if isinstance(payload, list) else []


def _unwrap(msg: Message) -> Message:
    """The report inside a ``multipart/signed`` (the signature is not what makes it a report)."""
    for depth in range(3):
        if msg.get_content_type() != "multipart/signed":
            return msg
        parts = _parts(msg)
        if not parts:
            raise ReturnError("multipart/signed without its signed content", f"level {depth + 1}")
        msg = parts[0]
    raise ReturnError("multipart/signed nested too deeply", "top")


def parse_returns(data: bytes) -> list[Return]:
    """Every final per-recipient outcome in a DSN or an MDN (a ``delayed`` DSN gives none)."""
    msg = _unwrap(email.message_from_bytes(data, policy=compat32))
    if msg.get_content_type() != "multipart/report":
        raise ReturnError(f"not a report ({msg.get_content_type()})", "Content-Type")
    report_type = str(msg.get_param("report-type", "") or "").lower()
    parts = _parts(msg)
    if not parts:
        raise ReturnError("multipart/report without parts", "body")
    if report_type == "delivery-status":
        return _dsn(parts)
    if report_type == "disposition-notification":
        return _mdn(parts)
    raise ReturnError(f"unsupported report-type {report_type[:40]!r}", "Content-Type")


def _machine_part(parts: list[Message], content_type: str) -> tuple[int, Message]:
    for i, part in enumerate(parts):
        if part.get_content_type() == content_type:
            return i, part
    raise ReturnError(f"no {content_type} part", "multipart/report")


def _blocks(part: Message, where: str) -> list[Message]:
    """The field blocks of a machine-readable part (the parser already split them)."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [b for b in payload if isinstance(b, Message)]
    if isinstance(payload, str):
        text = payload.replace("\r\n", "\n").strip("\n")
        return [HeaderParser(policy=compat32).parsestr(block + "\n") for block in re.split(r"\n\s*\n", text)]
    raise ReturnError("unreadable report fields", where)


def _returned_message_id(parts: list[Message], after: int) -> str:
    """The Message-ID of the returned message or headers (the third part of a DSN)."""
    for part in parts[after + 1:]:
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/global"):
            inner = _parts(part)
            if inner and _field(inner[0], "Message-ID"):
                return message_id_key(_text(_field(inner[0], "Message-ID")))
        elif ctype in ("text/rfc822-headers", "message/global-headers"):
            raw = part.get_payload(decode=True)
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""
            headers = HeaderParser(policy=compat32).parsestr(text)
            if _field(headers, "Message-ID"):
                return message_id_key(_text(_field(headers, "Message-ID")))
    return ""


def _dsn(parts: list[Message]) -> list[Return]:
    index, status_part = _machine_part(parts, "message/delivery-status")
    blocks = _blocks(status_part, "message/delivery-status")
    if len(blocks) < 2:
        raise ReturnError("delivery-status without a per-recipient block", "message/delivery-status")
    envelope_id = message_id_key(_text(_field(blocks[0], "Original-Envelope-Id")))
    message_id = _returned_message_id(parts, index) or envelope_id
    if not message_id:
        raise ReturnError("DSN names no original message (no returned Message-ID, no Original-Envelope-Id)",
                          "message/delivery-status")
    out: list[Return] = []
    for n, block in enumerate(blocks[1:], start=2):
        action = _text(_field(block, "Action")).lower()
        recipient = _address(_field(block, "Final-Recipient") or _field(block, "Original-Recipient"))
        if not recipient or not action:
            raise ReturnError("recipient block without Final-Recipient or Action", f"delivery-status block {n}")
        if action not in _FINAL_ACTIONS:
            continue  # "delayed": not an outcome yet
        ok = _FINAL_ACTIONS[action]
        code, text = ("", "") if ok else _smtp_error(block)
        out.append(Return("dsn", message_id, recipient, ok, code, text))
    return out


def _smtp_error(block: Message) -> tuple[str, str]:
    """(SMTP reply code, text) from ``Diagnostic-Code: smtp; 550 ...``, else from ``Status``."""
    status = _text(_field(block, "Status"))
    diagnostic = _text(_field(block, "Diagnostic-Code"))
    kind, _, reply = diagnostic.partition(";")
    m = _SMTP_CODE.match(reply) if kind.strip().lower() == "smtp" else None
    if m:
        return m.group(1), (m.group(2) or status).strip()[:_MAX_TEXT]
    return ("550" if status.startswith("5") else "450"), (f"status {status}" if status else "delivery failed")


def _mdn(parts: list[Message]) -> list[Return]:
    _, part = _machine_part(parts, "message/disposition-notification")
    blocks = _blocks(part, "message/disposition-notification")
    fields = blocks[0] if blocks else None
    if fields is None:
        raise ReturnError("empty disposition-notification", "message/disposition-notification")
    message_id = message_id_key(_text(_field(fields, "Original-Message-ID")))
    recipient = _address(_field(fields, "Final-Recipient"))
    disposition = _text(_field(fields, "Disposition"))
    if not message_id or not recipient or ";" not in disposition:
        raise ReturnError("MDN without Original-Message-ID, Final-Recipient or Disposition",
                          "message/disposition-notification")
    ok, code, text = _disposition(disposition.split(";", 1)[1], _text(_field(fields, "Error")))
    return [Return("mdn", message_id, recipient, ok, code, text)]


def _disposition(value: str, error_field: str) -> tuple[bool, str, str]:
    """(ok, code, label) of ``processed``, ``displayed``, ``processed/Error: 904^label``, ``deleted``..."""
    kind, _, modifier = value.strip().partition("/")
    kind = kind.strip().lower()
    error = modifier.strip() if modifier.strip().lower().startswith("error") else ""
    if kind in _OK_DISPOSITIONS and not error:
        return True, "", ""
    detail = (error.partition(":")[2] if error else "") or error_field
    code, _, label = detail.strip().partition("^")
    code = code.strip()
    if not re.fullmatch(r"\d{3}", code):
        return False, OTHER_ERROR, (label or kind or "not read")[:_MAX_TEXT]
    return False, code, label.strip()[:_MAX_TEXT]


__all__ = ["OTHER_ERROR", "Return", "ReturnError", "message_id_key", "parse_returns"]
