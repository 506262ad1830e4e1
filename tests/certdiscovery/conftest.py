"""Test PKI and a small real `usable` check for the certificate-discovery tests.

Why our own generator: the tests must not depend on the S/MIME engine (routing never imports
it); a CA and a handful of end-entity certificates (good, expired, signing-only, revoked,
organisation-bound, foreign CA) are enough to exercise every rejection path.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from gateway.errors import PolicyError, TemporaryError

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "TEST certdiscovery"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _usage(*, encipher: bool, sign: bool, ca: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=sign, content_commitment=False, key_encipherment=encipher,
                         data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                         encipher_only=False, decipher_only=False)


@dataclass
class MiniCA:
    """A CA that issues S/MIME-shaped end-entity certificates (marked TEST)."""

    cn: str = "TEST AC certdiscovery"
    key: rsa.RSAPrivateKey = field(default_factory=_key)
    ee_key: rsa.RSAPrivateKey = field(default_factory=_key)  # one key for all end entities: fast tests
    serial: int = 0x1000

    def __post_init__(self) -> None:
        self.cert = (x509.CertificateBuilder().subject_name(_name(self.cn)).issuer_name(_name(self.cn))
                     .public_key(self.key.public_key()).serial_number(1)
                     .not_valid_before(NOW - 3650 * DAY).not_valid_after(NOW + 3650 * DAY)
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .add_extension(_usage(encipher=False, sign=False, ca=True), critical=True)
                     .sign(self.key, hashes.SHA256()))

    def issue(self, email: str | None, *, dns_name: str | None = None, encipher: bool = True, sign: bool = False,
              not_before: dt.datetime | None = None, not_after: dt.datetime | None = None,
              cn: str | None = None) -> x509.Certificate:
        self.serial += 1
        names: list[x509.GeneralName] = []
        if email:
            names.append(x509.RFC822Name(email))
        if dns_name:
            names.append(x509.DNSName(dns_name))
        builder = (x509.CertificateBuilder().subject_name(_name(cn or email or dns_name or "x"))
                   .issuer_name(self.cert.subject).public_key(self.ee_key.public_key())
                   .serial_number(self.serial)
                   .not_valid_before(not_before or NOW - 30 * DAY).not_valid_after(not_after or NOW + 365 * DAY)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(_usage(encipher=encipher, sign=sign), critical=True))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(self.key, hashes.SHA256())


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


@dataclass
class Pki:
    ca: MiniCA
    other_ca: MiniCA
    alice: x509.Certificate          # usable for alice@example.org
    alice2: x509.Certificate         # a second usable one (renewal)
    alice_sign: x509.Certificate     # signing only: wrong key usage
    alice_expired: x509.Certificate
    alice_revoked: x509.Certificate
    alice_foreign: x509.Certificate  # issued by a CA we do not trust
    alice_soon: x509.Certificate     # expires 10 minutes after NOW
    bob: x509.Certificate
    org: x509.Certificate            # organisation-bound: dNSName example.org
    dotted: x509.Certificate         # jean.dupont@example.org


@pytest.fixture(scope="session")
def pki() -> Pki:
    ca = MiniCA()
    other = MiniCA(cn="TEST AC untrusted")
    return Pki(
        ca=ca, other_ca=other,
        alice=ca.issue("alice@example.org"),
        alice2=ca.issue("alice@example.org"),
        alice_sign=ca.issue("alice@example.org", encipher=False, sign=True),
        alice_expired=ca.issue("alice@example.org", not_before=NOW - 400 * DAY, not_after=NOW - DAY),
        alice_revoked=ca.issue("alice@example.org"),
        alice_foreign=other.issue("alice@example.org"),
        alice_soon=ca.issue("alice@example.org", not_after=NOW + dt.timedelta(minutes=10)),
        bob=ca.issue("bob@example.org"),
        org=ca.issue(None, dns_name="example.org", cn="example.org"),
        dotted=ca.issue("jean.dupont@example.org"),
    )


class Clock:
    """An injected clock (seconds since the epoch) that tests move by hand."""

    def __init__(self, start: dt.datetime = NOW) -> None:
        self.now = start.timestamp()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


class Checker:
    """A small but real `usable` check: chain to the trusted CA, dates, revocation, key usage, address.

    The gateway's real one is the S/MIME engine's validator; this one has the same contract:
    return when the certificate may encrypt to the address, raise a GatewayError otherwise.
    """

    def __init__(self, ca: MiniCA, clock: Callable[[], float]) -> None:
        self.ca = ca
        self.clock = clock
        self.revoked: set[int] = set()
        self.revocation_unknown: set[int] = set()  # CRL unreachable: a temporary reason
        self.calls: list[tuple[int, str]] = []

    async def __call__(self, cert: x509.Certificate, address: str) -> None:
        self.calls.append((cert.serial_number, address))
        try:
            cert.verify_directly_issued_by(self.ca.cert)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise PolicyError("not issued by a trusted CA") from exc
        now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        if now > cert.not_valid_after_utc:
            raise PolicyError("expired")
        if now < cert.not_valid_before_utc:
            raise PolicyError("not yet valid")
        if cert.serial_number in self.revocation_unknown:
            raise TemporaryError("revocation status unknown (CRL unreachable)")
        if cert.serial_number in self.revoked:
            raise PolicyError("revoked")
        try:
            usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            usage = None
        if usage is None or not usage.key_encipherment:
            raise PolicyError("key usage does not allow key encipherment")
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound as exc:
            raise PolicyError(f"does not name {address}") from exc
        domain = address.rpartition("@")[2].lower()
        emails = {e.lower() for e in san.get_values_for_type(x509.RFC822Name)}
        domains = {d.lower() for d in san.get_values_for_type(x509.DNSName)}
        if address.lower() not in emails and domain not in domains:
            raise PolicyError(f"does not name {address}")


@pytest.fixture
def checker(pki: Pki, clock: Clock) -> Checker:
    return Checker(pki.ca, clock)
