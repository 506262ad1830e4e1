"""Byte-level header edits that keep everything else of a message untouched.

Python's `email` refolds and re-encodes headers when it serialises, which breaks signatures
and changes what the recipient sees; these helpers slice the raw header block instead.
Header protection follows the "protected headers" convention (RFC 7508 spirit, as
Thunderbird and other clients read it): the real Subject, From, To, Cc, Date and Message-ID
are copied onto the root MIME entity inside the cryptographic payload (Content-Type gets
`protected-headers="v1"`), and the outer Subject is replaced by a neutral one.
"""

from __future__ import annotations

from email.header import Header

VERIFICATION_HEADER = "X-Msgw-Verification"
BRIDGE_HEADER = "X-Msgw-Bridged"
#: Headers only this gateway may write: stripped from anything arriving.
OUR_HEADERS = (VERIFICATION_HEADER, BRIDGE_HEADER)
PROTECTED = ("subject", "from", "to", "cc", "date", "message-id", "reply-to", "in-reply-to", "references")



def split_raw(message: bytes) -> tuple[list[bytes], bytes]:
    """(header fields with their continuation lines and CRLF, body) of a CRLF message."""
    end = message.find(b"\r\n\r\n")
    if end < 0:
        head, body = message, b""
    else:
        head, body = message[:end + 2], message[end + 4:]
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line + b"\r\n"
        else:
            fields.append(line + b"\r\n")
    return fields, body


def name_of(field: bytes) -> str:
    return field.split(b":", 1)[0].strip().decode("ascii", "replace").lower()


def join_raw(fields: list[bytes], body: bytes) -> bytes:
    return b"".join(fields) + b"\r\n" + body


def strip_headers(message: bytes, names: tuple[str, ...] = OUR_HEADERS) -> bytes:
    lowered = {n.lower() for n in names}
    fields, body = split_raw(message)
    kept = [f for f in fields if name_of(f) not in lowered]
    if len(kept) == len(fields):
        return message
    return join_raw(kept, body)


def header_field(name: str, value: str) -> bytes:
    """A folded, 7-bit header field (RFC 2047 when the value is not ASCII)."""
    try:
        value.encode("ascii")
        text = value
    except UnicodeEncodeError:
        text = Header(value, "utf-8").encode()
    # Only the folding we put in ourselves (CRLF + space) survives; any other line break is flattened.
    safe = text.replace("\r\n ", "\0").replace("\r", " ").replace("\n", " ").replace("\0", "\r\n ")
    return f"{name}: {safe}\r\n".encode("ascii")


def prepend_header(message: bytes, name: str, value: str) -> bytes:
    return header_field(name, value) + message


def replace_header(message: bytes, name: str, value: str) -> bytes:
    """Replace every `name` field by one with `value` (added when absent)."""
    fields, body = split_raw(message)
    out, done = [], False
    for f in fields:
        if name_of(f) == name.lower():
            if not done:
                out.append(header_field(name, value))
                done = True
            continue
        out.append(f)
    if not done:
        out.append(header_field(name, value))
    return join_raw(out, body)


def protected_entity(message: bytes, entity: bytes) -> bytes:
    """Copy the message's protected headers onto the root entity of the crypto payload."""
    fields, _ = split_raw(message)
    copies = [f for f in fields if name_of(f) in PROTECTED]
    efields, ebody = split_raw(entity)
    out = []
    for f in efields:
        if name_of(f) == "content-type" and b"protected-headers" not in f.lower():
            f = f.rstrip(b"\r\n") + b';\r\n protected-headers="v1"\r\n'
        out.append(f)
    return join_raw(out + copies, ebody)


def outer_neutral(message: bytes, neutral_subject: str) -> bytes:
    """The message with a neutral outer Subject (the real one travels inside)."""
    return replace_header(message, "Subject", neutral_subject)
