"""Soft keys: PEM and PKCS#12 files, passwords from a file or an environment variable."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from gateway.smime.errors import KeyLoadError
from gateway.smime.keyapi import DecryptionKey, SigningKey
from gateway.smime.softkeys import load_key


def test_pem_key_with_chain(pki) -> None:
    e = pki["person_sign"]
    key = load_key(e.key_path, e.cert_path, e.chain_path)
    assert isinstance(key, SigningKey) and isinstance(key, DecryptionKey)
    assert key.certificate == e.cert
    assert key.chain == (pki.persons_ca.cert,)


def test_pkcs12_password_from_file_and_env(pki, tmp_path: Path, monkeypatch) -> None:
    e = pki["org_sign"]
    pw = tmp_path / "pw"
    pw.write_text(pki.password + "\n")
    assert load_key(e.p12_path, password_file=pw).certificate == e.cert
    monkeypatch.setenv("MSGW_TEST_PW", pki.password)
    key = load_key(e.legacy_p12_path, password_env="MSGW_TEST_PW")
    assert key.chain == (pki.orgs_ca.cert,)


def test_wrong_password_and_missing_env(pki, tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("Zq9-not-the-password")
    with pytest.raises(KeyLoadError) as info:
        load_key(pki["org_sign"].p12_path, password_file=pw)
    assert "Zq9" not in str(info.value)
    with pytest.raises(KeyLoadError):
        load_key(pki["org_sign"].p12_path, password_env="MSGW_TEST_UNSET_VARIABLE")


def test_encrypted_pem_key(pki, tmp_path: Path) -> None:
    e = pki["person_encrypt"]
    enc = tmp_path / "k.pem"
    enc.write_bytes(e.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.BestAvailableEncryption(b"s3cret")))
    pw = tmp_path / "pw"
    pw.write_bytes(b"s3cret")
    assert load_key(enc, e.cert_path, password_file=pw).certificate == e.cert
    with pytest.raises(KeyLoadError):
        load_key(enc, e.cert_path)


def test_key_certificate_mismatch(pki) -> None:
    with pytest.raises(KeyLoadError):
        load_key(pki["person_sign"].key_path, pki["org_sign"].cert_path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyLoadError):
        load_key(tmp_path / "nope.pem", tmp_path / "nope.crt")
