"""S/MIME framing on raw bytes: canonical entities, multipart/signed and pkcs7-mime.

Signatures are over bytes, so this module slices raw bytes and never hashes what Python's
`email` re-serialises (it refolds headers and rewrites parameters). `email` is used only
to read header parameters, to decode the signature/pkcs7 part, and to re-encode 8-bit
parts as base64 *before* signing (so the signed part is 7-bit safe and survives relays).
"""

from __future__ import annotations

import base64
import binascii
import email
import email.errors
import email.generator
import email.policy
import io
import os
import re
from dataclasses import dataclass
from email.message import Message
from typing import Literal, overload

from gateway.rawmime import (
    FIELD_START,
    Buffer,
    MessageView,
    Pieces,
    Raw,
    content_type_of,
    field_name,
    is_continuation,
    parse_message,
    raw_data,
    to_crlf,
)
from gateway.smime.errors import MalformedSmime

_POLICY = email.policy.compat32.clone(linesep="\r\n", max_line_length=0)
_CONTENT_HEADERS = ("content-", "mime-version")
MAX_MESSAGE_SIZE = 64 * 1024 * 1024


@dataclass(frozen=True)
class Split:
    """A message as raw header fields (each CRLF-terminated, folding kept) and a body."""

    fields: tuple[bytes, ...]
    body: bytes

    def names(self) -> list[str]:
        return [field_name(f) for f in self.fields]

    def message(self) -> Message:
        """Headers only, parsed (for parameters); never re-serialise it for signing."""
        return email.message_from_bytes(b"".join(self.fields) + b"\r\n", policy=email.policy.compat32)


def split_message(raw: bytes) -> Split:
    """Split canonical (CRLF) bytes at the first empty line into header fields and body."""
    data, fields, start, end = _split_bounds(raw)
    return Split(fields, data[start:end])


def _split_bounds(raw: bytes) -> tuple[bytes, tuple[bytes, ...], int, int]:
    """(the canonical bytes, header fields, start and end of the body in them): `split_message`
    without copying the body, which is always one slice of the canonical bytes (a large
    message's entity is then a view of it, not a copy: issue 15)."""
    if len(raw) > MAX_MESSAGE_SIZE:
        raise MalformedSmime("message too large")
    data = to_crlf(raw, bare_cr=True)
    if data.startswith(b"\r\n"):
        return data, (), 2, len(data)
    index = data.find(b"\r\n\r\n")
    if index >= 0:
        head, start, end = data[:index], index + 4, len(data)
    else:
        head = data.rstrip(b"\r\n")
        start = end = len(head)
    fields: list[bytes] = []
    offset = 0  # where the line starts, in `data` (`head` is its prefix)
    for line in (head + b"\r\n").splitlines(keepends=True):
        if is_continuation(line):
            if fields:
                fields[-1] += line
            # else: a stray continuation before any field (seen in the wild): dropped
        elif FIELD_START.match(line):
            fields.append(line)
        elif not fields:
            raise MalformedSmime("message header cannot be parsed")
        else:
            # No empty line before the body (seen in the wild): the body starts here (and runs
            # on through the empty line, if any, to the end; else to the end of `head`).
            start = offset
            break
        offset += len(line)
    return data, tuple(fields), start, end


def split_of(message: Raw) -> Split:
    """`split_message`, computed once per `MessageView` (a Split is immutable: safe to share)."""
    return message.once(split_message) if isinstance(message, MessageView) else split_message(message)


def _headers(message: Raw, split: Split) -> Message:
    """The parsed header block of `split`: the view's own parse of the whole message when it is
    already made and the message starts with exactly the split's header block (CRLF lines, every
    one a field, then the empty line: both parses read the same header lines), else a parse of
    the header fields alone (never the whole message just for its header)."""
    if (isinstance(message, MessageView) and message.has(parse_message)
            and message.data.startswith(b"".join(split.fields) + b"\r\n")):
        return message.message
    return split.message()


def outer_fields(split: Split) -> tuple[bytes, ...]:
    """Header fields that describe the message, not its content (they stay outside)."""
    return tuple(f for f in split.fields if not field_name(f).startswith(_CONTENT_HEADERS))


