"""Raw-bytes MIME: header fields and bodies sliced from the bytes, never re-serialised.

Why bytes and not Python's `email`: `email` refolds and re-encodes headers when it writes a
message back, which breaks signatures (S/MIME, PGP/MIME sign exact bytes) and changes what a
reader sees. The S/MIME framing (`gateway.smime.mime`), the header allow-list
(`gateway.stages.headers`), the legacy codecs (`gateway.legacy.mimeutil`) and the sender check
(`gateway.senders`) read and cut header blocks with the helpers here, so they agree on where a
field starts, what its name is and where the body begins.

Pure: no I/O, no gateway import (it is a leaf every package may import). A *field* is its
exact bytes: the first line, its continuation lines and their line ends.
"""

from __future__ import annotations

import email
import email.errors
import email.feedparser
import email.header
import email.message
import email.parser
import email.policy
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from gateway.errors import MalformedInput

_T = TypeVar("_T")

#: A field's first line (RFC 5322 2.2: printable ASCII but the colon, then the colon).
FIELD_START = re.compile(rb"^[!-9;-~]+:")
#: The same, read the way servers and clients also read it: white space before the colon is the
#: obsolete syntax (RFC 5322 4.5, `From :`); group 1 is the name.
LAX_FIELD_START = re.compile(rb"^([!-9;-~]+)[ \t]*:")
#: Past this, a header block is refused rather than parsed (it would stall a listener).
MAX_HEADER_BLOCK = 256 * 1024
_ANY_LINE_END = re.compile(rb"\r\n|\r|\n")
_LF_LINE_END = re.compile(rb"\r?\n")


def field_name(field: bytes) -> str:
    """The lower-case name of a raw field (what is before its first colon, white space trimmed)."""
    return field.split(b":", 1)[0].strip().decode("ascii", "replace").lower()


def is_continuation(line: bytes) -> bool:
    """A folded line (RFC 5322 2.2.3): it starts with white space and belongs to the field above."""
    return line[:1] in (b" ", b"\t")


def to_crlf(data: bytes, *, bare_cr: bool = False) -> bytes:
    """Every LF (with or without its CR) as CRLF: the canonical form RFC 3156 and RFC 5751 sign.

    ``bare_cr``: a CR alone is a line end too (S/MIME framing reads it so); without it, a CR
    that is not before a LF is content and stays (HPRIM lines end with CR).

    Data already canonical (what the SMTP listeners hold: they refuse bare LF) is returned as it
    is, the same object, not a copy: three counts in C cost less than the regex's copy of a
    large message, and callers can tell by identity that nothing changed."""
    crlf = data.count(b"\r\n")
    if data.count(b"\n") == crlf and (not bare_cr or data.count(b"\r") == crlf):
        return data
    return (_ANY_LINE_END if bare_cr else _LF_LINE_END).sub(b"\r\n", data)


def line_ending(message: bytes) -> bytes:
    """The message's own line ending: CRLF unless its first line ends with a bare LF."""
    first = message.find(b"\n")
    return b"\n" if first == 0 or (first > 0 and message[first - 1] != 0x0D) else b"\r\n"


def header_end(raw: bytes) -> tuple[int, int] | None:
    """(end of the header block, start of the body) at the first empty line, CRLF or LF; None
    when the message has no empty line (all header)."""
    ends = [(index, index + len(sep)) for sep in (b"\r\n\r\n", b"\n\n") if (index := raw.find(sep)) >= 0]
    return min(ends) if ends else None


def raw_body(raw: bytes) -> bytes:
    """The bytes after the header block of a raw message (first empty line, CRLF or LF)."""
    end = header_end(raw)
    return raw[end[1]:] if end is not None else b""


def raw_header_fields(raw: bytes) -> list[tuple[str, bytes]]:
    """(lower-case name, the field's bytes without its last line end, continuation lines joined
    by CRLF) of the header block of a CRLF or LF message; a line that is no field is skipped."""
    end = header_end(raw)
    block = raw[:end[0]] if end is not None else raw
    fields: list[tuple[str, bytes]] = []
    for line in _LF_LINE_END.split(block):
        if is_continuation(line) and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b"\r\n" + line)
        elif b":" in line:
            fields.append((field_name(line), line))
    return fields


