"""Legacy detection of a large message reads a skeleton (`rawmime.skeleton`), not a full parse
(issue 15): the same answer as the full parse, at a fraction of the memory."""

from __future__ import annotations

import base64
import email.message
import os
import tracemalloc
from pathlib import Path

import pytest

from gateway import rawmime
from gateway.legacy import codec as legacy_codec
from gateway.legacy.apicrypt1_format import BEGIN_MARKER
from gateway.legacy.mimeutil import leaf_payload, param_text
from gateway.legacy.openpgp import BEGIN_MESSAGE
from gateway.rawmime import MessageView, parse_message, skeleton

ARMOR = (BEGIN_MARKER + "\r\n" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345\r\n" * 4 + "#ENDBINASCII1#\r\n").encode()
PGP = BEGIN_MESSAGE + b"\r\n\r\nhQEMA1234567890ABCDEF\r\n=abcd\r\n-----END PGP MESSAGE-----\r\n"


def _b64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def _pdf(size: int) -> bytes:
    return _b64(os.urandom(size * 3 // 4))


def _head(content_type: str) -> bytes:
    return (b"From: lab@example.test\r\nTo: doc@example.test\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: " + content_type.encode() + b"\r\n")


def _part(content_type: str, body: bytes, cte: str | None = None) -> bytes:
    head = b"Content-Type: " + content_type.encode() + b"\r\n"
    if cte:
        head += b"Content-Transfer-Encoding: " + cte.encode() + b"\r\n"
    return head + b"\r\n" + body


def _multipart(boundary: str, parts: list[bytes], subtype: str = "mixed", params: str = "") -> tuple[str, bytes]:
    b = boundary.encode()
    body = (b"preamble\r\n--" + b + b"\r\n" + (b"\r\n--" + b + b"\r\n").join(parts)
            + b"\r\n--" + b + b"--\r\nepilogue\r\n")
    return f'multipart/{subtype}; boundary="{boundary}"{params}', body


def _message(content_type: str, body: bytes) -> bytes:
    return _head(content_type) + b"\r\n" + body


def _full_answer(data: bytes) -> str | None:
    """What detection answered before: every codec asked with the full parse."""
    legacy_codec._discover()
    found = legacy_codec._first_detecting(parse_message(data))
    return found.name if found is not None else None


def _detected(data: bytes) -> str | None:
    found = legacy_codec.detect_codec(MessageView(data))
    return found.name if found is not None else None


def _armor_after_pdf(text_part: bytes) -> bytes:
    ctype, body = _multipart("b1", [_part("text/plain", b"Bonjour\r\n"),
                                    _part("application/pdf", _pdf(2_000_000), "base64"), text_part])
    return _message(ctype, body)


LARGE_CASES = {
    "apicrypt-after-pdf": (_armor_after_pdf(_part("text/plain", ARMOR)), "apicrypt1"),
    "apicrypt-base64-after-pdf": (_armor_after_pdf(_part("text/plain", _b64(ARMOR), "base64")), "apicrypt1"),
    "apicrypt-leading-blank-lines": (_armor_after_pdf(_part("text/plain", b"\r\n" * 9000 + ARMOR)), "apicrypt1"),
    "pgp-mime-encrypted": (_message(*_multipart(
        "pgp", [_part("application/pgp-encrypted", b"Version: 1\r\n"),
                _part("application/octet-stream", PGP + _pdf(2_000_000))],
        "encrypted", '; protocol="application/pgp-encrypted"')), "openpgp"),
    "pgp-inline-large-text": (_message("text/plain", PGP + b"x" * 70 + b"\r\n" * 1 + (b"y" * 70 + b"\r\n") * 30000),
                              "openpgp"),
    "marker-later-in-text": (_armor_after_pdf(_part("text/plain", b"Voir ci-dessous:\r\n" + ARMOR)), None),
    "marker-deep-in-large-text": (_message("text/plain", (b"z" * 70 + b"\r\n") * 30000 + ARMOR + PGP), None),
    "plain-large": (_armor_after_pdf(_part("text/plain", b"Compte rendu\r\n")), None),
}


def _nested(inner_text: bytes) -> bytes:
    inner_type, inner = _multipart("inner", [_part("text/html", b"<p>x</p>\r\n"),
                                             _part("application/pdf", _pdf(1_500_000), "base64"), inner_text],
                                   "alternative")
    ctype, body = _multipart("outer", [_part(inner_type, inner), _part("application/pdf", _pdf(600_000), "base64")])
    return _message(ctype, body)


LARGE_CASES["nested-armor"] = (_nested(_part("text/plain", ARMOR)), "apicrypt1")
LARGE_CASES["nested-plain"] = (_nested(_part("text/plain", b"rien\r\n")), None)
LARGE_CASES["nested-forwarded-message"] = (_message(*_multipart("fw", [
    _part("text/plain", b"fwd\r\n"),
    _part("message/rfc822", _armor_after_pdf(_part("text/plain", ARMOR)))])), "apicrypt1")


@pytest.mark.parametrize("name", sorted(LARGE_CASES))
def test_large_message_detection_is_the_full_parse_answer(name: str) -> None:
    data, expected = LARGE_CASES[name]
    assert len(data) > MessageView.KEEP_LIMIT
    assert _full_answer(data) == expected
    assert _detected(data) == expected
    shrunk = skeleton(data)  # these are all framed well: the skeleton is built, and small
    assert len(shrunk) < 64 * 1024


BROKEN = {
    "no-close-delimiter": lambda data: data[:data.rindex(b"--b1--")],
    "no-delimiter-at-all": lambda data: data.replace(b"--b1", b"--zz"),
    "no-boundary-parameter": lambda data: data.replace(b'; boundary="b1"', b"", 1),
    "bare-cr": lambda data: data.replace(b"Bonjour\r\n", b"Bonjour\rla\r\n", 1),
    "header-line-without-colon": lambda data: data.replace(b"Content-Type: application/pdf\r\n",
                                                           b"Content-Type: application/pdf\r\nnot a header\r\n", 1),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
@pytest.mark.parametrize("armored", [True, False])
def test_broken_framing_falls_back_to_the_full_parse(name: str, armored: bool) -> None:
    text = _part("text/plain", ARMOR if armored else b"Compte rendu\r\n")
    data = BROKEN[name](_armor_after_pdf(text))
    with pytest.raises(ValueError):
        skeleton(data)
    assert _detected(data) == _full_answer(data)


@pytest.mark.parametrize("armored", [True, False])
def test_boundary_reused_by_a_nested_multipart_gives_the_full_parse_answer(armored: bool) -> None:
    """The outer delimiter ends the inner part for the stdlib too: the skeleton splits there."""
    inner_type, inner = _multipart("same", [_part("application/pdf", _pdf(1_500_000), "base64"),
                                            _part("text/plain", ARMOR if armored else b"x\r\n")])
    data = _message(*_multipart("same", [_part(inner_type, inner), _part("text/plain", ARMOR)]))
    assert _detected(data) == _full_answer(data)


def _shape(message: email.message.Message) -> list[tuple[str, bool, str, bytes]]:
    """What a `detect` can read: each part's type, multipart or not, protocol, decoded start."""
    shape = []
    for part in message.walk():
        start = b"" if part.is_multipart() else leaf_payload(part).lstrip()[:64]
        shape.append((part.get_content_type(), part.is_multipart(), param_text(part, "protocol"), start))
    return shape


def _corpus_messages() -> list[Path]:
    root = Path(os.environ.get("MSGW_CORPUS", "/work/shared/samples"))
    return sorted(root.rglob("*.eml"))


@pytest.mark.parametrize("keep", [16, 200])
def test_skeleton_keeps_the_shape_of_every_sample_and_case(keep: int) -> None:
    """A small `keep` cuts even small messages: the tree and the leaves' first bytes stay."""
    samples = [path.read_bytes() for path in _corpus_messages()]
    if os.environ.get("CI"):
        assert samples, "the sample corpus has .eml messages"
    built = 0
    for data in samples + [data for data, _ in LARGE_CASES.values()]:
        try:
            shrunk = skeleton(data, keep)
        except ValueError:
            continue
        built += 1
        full = _shape(parse_message(data))
        cut = _shape(parse_message(shrunk))
        assert [s[:3] for s in cut] == [s[:3] for s in full]
        for (_, _, _, a), (_, _, _, b) in zip(cut, full, strict=True):
            assert b.startswith(a[:min(len(a), keep // 2)]) and a.startswith(b[:min(len(b), keep // 2)])
    assert built >= len(LARGE_CASES)


def test_detection_of_a_16_mb_message_peaks_under_half_of_it() -> None:
    ctype, body = _multipart("m", [_part("text/plain", b"Compte rendu\r\n"),
                                   _part("application/pdf", _pdf(16 * 1024 * 1024), "base64")])
    data = _message(ctype, body)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        found = legacy_codec.detect_codec(MessageView(data))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found is None
    assert peak < 0.5 * len(data), f"detection peaked at {peak / len(data):.2f}x the message"


@pytest.mark.parametrize("window", [3, 7, 4096])
def test_windowed_searches_give_the_same_skeleton(window: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 1 MiB windows (no single C call over a large message) do not change where it is cut."""
    cases = [data for data, _ in LARGE_CASES.values()][:4]
    whole = [skeleton(data, 64) for data in cases]
    broken = BROKEN["bare-cr"](_armor_after_pdf(_part("text/plain", ARMOR)))
    monkeypatch.setattr(rawmime, "_WINDOW", window)
    assert [skeleton(data, 64) for data in cases] == whole
    with pytest.raises(ValueError):
        skeleton(broken)