def _is_7bit(data: Buffer) -> bool:
    """ASCII, no NUL, no line over 998 octets (RFC 5322) — in C, not byte by byte in Python.

    Window by window (each overlapping the next by 999 bytes, so a long line is whole in the
    window where it starts): the lines of a large message are never all held as objects at once
    (memory), nor scanned in one C call that holds the GIL for 0.1 s (the event loop's other
    sessions); a view of a message body is read through 1 MiB copies, never a whole one."""
    for start in range(0, max(len(data), 1), _LINE_WINDOW):
        window = bytes(data[start:start + _LINE_WINDOW + 999])
        if not window.isascii() or b"\x00" in window or max(map(len, window.split(b"\n"))) > 999:
            return False
    return True


_LINE_WINDOW = 1 << 20


def _reencode(entity: bytes) -> bytes:
    """Re-encode every 8-bit leaf part as base64 so the entity is 7-bit clean."""
    msg = email.message_from_bytes(entity, policy=email.policy.compat32)
    for n, part in enumerate(msg.walk()):
        if part.is_multipart():
            continue
        try:
            text = part.get_payload()
        except (ValueError, LookupError, TypeError):  # found by atheris: a NUL in the charset parameter;
            # an RFC 2231 charset*= value, which the stdlib hands to bytes.decode() as a tuple
            raise MalformedSmime(f"MIME part {n} has an unusable charset parameter") from None
        if not isinstance(text, str):
            continue
        try:
            original = text.encode("ascii", "surrogateescape")  # the bytes as received
        except UnicodeEncodeError:
            original = None
        if original is not None and _is_7bit(to_crlf(original, bare_cr=True)):
            continue  # already 7-bit clean: left exactly as it is
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes):
            continue
        del part["Content-Transfer-Encoding"]
        part.set_payload(base64.encodebytes(data).decode("ascii"))
        part["Content-Transfer-Encoding"] = "base64"
    out = io.BytesIO()
    email.generator.BytesGenerator(out, mangle_from_=False, policy=_POLICY).flatten(msg)
    return to_crlf(out.getvalue(), bare_cr=True)


@overload
def content_entity(message: Raw) -> tuple[tuple[bytes, ...], bytes]: ...


@overload
def content_entity(message: Raw, *, pieces: Literal[True]) -> tuple[tuple[bytes, ...], Pieces]: ...


def content_entity(message: Raw, *, pieces: bool = False) -> tuple[tuple[bytes, ...], bytes | Pieces]:
    """(outer header fields, canonical 7-bit content entity) of a message to protect.

    `pieces=True`: the entity as two `Pieces`, its header block (through the empty line; the
    whole entity when it has none) and its body, a view of the message's own bytes when they
    are canonical 7-bit (no copy of a large body: issue 15); joined, the same bytes."""
    data = raw_data(message)
    body: Buffer
    if len(data) <= MessageView.KEEP_LIMIT:  # the view's split, shared with the other stages
        split = split_of(message)
        fields, body = split.fields, split.body
    else:  # nothing is kept past KEEP_LIMIT: the body's place, not a copy of it
        canonical, fields, start, end = _split_bounds(data)
        body = memoryview(canonical)[start:end]
    content = [f for f in fields if field_name(f).startswith("content-")]
    if not any(field_name(f) == "content-type" for f in content):
        content.insert(0, b"Content-Type: text/plain; charset=us-ascii\r\n")
    head = b"".join([*content, b"\r\n"])
    outer = outer_fields(Split(fields, b""))
    if _is_7bit(head) and _is_7bit(body):
        entity = Pieces((head, body))
    else:
        try:
            whole = _reencode(head + body)
        except (email.errors.MessageError, ValueError, LookupError):
            # found by atheris: the stdlib parser/generator refuses what it cannot fold or decode
            # (a header with an embedded header, a NUL in a charset)
            raise MalformedSmime("content cannot be re-encoded as 7-bit MIME for signing") from None
        end = whole.find(b"\r\n\r\n")
        entity = Pieces((whole, b"") if end < 0 else (whole[:end + 4], memoryview(whole)[end + 4:]))
    return outer, (entity if pieces else entity.join())


_B64_BLOCK = 57 * 1024  # a multiple of 57 input bytes = whole 76-character lines per block


