"""Apicrypt v1 wire format: every constant, the key-file header layout and the text armor.

This is the single place holding the format's constants (see ../shared/specs/apicrypt-v1.md),
so a correction touches one module. The format is implemented from a PUBLIC REVERSE-ENGINEERING
DESCRIPTION of the vendor's 2005 Linux encoder; it is NOT certified against the vendor's
software. It is WEAK cryptography: XOR with reusable key material, a checksum that is not a MAC
(only its low byte varies), and no authentication of anything.

Pure functions only: no file or network I/O here (the key store and the codec do that).
"""

from __future__ import annotations

import base64
import bisect
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

from gateway.legacy.errors import ArmorError, ChecksumMismatch, MalformedPayload
from gateway.rawmime import lstrip_start

# --- armor -------------------------------------------------------------------------------
BEGIN_MARKER = "#BINASCII1#"
END_MARKER = "#ENDBINASCII1#"
ALPHABET = "0123456789ABCDEFGHIJKLMNPQRSTUVXYZabcdefhijklmpqrstuvwxyz$*+-()!"
LENGTH_DIGITS = 8  # upper-case hex length of the data, at the start of the first line
CHECKSUM_DIGITS = 8  # upper-case hex checksum, right after the last encoded character
CHECKSUM_INIT = 0xFFFFFFFF
FIRST_LINE_CHARS = 52  # encoded characters on the first line (after the length prefix)
LINE_CHARS = 60  # encoded characters on each following line
GROUP_BYTES = 3
GROUP_CHARS = 4
ARMOR_NEWLINE = "\n"

# --- key files ---------------------------------------------------------------------------
HEADER_SIZE = 224
KEY_VERSION = 1
DEFAULT_N2 = 4
DEFAULT_DATA2 = b"1000"
USER_FIELD_SIZE = 40
DATA2_SIZE = 32
RESERVED_SIZE = 124
OFF_VERSION, OFF_YEAR, OFF_N2, OFF_DATA2 = 0, 4, 8, 12
OFF_USER_LEN, OFF_USER = 44, 48
OFF_INDEX_MAX, OFF_INDEX_CURRENT, OFF_NB_CRYPT, OFF_RESERVED = 88, 92, 96, 100
U32 = struct.Struct(">I")  # all header integers: unsigned 32-bit big-endian
MASTER_NAME = "Master"  # file Master.<YY>, also the user field of the master header we generate
YEAR_BASE = 1900  # file suffix <YY> = year - 1900 (2026 -> 126)
USER_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,39}")  # also keeps names safe as file names

# --- payload -----------------------------------------------------------------------------
DEST_BEGIN = b"#DESTBEGIN#"
DEST_END = b"#DESTEND#"
DEST_SEPARATOR = b","
DEST_TERMINATOR = b",,"
DEFAULT_TEXT_CHARSET = "iso-8859-1"
UTF8_BOM = b"\xef\xbb\xbf"

# --- the original header a bridge writes at the top of the text (ours, not the vendor's) ---
# The armor carries only text and file bytes; the spec has the bridge name the original sender
# "in the decrypted text header that the bridge adds". Ours also carries the real Subject, the
# real attachment names (the MIME parts outside the armor get neutral ones) and the gateway's
# statements (S/MIME verification verdict), between these two lines, then an empty line.
TEXT_HEADER_BEGIN = "---- En-tete du message d'origine / Original message header (msgw) ----"
TEXT_HEADER_END = "---- Fin de l'en-tete / End of header ----"
TEXT_HEADER_LABELS = (("from", "De / From"), ("sender", "Emetteur / Sender"), ("to", "A / To"), ("cc", "Cc"),
                      ("date", "Date"), ("subject", "Objet / Subject"))
ATTACHMENT_LABEL = "Piece jointe / Attachment"
ATTACHMENT_SEPARATOR = " = "  # "<neutral name outside> = <real name>"
STATEMENT_PREFIX = "x-msgw-"  # the gateway's own header fields, copied as they are

