"""Read the MSSanté mail that reached an application mailbox: its facts, its IHE_XDM.ZIP, its PDFs.

Why a reader of its own (not `gateway.cisis.returns` or the routing payload reader): the LPS volet
needs the mail's own words (Subject and body go into OBX|2 of the MDM; Message-ID, Reply-To,
Disposition-Notification-To drive the PRT REPLY and the MDN) besides the archive. The input is
the verified, decrypted MIME as the Local stage delivers it. Errors say what and where, never the
subject, body or an attachment's name.
"""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage, Message
from email.utils import getaddresses

from gateway.lps.model import IncomingMail, IntegrationError
from gateway.routing.model import PayloadError, UnsafePayload, XdmError
from gateway.routing.xdm import XdmPackage, read_xdm

XDM_NAME = "IHE_XDM.ZIP"
_ZIP_TYPES = ("application/zip", "application/x-zip-compressed", "application/octet-stream")


def _address(value: str | None) -> str | None:
    """The first address of a header (None when absent or empty)."""
    if not value:
        return None
    found = [addr for _, addr in getaddresses([str(value)]) if addr]
    return found[0] if found else None


def _original_recipient(value: str | None) -> str | None:
    """RFC 8098 ``Original-Recipient: rfc822;addr`` (or a bare address)."""
    if not value:
        return None
    text = str(value).strip()
    return text.split(";", 1)[1].strip() if ";" in text else text


def _header(msg: Message, name: str) -> str:
    """A header as unfolded text; an undecodable one is a `PayloadError` naming the header only."""
    try:
        value = msg.get(name)
    except (ValueError, TypeError, IndexError, AttributeError):
        raise PayloadError("unreadable header", name) from None
    return " ".join(str(value).split()) if value is not None else ""


def _is_attachment(part: Message) -> bool:
    return part.get_content_disposition() == "attachment" or bool(part.get_filename())


def _payload(part: Message, where: str) -> bytes:
    try:
        data = part.get_payload(decode=True)
    except (ValueError, TypeError, AssertionError, LookupError) as exc:
        raise PayloadError("undecodable MIME part", where) from exc
    return data if isinstance(data, bytes) else b""


def _text(part: Message, where: str) -> str:
    data = _payload(part, where)
    charset = part.get_content_charset() or "utf-8"
    try:
        return data.decode(charset)
    except (LookupError, UnicodeDecodeError):
        return data.decode("utf-8", "replace")


def _parts(msg: Message) -> list[tuple[str, Message]]:
    """Leaf parts with their MIME position ("part 1.2"), never descending into attached messages."""
    if not msg.is_multipart():
        return [("part 1", msg)]
    out: list[tuple[str, Message]] = []

    def walk(node: Message, label: str) -> None:
        children = node.get_payload()
        if not isinstance(children, list):
            out.append((label, node))
            return
        for n, child in enumerate(children, start=1):
            where = f"{label}.{n}" if label else f"part {n}"
            if child.is_multipart():
                walk(child, where)
            else:
                out.append((where, child))
    walk(msg, "")
    return out


def _is_xdm(part: Message) -> bool:
    name = (part.get_filename() or "").strip()
    return name.upper() == XDM_NAME and part.get_content_type() in _ZIP_TYPES + ("application/x-zip",)


def _is_pdf(part: Message) -> bool:
    name = (part.get_filename() or "").strip().lower()
    return part.get_content_type() == "application/pdf" or (
        name.endswith(".pdf") and part.get_content_type() == "application/octet-stream")


def _read_archive(data: bytes, where: str) -> XdmPackage:
    """`read_xdm`; a corrupted archive (bad zip, hash/size mismatch) is the ANS 906, so the sender is
    told "Erreur 'Autre'" rather than nothing. A hostile one (`UnsafePayload`) keeps its type."""
    try:
        return read_xdm(data)
    except UnsafePayload:
        raise
    except XdmError as exc:
        raise IntegrationError("906", f"IHE_XDM.ZIP unreadable ({exc.what})",
                               f"{where} {exc.where}".strip()) from exc


def _parse(data: bytes) -> EmailMessage:
    try:
        msg = email.message_from_bytes(data, policy=email.policy.default)
    except (ValueError, TypeError, IndexError) as exc:
        raise PayloadError("unreadable MIME message", "message") from exc
    if not isinstance(msg, EmailMessage) or not msg.keys():
        raise PayloadError("not a MIME message (no header)", "message")
    return msg


def read_incoming(data: bytes, *, recipient: str,
                  return_path: str) -> tuple[IncomingMail, XdmPackage | None, tuple[bytes, ...]]:
    """The mail's facts, its IHE_XDM.ZIP read by `read_xdm` (None when it has none: the caller
    decides, e.g. a fallback Maildir), and the PDFs attached. `PayloadError` on malformed MIME or
    archive (a bad archive: `XdmError`/`UnsafePayload` from `read_xdm`)."""
    msg = _parse(data)
    body: str | None = None
    archive: XdmPackage | None = None
    pdfs: list[bytes] = []
    for where, part in _parts(msg):
        if _is_xdm(part):
            if archive is not None:
                raise PayloadError("more than one IHE_XDM.ZIP attachment", where)
            archive = _read_archive(_payload(part, where), where)
        elif _is_pdf(part):
            pdfs.append(_payload(part, where))
        elif body is None and part.get_content_type() == "text/plain" and not _is_attachment(part):
            body = _text(part, where)
    sender = _address(_header(msg, "From"))
    if not sender:
        raise PayloadError("no From address", "From")
    mail = IncomingMail(
        message_id=_header(msg, "Message-ID"), sender=sender, reply_to=_address(_header(msg, "Reply-To")),
        recipient=recipient, subject=_header(msg, "Subject"), body=(body or "").rstrip("\r\n"),
        disposition_notification_to=_address(_header(msg, "Disposition-Notification-To")),
        return_path=return_path, original_recipient=_original_recipient(_header(msg, "Original-Recipient")))
    return mail, archive, tuple(pdfs)
