"""Certificates made to order for the key checks: expiring soon, expired, with the wrong usage,
from an unknown CA, with a key that is not theirs. Real certificates signed by the TEST CAs of
`shared_pki()` (or by a small TLS CA of the test), written to real files with real modes."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from gateway.smime.testpki import Issued

EMAIL = [ExtendedKeyUsageOID.EMAIL_PROTECTION]
CLIENT = [ExtendedKeyUsageOID.CLIENT_AUTH]
SERVER = [ExtendedKeyUsageOID.SERVER_AUTH]


@dataclass(frozen=True)
class Made:
    key_path: Path
    cert_path: Path
    chain_path: Path
    cert: x509.Certificate
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def _ku(sign: bool, encipher: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=sign, content_commitment=False, key_encipherment=encipher,
                         data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                         encipher_only=False, decipher_only=False)


def make_cert(folder: Path, name: str, issuer: Issued | tuple[x509.Certificate, object], *,
              days_left: float = 365, not_before_days: float = -1, sign: bool = True, encipher: bool = True,
              eku: list[ObjectIdentifier] | None = EMAIL, email: str = "labo@labo-tests.sante.test",
              key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | None = None, mode: int = 0o600,
              chain: tuple[x509.Certificate, ...] | None = None) -> Made:
    """A TEST end-entity certificate valid for `days_left` more days, its key file (`mode`) and
    chain file (the issuing CA when it is not a root)."""
    folder.mkdir(parents=True, exist_ok=True)
    issuer_cert, issuer_key = (issuer.cert, issuer.key) if isinstance(issuer, Issued) else issuer
    key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
                                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "TEST LABORATOIRE"),
                                        x509.NameAttribute(NameOID.COMMON_NAME, f"TEST {name}")]))
               .issuer_name(issuer_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now + dt.timedelta(days=not_before_days))
               .not_valid_after(now + dt.timedelta(days=days_left))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(_ku(sign, encipher), critical=True)
               .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   issuer_key.public_key()), critical=False))  # type: ignore[attr-defined]
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())  # type: ignore[arg-type]
    key_path, cert_path, chain_path = (folder / f"{name}.key.pem", folder / f"{name}.pem",
                                       folder / f"{name}.chain.pem")
    write_key(key_path, key, mode)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if chain is None:
        chain = () if issuer_cert.issuer == issuer_cert.subject else (issuer_cert,)
    chain_path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
    return Made(key_path, cert_path, chain_path, cert, key)


def write_key(path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, mode: int = 0o600) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(mode)


def make_ca(folder: Path, name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path]:
    """A small self-signed TEST CA (for TLS client certificates); its certificate file."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "TEST msgw"),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    path = folder / f"{name.replace(' ', '_')}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key, path
