"""The `#BINASCII1#` armor: known answers from the spec text and every malformed case, located."""

from __future__ import annotations

import os

import pytest

from gateway.errors import MalformedInput
from gateway.legacy.apicrypt1_format import armor, dearmor, is_armor
from gateway.legacy.errors import ArmorError, ChecksumMismatch

# --- an independent, straightforward re-implementation written from the spec text -----------
SPEC_ALPHABET = "0123456789ABCDEFGHIJKLMNPQRSTUVXYZabcdefhijklmpqrstuvwxyz$*+-()!"


def spec_armor(data: bytes) -> str:
    encoded = ""
    for i in range(0, len(data), 3):
        chunk = data[i:i + 3] + b"\x00\x00"
        t = chunk[0] << 16 | chunk[1] << 8 | chunk[2]
        for shift in (0, 6, 12, 18):  # least significant 6 bits first
            encoded += SPEC_ALPHABET[(t >> shift) & 63]
    check = 0xFFFFFFFF
    for byte in data:
        check ^= byte
    text = "%08X" % len(data) + encoded  # noqa: UP031 - literal spec wording: 8 upper-case hex digits
    lines = [text[:60]] + [text[i:i + 60] for i in range(60, len(text), 60)]
    lines[-1] += "%08X" % check  # noqa: UP031
    return "#BINASCII1#\n" + "\n".join(lines) + "\n#ENDBINASCII1#\n"


def test_known_answer_by_hand() -> None:
    # "ABC": t = 0x414243 -> 6-bit digits 3, 9, 20, 16 -> "39KG"; checksum FF ^ 41 ^ 42 ^ 43 = BF
    assert armor(b"ABC") == "#BINASCII1#\n0000000339KGFFFFFFBF\n#ENDBINASCII1#\n"
    assert dearmor("#BINASCII1#\n0000000339KGFFFFFFBF\n#ENDBINASCII1#\n") == b"ABC"
    # a final single byte is padded with zeros in the low positions: 0x41 -> t = 0x410000 -> 0, 0, 16, 16
    assert armor(b"A") == "#BINASCII1#\n0000000100GGFFFFFFBE\n#ENDBINASCII1#\n"


@pytest.mark.parametrize("size", [0, 1, 2, 3, 38, 39, 40, 41, 42, 84, 85, 86, 87, 500, 4099])
def test_matches_independent_implementation(size: int) -> None:
    data = bytes((i * 37 + size) % 256 for i in range(size))
    assert armor(data) == spec_armor(data)
    assert dearmor(spec_armor(data)) == data


def test_line_layout() -> None:
    text = armor(os.urandom(200))
    lines = text.split("\n")
    assert lines[0] == "#BINASCII1#" and lines[-2] == "#ENDBINASCII1#" and lines[-1] == ""
    assert len(lines[1]) == 60  # 8 hex digits + 52 encoded characters
    assert all(len(line) == 60 for line in lines[2:-3])
    assert set("".join(lines[1:-2])[8:-8]) <= set(SPEC_ALPHABET)
    for forbidden in "OWgno":
        assert forbidden not in SPEC_ALPHABET


def test_crlf_and_surrounding_blank_lines_accepted() -> None:
    data = os.urandom(300)
    text = "\r\n\r\n" + armor(data).replace("\n", "\r\n") + "\r\n  \r\n"
    assert is_armor(text)
    assert dearmor(text.encode("ascii")) == data


DATA = bytes(range(256)) * 2  # 512 bytes: 683 encoded chars, 12 data lines


def lines() -> list[str]:
    return armor(DATA).split("\n")


def located(text: str, kind: str) -> ArmorError:
    with pytest.raises(ArmorError) as info:
        dearmor(text)
    assert info.value.kind == kind, str(info.value)
    assert isinstance(info.value, MalformedInput)
    return info.value


