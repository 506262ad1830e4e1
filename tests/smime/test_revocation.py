"""CRLs: fetched from the distribution point on loopback, cached, freshness-limited, or from files."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from gateway.smime import errors as E
from gateway.smime.engine import Verifier, sign_message, verify_message
from gateway.smime.revocation import CrlSource, http_fetch
from tests.smime.support import MESSAGE


async def test_fetch_and_cache(served, key, trust) -> None:
    signed = await sign_message(MESSAGE, key("person_sign"))
    calls: list[str] = []

    async def counting(url: str) -> bytes:
        calls.append(url)
        return await http_fetch(url)

    before = served.requests["/crl/persons.crl"]
    verifier = Verifier(trust, CrlSource(fetcher=counting, max_age=dt.timedelta(hours=1)))
    await verify_message(signed, verifier)
    await verify_message(signed, verifier)
    assert sorted(calls) == sorted({f"{served.base_url}/crl/persons.crl", f"{served.base_url}/crl/root.crl"})
    assert served.requests["/crl/persons.crl"] == before + 1  # really went over HTTP, once


async def test_freshness_limit_refetches(key, trust) -> None:
    signed = await sign_message(MESSAGE, key("person_sign"))
    calls: list[str] = []

    async def counting(url: str) -> bytes:
        calls.append(url)
        return await http_fetch(url)

    verifier = Verifier(trust, CrlSource(fetcher=counting, max_age=dt.timedelta(0)))
    await verify_message(signed, verifier)
    await verify_message(signed, verifier)
    assert len(calls) == 4


async def test_crl_files_without_network(pki, key, trust) -> None:
    signed = await sign_message(MESSAGE, key("person_sign"))
    verifier = Verifier(trust, CrlSource(files=pki.crl_paths))
    assert (await verify_message(signed, verifier)).signatures[0].revocation_status == "good"
    revoked = await sign_message(MESSAGE, key("revoked"), check_usage=False)
    with pytest.raises(E.CertificateRevoked):
        await verify_message(revoked, verifier)


async def test_stale_crl_is_not_used(pki, key, trust) -> None:
    """A CRL past its nextUpdate counts as no revocation information (hard-fail)."""
    now = dt.datetime.now(dt.UTC)
    ca = pki.persons_ca
    stale = (x509.CertificateRevocationListBuilder().issuer_name(ca.cert.subject)
             .last_update(now - dt.timedelta(days=10)).next_update(now - dt.timedelta(days=3))
             .sign(ca.key, hashes.SHA256())).public_bytes(serialization.Encoding.DER)
    root_crl = (pki.crl_dir / "root.crl").read_bytes()

    async def fetch(url: str) -> bytes:
        return stale if url.endswith("persons.crl") else root_crl

    signed = await sign_message(MESSAGE, key("person_sign"))
    with pytest.raises(E.RevocationUnavailable) as info:
        await verify_message(signed, Verifier(trust, CrlSource(fetcher=fetch)))
    assert info.value.temporary is False


async def test_unreachable_distribution_point_is_temporary(key, trust) -> None:
    async def down(url: str) -> bytes:
        raise E.CrlFetchError("connection refused")

    signed = await sign_message(MESSAGE, key("person_sign"))
    with pytest.raises(E.RevocationUnavailable) as info:
        await verify_message(signed, Verifier(trust, CrlSource(fetcher=down)))
    assert info.value.temporary is True


async def test_http_fetch_refuses_other_schemes() -> None:
    with pytest.raises(E.CrlFetchError):
        await http_fetch("ldap://annuaire.example/cn=x")
    with pytest.raises(E.CrlFetchError):
        await http_fetch("file:///etc/passwd")


async def test_forged_crl_is_not_trusted(pki, key, trust) -> None:
    """An empty CRL with the CA's name but signed by another key must not clear a revoked signer."""
    now = dt.datetime.now(dt.UTC)
    forged = (x509.CertificateRevocationListBuilder().issuer_name(pki.persons_ca.cert.subject)
              .last_update(now - dt.timedelta(hours=1)).next_update(now + dt.timedelta(days=1))
              .sign(pki.unknown_root.key, hashes.SHA256())).public_bytes(serialization.Encoding.DER)
    root_crl = (pki.crl_dir / "root.crl").read_bytes()

    async def fetch(url: str) -> bytes:
        return forged if url.endswith("persons.crl") else root_crl

    revoked = await sign_message(MESSAGE, key("revoked"), check_usage=False)
    with pytest.raises(E.RevocationUnavailable):
        await verify_message(revoked, Verifier(trust, CrlSource(fetcher=fetch)))
    with pytest.raises(E.RevocationUnavailable):  # and it does not vouch for a good one either
        await verify_message(await sign_message(MESSAGE, key("person_sign")), Verifier(trust, CrlSource(fetcher=fetch)))


async def test_path_cache_keyed_by_crl(pki, key, trust) -> None:
    signed = await sign_message(MESSAGE, key("person_sign"))
    verifier = Verifier(trust, CrlSource(files=pki.crl_paths))
    await verify_message(signed, verifier)
    await verify_message(signed, verifier)
    assert len(verifier.cache.entries) == 1
    # Same certificates with a CRL that now lists the signer: a new key, so it is refused.
    ca = pki.persons_ca
    now = dt.datetime.now(dt.UTC)
    newer = (x509.CertificateRevocationListBuilder().issuer_name(ca.cert.subject)
             .last_update(now - dt.timedelta(minutes=5)).next_update(now + dt.timedelta(days=1))
             .add_revoked_certificate(x509.RevokedCertificateBuilder()
                                      .serial_number(pki["person_sign"].cert.serial_number)
                                      .revocation_date(now - dt.timedelta(minutes=5)).build())
             .sign(ca.key, hashes.SHA256())).public_bytes(serialization.Encoding.DER)
    root_crl = (pki.crl_dir / "root.crl").read_bytes()

    async def fetch(url: str) -> bytes:
        return newer if url.endswith("persons.crl") else root_crl

    verifier.crls = CrlSource(fetcher=fetch)
    with pytest.raises(E.CertificateRevoked):
        await verify_message(signed, verifier)
