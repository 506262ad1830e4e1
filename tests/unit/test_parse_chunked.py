"""`rawmime.parse_message` feeds the stdlib parser 64 KiB at a time (issue 15, the 50 MB target):
`email.message_from_bytes` decoded the whole message to a str and copied it into a StringIO
(4 bytes a character) first, 7.7x a large message at its peak, on the event loop in the legacy
detection. The parse must be the stdlib's, exactly: the same tree, payloads, defects and
re-serialisation, for messages whose lines, CRLFs and boundaries fall across the 64 KiB pieces,
with 8-bit bytes, bare CR/LF and broken structure; and its peak stays under 3.5x (tracemalloc,
a bound on memory)."""

from __future__ import annotations

import email
import email.policy
import tracemalloc

import pytest

from gateway import rawmime

CHUNK = rawmime._PARSE_CHUNK


def _shape(msg: email.message.Message) -> list[tuple[object, ...]]:
    return [(p.get_content_type(), p.get_params(), p.is_multipart(),
             None if p.is_multipart() else p.get_payload(decode=True), [type(d).__name__ for d in p.defects],
             p.preamble, p.epilogue, list(p.items())) for p in msg.walk()]


def _multipart(filler: int) -> bytes:
    head = (b"From: a@x.test\r\nTo: b@y.test\r\nSubject: =?utf-8?q?r=C3=A9sultat?=\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="BB"\r\n\r\npreamble\r\n--BB\r\n'
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n")
    text = b"x" * (CHUNK - len(head) - filler) + "é\r\n".encode() + b"line\r\n" * 3
    return (head + text + b"--BB\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + b"QUJD" * 19 + b"\r\n" + b"--BB--\r\nepilogue\r\n")


CASES = {
    "crlf-split": _multipart(1),  # the CR ends one piece, the LF starts the next
    "boundary-split": _multipart(2 + 6),
    "no-split": _multipart(CHUNK // 2),
    "bare-lf-cr": b"Subject: x\nX-A: 1\r\r\nbody\rline\n" * 1 + b"z" * (CHUNK + 5) + b"\r.\n",
    "broken": b"Content-Type: multipart/mixed; boundary=Q\r\n\r\n--Q\r\nno end" + b"y" * (2 * CHUNK),
    "no-body": b"Subject: only a header",
    "empty": b"",
    "nul-and-8bit": b"Subject: \xff\x00\r\n\r\n" + bytes(range(256)) * 600,
}


@pytest.mark.parametrize("name", list(CASES))
def test_parse_is_the_stdlib_s(name: str) -> None:
    data = CASES[name]
    ours = rawmime.parse_message(data)
    theirs = email.message_from_bytes(data, policy=email.policy.compat32)
    assert _shape(ours) == _shape(theirs)
    assert ours.as_bytes() == theirs.as_bytes()


def test_parse_of_8_mb_peaks_under_three_and_a_half_copies() -> None:
    line = b"HbA1c 6,1 % - resultat du laboratoire, valeurs de reference 4,0 - 6,0\r\n"
    data = b"From: a@x.test\r\nContent-Type: text/plain\r\n\r\n" + line * (8_000_000 // len(line))
    tracemalloc.start()
    try:
        msg = rawmime.parse_message(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(msg.get_payload()) > 7_000_000
    assert peak < 3.5 * len(data), f"peak {peak / len(data):.2f}x the message"