def test_truncated_without_end_marker() -> None:
    error = located("\n".join(lines()[:6]), "end-marker")
    assert error.line == 6 and "armor line 6" in str(error) and "truncated" in str(error)


def test_truncated_lines_removed_but_end_marker_kept() -> None:
    cut = lines()
    del cut[5:7]
    error = located("\n".join(cut), "length")
    assert error.line == len(cut) - 1  # the end-marker line
    assert "says 512 bytes (684 encoded characters)" in str(error) and "found 564" in str(error)


def test_bad_length_prefix_not_hex() -> None:
    bad = lines()
    bad[1] = "00000G00" + bad[1][8:]
    error = located("\n".join(bad), "length-prefix")
    assert (error.line, error.column) == (2, 1)


def test_bad_length_prefix_wrong_value() -> None:
    bad = lines()
    bad[1] = "%08X" % 600 + bad[1][8:]  # noqa: UP031
    error = located("\n".join(bad), "length")
    assert "says 600 bytes (800 encoded characters)" in str(error) and "found 684" in str(error)


def test_bad_alphabet_character() -> None:
    bad = lines()
    bad[3] = bad[3][:9] + "O" + bad[3][10:]
    error = located("\n".join(bad), "alphabet")
    assert (error.line, error.column) == (4, 10)
    assert "'O'" in str(error) and "armor line 4, column 10" in str(error)


def test_non_ascii_byte() -> None:
    raw = armor(DATA).encode("ascii")
    index = raw.index(b"\n", raw.index(b"\n") + 1) + 5  # line 3
    error = located(raw[:index] + b"\xe9" + raw[index + 1:], "alphabet")  # type: ignore[arg-type]
    assert error.line == 3


def test_bad_checksum_digits() -> None:
    bad = lines()
    last = bad[-3]
    bad[-3] = last[:-1] + ("0" if last[-1] != "0" else "1")
    with pytest.raises(ChecksumMismatch) as info:
        dearmor("\n".join(bad))
    assert info.value.kind == "checksum"
    assert (info.value.line, info.value.column) == (len(bad) - 2, len(last) - 7)
    assert "armor says" in str(info.value) and "data gives FFFFFF" in str(info.value)


def test_altered_data_fails_checksum() -> None:
    bad = lines()
    line = bad[4]
    bad[4] = ("1" if line[0] != "1" else "2") + line[1:]  # first char of a group: changes one byte only
    with pytest.raises(ChecksumMismatch):
        dearmor("\n".join(bad))


def test_checksum_field_not_hex() -> None:
    bad = lines()
    bad[-3] = bad[-3][:-8] + "FFFFFFZZ"
    located("\n".join(bad), "checksum-field")


def test_missing_end_marker() -> None:
    error = located("\n".join(lines()[:-2]), "end-marker")
    assert error.line == len(lines()) - 2


def test_missing_begin_marker() -> None:
    error = located("\n".join(lines()[1:]), "begin-marker")
    assert error.line == 1


def test_wrong_line_length() -> None:
    bad = lines()
    bad[3], bad[4] = bad[3][:-1], bad[3][-1] + bad[4]
    error = located("\n".join(bad), "line-length")
    assert error.line == 4 and "expected 60 characters, found 59" in str(error)


def test_wrong_first_line_length() -> None:
    bad = lines()
    bad[1], bad[2] = bad[1] + bad[2][:4], bad[2][4:]
    error = located("\n".join(bad), "line-length")
    assert error.line == 2 and "found 64" in str(error)


def test_data_after_end_marker() -> None:
    error = located(armor(DATA) + "hello\n", "trailing-data")
    assert error.line == len(lines())


def test_non_zero_padding() -> None:
    good = armor(b"A")  # 00GG: the first two characters carry the padding bits
    error = located(good.replace("00GG", "10GG"), "padding")
    assert error.line == 2


def test_empty_armor() -> None:
    located("#BINASCII1#\n#ENDBINASCII1#\n", "truncated")
