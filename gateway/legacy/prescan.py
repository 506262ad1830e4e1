"""A byte pre-scan that proves a message cannot be legacy armour, before any `email` parse.

Why: every message is asked whether it is legacy armour (`codec.detect_codec`), and each
codec's `detect` walks the stdlib parse of the message (issue 15: the parse was a sixth of a
1 KB message's preparation). A codec recognises armour by a marker at the start of a leaf's
*transfer-decoded* payload. When no transfer encoding can change a leaf's bytes (no base64,
quoted-printable or uuencode where the parser reads one), every leaf payload is a slice of the
raw message: a marker absent from the raw bytes is absent from every leaf, and the full
detector would answer False. Anything else (a marker somewhere, an encoding word) is not
ruled out: the full detector decides, as before.

Pure, no I/O. Every check only *rules out*: it may answer False (ask the detector) for a
message the detector also refuses, never True for one the detector accepts
(`tests/legacy/test_prescan.py` compares them).
"""

from __future__ import annotations

#: The transfer encodings whose decoding changes the payload (`email.message.Message.get_payload`
#: decodes these values of Content-Transfer-Encoding, compared lower-cased): "uue" is a part of
#: each uuencode name. Their value must be written literally (RFC 2047 words are not decoded
#: there, a folded value is not equal), so their absence, any case, proves there is none.
DECODED_ENCODINGS = (b"base64", b"quoted-printable", b"uue")
#: Any of these starts an empty line, whatever the line ends (CRLF, LF, CR: the feed parser's
#: three): the first one found is at or after the end of the top header block as it reads it.
_EMPTY_LINE_STARTS = (b"\n\n", b"\r\r", b"\n\r")


def top_header_block(raw: bytes) -> bytes:
    """The raw bytes up to the first empty line: they hold every line the stdlib feed parser can
    read as the top header block (it ends that block at the first empty line or earlier)."""
    if raw[:1] in (b"\r", b"\n"):
        return b""
    ends = [found for pattern in _EMPTY_LINE_STARTS if (found := raw.find(pattern)) >= 0]
    return raw[:min(ends) + 1] if ends else raw


def literal_leaves(raw: bytes) -> bool:
    """True when every leaf of the compat32 parse has its payload bytes as they are in `raw`
    (no transfer decoding can apply). A message whose top entity is neither multipart nor
    message/* is one leaf, described by the top header block alone (read there only: cheap);
    otherwise any encoding word anywhere in the message counts."""
    head = top_header_block(raw).lower()
    if b"multipart/" not in head and b"message/" not in head:
        # (its content type cannot be multipart/* or message/*: not written in its header)
        return not any(word in head for word in DECODED_ENCODINGS)
    return not _any_lower(raw, DECODED_ENCODINGS)


#: A large message is lower-cased a window at a time (no whole copy: peak memory, issue 15).
_WINDOW = 1 << 20


def _any_lower(raw: bytes, words: tuple[bytes, ...]) -> bool:
    """Whether any of the lower-case `words` is in `raw`, in any case; windows overlap by the
    longest word less one byte, so a word across two windows is found."""
    overlap = max(map(len, words)) - 1
    for start in range(0, max(len(raw), 1), _WINDOW):
        window = raw[start:start + _WINDOW + overlap].lower()
        if any(word in window for word in words):
            return True
    return False


def rules_out(raw: bytes, markers: tuple[bytes, ...]) -> bool:
    """True when no leaf payload of `raw` (nor `raw` itself) can contain any of `markers`."""
    return not any(marker in raw for marker in markers) and literal_leaves(raw)


__all__ = ["DECODED_ENCODINGS", "literal_leaves", "rules_out", "top_header_block"]
