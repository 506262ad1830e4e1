"""Small MIME helpers shared by the codecs (no crypto here).

Why hand-rolled pieces: codecs must keep decrypted bytes exact (HPRIM results travel with
CR line ends and ISO-8859-1 bytes), so decrypted parts are always base64-encoded, and PGP/MIME
signatures cover the *raw* bytes of a body part, which a parse/re-serialise round trip
through the email package may change; `raw_multipart_parts` slices them from the input.
"""

from __future__ import annotations

import base64
import email.generator
import email.message
import email.policy
import email.utils
import functools
import io
import re
import secrets
from collections.abc import Callable

from gateway.legacy.codec import as_message
from gateway.legacy.errors import MalformedPayload

# The raw-bytes helpers live in gateway.rawmime (shared with smime/, stages/, senders); named
# here too so the codecs' imports stay as they are.
from gateway.rawmime import header_text as header_text
from gateway.rawmime import raw_body as raw_body
from gateway.rawmime import raw_header_fields as raw_header_fields
from gateway.rawmime import raw_text as raw_text
from gateway.rawmime import to_crlf as to_crlf

#: CRLF lines, and no refolding: a header we did not write goes out folded as it came.
CRLF_POLICY = email.policy.compat32.clone(linesep="\r\n", max_line_length=0)
_SKIP_HEADERS = frozenset({"content-type", "content-transfer-encoding", "content-disposition",
                           "content-description", "content-id", "mime-version"})


def outer_headers(message: email.message.Message) -> list[tuple[str, str]]:
    """The headers of `message` that are not about its MIME structure (From, To, Subject, ...).

    Raw values: a raw 8-bit header is written back as the same bytes (`items()` would turn its
    bytes into replacement characters and the generator would then encode a garbled value)."""
    return [(k, str(v)) for k, v in message.raw_items() if k.lower() not in _SKIP_HEADERS]


def new_boundary() -> str:
    return "=_msgw_" + secrets.token_hex(12)


def binary_part(data: bytes, content_type: str, *, charset: str | None = None, filename: str | None = None,
                disposition: str | None = None) -> email.message.Message:
    """A leaf part holding `data` base64-encoded, so every byte survives transport."""
    part = email.message.Message()
    part["Content-Type"] = content_type
    if charset:
        part.set_param("charset", charset)
    if filename:
        part.set_param("name", filename)
    part["Content-Transfer-Encoding"] = "base64"
    if disposition:
        part["Content-Disposition"] = disposition
        if filename:
            part.set_param("filename", filename, header="Content-Disposition")
    part.set_payload(base64.encodebytes(data).decode("ascii").replace("\n", "\r\n"))
    return part


def text_part(text: str, *, filename: str | None = None, disposition: str | None = None) -> email.message.Message:
    """A 7-bit text/plain leaf (used for ASCII armor)."""
    part = email.message.Message()
    part["Content-Type"] = "text/plain"
    part.set_param("charset", "us-ascii")
    if filename:
        part.set_param("name", filename)
    part["Content-Transfer-Encoding"] = "7bit"
    if disposition:
        part["Content-Disposition"] = disposition
        if filename:
            part.set_param("filename", filename, header="Content-Disposition")
    part.set_payload(text.replace("\r\n", "\n").replace("\n", "\r\n"))
    return part


def assemble(headers: list[tuple[str, str]], body: email.message.Message | list[email.message.Message],
             *, subtype: str = "mixed") -> bytes:
    """A complete message: `headers`, MIME-Version, then one leaf or a multipart of leaves, CRLF lines."""
    if isinstance(body, list):
        top = email.message.Message()
        top["Content-Type"] = f"multipart/{subtype}"
        top.set_param("boundary", new_boundary())
        parts: list[email.message.Message | str] = list(body)  # set_payload's list type is invariant
        top.set_payload(parts)
    else:
        top = body
    out = email.message.Message()
    for name, value in headers:
        out[name] = value
    out["MIME-Version"] = "1.0"
    for name, value in top.items():
        out[name] = value
    out.set_payload(top.get_payload())
    return to_bytes(out)


def to_bytes(message: email.message.Message) -> bytes:
    buffer = io.BytesIO()
    email.generator.BytesGenerator(buffer, mangle_from_=False, policy=CRLF_POLICY).flatten(message)
    return buffer.getvalue()


def leaf_payload(part: email.message.Message) -> bytes:
    """The transfer-decoded bytes of a leaf part."""
    data = part.get_payload(decode=True)
    if data is None:
        return b""
    return data if isinstance(data, bytes) else str(data).encode("latin-1", "replace")


def subparts(part: email.message.Message) -> list[email.message.Message]:
    """The sub-parts of a multipart, typed (empty for a leaf, whose payload is a string)."""
    payload = part.get_payload()
    if not isinstance(payload, list):
        return []
    return [sub for sub in payload if isinstance(sub, email.message.Message)]


def param_text(part: email.message.Message, name: str) -> str:
    """A Content-Type parameter as text ('' when absent); an RFC 2231 value (a tuple) is decoded."""
    value = part.get_param(name)
    if value is None:
        return ""
    return value if isinstance(value, str) else email.utils.collapse_rfc2231_value(value)


