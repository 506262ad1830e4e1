"""Interop with OpenSSL (`openssl cms`), both directions: sign/verify and encrypt/decrypt.

Real subprocesses, real keys from the TEST PKI; CRL checking on for `openssl cms -verify`
(-crl_check_all with the CRLs in -CAfile) and for our side (CRLs fetched from loopback).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from asn1crypto import cms

from gateway.smime import errors as E
from gateway.smime.engine import (
    Verifier,
    decrypt_message,
    encrypt_message,
    sign_and_encrypt_message,
    sign_message,
    unwrap_message,
    verify_message,
)
from gateway.smime.mime import classify, content_entity
from gateway.smime.revocation import CrlSource, http_fetch
from gateway.smime.softkeys import SoftKey, load_key
from gateway.smime.testpki import TestPKI
from gateway.smime.trust import TrustStore
from tests.conftest import require_tool
from tests.interop.conftest_smime import openssl_cafile, served_pki
from tests.smime.support import MESSAGE, message_from

PERSON = "jean.test-dupont@cabinet-parc.sante.test"
ORG = "labo@labo-tests.sante.test"


@pytest.fixture(scope="module")
def openssl() -> str:
    return require_tool("openssl")


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return served_pki().pki


@pytest.fixture(scope="module")
def key(pki: TestPKI) -> Callable[[str], SoftKey]:
    return lambda name: load_key(pki[name].key_path, pki[name].cert_path, pki[name].chain_path)


@pytest.fixture
def verifier(pki: TestPKI) -> Verifier:
    return Verifier(TrustStore.from_directory(pki.trust_dir), CrlSource(fetcher=http_fetch))


def run(*args: str | Path, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*map(str, args)], input=data, capture_output=True, timeout=60)


@pytest.mark.parametrize("opaque", [False, True], ids=["detached", "opaque"])
@pytest.mark.parametrize("name,pss", [("person_sign", False), ("person_sign", True), ("org_sign_ec", False)],
                         ids=["rsa", "pss", "ecdsa"])
async def test_we_sign_openssl_verifies(openssl, pki, key, tmp_path: Path, name, pss, opaque) -> None:
    msg = MESSAGE if name == "person_sign" else message_from(ORG)
    signed = await sign_message(msg, key(name), opaque=opaque, pss=pss)
    (tmp_path / "s.eml").write_bytes(signed)
    r = run(openssl, "cms", "-verify", "-in", tmp_path / "s.eml", "-CAfile", openssl_cafile(pki, tmp_path),
            "-crl_check_all", "-out", tmp_path / "content")
    assert r.returncode == 0, r.stderr.decode()
    assert b"Verification successful" in r.stderr
    _, entity = content_entity(msg)
    assert (tmp_path / "content").read_bytes().replace(b"\r\n", b"\n") == entity.replace(b"\r\n", b"\n")
    # Negative control: the same check rejects a tampered copy.
    (tmp_path / "t.eml").write_bytes(signed.replace(b"TEST body", b"TEST b0dy"))
    if not opaque:
        r = run(openssl, "cms", "-verify", "-in", tmp_path / "t.eml", "-CAfile", openssl_cafile(pki, tmp_path),
                "-crl_check_all", "-out", tmp_path / "content2")
        assert r.returncode != 0


async def test_openssl_refuses_our_revoked_signer(openssl, pki, key, tmp_path: Path) -> None:
    signed = await sign_message(MESSAGE, key("revoked"), check_usage=False)
    (tmp_path / "s.eml").write_bytes(signed)
    r = run(openssl, "cms", "-verify", "-in", tmp_path / "s.eml", "-CAfile", openssl_cafile(pki, tmp_path),
            "-crl_check_all", "-out", tmp_path / "content")
    assert r.returncode != 0 and b"revoked" in r.stderr


@pytest.mark.parametrize("variant", ["rsa", "pss", "ecdsa", "opaque"])
async def test_openssl_signs_we_verify(openssl, pki, verifier, tmp_path: Path, variant) -> None:
    name = "org_sign_ec" if variant == "ecdsa" else "person_sign"
    sender = ORG if variant == "ecdsa" else PERSON
    e = pki[name]
    (tmp_path / "entity").write_bytes(b"Content-Type: text/plain; charset=us-ascii\n\nTEST from openssl\nline 2\n")
    args = [openssl, "cms", "-sign", "-md", "sha256", "-signer", e.cert_path, "-inkey", e.key_path,
            "-certfile", e.chain_path, "-in", tmp_path / "entity", "-out", tmp_path / "s.eml",
            "-from", sender, "-to", "x@y.test", "-subject", "TEST"]
    if variant == "pss":
        args += ["-keyopt", "rsa_padding_mode:pss"]
    if variant == "opaque":
        args += ["-nodetach"]
    r = run(*args)
    assert r.returncode == 0, r.stderr.decode()
    result = await verify_message((tmp_path / "s.eml").read_bytes(), verifier)
    sig = result.signatures[0]
    assert sig.from_matched is True and sig.revocation_status == "good"
    assert sig.signature_algorithm == {"rsa": "rsa-pkcs1v15", "pss": "rsassa-pss", "ecdsa": "ecdsa",
                                       "opaque": "rsa-pkcs1v15"}[variant]
    assert result.layers == (("signed-opaque",) if variant == "opaque" else ("signed",))
    assert b"TEST from openssl\r\nline 2\r\n" in result.content
    tampered = (tmp_path / "s.eml").read_bytes().replace(b"TEST from openssl", b"TEST from 0penssl")
    if variant != "opaque":
        with pytest.raises(E.ContentTampered):
            await verify_message(tampered, verifier)


@pytest.mark.parametrize("cipher", ["aes256-cbc", "aes256-gcm"])
@pytest.mark.parametrize("transport", ["pkcs1v15", "oaep"])
@pytest.mark.parametrize("rid", ["issuer-serial", "ski"])
def test_we_encrypt_openssl_decrypts(openssl, pki, tmp_path: Path, cipher, transport, rid) -> None:
    enc = encrypt_message(MESSAGE, [pki["org_encrypt"].cert, pki["person_encrypt"].cert], cipher=cipher,
                          key_transport=transport, recipient_id=rid)
    (tmp_path / "e.eml").write_bytes(enc)
    e = pki["person_encrypt"]
    r = run(openssl, "cms", "-decrypt", "-in", tmp_path / "e.eml", "-recip", e.cert_path, "-inkey", e.key_path,
            "-out", tmp_path / "d")
    assert r.returncode == 0, r.stderr.decode()
    _, entity = content_entity(MESSAGE)
    assert (tmp_path / "d").read_bytes().replace(b"\r\n", b"\n") == entity.replace(b"\r\n", b"\n")


@pytest.mark.parametrize("variant", ["default", "gcm", "oaep", "ski", "two-recipients"])
async def test_openssl_encrypts_we_decrypt(openssl, pki, key, tmp_path: Path, variant) -> None:
    (tmp_path / "entity").write_bytes(b"Content-Type: text/plain\n\nTEST secret from openssl\n")
    args: list[str | Path] = [openssl, "cms", "-encrypt", "-in", tmp_path / "entity", "-out", tmp_path / "e.eml",
                              "-from", PERSON, "-to", ORG, "-subject", "TEST"]
    args += ["-aes-256-gcm"] if variant == "gcm" else ["-aes256"]
    if variant == "ski":
        args += ["-keyid"]
    if variant == "two-recipients":
        args += [pki["person_encrypt"].cert_path]
    if variant == "oaep":  # -keyopt applies to the -recip before it
        args += ["-recip", pki["org_encrypt"].cert_path, "-keyopt", "rsa_padding_mode:oaep",
                 "-keyopt", "rsa_oaep_md:sha256"]
    else:
        args += [pki["org_encrypt"].cert_path]
    r = run(*args)
    assert r.returncode == 0, r.stderr.decode()
    info = cms.ContentInfo.load(classify((tmp_path / "e.eml").read_bytes()).der)
    ktri = info["content"]["recipient_infos"][-1].chosen
    assert info["content_type"].native == ("authenticated_enveloped_data" if variant == "gcm" else "enveloped_data")
    assert ktri["key_encryption_algorithm"]["algorithm"].native == ("rsaes_oaep" if variant == "oaep"
                                                                    else "rsaes_pkcs1v15")
    assert ktri["rid"].name == ("subject_key_identifier" if variant == "ski" else "issuer_and_serial_number")
    out = await decrypt_message((tmp_path / "e.eml").read_bytes(), [key("org_encrypt")])
    assert b"TEST secret from openssl\r\n" in out
    assert out.startswith(b"To: ") or b"\r\nFrom: " in out or out.startswith(b"From: ")
    if variant != "two-recipients":
        with pytest.raises(E.NotForUs):
            await decrypt_message((tmp_path / "e.eml").read_bytes(), [key("person_encrypt")])


async def test_nested_both_directions(openssl, pki, key, verifier, tmp_path: Path) -> None:
    # We sign then encrypt -> openssl decrypts, then verifies the inner signature.
    out = await sign_and_encrypt_message(MESSAGE, key("person_sign"), [pki["org_encrypt"].cert])
    (tmp_path / "e.eml").write_bytes(out)
    o = pki["org_encrypt"]
    r = run(openssl, "cms", "-decrypt", "-in", tmp_path / "e.eml", "-recip", o.cert_path, "-inkey", o.key_path,
            "-out", tmp_path / "inner.eml")
    assert r.returncode == 0, r.stderr.decode()
    r = run(openssl, "cms", "-verify", "-in", tmp_path / "inner.eml", "-CAfile", openssl_cafile(pki, tmp_path),
            "-crl_check_all", "-out", tmp_path / "content")
    assert r.returncode == 0, r.stderr.decode()
    # OpenSSL signs then encrypts -> we unwrap encrypted(signed).
    s = pki["person_sign"]
    (tmp_path / "entity").write_bytes(b"Content-Type: text/plain\n\nTEST nested from openssl\n")
    assert run(openssl, "cms", "-sign", "-signer", s.cert_path, "-inkey", s.key_path, "-certfile", s.chain_path,
               "-in", tmp_path / "entity", "-out", tmp_path / "signed.eml").returncode == 0
    r = run(openssl, "cms", "-encrypt", "-aes256", "-in", tmp_path / "signed.eml", "-out", tmp_path / "both.eml",
            "-from", PERSON, "-to", ORG, "-subject", "TEST", o.cert_path)
    assert r.returncode == 0, r.stderr.decode()
    result = await unwrap_message((tmp_path / "both.eml").read_bytes(), keys=[key("org_encrypt")],
                                  verifier=verifier)
    assert result.layers == ("enveloped", "signed")
    assert result.signatures[0].identity.rpps == "10101234567"
    assert b"TEST nested from openssl\r\n" in result.content
