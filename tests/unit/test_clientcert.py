"""Allowed client subjects: CN entries match CNs, RFC 4514 entries match whole subjects."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.server.clientcert import subject_allowed


def _der(*attrs: tuple[x509.ObjectIdentifier, str]) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(oid, value) for oid, value in attrs])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


def test_cn_and_dn_entries() -> None:
    lis = _der((NameOID.ORGANIZATION_NAME, "Labo"), (NameOID.COMMON_NAME, "lis.labo.test"))
    assert subject_allowed(lis, ["lis.labo.test"])
    assert subject_allowed(lis, ["CN=lis.labo.test,O=Labo"])
    assert not subject_allowed(lis, ["lis"]) and not subject_allowed(lis, ["CN=lis.labo.test"])
    assert not subject_allowed(None, ["lis.labo.test"]) and not subject_allowed(b"garbage", ["lis.labo.test"])


def test_a_cn_that_looks_like_a_dn_does_not_match_the_dn_entry() -> None:
    """Found in review: CN values and whole subjects were compared in one set."""
    tricky = _der((NameOID.COMMON_NAME, "CN=lis.labo.test,O=Labo"))
    assert not subject_allowed(tricky, ["CN=lis.labo.test,O=Labo"])
