"""A large message's S/MIME encryption (issue 15, the 50 MB target): `engine.encrypt_entity`
encrypts the entity a piece at a time and base64-encodes the DER as it comes
(`cms_envelope.encrypt_content_pieces`), instead of building the whole ciphertext, then the
whole DER, then the message. The bytes must not change: the message is compared with
`pkcs7_mime` of the asn1crypto oracle's EnvelopedData (same CEK and IV, encrypted keys read
back and unwrapped with the real keys) across the piece and base64-block boundaries; and the
peak memory of encrypting 8 MB stays under what the whole-copy path needed (a bound on memory,
measured with tracemalloc, not on time)."""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Iterator

import pytest

from gateway.smime import engine
from gateway.smime.cms_envelope import PIECE, encrypt_content, encrypt_content_pieces, encrypt_content_sized
from gateway.smime.engine import encrypt_entity
from gateway.smime.mime import pkcs7_mime
from tests.smime.test_cms_template import Draws, _oracle_for

OUTER = (b"From: a@x.test\r\n", b"To: b@y.test\r\n", b"Subject: neutral\r\n")
BLOCK = engine._B64_BLOCK
#: Around the 1 MiB encryption pieces and the 57 KiB base64 blocks (the DER head before the
#: ciphertext shifts the blocks: both sides of several boundaries are covered by the spread).
SIZES = [0, 1, 15, 16, 17, BLOCK - 300, BLOCK, PIECE - 16, PIECE - 1, PIECE, PIECE + 1, PIECE + 16,
         2 * PIECE + 5 * BLOCK + 7]


@pytest.mark.parametrize("cipher", ["aes256-cbc", "aes256-gcm"])
@pytest.mark.parametrize("size", SIZES)
def test_streamed_message_is_pkcs7_mime_of_the_oracle_s(pki, cipher, size) -> None:
    content = os.urandom(size)
    certs, keys = [pki["person_encrypt"].cert, pki["org_encrypt"].cert], [pki["person_encrypt"].key,
                                                                          pki["org_encrypt"].key]
    options = {"cipher": cipher, "key_transport": "pkcs1v15", "recipient_id": "issuer-serial"}
    draws = Draws(b"large-%d" % size)
    pieces = list(encrypt_content_pieces(content, certs, random=draws, **options))  # type: ignore[arg-type]
    der = b"".join(pieces)
    oracle = _oracle_for(der, content, certs, keys, draws, **options)
    assert der == oracle
    assert len(pieces) >= 2 + size // PIECE  # really in pieces, not one whole ciphertext
    smime_type = "authEnveloped-data" if cipher == "aes256-gcm" else "enveloped-data"
    streamed = engine.pkcs7_mime_head(OUTER, smime_type) + b"".join(engine._b64_lines(iter(pieces)))
    assert streamed == pkcs7_mime(OUTER, oracle, smime_type)
    # encrypt_entity's path: the same draws, the message written into one buffer of a size known
    # before the first piece (from the content length alone)
    draws = Draws(b"large-%d" % size)
    der_size, sized = encrypt_content_sized(content, certs, random=draws, **options)  # type: ignore[arg-type]
    seen: list[bytes] = []
    message = engine._b64_message(engine.pkcs7_mime_head(OUTER, smime_type), _recorded(sized, seen), der_size)
    der = b"".join(seen)  # (PKCS#1 v1.5 key wrapping is randomised: the oracle reads the keys back)
    assert der_size == len(der) == len(oracle)
    assert der == _oracle_for(der, content, certs, keys, draws, **options)
    assert type(message) is bytes
    assert message == pkcs7_mime(OUTER, der, smime_type)


def _recorded(pieces: Iterator[bytes], seen: list[bytes]) -> Iterator[bytes]:
    for piece in pieces:
        seen.append(piece)
        yield piece


#: Around the 57-byte base64 lines (76 characters) and the 57 KiB blocks.
LINE_SIZES = [*range(0, 3 * 57 + 4), 1024, BLOCK - 58, BLOCK - 57, BLOCK - 56, BLOCK - 1, BLOCK, BLOCK + 1,
              BLOCK + 56, BLOCK + 57, BLOCK + 58, 2 * BLOCK + 3]


