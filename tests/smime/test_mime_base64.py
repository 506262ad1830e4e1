"""The base64 of S/MIME parts (`mime._b64_chunks`, issue 15 hot path): one C call per block and
lines cut by slicing must give exactly what `base64.encodebytes` with CRLF line ends gave (the
encoder it replaced), at every length around the 57-byte line and the block boundaries."""

from __future__ import annotations

import base64
import os

from gateway.smime import mime


def _reference(der: bytes) -> bytes:
    return base64.encodebytes(der).replace(b"\n", b"\r\n")


def test_b64_is_byte_identical_to_encodebytes_around_line_and_block_edges() -> None:
    block = mime._B64_BLOCK
    lengths = {0, 1, 2, 3, 55, 56, 57, 58, 113, 114, 115, 1024, 2500, 20_000,
               block - 1, block, block + 1, 2 * block + 57, 3 * block - 3}
    for n in sorted(lengths):
        der = os.urandom(n)
        assert mime._b64(der) == _reference(der), n
        assert all(len(line) <= 76 for line in mime._b64(der).split(b"\r\n")), n


def test_pkcs7_mime_body_is_the_reference_base64() -> None:
    der = os.urandom(3000)
    message = mime.pkcs7_mime((b"Subject: x\r\n",), der, "enveloped-data")
    assert message.endswith(b"\r\n\r\n" + _reference(der))