def content_type_of(fields: Iterable[bytes], default: str = "text/plain") -> str | None:
    """What `get_content_type()` of the compat32 parse of these header fields answers (the first
    Content-Type: `type/subtype` lower-cased, `default` when absent, text/plain when invalid),
    read from the bytes: the classifier asks it of every message, and the header parse it made
    for that cost more than the rest of the classification (issue 15). `fields` as `split_raw`
    and `smime.mime.split_message` cut them (CRLF, each with its continuation lines).

    None when the parser would read the field otherwise than plain text (8-bit bytes: it hands
    it over as a `Header`): the caller parses."""
    for field in fields:
        if field_name(field) != "content-type":
            continue
        if not field.isascii():
            return None
        # header_source_parse: after the first colon, the first line's blanks left out, then the
        # continuation lines as they are, the last line end left out; then _splitparam and lower.
        value = field.decode("ascii").split(":", 1)[1].lstrip(" \t").rstrip("\r\n")
        kind = value.partition(";")[0].strip().lower()
        return kind if kind.count("/") == 1 else "text/plain"
    return default


def split_raw(message: bytes) -> tuple[list[bytes], bytes]:
    """(header fields, each with its continuation lines and CRLF, body) of a CRLF message.

    For messages the gateway already holds in CRLF form (the SMTP listener refuses bare LF):
    `join_raw` puts them back byte for byte."""
    end = message.find(b"\r\n\r\n")
    if end < 0:
        head, body = message, b""
    else:
        head, body = message[:end + 2], message[end + 4:]
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if not line:
            continue
        if is_continuation(line) and fields:
            fields[-1] += line + b"\r\n"
        else:
            fields.append(line + b"\r\n")
    return fields, body


#: `parse_message` hands the parser this much of the message at a time.
_PARSE_CHUNK = 64 * 1024


def parse_message(data: bytes) -> email.message.Message:
    """The stdlib parse with the compat32 policy (raw header and body bytes kept as received).

    `email.message_from_bytes` itself, fed 64 KiB at a time: it decodes the whole message to a
    str and copies that into a StringIO (4 bytes a character) before parsing, 7.7x a large
    message at its peak (issue 15). Its ASCII/surrogateescape decoding is byte by byte, and the
    feed parser takes text in any pieces (its own `parse` reads 8 KiB at a time): same result."""
    parser = email.feedparser.FeedParser(policy=email.policy.compat32)
    view = memoryview(data)
    for start in range(0, len(view), _PARSE_CHUNK):
        parser.feed(str(view[start:start + _PARSE_CHUNK], "ascii", "surrogateescape"))
    return parser.close()


_ASCII_BLANKS = re.compile(rb"[ \t\n\r\x0b\x0c]*")
_LATIN1_BLANKS = re.compile(rb"[ \t\n\r\x0b\x0c\x1c-\x1f\x85\xa0]*")


def lstrip_start(data: bytes, *, latin1: bool = False) -> int:
    """Where `data.lstrip()` (`latin1`: `data.decode("latin-1").lstrip()`) would start, without
    that copy: asking whether a large message starts with a marker must not copy it (issue 15)."""
    return (_LATIN1_BLANKS if latin1 else _ASCII_BLANKS).match(data).end()  # type: ignore[union-attr]


#: A header line as the stdlib feed parser takes it (its `headerRE`): any other line ends the block.
_STD_HEADER_LINE = re.compile(rb"From |[\x21-\x39\x3b-\x7e]*:|[\t ]")
#: What may follow `--boundary` on a delimiter line (the feed parser's boundary regex).
_DELIMITER_REST = re.compile(rb"(--)?[ \t]*\r?")
_CLOSE_DELIMITER = re.compile(rb"--")
#: The first byte `str.lstrip` (Latin-1) or `bytes.lstrip` would keep: a leaf is cut this far past it.
_NOT_SPACE = re.compile(rb"[^\s\x1c-\x1f\x85\xa0]")
_MAX_SKELETON_DEPTH = 40
#: Searches over a large message go 1 MiB at a time: one C call over 50 MB holds the GIL too long.
_WINDOW = 1 << 20


def _find(data: bytes, needle: bytes, start: int, end: int) -> int:
    """`data.find(needle, start, end)`, one window at a time."""
    while start < end:
        found = data.find(needle, start, min(end, start + _WINDOW + len(needle)))
        if found >= 0:
            return found
        start += _WINDOW
    return -1