@pytest.mark.parametrize("n", LINE_SIZES)
def test_b64_lines_size_is_the_length_of_the_lines(n: int) -> None:
    data = os.urandom(n)
    lines = pkcs7_mime((), data, "x").split(b"\r\n\r\n", 1)[1]
    assert engine.b64_lines_size(n) == len(lines) == len(b"".join(engine._b64_lines([data])))


@pytest.mark.parametrize("cipher", ["aes256-cbc", "aes256-gcm"])
@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 41, 42, 56, 57, 58, 75, 76, 77, 113, 114, 115, 1000])
def test_one_buffer_message_around_line_boundaries_is_the_oracle_s(pki, cipher, size) -> None:
    """The DER head shifts the lines: small contents around 16, 57 and 76 bytes put the end of
    the DER on every position of the last base64 line (and the size check on each)."""
    content = os.urandom(size)
    certs, keys = [pki["person_encrypt"].cert], [pki["person_encrypt"].key]
    options = {"cipher": cipher, "key_transport": "pkcs1v15", "recipient_id": "issuer-serial"}
    draws = Draws(b"lines-%d" % size)
    der_size, pieces = encrypt_content_sized(content, certs, random=draws, **options)  # type: ignore[arg-type]
    smime_type = "authEnveloped-data" if cipher == "aes256-gcm" else "enveloped-data"
    seen: list[bytes] = []
    message = engine._b64_message(engine.pkcs7_mime_head(OUTER, smime_type), _recorded(pieces, seen), der_size)
    der = b"".join(seen)
    assert der_size == len(der)
    assert der == _oracle_for(der, content, certs, keys, draws, **options)
    assert message == pkcs7_mime(OUTER, der, smime_type)


def test_a_wrong_size_is_refused_not_padded() -> None:
    """The buffer is sized from lengths before any piece exists: a size that disagrees with the
    pieces (a bug) raises instead of sending zeros or a truncated message."""
    head = b"H: v\r\n\r\n"
    for claimed in (50, 200):
        with pytest.raises(RuntimeError):
            engine._b64_message(head, iter([b"x" * 100]), claimed)


def test_b64_lines_of_uneven_pieces_is_the_whole_s() -> None:
    data = os.urandom(3 * BLOCK + 101)
    cuts = [0, 1, 57, 58, BLOCK - 1, BLOCK + 2, 2 * BLOCK, 2 * BLOCK + 1, 3 * BLOCK + 50, len(data)]
    pieces = [data[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
    assert b"".join(engine._b64_lines(pieces)) == pkcs7_mime((), data, "x").split(b"\r\n\r\n", 1)[1]


def test_encrypt_entity_is_encrypt_content_wrapped(pki) -> None:
    """The public path with a real random source: the message decodes to a DER of the same
    structure and length as `encrypt_content` makes (the bytes differ only by CEK and IV)."""
    entity = b"Content-Type: text/plain\r\n\r\n" + b"line\r\n" * 300_000
    message = encrypt_entity(OUTER, entity, [pki["person_encrypt"].cert])
    der = encrypt_content(entity, [pki["person_encrypt"].cert])
    assert len(message) == len(pkcs7_mime(OUTER, der, "enveloped-data"))


def test_encrypting_8_mb_peaks_under_three_copies(pki) -> None:
    """The streamed path holds the base64 blocks and the joined message (2 × 1.37) beside the
    input; the old one also held the whole ciphertext and DER (3.74× at its peak)."""
    entity = b"Content-Type: text/plain\r\n\r\n" + b"L" * 8_000_000
    tracemalloc.start()
    try:
        message = encrypt_entity(OUTER, entity, [pki["person_encrypt"].cert])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(message) > 1.3 * len(entity)
    assert peak < 3.0 * len(entity), f"peak {peak / len(entity):.2f}x the entity"


def test_encrypting_8_mb_holds_one_message_sized_buffer(pki) -> None:
    """Beside the input, the S/MIME message (1.37×, + at most 1/8 growth slack) and one 1 MiB
    piece: the base64 lines are written into the buffer returned (1.64× measured). Before: the
    base64 blocks, then their join (2.75×)."""
    entity = b"Content-Type: text/plain\r\n\r\n" + b"L" * 8_000_000
    tracemalloc.start()
    try:
        message = encrypt_entity(OUTER, entity, [pki["person_encrypt"].cert])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(message) > 1.3 * len(entity)
    assert peak < 1.8 * len(entity), f"peak {peak / len(entity):.2f}x the entity"
