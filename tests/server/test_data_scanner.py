"""The pure part of the bulk DATA read (`gateway.server.dataread.DataScanner`): however the bytes
are cut into reads — one byte at a time, or two reads cut at every position — the outcome, the
message and the bytes left for the next command are the same. Complements the socket tests in
test_data_read.py (which compare with aiosmtpd's own loop)."""

from __future__ import annotations

import pytest

from gateway.server.dataread import DataRead, DataScanner, Outcome, has_bare_newline

LIMIT = 300
LINE = 1001


def _feed(pieces: list[bytes], limit: int | None = LIMIT) -> tuple[DataRead, bytes]:
    scanner = DataScanner(limit, LINE)
    for i, piece in enumerate(pieces):
        if scanner.feed(piece):
            result, rest = scanner.take()
            return result, rest + b"".join(pieces[i + 1:])
    raise AssertionError("no terminator found")


CASES = {
    "empty": (b".\r\nQUIT\r\n", Outcome.OK, b"", False),
    "one empty line": (b"\r\n.\r\n", Outcome.OK, b"\r\n", False),
    "stuffed": (b"..a\r\nb\r\n..\r\n.\r\nNOOP\r\n", Outcome.OK, b".a\r\nb\r\n.\r\n", False),
    "bare LF dot": (b"a\n.\nb\r\n.\r\n", Outcome.OK, b"a\n.\nb\r\n", True),
    "bare CR dot": (b"a\r.\rb\r\n.\r\n", Outcome.OK, b"a\r.\rb\r\n", True),
    "LF dot CRLF": (b"a\n.\r\nb\r\n.\r\n", Outcome.OK, b"a\n.\r\nb\r\n", True),
    "at limit": (b"x" * (LIMIT - 2) + b"\r\n.\r\n", Outcome.OK, b"x" * (LIMIT - 2) + b"\r\n", False),
    "over limit": (b"x" * (LIMIT - 1) + b"\r\n.\r\nRSET\r\n", Outcome.TOO_MUCH, None, False),
    "far over": ((b"y" * 60 + b"\r\n") * 200 + b".\r\nRSET\r\n", Outcome.TOO_MUCH, None, False),
    "far over, bare LF": ((b"y" * 60 + b"\n") * 200 + b"\r\n.\r\n", Outcome.TOO_LONG, None, True),
    "long line": (b"a\r\n" + b"z" * 1000 + b"\r\n.\r\n", Outcome.TOO_LONG, None, False),
    "very long line": (b".a\r\n." + b"z" * 3000 + b"\r\n..b\r\n.\r\n", Outcome.TOO_LONG, None, False),
    "very long line, bare LF": (b"a\r\n" + b"z" * 1500 + b"\n" + b"z" * 1500 + b"\r\n.\r\n", Outcome.TOO_LONG, None,
                                True),
    # aiosmtpd refuses a line longer than its reader's limit as it comes: before counting it
    "long line at the limit": (b"a\r\n" * 100 + b"z" * 1500 + b"\r\n.\r\n", Outcome.TOO_LONG, None, False),
    "long line past the limit": (b"a\r\n" * 101 + b"z" * 1500 + b"\r\n.\r\n", Outcome.TOO_MUCH, None, False),
}
LIMITS = {"long line": 2000, "very long line": 5000, "very long line, bare LF": 5000}


@pytest.mark.parametrize("name", list(CASES))
def test_any_cut_into_reads_gives_the_same_result(name: str) -> None:
    data, outcome, content, bare = CASES[name]
    limit = LIMITS.get(name, LIMIT)
    whole, rest = _feed([data], limit)
    assert (whole.outcome, whole.content, whole.bare_newline) == (outcome, content, bare)
    assert rest == data[data.index(b".\r\n", 0 if data.startswith(b".\r\n") else data.index(b"\r\n.\r\n") + 2) + 3:]
    for cut in range(1, len(data)):
        assert _feed([data[:cut], data[cut:]], limit) == (whole, rest), cut
    if len(data) < 400:
        assert _feed([data[i:i + 1] for i in range(len(data))], limit) == (whole, rest)


def test_has_bare_newline() -> None:
    assert not has_bare_newline(b"")
    assert not has_bare_newline(b"a\r\nb\r\n")
    for bad in (b"a\nb", b"a\rb", b"a\r\r\n", b"a\r\n\n", b"\n\r", b"\r"):
        assert has_bare_newline(bad), bad
        assert has_bare_newline(bytearray(bad)), bad
