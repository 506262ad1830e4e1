"""CMS through the token, checked by OpenSSL: signed on the card, decrypted on the card."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gateway.smime.pkcs11 import FilePin, TokenKey, open_token_key
from tests.conftest import require_tool
from tests.pkcs11.conftest import CPS, MODULE, SoftHsm

engine = pytest.importorskip("gateway.smime.engine", reason="the S/MIME engine (issue 3) is not there yet")

MESSAGE = (
    b"From: jean.dupont@test.mssante.fr\r\nTo: labo@test.mssante.fr\r\nSubject: CR\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    b"Compte rendu de test, ligne 1\r\nligne 2\r\n"
)


@pytest.fixture(scope="module")
def sign_key(softhsm: SoftHsm, pin_file: Path) -> TokenKey:
    return open_token_key(softhsm.uri(CPS, "Signature"), module=MODULE, pin=FilePin(pin_file), usage="sign")


@pytest.fixture(scope="module")
def decrypt_key(softhsm: SoftHsm, pin_file: Path) -> TokenKey:
    return open_token_key(
        softhsm.uri(CPS, key_id="02"), module=MODULE, pin=FilePin(pin_file), usage="decrypt"
    )


def _openssl(*args: str, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([require_tool("openssl"), *args], input=data, capture_output=True, timeout=60)


@pytest.mark.parametrize("opaque", [False, True])
async def test_signed_on_token_verifies_with_openssl(
    softhsm: SoftHsm, sign_key: TokenKey, tmp_path: Path, opaque: bool
) -> None:
    signed = await engine.sign_message(MESSAGE, sign_key, opaque=opaque)
    path = tmp_path / "signed.eml"
    path.write_bytes(signed)
    out = tmp_path / "content"
    done = _openssl(
        "cms", "-verify", "-in", str(path), "-CAfile", str(softhsm.root / "root.cert.pem"), "-out", str(out)
    )
    assert done.returncode == 0, done.stderr.decode()
    assert b"Verification successful" in done.stderr
    assert b"Compte rendu de test" in out.read_bytes()


@pytest.mark.parametrize("keyopt", [[], ["-keyopt", "rsa_padding_mode:oaep"]], ids=["pkcs1v15", "oaep-sha1"])
async def test_openssl_encrypted_decrypts_through_token(
    softhsm: SoftHsm, decrypt_key: TokenKey, tmp_path: Path, keyopt: list[str]
) -> None:
    plain = tmp_path / "plain.eml"
    plain.write_bytes(MESSAGE)
    enc = tmp_path / "enc.eml"
    recip = softhsm.root / "encrypt.cert.pem"
    done = _openssl(
        "cms", "-encrypt", "-aes256", "-in", str(plain), "-out", str(enc), "-recip", str(recip), *keyopt
    )
    assert done.returncode == 0, done.stderr.decode()
    decrypted = await engine.decrypt_message(enc.read_bytes(), [decrypt_key])
    assert b"Compte rendu de test, ligne 1\r\nligne 2" in decrypted