def _b64_chunks(der: bytes) -> list[bytes]:
    """Base64 in 76-character CRLF lines, as blocks, so a large message is not held as one more
    whole-size intermediate (peak memory of big S/MIME mail). Each block is encoded by one C call
    and cut into lines by slicing: `base64.encodebytes` loops in Python over 57-byte pieces (one
    call each), ~30 % slower; the bytes are the same (`tests/smime/test_mime_base64.py`)."""
    view = memoryview(der)
    return [_b64_lines(binascii.b2a_base64(view[i:i + _B64_BLOCK], newline=False))
            for i in range(0, len(der), _B64_BLOCK)]


def _b64_lines(encoded: bytes) -> bytes:
    """`encoded` (no newlines) as 76-character lines, each ended by CRLF."""
    return b"\r\n".join([encoded[i:i + 76] for i in range(0, len(encoded), 76)]) + b"\r\n"


def _b64(der: bytes) -> bytes:
    return b"".join(_b64_chunks(der))


def multipart_signed(outer: tuple[bytes, ...], entity: bytes | Pieces, signature_der: bytes, micalg: str) -> bytes:
    """A multipart/signed message: the CRLF before each boundary belongs to the boundary."""
    signed = signed_entity(entity, signature_der, micalg)
    return b"".join([*outer, b"MIME-Version: 1.0\r\n", *signed.parts])  # the entity copied once


def signed_entity(entity: bytes | Pieces, signature_der: bytes, micalg: str) -> Pieces:
    """The multipart/signed entity alone (its Content-Type, the empty line, the two parts): what
    `content_entity` would cut back out of `multipart_signed`'s message, made without building
    and splitting that message again (sign then encrypt encrypts this). As pieces around the
    entity's own: no copy of a large entity (the encryption reads pieces)."""
    boundary = "----=_smime_" + os.urandom(12).hex()
    parts = entity.parts if isinstance(entity, Pieces) else (entity,)
    if Pieces(parts).contains(boundary.encode()):
        raise MalformedSmime("boundary collision")  # 96 random bits: never in practice
    b = boundary.encode()
    head = (b'Content-Type: multipart/signed; protocol="application/pkcs7-signature";\r\n'
            + f' micalg={micalg}; boundary="{boundary}"\r\n\r\n'.encode()
            + b"This is an S/MIME signed message\r\n\r\n--" + b + b"\r\n")
    tail = (b"\r\n--" + b + b"\r\n"
            + b'Content-Type: application/pkcs7-signature; name="smime.p7s"\r\n'
            + b"Content-Transfer-Encoding: base64\r\n"
            + b'Content-Disposition: attachment; filename="smime.p7s"\r\n\r\n'
            + _b64(signature_der) + b"--" + b + b"--\r\n")
    return Pieces((head, *parts, tail))


def pkcs7_mime(outer: tuple[bytes, ...], der: bytes, smime_type: str) -> bytes:
    """An application/pkcs7-mime message (signed-data, enveloped-data or authEnveloped-data)."""
    return b"".join([pkcs7_mime_head(outer, smime_type), *_b64_chunks(der)])  # one whole-size join, not two


def pkcs7_mime_head(outer: tuple[bytes, ...], smime_type: str) -> bytes:
    """`pkcs7_mime`'s message up to its base64 body (for a body encoded piece by piece)."""
    return (b"".join(outer) + b"MIME-Version: 1.0\r\n"
            + f'Content-Type: application/pkcs7-mime; smime-type={smime_type}; name="smime.p7m"\r\n'.encode()
            + b"Content-Transfer-Encoding: base64\r\n"
            + b'Content-Disposition: attachment; filename="smime.p7m"\r\n\r\n')


def entity_message(outer: tuple[bytes, ...], entity: bytes) -> bytes:
    """Outer headers put back around an unwrapped content entity."""
    if not outer:
        return entity
    return b"".join(outer) + b"MIME-Version: 1.0\r\n" + entity


@dataclass(frozen=True)
class SmimePart:
    """What an entity is, for unwrapping."""

    kind: str  # "multipart-signed", "pkcs7-mime", "rfc822", "plain"
    der: bytes = b""
    signed_content: bytes = b""  # the raw first part of multipart/signed; the body of message/rfc822