def skeleton(data: bytes, keep: int = 8192) -> bytes:
    """For detection only: the structure and the first bytes of each leaf.

    The same bytes with every leaf body past its first `keep` bytes (counted from its first
    non-blank byte) cut at the next line end, so a base64 or quoted-printable prefix still
    decodes; multipart bodies are split by their delimiters (a `find` in C), their preamble and
    epilogue left out. The compat32 parse of the result has the same tree (content types,
    parameters, multipart or not) and leaves that start with the same decoded bytes as the full
    parse, at a fraction of its memory (issue 15: the full parse of a 50 MB message is ~3x it).

    Raises ValueError whenever the stdlib parser might read the message otherwise (bare CR line
    ends, a header block it would end early, a missing boundary or close delimiter, a boundary
    reused by a nested multipart, a large part of a multipart/digest or message/delivery-status):
    the caller then parses the whole message."""
    for start in range(0, len(data), _WINDOW):
        if data.count(b"\r", start, start + _WINDOW) != data.count(b"\r\n", start, start + _WINDOW + 1):
            raise ValueError("bare CR line ends")
    out: list[bytes] = []
    _skeleton_entity(data, 0, len(data), keep, (), out, digest=False)
    return b"".join(out)


def _skeleton_entity(data: bytes, start: int, end: int, keep: int, boundaries: tuple[bytes, ...],
                     out: list[bytes], *, digest: bool) -> None:
    """One entity (`data[start:end]`: header block and body) into `out`, leaves cut."""
    if end - start <= 2 * keep:
        out.append(data[start:end])  # small: exactly as it is
        return
    if len(boundaries) > _MAX_SKELETON_DEPTH or digest:
        raise ValueError("too deep, or a multipart/digest part (its default type is message/rfc822)")
    head_end, body_start = _std_header_end(data, start, end)
    out.append(data[start:body_start])
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(data[start:head_end])
    kind = headers.get_content_type()
    if headers.get_content_maintype() == "multipart":
        boundary = headers.get_boundary()
        if boundary is None:
            raise ValueError("multipart without a boundary")
        marker = b"--" + boundary.encode("ascii", "surrogateescape")
        if marker in boundaries:
            raise ValueError("boundary reused by a nested multipart")
        _skeleton_multipart(data, body_start, end, keep, (*boundaries, marker), out, kind == "multipart/digest")
    elif headers.get_content_maintype() == "message":
        if kind == "message/delivery-status":
            raise ValueError("large message/delivery-status")
        _skeleton_entity(data, body_start, end, keep, boundaries, out, digest=False)
    else:
        first = _NOT_SPACE.search(data, body_start, end)
        limit = (first.start() if first else body_start) + keep
        line_end = _find(data, b"\n", limit, end) if limit < end else -1
        out.append(data[body_start:end if line_end < 0 else line_end + 1])


def _std_header_end(data: bytes, start: int, end: int) -> tuple[int, int]:
    """(end of the header block, start of the body) of an entity, where the feed parser puts them."""
    if data.startswith(b"\r\n", start) or data.startswith(b"\n", start):
        return start, start + (2 if data[start] == 0x0D else 1)
    found = header_end(data[start:min(end, start + MAX_HEADER_BLOCK + 4)])
    if found is None:
        raise ValueError("no end of header block")
    block_end, body = start + found[0], start + found[1]
    for number, line in enumerate(_LF_LINE_END.split(data[start:block_end])):
        if not _STD_HEADER_LINE.match(line) or (number and line.startswith(b"From ")):
            raise ValueError("a header line the feed parser would read otherwise")
    return block_end, body


def _skeleton_multipart(data: bytes, start: int, end: int, keep: int, boundaries: tuple[bytes, ...],
                        out: list[bytes], digest: bool) -> None:
    """A multipart body: its delimiter lines and each part's skeleton (no preamble, no epilogue)."""
    marker = boundaries[-1]
    found = _next_delimiter(data, start, end, marker, at_start=True)
    if found is None:
        raise ValueError("no delimiter")
    line_start, stop, close = found
    out.append(data[line_start:stop])
    while not close:
        found = _next_delimiter(data, stop, end, marker, at_start=False)
        if found is None:
            raise ValueError("no close delimiter")
        line_start, next_stop, close = found
        _skeleton_entity(data, stop, line_start, keep, boundaries, out, digest=digest)
        out.append(data[line_start:next_stop])
        stop = next_stop


def _next_delimiter(data: bytes, pos: int, end: int, marker: bytes, *, at_start: bool) -> tuple[int, int, bool] | None:
    """(start, end after its line end, is it the close one) of the first delimiter line at or
    after `pos` (`pos` is a line start), the way the feed parser's boundary regex matches lines."""
    candidate = pos if at_start and data.startswith(marker, pos) else -1
    while True:
        if candidate < 0:
            found = _find(data, b"\n" + marker, pos, end)
            if found < 0:
                return None
            candidate = found + 1
        eol = _find(data, b"\n", candidate, end)
        line_end, stop = (eol, eol + 1) if eol >= 0 else (end, end)
        after = candidate + len(marker)
        if _DELIMITER_REST.fullmatch(data, after, line_end):
            return candidate, stop, _CLOSE_DELIMITER.match(data, after, line_end) is not None
        pos, candidate = candidate, -1


