"""Small shared helpers for the hand-built CMS code: parsing, identifiers, algorithm names.

asn1crypto parses BER as well as DER (gpgsm emits indefinite lengths), keeps the received
bytes of every element (needed to verify signed attributes as received) and knows the CMS
types; `cryptography` does the arithmetic. Parsing is forced eagerly here so that garbage
fails inside one try block and becomes `MalformedSmime`, never a stray ValueError later.
"""

from __future__ import annotations

from collections.abc import Iterable

from asn1crypto import cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.smime.errors import MalformedSmime

MAX_CMS_SIZE = 64 * 1024 * 1024
#: What asn1crypto raises on bad input (lazily, at first access of an element).
PARSE_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, RecursionError,
                UnicodeDecodeError)
_KNOWN = ("signed_data", "enveloped_data", "authenticated_enveloped_data")


def parse_content_info(der: bytes) -> cms.ContentInfo:
    """Parse the outer levels of a CMS ContentInfo, or raise MalformedSmime.

    Deeper elements are parsed lazily by asn1crypto (unknown attributes in real mail must
    not break what we do not read); callers wrap their reads in `PARSE_ERRORS`.
    """
    if not der or len(der) > MAX_CMS_SIZE:
        raise MalformedSmime("CMS structure empty or too large")
    try:
        info = cms.ContentInfo.load(der)
        if info["content_type"].native not in _KNOWN:
            raise MalformedSmime("unsupported CMS content type")
        info["content"]["version"].native  # noqa: B018 - parse the first level now
    except PARSE_ERRORS as exc:
        raise MalformedSmime("CMS structure cannot be parsed") from exc
    return info


def der_length(n: int) -> bytes:
    """The DER length octets of a content of `n` bytes (X.690 8.1.3: short form below 128)."""
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def to_asn1(cert: x509.Certificate) -> asn1_x509.Certificate:
    return asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))


def from_asn1(cert: asn1_x509.Certificate) -> x509.Certificate:
    return x509.load_der_x509_certificate(cert.dump())


def load_strict(der: bytes) -> x509.Certificate | None:
    """A certificate parsed completely now (cryptography parses lazily), or None if broken."""
    try:
        cert = x509.load_der_x509_certificate(der)
        _ = (cert.subject, cert.issuer, cert.serial_number, cert.public_key(), list(cert.extensions),
             cert.not_valid_before_utc, cert.not_valid_after_utc)
    except Exception:  # noqa: BLE001 - cryptography raises many unrelated types for broken certificates
        return None
    return cert


def subject_key_id(cert: x509.Certificate) -> bytes:
    """The SKI extension, or the RFC 5280 method 1 value when the extension is absent."""
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest


def matches_identifier(rid: core.Choice, cert: x509.Certificate) -> bool:
    """Does a SignerIdentifier / RecipientIdentifier designate `cert`?"""
    if rid.name == "issuer_and_serial_number":
        ias = rid.chosen
        return (ias["serial_number"].native == cert.serial_number
                and ias["issuer"].dump() == to_asn1(cert).issuer.dump())
    if rid.name == "subject_key_identifier":
        return bool(rid.chosen.native == subject_key_id(cert))
    return False


def find_certificate(rid: core.Choice, certs: Iterable[x509.Certificate]) -> x509.Certificate | None:
    for cert in certs:
        if matches_identifier(rid, cert):
            return cert
    return None


def issuer_and_serial(cert: x509.Certificate) -> cms.IssuerAndSerialNumber:
    a = to_asn1(cert)
    return cms.IssuerAndSerialNumber({"issuer": a.issuer, "serial_number": a.serial_number})


def der_set(contents: bytes) -> bytes:
    """Re-tag the received contents of an IMPLICIT [0] SET OF as a universal SET (0x31)."""
    n = len(contents)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return b"\x31" + length + contents


def octets(value: core.Asn1Value | None) -> bytes:
    """The bytes of an OCTET STRING, joining BER constructed chunks."""
    if value is None or isinstance(value, core.Void):
        return b""
    native = value.native
    if native is None:
        return b""
    if not isinstance(native, bytes):
        raise MalformedSmime("expected an OCTET STRING")
    return native
