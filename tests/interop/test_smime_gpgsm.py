"""Interop with GnuPG's gpgsm 2.2, both directions, CRL checks on (dirmngr fetches on loopback).

gpgsm does not parse MIME: it gets the DER of the CMS (and the entity bytes for detached
signatures). gpgsm 2.2 reads only the default profile of our encryption (RSA PKCS#1 v1.5 +
AES-CBC + issuer+serial): it refuses OAEP, AuthEnvelopedData (GCM) and SKI recipients, so
those are covered by the OpenSSL tests only. gpgsm emits BER with indefinite lengths.
gpgsm 2.2.40 segfaults importing an EC key from PKCS#12, so ECDSA is covered one way here
(we sign, gpgsm verifies) and both ways with OpenSSL.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from asn1crypto import cms

from gateway.smime import errors as E
from gateway.smime.cms_envelope import encrypt_content
from gateway.smime.cms_sign import sign_content
from gateway.smime.engine import Verifier, sign_and_encrypt_message, unwrap_message, verify_message
from gateway.smime.mime import classify, content_entity, multipart_signed, pkcs7_mime
from gateway.smime.revocation import CrlSource, http_fetch
from gateway.smime.softkeys import SoftKey, load_key
from gateway.smime.testpki import TestPKI
from gateway.smime.trust import TrustStore
from tests.interop.conftest_smime import Gpgsm, fingerprint, gpgsm_home, served_pki
from tests.smime.support import MESSAGE

PERSON = "jean.test-dupont@cabinet-parc.sante.test"
ORG = "labo@labo-tests.sante.test"
ENTITY = b"Content-Type: text/plain; charset=us-ascii\r\n\r\nTEST body for gpgsm.\r\nline 2\r\n"
OUTER = (f"From: <{PERSON}>\r\n".encode(), f"To: <{ORG}>\r\n".encode(), b"Subject: TEST\r\n")


@pytest.fixture(scope="module")
def gpg() -> Gpgsm:
    return gpgsm_home()


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return served_pki().pki


@pytest.fixture(scope="module")
def key(pki: TestPKI) -> Callable[[str], SoftKey]:
    return lambda name: load_key(pki[name].key_path, pki[name].cert_path, pki[name].chain_path)


@pytest.fixture
def verifier(pki: TestPKI) -> Verifier:
    return Verifier(TrustStore.from_directory(pki.trust_dir), CrlSource(fetcher=http_fetch))


@pytest.mark.parametrize("name,pss,detached", [("person_sign", False, True), ("person_sign", False, False),
                                               ("person_sign", True, True), ("org_sign_ec", False, True)],
                         ids=["rsa-detached", "rsa-opaque", "pss", "ecdsa"])
async def test_we_sign_gpgsm_verifies(gpg, key, tmp_path: Path, name, pss, detached) -> None:
    der = await sign_content(ENTITY, key(name), detached=detached, pss=pss)
    (tmp_path / "sig.der").write_bytes(der)
    (tmp_path / "entity").write_bytes(ENTITY)
    if detached:
        r = gpg.run("--verify", tmp_path / "sig.der", tmp_path / "entity")
    else:  # options before the command: gpgsm stops option parsing at --verify
        r = gpg.run("--output", tmp_path / "out", "--verify", tmp_path / "sig.der")
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert b"Good signature" in r.stderr
    if not detached:
        assert (tmp_path / "out").read_bytes() == ENTITY
    (tmp_path / "entity").write_bytes(ENTITY.replace(b"line 2", b"line 3"))
    if detached:  # negative control: gpgsm really checks
        assert gpg.run("--verify", tmp_path / "sig.der", tmp_path / "entity").returncode != 0


async def test_gpgsm_checks_our_revoked_signer_crl(gpg, key, pki, tmp_path: Path) -> None:
    der = await sign_content(ENTITY, load_key(pki["revoked"].key_path, pki["revoked"].cert_path,
                                              pki["revoked"].chain_path))
    (tmp_path / "sig.der").write_bytes(der)
    (tmp_path / "entity").write_bytes(ENTITY)
    r = gpg.run("--verify", tmp_path / "sig.der", tmp_path / "entity")
    assert r.returncode != 0 and b"revoked" in r.stderr


@pytest.mark.parametrize("signer,detached", [("person_sign", True), ("person_sign", False)],
                         ids=["rsa-detached", "rsa-opaque"])
async def test_gpgsm_signs_we_verify(gpg, pki, verifier, tmp_path: Path, signer, detached) -> None:
    (tmp_path / "entity").write_bytes(ENTITY)
    r = gpg.run("--include-certs", "-1", "-u", fingerprint(pki[signer].cert), "--output", tmp_path / "sig.der",
                "--detach-sign" if detached else "--sign", tmp_path / "entity", passphrase=True)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    der = (tmp_path / "sig.der").read_bytes()
    assert der[1] == 0x80  # BER indefinite length, as gpgsm emits
    outer = (f"From: <{PERSON}>\r\n".encode(),)
    msg = multipart_signed(outer, ENTITY, der, "sha-256") if detached else pkcs7_mime(outer, der, "signed-data")
    result = await verify_message(msg, verifier)
    sig = result.signatures[0]
    assert sig.from_matched and sig.revocation_status == "good"
    assert sig.signature_algorithm == "rsa-pkcs1v15"
    assert result.content == ENTITY
    if detached:
        with pytest.raises(E.ContentTampered):
            await verify_message(multipart_signed(outer, ENTITY.replace(b"line 2", b"line 3"), der, "sha-256"),
                                 verifier)


@pytest.mark.parametrize("recipients", [["person_encrypt"], ["org_encrypt", "person_encrypt"]],
                         ids=["one", "two"])
def test_we_encrypt_gpgsm_decrypts(gpg, pki, tmp_path: Path, recipients) -> None:
    der = encrypt_content(ENTITY, [pki[n].cert for n in recipients])  # default profile
    (tmp_path / "e.der").write_bytes(der)
    r = gpg.run("--output", tmp_path / "out", "--decrypt", tmp_path / "e.der", passphrase=True)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert (tmp_path / "out").read_bytes() == ENTITY


@pytest.mark.parametrize("recipients", [["org_encrypt"], ["person_encrypt", "org_encrypt"]], ids=["one", "two"])
async def test_gpgsm_encrypts_we_decrypt(gpg, pki, key, tmp_path: Path, recipients) -> None:
    (tmp_path / "entity").write_bytes(ENTITY)
    args: list[str | Path] = ["--output", tmp_path / "e.der"]
    for n in recipients:
        args += ["-r", fingerprint(pki[n].cert)]
    r = gpg.run(*args, "--encrypt", tmp_path / "entity")
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    der = (tmp_path / "e.der").read_bytes()
    assert der[1] == 0x80  # BER indefinite
    assert cms.ContentInfo.load(der)["content_type"].native == "enveloped_data"
    result = await unwrap_message(pkcs7_mime(OUTER, der, "enveloped-data"), keys=[key("org_encrypt")])
    assert result.layers == ("enveloped",) and result.content == ENTITY


async def test_gpgsm_sign_then_encrypt_we_unwrap(gpg, pki, key, verifier, tmp_path: Path) -> None:
    """gpgsm cannot --sign --encrypt in one call: pipe two, then we unwrap encrypted(signed)."""
    (tmp_path / "entity").write_bytes(ENTITY)
    r = gpg.run("--include-certs", "-1", "-u", fingerprint(pki["person_sign"].cert), "--output", tmp_path / "s.der",
                "--sign", tmp_path / "entity", passphrase=True)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    inner = pkcs7_mime((), (tmp_path / "s.der").read_bytes(), "signed-data")
    _, inner_entity = content_entity(inner)
    (tmp_path / "inner").write_bytes(inner_entity)
    r = gpg.run("-r", fingerprint(pki["org_encrypt"].cert), "--output", tmp_path / "e.der", "--encrypt",
                tmp_path / "inner")
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    msg = pkcs7_mime(OUTER, (tmp_path / "e.der").read_bytes(), "enveloped-data")
    result = await unwrap_message(msg, keys=[key("org_encrypt")], verifier=verifier)
    assert result.layers == ("enveloped", "signed-opaque")
    assert result.signatures[0].identity.rpps == "10101234567"
    assert result.content == ENTITY


async def test_we_sign_then_encrypt_gpgsm_unwraps(gpg, pki, key, tmp_path: Path) -> None:
    out = await sign_and_encrypt_message(MESSAGE, key("person_sign"), [pki["person_encrypt"].cert], opaque=True)
    (tmp_path / "e.der").write_bytes(classify(out).der)
    r = gpg.run("--output", tmp_path / "signed.eml", "--decrypt", tmp_path / "e.der", passphrase=True)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    (tmp_path / "s.der").write_bytes(classify((tmp_path / "signed.eml").read_bytes()).der)
    r = gpg.run("--output", tmp_path / "content", "--verify", tmp_path / "s.der")
    assert r.returncode == 0 and b"Good signature" in r.stderr, r.stderr.decode(errors="replace")
    assert b"TEST body line two." in (tmp_path / "content").read_bytes()