def _decode_body(split: Split, headers: Message | None = None) -> bytes:
    """The transfer-decoded body. `headers`: the split's header block already parsed; base64 (what
    S/MIME uses) is then decoded without parsing the whole message."""
    msg = headers if headers is not None else split.message()
    # str(): compat32 hands an 8-bit header over as a Header object, not a string.
    cte = str(msg.get("Content-Transfer-Encoding") or "").strip().lower()
    if cte != "base64":
        msg = email.message_from_bytes(b"".join(split.fields) + b"\r\n" + split.body, policy=email.policy.compat32)
    if cte == "base64":
        text = re.sub(rb"\s+", b"", split.body)
        try:
            return base64.b64decode(text, validate=True)
        except ValueError:
            raise MalformedSmime("base64 S/MIME body cannot be decoded") from None
    payload = msg.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def _signed_parts(split: Split, boundary: str) -> tuple[bytes, bytes]:
    b = re.escape(boundary.encode())
    delims = list(re.finditer(rb"(?:^|\r\n)--" + b + rb"(--)?[ \t]*\r\n", split.body + b"\r\n"))
    if len(delims) < 3 or delims[0].group(1) or delims[1].group(1) or not delims[2].group(1):
        raise MalformedSmime("multipart/signed needs exactly two parts")
    first = split.body[delims[0].end():delims[1].start()]
    second = split.body[delims[1].end():delims[2].start()]
    return first, second


def _header_split(raw: Raw) -> Split:
    """The split `classify` reads the header fields of: the view's own (kept) for a message up to
    `MessageView.KEEP_LIMIT`; past it, the split of the canonical header block alone (through
    the first CRLF CRLF, where `split_message` cuts: the same fields), so that telling a large
    plain message from S/MIME does not copy its body (issue 15). Its body is not the message's."""
    data = raw_data(raw)
    if len(data) <= MessageView.KEEP_LIMIT:
        return split_of(raw)
    if len(data) > MAX_MESSAGE_SIZE:
        raise MalformedSmime("message too large")
    canonical = to_crlf(data, bare_cr=True)
    end = canonical.find(b"\r\n\r\n")
    return split_message(canonical if end < 0 else canonical[:end + 4])


#: The content types `classify` reads further (None: `content_type_of` could not tell, parse).
_SMIME_CANDIDATES = frozenset({"multipart/signed", "application/pkcs7-mime", "application/x-pkcs7-mime",
                               "application/octet-stream", "message/rfc822", None})


def classify(raw: Raw) -> SmimePart:
    """Tell an S/MIME entity from plain content and extract its CMS bytes."""
    split = _header_split(raw)
    if content_type_of(split.fields) not in _SMIME_CANDIDATES:
        # read from the bytes, the type is none of those below: plain, without a header parse
        return SmimePart("plain")
    msg = _headers(raw, split)
    ctype = msg.get_content_type()
    if ctype == "multipart/signed":
        boundary = msg.get_param("boundary")
        protocol = str(msg.get_param("protocol") or "").lower()
        if not isinstance(boundary, str) or not boundary:
            raise MalformedSmime("multipart/signed without a boundary")
        if protocol not in ("application/pkcs7-signature", "application/x-pkcs7-signature"):
            raise MalformedSmime("multipart/signed with a protocol other than S/MIME")
        first, second = _signed_parts(split_of(raw), boundary)
        sig = split_message(second)
        sig_type = sig.message().get_content_type()
        if sig_type not in ("application/pkcs7-signature", "application/x-pkcs7-signature"):
            raise MalformedSmime("second part of multipart/signed is not a PKCS#7 signature")
        return SmimePart("multipart-signed", _decode_body(sig), first)
    name = str(msg.get_param("name") or msg.get_filename() or "").lower()
    if ctype in ("application/pkcs7-mime", "application/x-pkcs7-mime") or (
            ctype == "application/octet-stream" and name.endswith(".p7m")):
        return SmimePart("pkcs7-mime", _decode_body(split_of(raw), msg))
    if ctype == "message/rfc822":
        return SmimePart("rfc822", signed_content=split_of(raw).body)
    return SmimePart("plain")
