"""Byte-level header edits that keep everything else of a message untouched, and the one
definition of what a protected copy may show outside its envelope.

Python's `email` refolds and re-encodes headers when it serialises, which breaks signatures
and changes what the recipient sees; these helpers slice the raw header block instead.

Outside an envelope (S/MIME, the client-encrypted pass-through, legacy copies) only an
allow-list shows: From, To, Cc and Date rebuilt from their parsed values (7-bit, no comment), a
fresh random Message-ID, the neutral Subject, and `Disposition-Notification-To` reduced to
addresses when the original asked for an MDN; the envelope adds its own MIME-Version and
Content-* (reduced to its structure).
Everything else (Message-ID, threading, X-*, Comments, raw 8-bit fields...) exists only
inside, where *every* original header is copied onto the root entity of the cryptographic
payload as protected headers (`protected-headers="v1"`, as Thunderbird and mutt read them),
so the reader's client still shows the real Subject and threads the conversation.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
import secrets
from email.header import Header

from gateway.legacy.mimeutil import structure_only
from gateway.rawmime import FIELD_START, header_text, join_raw, raw_text, split_raw
from gateway.rawmime import field_name as name_of

VERIFICATION_HEADER = "X-Msgw-Verification"
BRIDGE_HEADER = "X-Msgw-Bridged"
#: Headers only this gateway may write: every `X-Msgw-*` field (the verdict, the bridge's
#: provenance, the displaced `X-Msgw-Outer-*` fields) is stripped from anything arriving.
OUR_PREFIX = "x-msgw-"
#: Original fields kept outside an envelope (made 7-bit); the rest of the list is written fresh.
OUTER_KEPT = ("from", "to", "cc", "date")
#: The envelope's own fields that describe it (not its content) and stay outside with it.
ENVELOPE_FIELDS = ("mime-version", "content-type", "content-transfer-encoding", "content-disposition")
#: Never copied anywhere, not even inside: every recipient would see who else got a blind copy.
NEVER_COPIED = ("bcc", "resent-bcc")
MAX_LINE = 998  # RFC 5322 2.1.1, without the CRLF


def strip_headers(message: bytes) -> bytes:
    """The message without any of our own `X-Msgw-*` fields (by prefix: no forged one survives)."""
    fields, body = split_raw(message)
    kept = [f for f in fields if not name_of(f).startswith(OUR_PREFIX)]
    if len(kept) == len(fields):
        return message
    return join_raw(kept, body)


def header_field(name: str, value: str) -> bytes:
    """A folded, 7-bit header field (RFC 2047 when the value is not ASCII)."""
    try:
        value.encode("ascii")
        text = value
    except UnicodeEncodeError:
        text = Header(value, "utf-8").encode(linesep="\r\n")
    # Only the folding we put in ourselves (CRLF + space) survives; any other line break is flattened.
    safe = text.replace("\r\n ", "\0").replace("\r", " ").replace("\n", " ").replace("\0", "\r\n ")
    return f"{name}: {safe}\r\n".encode("ascii")


def prepend_header(message: bytes, name: str, value: str) -> bytes:
    return header_field(name, value) + message


def _seven_bit(field: bytes) -> bool:
    return field.isascii() and all(len(line) <= MAX_LINE for line in field.split(b"\r\n"))


def folded_field(name: str, value: str) -> bytes:
    """A 7-bit field folded under 78 columns: RFC 2047 words when the value is not ASCII or
    has a token too long to fold (a 2,000-character References without spaces)."""
    try:
        value.encode("ascii")
        charset = "us-ascii"
    except UnicodeEncodeError:
        charset = "utf-8"
    out = Header(value, charset, header_name=name).encode(linesep="\r\n")
    if charset == "us-ascii" and any(len(line) > MAX_LINE - len(name) - 2 for line in out.split("\r\n")):
        out = Header(value, "utf-8", header_name=name).encode(linesep="\r\n")
    return f"{name}: {out}\r\n".encode("ascii")


def seven_bit_field(field: bytes) -> bytes | None:
    """The field as it is when 7-bit with short lines; else re-encoded (RFC 2047); None when the
    field has no valid name (it cannot be copied faithfully)."""
    if not FIELD_START.match(field):
        return None
    if _seven_bit(field):
        return field
    name, _, value = field.partition(b":")
    return folded_field(name.decode("ascii"), raw_text(value))


def addresses(field: bytes) -> list[tuple[str, str]]:
    """(display name, ASCII address) pairs of an address field; non-ASCII addresses are left out
    (they cannot travel 7-bit outside; the original field is inside). The addresses are parsed
    from the raw value and only then the names decoded (RFC 2047 6.1): a word that decodes to
    `<someone@else>` or a comma stays part of a name, never becomes an address."""
    value = raw_text(field.partition(b":")[2])
    return [(header_text(name), addr) for name, addr in email.utils.getaddresses([value])
            if addr and addr.isascii() and "@" in addr and not re.search(r"[\s<>,;\"]", addr)]


def address_field(name: str, pairs: list[tuple[str, str]], *, names: bool = True) -> bytes | None:
    if not pairs:
        return None
    parts = []
    for display, addr in pairs:
        if names and display:
            parts.append(email.utils.formataddr((display, addr), charset="utf-8"))
        else:
            parts.append(f"<{addr}>")
    return f"{name}: ".encode() + ",\r\n ".join(parts).encode("ascii") + b"\r\n"


def _outer_field(field: bytes) -> bytes | None:
    """An original From/To/Cc/Date as it may leave, always rebuilt from its parsed value: a
    comment (`Date: ... (Resultat DUPONT Jean)`) or a group name is free text and stays inside.
    Address fields keep display name and address (RFC 2047 when needed); an unparseable Date
    becomes the current time."""
    name = name_of(field)
    label = {"from": "From", "to": "To", "cc": "Cc", "date": "Date"}[name]
    if name == "date":
        try:
            when = email.utils.parsedate_to_datetime(raw_text(field.partition(b":")[2]))
            return f"Date: {email.utils.format_datetime(when)}\r\n".encode("ascii")
        except (TypeError, ValueError, IndexError, OverflowError):
            return f"Date: {email.utils.formatdate(usegmt=True)}\r\n".encode("ascii")
    return address_field(label, addresses(field))


def fresh_message_id(fields: list[bytes]) -> str:
    """A random Message-ID (nothing of the original one), in the From domain when it is ASCII."""
    domain = "msgw.invalid"
    for f in fields:
        if name_of(f) == "from":
            found = addresses(f)
            if found:
                domain = found[0][1].rpartition("@")[2] or domain
            break
    return f"<{secrets.token_hex(16)}@{domain}>"


def allowed_outer_fields(message: bytes, *, neutral_subject: str) -> list[bytes]:
    """The header fields a protected copy of `message` shows outside its envelope (without the
    envelope's MIME-Version and Content-*): the one allow-list of every protected form."""
    fields, _ = split_raw(message)
    out = [kept for f in fields if name_of(f) in OUTER_KEPT and (kept := _outer_field(f)) is not None]
    out.append(f"Message-ID: {fresh_message_id(fields)}\r\n".encode("ascii"))
    out.append(header_field("Subject", neutral_subject))
    mdn = [pair for f in fields if name_of(f) == "disposition-notification-to" for pair in addresses(f)]
    dnt = address_field("Disposition-Notification-To", mdn, names=False)
    if dnt is not None:
        out.append(dnt)
    return out


def restrict_outer(message: bytes, *, neutral_subject: str, original: bytes | None = None,
                   envelope_name: str | None = None) -> bytes:
    """An already-protected message (client-encrypted, legacy armor) with its header block cut
    down to the allow-list; its own MIME-Version and Content-* stay, reduced to their structure
    (type, structural parameters, 7-bit), its body untouched. `original`: the message it was made
    from, whose raw headers the allow-list is taken from (an encoder may have re-serialised them).
    `envelope_name`: the one name the envelope shows (`smime.p7m`), whatever its client named it;
    without it, names are kept as the encoder wrote them (neutral)."""
    fields, body = split_raw(message)
    envelope = _envelope_fields([f for f in fields if name_of(f) in ENVELOPE_FIELDS], envelope_name)
    outer = allowed_outer_fields(message if original is None else original, neutral_subject=neutral_subject)
    return join_raw(outer + envelope, body)


def _envelope_fields(fields: list[bytes], name: str | None) -> list[bytes]:
    """MIME-Version and Content-* of an envelope: Content-Type and Content-Disposition rebuilt from
    their parsed values (`structure_only`: a client's own name for the envelope or any other
    parameter can name the document); fields that are not 7-bit are left out."""
    msg = email.message_from_bytes(b"".join(fields) + b"\r\n", policy=email.policy.compat32)
    structure_only(msg, rename=(lambda real: real) if name is None else (lambda real: name), fields=False)
    rebuilt = [header_field(key, str(value)) for key, value in msg.items()]
    return [f for f in rebuilt if _seven_bit(f)]


def protected_entity(message: bytes, entity: bytes) -> bytes:
    """Copy every original header of the message onto the root entity of the crypto payload
    (protected headers), 7-bit; its own Content-* and MIME-Version are already the entity's."""
    fields, _ = split_raw(message)
    copies = []
    for f in fields:
        name = name_of(f)
        if name.startswith("content-") or name == "mime-version" or name in NEVER_COPIED:
            continue
        safe = seven_bit_field(f)
        if safe is not None:
            copies.append(safe)
    efields, ebody = split_raw(entity)
    out = []
    for f in efields:
        if name_of(f) == "content-type" and b"protected-headers" not in f.lower():
            f = f.rstrip(b"\r\n") + b';\r\n protected-headers="v1"\r\n'
        out.append(f)
    return join_raw(out + copies, ebody)
