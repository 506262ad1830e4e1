"""The classifier's content type read from the raw header fields (`rawmime.content_type_of`) is the
compat32 parse's `get_content_type()`, and `classify` answers as it did with the header parse
(issue 15): samples, generated and hostile header blocks (folding, duplicates, odd case, blanks,
8-bit, encoded words, comments, missing or invalid types)."""

from __future__ import annotations

import email
import email.policy
import os
import random
from pathlib import Path

import pytest

from gateway.errors import GatewayError
from gateway.rawmime import MessageView, content_type_of
from gateway.smime import mime

VALUES = [
    "text/plain", "TEXT/Plain; charset=utf-8", " multipart/signed; boundary=x", "multipart/signed",
    "application/pkcs7-mime; smime-type=enveloped-data", "Application/X-PKCS7-MIME", "application/octet-stream",
    "message/rfc822", "text", "a/b/c", "", ";", "  ;text/html", "text/html ;x=1", "text/html\t", "\ttext/html",
    "multipart/signed\r\n ; protocol=x", "multipart/\r\n signed", "=?utf-8?q?multipart/signed?=",
    "multipart/signed (comment)", "text/plain\x1c", "\x1ftext/plain", "image/png\x0b", "x/y\x0c; a",
    "application/pkcs7-mime\r\n\t; name=smime.p7m", "MESSAGE/RFC822", "multipart/mixed; boundary=\"a;b\"",
]


def _headers(value: str, *, extra: str = "", name: str = "Content-Type") -> bytes:
    text = f"From: a@b.test\r\n{extra}{name}: {value}\r\nSubject: x\r\n\r\nbody\r\n"
    return text.encode("utf-8", "surrogateescape")


def _cases() -> list[bytes]:
    cases = []
    for value in VALUES:
        cases.append(_headers(value))
        cases.append(_headers(value, extra="Content-Type: text/plain\r\n"))  # the first one counts
        cases.append(_headers("text/plain", extra=f"Content-Type: {value}\r\n"))
        cases.append(_headers(value, name="content-TYPE"))
        cases.append(_headers(value, name="Content-Type "))  # not a field the parser names so
        cases.append(_headers(value + " é"))  # 8-bit: the parser's Header object
    cases.append(b"From: a@b.test\r\nSubject: none\r\n\r\nbody\r\n")
    cases.append(b"Content-Type:multipart/signed;protocol=\"application/pkcs7-signature\"\r\n\r\nx")
    cases.append(b"\r\nContent-Type: application/pkcs7-mime\r\n\r\n")
    return cases


def _reference(fields: tuple[bytes, ...]) -> str:
    return email.message_from_bytes(b"".join(fields) + b"\r\n", policy=email.policy.compat32).get_content_type()


def _corpus() -> list[bytes]:
    root = Path(os.environ.get("MSGW_CORPUS", "/work/shared/samples"))
    return [p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.stat().st_size < 2_000_000]


def _classified(data: bytes, *, fast: bool) -> object:
    """`classify`'s answer (or the error it raised), with or without the fast path."""
    saved = mime._SMIME_CANDIDATES
    if not fast:
        mime._SMIME_CANDIDATES = _EVERYTHING  # type: ignore[assignment]
    try:
        return mime.classify(MessageView(data))
    except GatewayError as exc:
        return type(exc), str(exc)
    finally:
        mime._SMIME_CANDIDATES = saved


class _Everything(frozenset):  # type: ignore[type-arg]
    def __contains__(self, item: object) -> bool:
        return True


_EVERYTHING = _Everything()


def _check(data: bytes) -> None:
    try:
        split = mime.split_message(data)
    except GatewayError:
        return
    fast = content_type_of(split.fields)
    if fast is not None:
        assert fast == _reference(split.fields), split.fields
    assert _classified(data, fast=True) == _classified(data, fast=False)


@pytest.mark.parametrize("data", _cases())
def test_the_content_type_read_from_the_bytes_is_the_parsers(data: bytes) -> None:
    _check(data)


def test_samples() -> None:
    samples = _corpus()
    for data in samples:
        _check(data)
    kinds = {mime.classify(MessageView(d)).kind for d in samples if _safe(d)}
    assert "plain" in kinds and ({"pkcs7-mime", "multipart-signed"} & kinds)  # the samples are meaningful


def _safe(data: bytes) -> bool:
    try:
        mime.classify(MessageView(data))
    except GatewayError:
        return False
    return True


def test_random_header_blocks() -> None:
    rng = random.Random(15)
    pieces = [b"Content-Type", b"content-type", b":", b" ", b"\t", b"\r\n", b"\r\n ", b"/", b";", b"multipart",
              b"signed", b"text", b"plain", b"application/pkcs7-mime", b"\xe9", b"=?utf-8?q?x?=", b"x", b"\x1c",
              b"From: a@b\r\n", b"message/rfc822", b"octet-stream", b"name=a.p7m"]
    for _ in range(3000):
        head = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 14)))
        _check(b"Content-Type: " + head + b"\r\n\r\nbody\r\n")
        _check(head + b"\r\n\r\nbody\r\n")


def test_nothing_but_plain_is_answered_without_the_parse() -> None:
    assert content_type_of((b"Content-Type: text/plain \xe9\r\n",)) is None
    assert content_type_of(()) == "text/plain" and content_type_of((), "message/rfc822") == "message/rfc822"
    assert mime.classify(MessageView(_headers("text/plain"))).kind == "plain"
