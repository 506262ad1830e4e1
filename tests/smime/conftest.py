"""Fixtures for the S/MIME engine tests: the shared TEST PKI, keys and a strict verifier."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gateway.smime.engine import Verifier
from gateway.smime.revocation import CrlSource, http_fetch
from gateway.smime.softkeys import SoftKey, load_key
from gateway.smime.testpki import TestPKI
from gateway.smime.trust import TrustStore
from tests.smime.support import Served, shared_pki


@pytest.fixture(scope="session")
def served() -> Served:
    return shared_pki()


@pytest.fixture(scope="session")
def pki(served: Served) -> TestPKI:
    return served.pki


@pytest.fixture(scope="session")
def trust(pki: TestPKI) -> TrustStore:
    return TrustStore.from_directory(pki.trust_dir)


@pytest.fixture(scope="session")
def key(pki: TestPKI) -> Callable[[str], SoftKey]:
    cache: dict[str, SoftKey] = {}

    def get(name: str) -> SoftKey:
        if name not in cache:
            e = pki[name]
            cache[name] = load_key(e.key_path, e.cert_path, e.chain_path)
        return cache[name]

    return get


@pytest.fixture
def verifier(trust: TrustStore) -> Verifier:
    """Strict policy: CRLs fetched from the loopback distribution points, From must match."""
    return Verifier(trust, CrlSource(fetcher=http_fetch))
