"""Weak algorithms are named in the unwrap result (issue 11, item 13): a 3DES envelope made by
`openssl cms -encrypt -des3` and a signer with a 1024-bit RSA key still open and verify, but the
result says which algorithms were weak, so policy can flag or refuse them. SHA-1/MD5 signatures
stay refused outright (`UnsupportedAlgorithm`), as before."""

from __future__ import annotations

import datetime as dt
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.smime.engine import Verifier, encrypt_message, sign_message, unwrap_message
from gateway.smime.keyapi import SigningKey
from gateway.smime.softkeys import SoftKey
from gateway.smime.testpki import PERSON_EMAIL, TestPKI
from tests.conftest import require_tool
from tests.smime.support import MESSAGE


def openssl_encrypt(pki: TestPKI, tmp_path, message: bytes, cipher: str) -> bytes:
    """An envelope to the lab's encryption certificate made by `openssl cms -encrypt -<cipher>`."""
    openssl = require_tool("openssl")
    src, out = tmp_path / f"{cipher}-plain.eml", tmp_path / f"{cipher}-sealed.eml"
    src.write_bytes(message)
    r = subprocess.run([openssl, "cms", "-encrypt", f"-{cipher}", "-in", str(src), "-out", str(out),
                        "-from", PERSON_EMAIL, "-subject", "Message securise", str(pki["org_encrypt"].cert_path)],
                       capture_output=True)
    assert r.returncode == 0, r.stderr
    return out.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


async def test_3des_envelope_is_opened_and_marked_weak(pki, key, tmp_path, verifier: Verifier) -> None:
    signed = await sign_message(MESSAGE, key("person_sign"))
    sealed = openssl_encrypt(pki, tmp_path, signed, "des3")
    result = await unwrap_message(sealed, keys=[key("org_encrypt")], verifier=verifier)
    assert result.layers == ("enveloped", "signed") and result.signatures[0].from_matched
    assert result.ciphers == ("3des-cbc",)
    assert result.weak == ("3des-cbc",)


async def test_aes_envelope_is_not_weak(pki, key, tmp_path, verifier: Verifier) -> None:
    signed = await sign_message(MESSAGE, key("person_sign"))
    for sealed, name in ((openssl_encrypt(pki, tmp_path, signed, "aes256"), "aes256-cbc"),
                         (encrypt_message(signed, [pki["org_encrypt"].cert], cipher="aes256-gcm"), "aes256-gcm")):
        result = await unwrap_message(sealed, keys=[key("org_encrypt")], verifier=verifier)
        assert result.ciphers == (name,) and result.weak == ()
        assert result.signatures[0].weak == ()


@pytest.fixture(scope="module")
def rsa1024_signer(pki: TestPKI) -> SigningKey:
    """A signer under the TEST persons CA whose RSA key is 1024 bits (valid path, weak key)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the weak key under test
    ca = pki.persons_ca
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
                                     x509.NameAttribute(NameOID.ORGANIZATION_NAME, "TEST"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, "TEST CLE RSA 1024")]))
            .issuer_name(ca.cert.subject).public_key(private.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(PERSON_EMAIL)]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
            .add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier(f"{pki.crl_base_url}/persons.crl")], relative_name=None,
                reasons=None, crl_issuer=None)]), critical=False)
            .sign(ca.key, hashes.SHA256()))
    return SoftKey(private, cert, (ca.cert,))


async def test_small_rsa_signer_key_is_marked_weak(rsa1024_signer: SigningKey, verifier: Verifier) -> None:
    result = await unwrap_message(await sign_message(MESSAGE, rsa1024_signer), verifier=verifier)
    assert result.signatures[0].weak == ("rsa-1024",)
    assert result.weak == ("rsa-1024",)
    assert "rsa-1024" in result.signatures[0].as_dict()["weak"]