assert len(ALPHABET) == 64 and len(set(ALPHABET)) == 64  # noqa: S101 - import-time self check
assert OFF_RESERVED + RESERVED_SIZE == HEADER_SIZE  # noqa: S101
_STANDARD = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_TO_APICRYPT = bytes.maketrans(_STANDARD, ALPHABET.encode("ascii"))
_TO_STANDARD = bytes.maketrans(ALPHABET.encode("ascii"), _STANDARD)
_NOT_IN_ALPHABET = re.compile("[^" + re.escape(ALPHABET) + "]")
_HEX = re.compile(r"[0-9A-F]{8}")


def key_file_name(user: str, year: int) -> str:
    """`<user>.<YY>` / `Master.<YY>` with YY = year - 1900 (e.g. `Master.126` for 2026)."""
    return f"{user}.{year - YEAR_BASE}"


def valid_user(user: str) -> bool:
    return bool(USER_PATTERN.fullmatch(user))


@dataclass(frozen=True)
class KeyHeader:
    """A 224-byte key-file header; `raw` is kept so opaque fields are preserved exactly."""

    raw: bytes

    def _u32(self, offset: int) -> int:
        return U32.unpack_from(self.raw, offset)[0]

    @property
    def version(self) -> int:
        return self._u32(OFF_VERSION)

    @property
    def year(self) -> int:
        return self._u32(OFF_YEAR)

    @property
    def user_len(self) -> int:
        return self._u32(OFF_USER_LEN)

    @property
    def user(self) -> str:
        length = min(self.user_len, USER_FIELD_SIZE)
        return self.raw[OFF_USER:OFF_USER + length].decode("ascii", "replace")

    @property
    def index_max(self) -> int:
        return self._u32(OFF_INDEX_MAX)

    @property
    def index_current(self) -> int:
        return self._u32(OFF_INDEX_CURRENT)

    @property
    def nb_crypt(self) -> int:
        return self._u32(OFF_NB_CRYPT)

    def problems(self) -> list[str]:
        """What makes this header unusable (empty when it is fine)."""
        found = []
        if self.version != KEY_VERSION:
            found.append(f"version {self.version}, expected {KEY_VERSION}")
        if self.user_len > USER_FIELD_SIZE:
            found.append(f"user name length {self.user_len} > {USER_FIELD_SIZE}")
        if self.index_max == 0:
            found.append("indexMax is 0 (no key material)")
        elif self.index_current >= self.index_max:
            found.append(f"indexCurrent {self.index_current} not below indexMax {self.index_max}")
        return found

    def replace(self, *, index_current: int | None = None, nb_crypt: int | None = None) -> KeyHeader:
        """A copy with the given fields changed and every other byte preserved."""
        raw = bytearray(self.raw)
        if index_current is not None:
            U32.pack_into(raw, OFF_INDEX_CURRENT, index_current)
        if nb_crypt is not None:
            U32.pack_into(raw, OFF_NB_CRYPT, nb_crypt & 0xFFFFFFFF)
        return KeyHeader(bytes(raw))

    @classmethod
    def parse(cls, data: bytes, what: str) -> KeyHeader:
        if len(data) < HEADER_SIZE:
            raise MalformedPayload(f"{what}: {len(data)} bytes, shorter than the {HEADER_SIZE}-byte key header")
        return cls(bytes(data[:HEADER_SIZE]))

    @classmethod
    def build(cls, user: str, year: int, index_max: int, *, index_current: int = 0, nb_crypt: int = 0,
              n2: int = DEFAULT_N2, data2: bytes = DEFAULT_DATA2) -> KeyHeader:
        name = user.encode("ascii")
        if len(name) > USER_FIELD_SIZE or len(data2) > DATA2_SIZE:
            raise ValueError("user name or data2 too long for the key header")
        raw = bytearray(HEADER_SIZE)
        for offset, value in ((OFF_VERSION, KEY_VERSION), (OFF_YEAR, year), (OFF_N2, n2),
                              (OFF_USER_LEN, len(name)), (OFF_INDEX_MAX, index_max),
                              (OFF_INDEX_CURRENT, index_current), (OFF_NB_CRYPT, nb_crypt)):
            U32.pack_into(raw, offset, value)
        raw[OFF_DATA2:OFF_DATA2 + len(data2)] = data2
        raw[OFF_USER:OFF_USER + len(name)] = name
        return cls(bytes(raw))


def keystream(key: bytes, start: int, length: int) -> bytes:
    """`length` key bytes from `start`, wrapping to offset 0 after the end of `key`."""
    if not key:
        raise ValueError("empty key material")
    out = bytearray()
    position = start % len(key)
    while len(out) < length:
        chunk = key[position:position + (length - len(out))]
        out += chunk
        position = 0
    return bytes(out)