class MessageView:
    """One message's bytes and what is read from them, each computed once.

    Why: the legacy detector, the S/MIME classifier and the content extraction each parsed or
    split the same message again (three `email` parses and five header splits per message,
    issue 15). A reader asks `once(fn)`: `fn(data)` is computed the first time and kept, keyed by
    the function itself, so readers in any package share a result without this module knowing
    them. Shared results are read-only: never change one (the parsed `message` included); whoever
    needs to change a tree parses its own. One message is read by one task at a time.

    Past `KEEP_LIMIT` bytes nothing is kept: a split holds a copy of the body and a parse more
    than the message, and kept for the whole preparation they would add to a large message's
    peak memory what re-reading costs little beside its cryptography."""

    __slots__ = ("_memo", "data")

    #: Largest message whose readings are kept.
    KEEP_LIMIT = 1024 * 1024

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._memo: dict[Callable[[bytes], Any], Any] = {}

    def once(self, fn: Callable[[bytes], _T]) -> _T:
        """`fn(data)`, computed once per view (an exception is not kept: raised again next time)."""
        memo = self._memo
        if fn in memo:
            return memo[fn]  # type: ignore[no-any-return]
        value = fn(self.data)
        if len(self.data) <= self.KEEP_LIMIT:
            memo[fn] = value
        return value

    def has(self, fn: Callable[[bytes], Any]) -> bool:
        """Whether `fn(data)` is already computed (a reader may take a cheaper road when it is not)."""
        return fn in self._memo

    @property
    def message(self) -> email.message.Message:
        """The compat32 parse of the whole message, shared: read it, never change it."""
        return self.once(parse_message)


#: Raw message bytes, or a view of them whose splits and parse are shared.
Raw = bytes | MessageView

#: Bytes, or a view of a slice of bytes (never a view of something that can change).
Buffer = bytes | memoryview


class Pieces:
    """Bytes held as consecutive buffers: a large message's entity as views of the message the
    runner already holds, with small bytes (header blocks, the signature part) around them.

    Why: signing and encrypting a 50 MB message used to copy its body into a content entity, a
    protected entity and a multipart/signed entity in turn, each a whole copy beside the
    message (issue 15, peak memory); the digest and the cipher read any buffers in order, so
    they take the pieces instead. `len` is the length of the bytes; `join` makes them one
    `bytes` (the one copy, for a small entity or a caller that needs it whole)."""

    __slots__ = ("_size", "parts")

    def __init__(self, parts: Iterable[Buffer]) -> None:
        #: The buffers in order, as given (an empty one kept: its place may mean something).
        self.parts: tuple[Buffer, ...] = tuple(parts)
        self._size = sum(len(p) for p in self.parts)

    def __len__(self) -> int:
        return self._size

    def join(self) -> bytes:
        return b"".join(self.parts)

    def windows(self, size: int) -> Iterator[Buffer]:
        """The bytes as consecutive slices of `size` bytes (the last one shorter): a view of a
        part where the slice lies inside one part, a copy only of a slice across parts."""
        if self._size <= size:  # a small entity (nearly every message): one piece, no slicing
            if self._size:
                yield self.parts[0] if len(self.parts) == 1 else self.join()
            return
        pending: list[Buffer] = []
        need = size
        for part in self.parts:
            view = memoryview(part)
            pos, end = 0, len(view)
            while pos < end:
                if not pending and end - pos >= size:
                    yield view[pos:pos + size]
                    pos += size
                    continue
                take = min(need, end - pos)
                pending.append(view[pos:pos + take])
                pos += take
                need -= take
                if not need:
                    yield b"".join(pending)
                    pending, need = [], size
        if pending:
            yield b"".join(pending)

    def contains(self, needle: bytes, window: int = 1 << 20) -> bool:
        """`needle in self.join()`, a window at a time (each searched with the end of the one
        before, so a match across two windows is found): no whole copy, no single C call over
        a whole large message."""
        if self._size <= window:
            return needle in self.join()
        keep = max(len(needle) - 1, 0)
        tail = b""
        for piece in self.windows(window):
            data = tail + piece if tail else bytes(piece)
            if needle in data:
                return True
            tail = data[-keep:] if keep else b""
        return not needle


def raw_data(message: Raw) -> bytes:
    return message.data if isinstance(message, MessageView) else message


