"""The pure checks behind `msgw check` / serve start-up: dates, usages, key match, file modes and
the path to the anchors, on real TEST-PKI certificates (no files read by the code under test)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.filemodes import loose_mode
from gateway.smime import keycheck
from gateway.smime.softkeys import same_public_key
from gateway.smime.testpki import TestPKI
from gateway.smime.trust import split_anchors
from tests.smime.issue import CLIENT, SERVER, make_cert
from tests.smime.support import shared_pki


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return shared_pki().pki


def _crls(pki: TestPKI) -> list[bytes]:
    from cryptography import x509

    return [x509.load_der_x509_crl(p.read_bytes()).public_bytes(serialization.Encoding.DER) for p in pki.crl_paths]


def test_validity_thresholds(pki: TestPKI) -> None:
    cert = pki["org_sign"].cert
    end = cert.not_valid_after_utc
    day = f"{end:%Y-%m-%d}"
    assert keycheck.validity(cert, end - dt.timedelta(days=40)) == []
    assert keycheck.validity(cert, end - dt.timedelta(days=20, hours=1)) == [
        keycheck.warning(f"certificate expires in 20 days ({day})")]
    assert keycheck.validity(cert, end - dt.timedelta(days=14, hours=1))[0].severity == "warning"
    assert keycheck.validity(cert, end - dt.timedelta(days=13, hours=23)) == [
        keycheck.error(f"certificate expires in 13 days ({day})")]
    assert keycheck.validity(cert, end - dt.timedelta(hours=3)) == [
        keycheck.error(f"certificate expires in 0 days ({day})")]
    assert keycheck.validity(cert, end) == [keycheck.error(f"certificate expired on {day}")]
    early = keycheck.validity(cert, cert.not_valid_before_utc - dt.timedelta(seconds=1))
    assert early[0].severity == "error" and "not valid before" in early[0].message
    # what the running gateway asks before signing: usable at all now (no 14-day margin)
    assert keycheck.current(cert, end - dt.timedelta(hours=3)) is None
    assert keycheck.current(cert, end) == f"certificate expired on {day}"
    assert keycheck.current(cert, cert.not_valid_before_utc - dt.timedelta(seconds=1)) == early[0].message


def test_usage_per_role(pki: TestPKI, tmp_path: Path) -> None:
    orgs = pki.orgs_ca
    assert keycheck.usage(pki["org_sign"].cert, "sign") == []
    assert keycheck.usage(pki["person_sign"].cert, "sign") == []  # CPS: no EKU at all
    assert keycheck.usage(pki["org_encrypt"].cert, "decrypt") == []
    (no_sign,) = keycheck.usage(pki["org_encrypt"].cert, "sign")
    assert "digitalSignature" in no_sign.message and no_sign.severity == "error"
    (no_encipher,) = keycheck.usage(pki["org_sign"].cert, "decrypt", severity="warning")
    assert "keyEncipherment" in no_encipher.message and no_encipher.severity == "warning"
    server = make_cert(tmp_path, "server", orgs, eku=SERVER).cert
    assert [f.message for f in keycheck.usage(server, "sign")] == [
        "certificate extended key usage does not allow e-mail protection (needed to sign)"]
    assert "clientAuth" in keycheck.usage(server, "client")[0].message
    assert keycheck.usage(make_cert(tmp_path, "client", orgs, eku=CLIENT).cert, "client") == []
    anything = make_cert(tmp_path, "any", orgs, eku=[ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE]).cert
    assert keycheck.usage(anything, "sign") == keycheck.usage(anything, "client") == []
    ec_cert = make_cert(tmp_path, "ec", orgs, key=ec.generate_private_key(ec.SECP256R1())).cert
    assert any("no RSA key" in f.message for f in keycheck.usage(ec_cert, "decrypt"))


def test_key_match_and_file_mode(pki: TestPKI) -> None:
    org = pki["org_sign"]
    assert same_public_key(org.key.public_key(), org.cert)  # the one softkeys loads keys with
    assert not same_public_key(org.key.public_key(), pki["org_encrypt"].cert)
    assert keycheck.file_mode(0o100600, "key file", "/k") is None
    assert keycheck.file_mode(0o100400, "key file", "/k") is None
    loose = keycheck.file_mode(0o100640, "key file", "/k")
    assert loose is not None and loose.severity == "error" and "(mode 0640)" in loose.message
    assert loose_mode(0o100600) is None and loose_mode(0o104604) == "4604"


def test_split_anchors_is_the_trust_stores(pki: TestPKI) -> None:
    roots, others = split_anchors([pki["org_sign"].cert, pki.root.cert, pki.orgs_ca.cert])
    assert roots == [pki.root.cert] and others == [pki["org_sign"].cert, pki.orgs_ca.cert]


async def test_chain_to_the_anchors(pki: TestPKI) -> None:
    now = dt.datetime.now(dt.UTC)
    roots, inter = [pki.root.cert], [pki.orgs_ca.cert, pki.persons_ca.cert]
    crls = _crls(pki)
    assert await keycheck.chain(pki["org_sign"].cert, pki["org_sign"].chain, roots, [], crls, now) == []
    assert await keycheck.chain(pki["org_sign"].cert, (), roots, inter, [], now) == []  # soft-fail: no CRL given
    (stranger,) = await keycheck.chain(pki["unknown_issuer"].cert, (), roots, inter, crls, now)
    assert stranger.severity == "error" and "does not chain" in stranger.message
    (revoked,) = await keycheck.chain(pki["revoked"].cert, (), roots, inter, crls, now)
    assert "revoked" in revoked.message
    (expired,) = await keycheck.chain(pki["expired"].cert, (), roots, inter, crls, now)
    assert expired.message == keycheck.CHAIN_EXPIRED
    (unchecked,) = await keycheck.chain(pki["org_sign"].cert, (), [], inter, crls, now)
    assert unchecked.severity == "warning"
