"""A throw-away CA with server and client certificates for TLS tests and `msgw demo` (TEST only).

Certificates are shaped like IGC-Santé SERV SSL ones (RSA-2048; `C=FR, O=<organisation>,
OU=<structure id: type digit + id>, CN=<host>`; serverAuth + clientAuth, as between MSSanté
operators, where the same certificate serves both ends of mutual TLS): the Référentiel #2
suites are ECDHE-RSA, so an ECDSA server certificate leaves a Référentiel #2 client without a
common suite. `issue(..., ecdsa=True)` makes such a certificate on purpose."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


#: The TEST organisation's structure identifier: type digit 3 (SIRET) + a TEST SIRET, as in
#: IGC-Santé organisation subjects (`OU=318751275100020`).
TEST_STRUCTURE_ID = "399999999900001"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def _name(cn: str, ou: str = TEST_STRUCTURE_ID) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "TEST msgw"),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write(folder: Path, stem: str, cert: x509.Certificate, key: PrivateKey) -> Pair:
    cert_path, key_path = folder / f"{stem}-cert.pem", folder / f"{stem}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)  # `msgw check`/`serve` refuse a client key open to others
    return Pair(cert_path, key_path)


class TestCA:
    __test__ = False  # not a pytest class

    def __init__(self, folder: Path, name: str = "TEST AC msgw") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.key = _rsa_key()
        now = dt.datetime.now(dt.UTC)
        ca_name = _name(name, "IGC-SANTE TEST")
        self.cert = (
            x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(self.key, hashes.SHA256()))
        self.pair = _write(folder, name.replace(" ", "_"), self.cert, self.key)

    @property
    def ca_file(self) -> Path:
        return self.pair.cert

    def issue(self, cn: str, *, server: bool = True, client: bool = True, ecdsa: bool = False) -> Pair:
        """A SERV SSL-shaped certificate for `cn` (RSA-2048; P-256 with `ecdsa`), signed by this CA."""
        key: PrivateKey = ec.generate_private_key(ec.SECP256R1()) if ecdsa else _rsa_key()
        now = dt.datetime.now(dt.UTC)
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + \
                 ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
        builder = (
            x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=90))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_leaf_usage(ecdsa), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn), x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False))
        return _write(self.folder, cn, builder.sign(self.key, hashes.SHA256()), key)


def _leaf_usage(ecdsa: bool) -> x509.KeyUsage:
    """digitalSignature (ECDHE signs the handshake), plus keyEncipherment on RSA as IGC-Santé sets it."""
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=not ecdsa,
                         data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                         encipher_only=False, decipher_only=False)