def _split_tuple(message: bytes) -> tuple[tuple[bytes, ...], bytes]:
    fields, body = split_raw(message)
    return tuple(fields), body


def raw_split(message: Raw) -> tuple[list[bytes], bytes]:
    """`split_raw`, computed once per view (a fresh list each call: the caller may change it)."""
    if isinstance(message, MessageView):
        fields, body = message.once(_split_tuple)
        return list(fields), body
    return split_raw(message)


def header_block(message: Raw) -> Raw:
    """What a reader of the header fields alone is given: the message itself up to
    `MessageView.KEEP_LIMIT` (its view's split is kept and shared), past it its bytes through the
    first empty line (CRLF CRLF, where `split_raw` cuts: the same fields), so that reading the
    fields of a large message does not copy its body (issue 15)."""
    data = raw_data(message)
    if len(data) <= MessageView.KEEP_LIMIT:
        return message
    end = data.find(b"\r\n\r\n")
    return data if end < 0 else data[:end + 4]


def raw_split_view(message: Raw) -> tuple[list[bytes], Buffer]:
    """`raw_split`, with the body of a message past `MessageView.KEEP_LIMIT` as a view of its
    bytes, not a copy (for a caller that joins it once into a new message)."""
    data = raw_data(message)
    if len(data) <= MessageView.KEEP_LIMIT:
        return raw_split(message)
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return split_raw(data)
    return split_raw(data[:end + 4])[0], memoryview(data)[end + 4:]


def join_raw(fields: list[bytes], body: bytes) -> bytes:
    """The message again from `split_raw`'s parts (fields as they are, the empty line, the body)."""
    return b"".join(fields) + b"\r\n" + body


def unfold(value: bytes) -> str:
    """A raw field value on one line: UTF-8 (undecodable bytes replaced), every run of white
    space, line breaks included, one space (a value cannot carry a line into another header)."""
    return " ".join(value.decode("utf-8", "replace").split())


def header_fields(message: bytes) -> list[tuple[str, str]]:
    """(lowercased name, unfolded value) of every field of the top header block of a CRLF
    message, read strictly: `From :` is a From field (obsolete syntax, as servers and clients
    read it), and a line that is neither a field nor a continuation is MalformedInput, so no field
    can hide from a check and still be read by someone else."""
    end = message.find(b"\r\n\r\n", 0, MAX_HEADER_BLOCK + 4)
    if end < 0:
        if len(message) > MAX_HEADER_BLOCK:
            raise MalformedInput(f"header block longer than {MAX_HEADER_BLOCK // 1024} KiB", "message header")
        end = len(message)
    fields: list[tuple[str, list[bytes]]] = []
    for number, line in enumerate(message[:end].split(b"\r\n"), start=1):
        if not line:
            continue
        if is_continuation(line):
            if not fields:
                raise MalformedInput("continuation line before any field", f"header line {number}")
            fields[-1][1].append(line)
            continue
        match = LAX_FIELD_START.match(line)
        if match is None:
            raise MalformedInput("header line without a field name", f"header line {number}")
        fields.append((match.group(1).decode("ascii").lower(), [line[match.end():]]))
    return [(name, unfold(b" ".join(parts))) for name, parts in fields]


def raw_text(value: bytes | str) -> str:
    """A raw header value as text, RFC 2047 words left as they are: 8-bit bytes read as UTF-8
    (else Latin-1: never fails), on one line (every run of white space, line breaks included,
    one space: a value cannot inject a line into a header)."""
    if isinstance(value, bytes):
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            text = value.decode("latin-1")
    else:
        text = value
    return " ".join(text.split())


def header_text(value: bytes | str) -> str:
    """A header value as a reader sees it: `raw_text` with its RFC 2047 words decoded (a word
    that does not decode stays as written).

    For an address field, decode the display names *after* parsing the addresses: a word can
    decode to `<someone@else>` or a comma."""
    text = raw_text(value)
    if "=?" in text:
        try:
            text = str(email.header.make_header(email.header.decode_header(text)))
        except (UnicodeError, LookupError, ValueError, email.errors.HeaderParseError):
            pass
    return " ".join(text.split())


__all__ = ["FIELD_START", "LAX_FIELD_START", "MAX_HEADER_BLOCK", "Buffer", "MessageView", "Pieces", "Raw",
           "content_type_of", "field_name",
           "header_block", "header_end", "header_fields", "header_text", "is_continuation", "join_raw",
           "line_ending", "lstrip_start", "parse_message", "raw_body", "raw_data", "raw_header_fields", "raw_split",
           "raw_split_view", "raw_text", "skeleton", "split_raw", "to_crlf", "unfold"]
