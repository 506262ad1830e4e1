"""Fixtures of the routing tests: a fresh directory store and an invented certificate."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.default_setup import make_self_signed
from gateway.directory.directory import SqliteDirectory


@pytest.fixture
def store(tmp_path: Path):
    with SqliteDirectory(tmp_path / "directory.sqlite") as s:
        yield s


@pytest.fixture(scope="session")
def cert_pair() -> tuple[bytes, bytes]:
    """Two DER certificates (TEST, self-signed): stand-ins for encryption certificates."""
    out = []
    for name in ("enc1.test", "enc2.test"):
        pem, _key = make_self_signed(name)
        out.append(x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER))
    return out[0], out[1]
