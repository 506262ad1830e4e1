"""The key store: one config table -> a token key or a file key, same protocols."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from gateway.errors import ConfigError
from gateway.smime.keyapi import DecryptionKey, SigningKey
from gateway.smime.keystore import KeyRef, load_key, load_key_async
from gateway.smime.pkcs11 import TokenKey
from tests.pkcs11.conftest import CPS, LAB, MODULE, USER_PIN, SoftHsm


async def test_token_key_from_config_table(softhsm: SoftHsm, pin_file: Path) -> None:
    ref = KeyRef.from_mapping(
        {"ref": softhsm.uri(CPS, key_id="01"), "module": MODULE, "pin_file": str(pin_file), "usage": "sign"},
        source="practice.toml",
        prefix="keys.cabinet.",
    )
    key = load_key(ref)
    assert isinstance(key, TokenKey) and isinstance(key, SigningKey)
    data = os.urandom(20)
    signature = await key.sign(data, "sha256", "pkcs1v15")
    key.certificate.public_key().verify(signature, data, padding.PKCS1v15(), hashes.SHA256())


async def test_token_key_pin_from_env(softhsm: SoftHsm, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSGW_TEST_LAB_PIN", USER_PIN)
    key = await load_key_async(
        softhsm.uri(LAB, "lab-sign") + f"?module-path={MODULE}", pin_env="MSGW_TEST_LAB_PIN"
    )
    assert isinstance(key, DecryptionKey)
    cek = os.urandom(32)
    assert (
        await key.decrypt_key(key.certificate.public_key().encrypt(cek, padding.PKCS1v15()), "pkcs1v15")
        == cek
    )


async def test_soft_key_from_config_table(softhsm: SoftHsm, tmp_path: Path) -> None:
    pem = softhsm.pki.lab.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"s3cret"),
    )
    (tmp_path / "lab.key.pem").write_bytes(pem)
    (tmp_path / "lab.cert.pem").write_bytes(softhsm.pki.lab.cert_pem())
    (tmp_path / "pw").write_text("s3cret\n")
    ref = KeyRef.from_mapping(
        {"ref": "lab.key.pem", "cert": "lab.cert.pem", "password_file": "pw"}, base=tmp_path
    )
    key = load_key(ref)
    assert not isinstance(key, TokenKey)
    assert isinstance(key, SigningKey) and isinstance(key, DecryptionKey)
    data = b"signed attributes"
    signature = await key.sign(data, "sha256", "pkcs1v15")
    key.certificate.public_key().verify(signature, data, padding.PKCS1v15(), hashes.SHA256())


def test_config_errors_name_the_key_and_never_take_a_pin() -> None:
    with pytest.raises(ConfigError) as info:
        KeyRef.from_mapping(
            {"ref": "pkcs11:token=X", "pin": "1234", "modul": "/x.so", "processes": -1},
            source="lab.toml",
            prefix="keys.labo.",
        )
    text = str(info.value)
    assert "keys.labo.modul" in text and "keys.labo.processes" in text and "pin_file" in text
    assert "1234" not in text
    with pytest.raises(ConfigError, match="wait_for_token"):
        KeyRef.from_mapping({"ref": "pkcs11:token=X", "wait_for_token": True})
    with pytest.raises(ConfigError, match="keys.ref"):
        KeyRef.from_mapping({"module": "/x.so"})


@pytest.mark.parametrize("name", ["practice-cps.toml", "lab-hsm.toml"])
def test_config_examples_are_valid_key_tables(name: str) -> None:
    import tomllib

    from tests.conftest import ROOT

    path = ROOT / "config" / name
    tables = tomllib.loads(path.read_text())["keys"]
    refs = [KeyRef.from_mapping(t, source=name, prefix=f"keys.{n}.") for n, t in tables.items()]
    assert refs and all(r.is_token and r.module and (r.pin_file or r.pin_env) for r in refs)