def part_filename(part: email.message.Message, index: int) -> str:
    """The file name of a part, reduced to a safe base name (never a path)."""
    name = part.get_filename() or part.get_param("name") or ""
    if not isinstance(name, str):
        name = email.utils.collapse_rfc2231_value(name)
    return safe_filename(name, index)


def safe_filename(name: str, index: int) -> str:
    """A base name (never a path, no control characters), or `part-<index>.bin`."""
    name = re.sub(r"[\x00-\x1f/\\]", "_", name).strip(". ")
    return name[:200] or f"part-{index}.bin"


_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,8}")


def neutral_name(real: str, index: int) -> str:
    """The name an attachment shows outside the armor: `piece-jointe-<index>` and only the
    extension of the real name (a patient's name must not show in clear)."""
    dot = real.rfind(".")
    extension = real[dot:] if dot > 0 else ""
    return f"piece-jointe-{index}{extension.lower() if _EXTENSION.fullmatch(extension) else '.bin'}"


#: The header fields a body part needs to be read; any other (Content-Description, Content-ID,
#: X-*...) is free text that can name the document or the patient.
STRUCTURAL_FIELDS = frozenset({"content-type", "content-transfer-encoding", "content-disposition"})
#: The Content-Type / Content-Disposition parameters that describe structure (file names apart).
STRUCTURAL_PARAMS = frozenset({"boundary", "charset", "protocol", "micalg", "smime-type", "format", "delsp"})
_NAME_PARAMS = {"Content-Type": "name", "Content-Disposition": "filename"}


def structure_only(part: email.message.Message, *, rename: Callable[[str], str | None] = lambda real: real,
                   fields: bool = True) -> None:
    """Reduce a part to its MIME structure, for what shows outside an envelope or an armor: with
    `fields`, only the STRUCTURAL_FIELDS stay; its Content-Type and Content-Disposition keep their
    type and STRUCTURAL_PARAMS, and their name (`name=`, `filename=`) becomes `rename(real name)`
    (None: no name at all)."""
    if fields:
        for name in {k.lower() for k in part.keys()} - STRUCTURAL_FIELDS:
            del part[name]
    for header, name_param in _NAME_PARAMS.items():
        if part.get(header) is None:
            continue
        params = part.get_params(header=header) or []
        value = part.get_content_type() if header == "Content-Type" else _disposition(part)
        kept = [(k.lower(), _param_value(v)) for k, v in params[1:] if k.lower() in STRUCTURAL_PARAMS]
        real = _param_value(next((v for k, v in params[1:] if k.lower() == name_param), ""))
        new_name = rename(real) if real else None
        del part[header]
        part[header] = value
        for key, text in kept + ([(name_param, new_name)] if new_name else []):
            part.set_param(key, text, header=header, charset=None if text.isascii() else "utf-8")


def _disposition(part: email.message.Message) -> str:
    """`inline` or `attachment`: any other disposition type is free text (read as attachment, RFC 2183)."""
    found = part.get_content_disposition()
    return found if found in ("inline", "attachment") else "attachment"


def _param_value(value: str | tuple[str | None, str | None, str]) -> str:
    return value if isinstance(value, str) else email.utils.collapse_rfc2231_value(value)


def _no_name(real: str) -> None:
    return None


def _constant(name: str, real: str) -> str:
    return name


def neutral_attachment_names(raw: bytes) -> bytes:
    """A legacy message as it may show outside its armor: every body part reduced to its MIME
    structure (`structure_only`: no Content-Description or other free-text part header), every
    leaf's file name made neutral (`neutral_name`, numbered like the decoders number parts), no
    name on a multipart. The top-level header block is left to the caller's allow-list; returned
    unchanged when there is nothing to reduce."""
    msg = as_message(raw)
    before = [(p, p.items()) for p in msg.walk()]
    leaves = [p for p in msg.walk() if not p.is_multipart()]
    for part in msg.walk():
        if part.is_multipart():
            structure_only(part, rename=_no_name, fields=part is not msg)
    for index, part in enumerate(leaves, 1):
        structure_only(part, rename=functools.partial(_constant, neutral_name(part_filename(part, index), index)),
                       fields=part is not msg)
    if all(part.items() == items for part, items in before):
        return raw
    return to_bytes(msg)


def raw_multipart_parts(raw: bytes, boundary: str) -> list[bytes]:
    """The exact bytes of each body part of a multipart message body (RFC 2046 section 5.1.1).

    The CRLF before each delimiter belongs to the delimiter, so it is not part of the body part.
    """
    marker = re.escape(boundary.encode("ascii", "replace"))
    delimiter = re.compile(rb"(?:^|\r?\n)--" + marker + rb"(--)?[ \t]*(?=\r?\n|$)")
    matches = list(delimiter.finditer(raw))
    if not matches:
        raise MalformedPayload("multipart body without its boundary delimiter")
    parts = []
    for current, following in zip(matches, matches[1:], strict=False):
        if current.group(1):
            break
        start = current.end()
        if raw[start:start + 2] == b"\r\n":
            start += 2
        elif raw[start:start + 1] == b"\n":
            start += 1
        parts.append(raw[start:following.start()])
    return parts


def is_attachment(part: email.message.Message) -> bool:
    """Content-Disposition says attachment (header values with 8-bit bytes tolerated)."""
    return str(part.get("Content-Disposition", "")).strip().lower().startswith("attachment")