def xor(data: bytes, stream: bytes) -> bytes:
    if len(data) != len(stream):
        raise ValueError("xor of unequal lengths")
    if not data:
        return b""
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(len(data), "big")


def checksum(data: bytes) -> int:
    """0xFFFFFFFF with every byte XORed into it (only the low byte ever changes)."""
    folded = int.from_bytes(data, "little")
    width = max(len(data), 1)
    while width > 1:  # fold halves together: XOR of all bytes, at C speed
        half = (width + 1) // 2
        folded = (folded & ((1 << (8 * half)) - 1)) ^ (folded >> (8 * half))
        width = half
    return CHECKSUM_INIT ^ folded


def encode_chars(data: bytes) -> str:
    """3 bytes -> 4 characters, least significant 6 bits first; a short last group is zero-padded.

    Equivalent to standard base64 with each 4-character group reversed and another alphabet,
    which lets the C base64 codec do the work.
    """
    padded = data + b"\0" * (-len(data) % GROUP_BYTES)
    std = base64.b64encode(padded).translate(_TO_APICRYPT)
    return _reverse_groups(std).decode("ascii")


def _decode_chars(encoded: str) -> bytes:
    std = _reverse_groups(encoded.encode("ascii")).translate(_TO_STANDARD)
    return base64.b64decode(std, validate=True)


def _reverse_groups(chars: bytes) -> bytes:
    out = bytearray(len(chars))
    for i in range(GROUP_CHARS):
        out[i::GROUP_CHARS] = chars[GROUP_CHARS - 1 - i::GROUP_CHARS]
    return bytes(out)


def encoded_length(length: int) -> int:
    return -(-length // GROUP_BYTES) * GROUP_CHARS


def armor(data: bytes) -> str:
    """The `#BINASCII1#` text armor of `data`, LF line ends, ending with a newline."""
    if len(data) > 0xFFFFFFFF:
        raise ValueError("data too long for the 8-digit length prefix")
    chars = encode_chars(data)
    lines = [f"{len(data):08X}" + chars[:FIRST_LINE_CHARS]]
    lines += [chars[i:i + LINE_CHARS] for i in range(FIRST_LINE_CHARS, len(chars), LINE_CHARS)]
    lines[-1] += f"{checksum(data):08X}"
    return ARMOR_NEWLINE.join([BEGIN_MARKER, *lines, END_MARKER]) + ARMOR_NEWLINE


def expected_line_lengths(length: int) -> list[int]:
    """Characters on each armor data line for `length` bytes (prefix and checksum included)."""
    total = encoded_length(length)
    lines = [LENGTH_DIGITS + min(FIRST_LINE_CHARS, total)]
    remaining = total - min(FIRST_LINE_CHARS, total)
    while remaining > 0:
        lines.append(min(LINE_CHARS, remaining))
        remaining -= lines[-1]
    lines[-1] += CHECKSUM_DIGITS
    return lines


def _layout(length: int) -> tuple[int, Callable[[int], int]]:
    """Number of data lines for `length` bytes and a function giving the length of line i (0-based)."""
    total = encoded_length(length)
    count = 1 + -(-max(total - FIRST_LINE_CHARS, 0) // LINE_CHARS)

    def line_length(i: int) -> int:
        if i == 0:
            size = LENGTH_DIGITS + min(FIRST_LINE_CHARS, total)
        else:
            size = min(LINE_CHARS, total - FIRST_LINE_CHARS - LINE_CHARS * (i - 1))
        return size + (CHECKSUM_DIGITS if i == count - 1 else 0)

    return count, line_length


def is_armor(text: str | bytes) -> bool:
    """Detection rule of the spec: after trimming, starts with the begin and ends with the end marker."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    stripped = text.strip()
    return stripped.startswith(BEGIN_MARKER) and stripped.endswith(END_MARKER)


def starts_armor(text: str | bytes) -> bool:
    """Lenient form of `is_armor`: starts with the begin marker (a truncated armor still counts).

    Used so that a damaged legacy message is reported precisely instead of being taken for plain text.
    """
    if isinstance(text, bytes):  # only the bytes past the blanks: a large message is not copied
        start = lstrip_start(text, latin1=True)
        return text[start:start + len(BEGIN_MARKER)].decode("latin-1") == BEGIN_MARKER
    return text.lstrip().startswith(BEGIN_MARKER)


def dearmor(text: str | bytes) -> bytes:
    """Decode one armor, checking markers, layout, alphabet, padding, length and checksum.

    Raises ArmorError (ChecksumMismatch for a checksum that does not match) naming the armor
    line (the begin marker is line 1) and column. Surrounding blank lines are allowed; CR
    before LF is ignored.
    """
    if isinstance(text, bytes):
        high = re.search(rb"[\x80-\xff]", text)
        if high:
            line = text.count(b"\n", 0, high.start()) + 1
            raise ArmorError("alphabet", f"non-ASCII byte 0x{high.group()[0]:02X} in the armor", line=line)
        text = text.decode("ascii")
    all_lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    first = 0
    while first < len(all_lines) and not all_lines[first].strip():
        first += 1
    lines = all_lines[first:]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines or lines[0] != BEGIN_MARKER:
        raise ArmorError("begin-marker", f"expected the begin marker {BEGIN_MARKER!r}", line=1)
    try:
        end = lines.index(END_MARKER, 1)
    except ValueError:
        raise ArmorError("end-marker", f"end marker {END_MARKER!r} missing (armor truncated?) after the last line",
                         line=len(lines)) from None
    if end != len(lines) - 1:
        raise ArmorError("trailing-data", "data after the end marker", line=end + 2)
    data_lines = lines[1:end]
    if not data_lines:
        raise ArmorError("truncated", "no data between the markers", line=2)
    head = data_lines[0]
    prefix = head[:LENGTH_DIGITS]
    if not _HEX.fullmatch(prefix):
        raise ArmorError("length-prefix", f"length prefix must be {LENGTH_DIGITS} upper-case hex digits",
                         line=2, column=1)
    length = int(prefix, 16)
    count, line_length = _layout(length)
    for number, data_line in enumerate(data_lines[:-1]):
        if number < count - 1 and len(data_line) != line_length(number):
            raise ArmorError("line-length", f"expected {line_length(number)} characters, found {len(data_line)}",
                             line=number + 2)
    found = sum(len(line) for line in data_lines)
    need = encoded_length(length)
    if len(data_lines) != count or found != LENGTH_DIGITS + need + CHECKSUM_DIGITS:
        got = found - LENGTH_DIGITS - CHECKSUM_DIGITS
        raise ArmorError("length", f"length prefix says {length} bytes ({need} encoded characters), "
                         f"found {max(got, 0)} encoded characters on {len(data_lines)} lines "
                         f"(expected {count} lines)", line=end + 1)
    stream = "".join(data_lines)
    starts = [0]
    for data_line in data_lines:
        starts.append(starts[-1] + len(data_line))

    def locate(offset: int) -> tuple[int, int]:
        """(armor line, column) of character `offset` of the joined data lines."""
        index = bisect.bisect_right(starts, offset) - 1
        return index + 2, offset - starts[index] + 1

    encoded = stream[LENGTH_DIGITS:len(stream) - CHECKSUM_DIGITS]
    bad = _NOT_IN_ALPHABET.search(encoded)
    if bad:
        line, column = locate(LENGTH_DIGITS + bad.start())
        raise ArmorError("alphabet", f"character {bad.group()!r} is not in the armor alphabet", line=line,
                         column=column)
    out = _decode_chars(encoded)
    if any(out[length:]):
        line, column = locate(LENGTH_DIGITS + len(encoded) - GROUP_CHARS)
        raise ArmorError("padding", "non-zero padding bits in the final group", line=line, column=column)
    data = bytes(out[:length])
    field = stream[-CHECKSUM_DIGITS:]
    line, column = locate(len(stream) - CHECKSUM_DIGITS)
    if not _HEX.fullmatch(field):
        raise ArmorError("checksum-field", f"checksum must be {CHECKSUM_DIGITS} upper-case hex digits",
                         line=line, column=column)
    actual = checksum(data)
    if int(field, 16) != actual:
        raise ChecksumMismatch("checksum", f"checksum mismatch: armor says {field}, data gives {actual:08X}",
                               line=line, column=column)
    return data
