"""Signing and CEK decryption on a real SoftHSM2 token, through the async key protocols."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time

import pytest
from asn1crypto import algos, core
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from gateway.errors import PermanentError, TemporaryError
from gateway.smime.keyapi import DecryptionKey, SigningKey
from gateway.smime.pkcs11 import (
    FilePin,
    KeyNotFound,
    MechanismRefused,
    PinRejected,
    StaticPin,
    TokenAbsent,
    TokenKey,
    get_worker,
    open_token_key,
    open_token_key_async,
)
from gateway.smime.pkcs11.mechanisms import DIGEST_INFO_PREFIX
from tests.pkcs11.conftest import CPS, LAB, MODULE, USER_PIN, WRONG, SoftHsm

SIGNED_ATTRS = bytes.fromhex("3118301706092a864886f70d010903310a06082a864886f70d0107") + os.urandom(32)


def _verify_rsa(
    cert_key: rsa.RSAPublicKey, signature: bytes, data: bytes, algo: hashes.HashAlgorithm
) -> None:
    cert_key.verify(signature, data, padding.PKCS1v15(), algo)


@pytest.fixture(scope="module")
def cps_sign_key(softhsm: SoftHsm, pin_file) -> TokenKey:
    return open_token_key(softhsm.uri(CPS, "Signature"), module=MODULE, pin=FilePin(pin_file), usage="sign")


@pytest.fixture(scope="module")
def cps_decrypt_key(softhsm: SoftHsm, pin_file) -> TokenKey:
    return open_token_key(
        softhsm.uri(CPS, key_id="02"), module=MODULE, pin=FilePin(pin_file), usage="decrypt"
    )


def test_protocols_and_certificate(
    softhsm: SoftHsm, cps_sign_key: TokenKey, cps_decrypt_key: TokenKey
) -> None:
    assert isinstance(cps_sign_key, SigningKey)
    assert isinstance(cps_decrypt_key, DecryptionKey)
    assert cps_sign_key.certificate == softhsm.pki.sign.cert  # matched by CKA_ID, not by label
    assert cps_decrypt_key.certificate == softhsm.pki.encrypt.cert
    assert cps_sign_key.chain == (softhsm.pki.intermediate.cert,)
    assert "token=CPS-TEST" in cps_sign_key.uri
    assert USER_PIN not in repr(cps_sign_key)


@pytest.mark.parametrize(
    "hash_name,algo", [("sha256", hashes.SHA256()), ("sha384", hashes.SHA384()), ("sha512", hashes.SHA512())]
)
async def test_sign_verifies_against_certificate(cps_sign_key: TokenKey, hash_name, algo) -> None:
    signature = await cps_sign_key.sign(SIGNED_ATTRS, hash_name, "pkcs1v15")
    _verify_rsa(cps_sign_key.certificate.public_key(), signature, SIGNED_ATTRS, algo)


async def test_raw_rsa_with_our_digest_info(softhsm: SoftHsm, pin_file) -> None:
    """Cards that offer only CKM_RSA_PKCS: we hash and build the DigestInfo ourselves."""
    key = open_token_key(softhsm.uri(CPS, "Signature"), module=MODULE, pin=FilePin(pin_file), prefer_raw=True)
    signature = await key.sign(SIGNED_ATTRS, "sha256", "pkcs1v15")
    _verify_rsa(key.certificate.public_key(), signature, SIGNED_ATTRS, hashes.SHA256())
    # Same bytes as the token's own SHA256_RSA_PKCS (PKCS#1 v1.5 is deterministic).
    reference = open_token_key(softhsm.uri(CPS, "Signature"), module=MODULE, pin=FilePin(pin_file))
    assert signature == await reference.sign(SIGNED_ATTRS, "sha256", "pkcs1v15")


@pytest.mark.parametrize("hash_name", ["sha256", "sha384", "sha512"])
def test_digest_info_prefix_matches_asn1(hash_name: str) -> None:
    """RFC 8017 DigestInfo with explicit NULL parameters, as the tokens' own mechanisms produce."""
    digest = hashlib.new(hash_name, SIGNED_ATTRS).digest()
    expected = algos.DigestInfo(
        {"digest_algorithm": {"algorithm": hash_name, "parameters": core.Null()}, "digest": digest}
    ).dump()
    assert DIGEST_INFO_PREFIX[hash_name] + digest == expected


@pytest.mark.parametrize("prefer_raw", [False, True])
async def test_pss(softhsm: SoftHsm, pin_file, prefer_raw: bool) -> None:
    key = open_token_key(
        softhsm.uri(LAB, "lab-sign"), module=MODULE, pin=FilePin(pin_file), prefer_raw=prefer_raw
    )
    signature = await key.sign(SIGNED_ATTRS, "sha256", "pss")
    key.certificate.public_key().verify(
        signature, SIGNED_ATTRS, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256()
    )


async def test_ecdsa_signature_is_der(softhsm: SoftHsm, pin_file) -> None:
    key = open_token_key(softhsm.uri(LAB, key_id="11"), module=MODULE, pin=FilePin(pin_file))
    assert key.key_type == "EC"
    signature = await key.sign(SIGNED_ATTRS, "sha256", "ecdsa")
    assert signature[0] == 0x30  # DER ECDSA-Sig-Value, as CMS wants it
    key.certificate.public_key().verify(signature, SIGNED_ATTRS, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(MechanismRefused):
        await key.sign(SIGNED_ATTRS, "sha256", "pkcs1v15")


async def test_decrypt_cek_pkcs1v15_and_oaep_sha1(cps_decrypt_key: TokenKey) -> None:
    public = cps_decrypt_key.certificate.public_key()
    cek = os.urandom(32)
    assert await cps_decrypt_key.decrypt_key(public.encrypt(cek, padding.PKCS1v15()), "pkcs1v15") == cek
    oaep = padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)  # noqa: S303 (CMS OAEP default)
    assert await cps_decrypt_key.decrypt_key(public.encrypt(cek, oaep), "oaep-sha1") == cek


async def test_decrypt_failures_are_permanent_and_generic(cps_decrypt_key: TokenKey) -> None:
    public = cps_decrypt_key.certificate.public_key()
    garbage = os.urandom(256)
    with pytest.raises(PermanentError) as info:
        await cps_decrypt_key.decrypt_key(garbage, "pkcs1v15")
    assert info.value.temporary is False
    # SoftHSM 2.6 only does OAEP with SHA-1: SHA-256 OAEP is a refused mechanism, not a crash.
    oaep256 = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
    with pytest.raises(PermanentError):
        await cps_decrypt_key.decrypt_key(public.encrypt(b"k" * 32, oaep256), "oaep-sha256")
    # The key still works afterwards (the session survived the refusals).
    cek = os.urandom(16)
    assert await cps_decrypt_key.decrypt_key(public.encrypt(cek, padding.PKCS1v15()), "pkcs1v15") == cek


async def test_single_use_keys(cps_sign_key: TokenKey, cps_decrypt_key: TokenKey) -> None:
    with pytest.raises(MechanismRefused):
        await cps_decrypt_key.sign(SIGNED_ATTRS, "sha256", "pkcs1v15")
    with pytest.raises(MechanismRefused):
        await cps_sign_key.decrypt_key(b"x" * 256, "pkcs1v15")


async def test_200_concurrent_signatures_one_login(cps_sign_key: TokenKey) -> None:
    logins_before = cps_sign_key.login_calls
    messages = [os.urandom(64) for _ in range(200)]

    async def requester(chunk: list[bytes]) -> list[bytes]:
        return [await cps_sign_key.sign(m, "sha256", "pkcs1v15") for m in chunk]

    results = await asyncio.gather(*(requester(messages[i::20]) for i in range(20)))
    public = cps_sign_key.certificate.public_key()
    count = 0
    for i, signatures in enumerate(results):
        for message, signature in zip(messages[i::20], signatures, strict=True):
            _verify_rsa(public, signature, message, hashes.SHA256())
            count += 1
    assert count == 200
    assert cps_sign_key.login_calls == logins_before  # no re-login for a healthy token


async def test_event_loop_not_blocked(cps_sign_key: TokenKey) -> None:
    """A ticker keeps ticking while a long batch of signatures runs on the module thread."""
    ticks: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            ticks.append(time.monotonic())
            await asyncio.sleep(0.002)

    task = asyncio.create_task(ticker())
    start = time.monotonic()
    await asyncio.gather(*(cps_sign_key.sign(os.urandom(32), "sha256", "pkcs1v15") for _ in range(400)))
    elapsed = time.monotonic() - start
    stop.set()
    await task
    gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    assert len(ticks) >= 5, f"ticker starved: {len(ticks)} ticks in {elapsed:.3f}s"
    assert max(gaps) < 0.1, f"event loop blocked for {max(gaps):.3f}s"


async def test_every_call_on_the_module_thread(cps_sign_key: TokenKey) -> None:
    worker = get_worker(MODULE)
    seen = await worker.run(threading.get_ident)
    assert seen != threading.get_ident()
    assert await worker.run(threading.get_ident) == seen  # always the same thread
    names = {t.name for t in threading.enumerate() if t.name.startswith("pkcs11-")}
    assert len(names) == 1
    with pytest.raises(RuntimeError):
        worker.assert_on_thread()  # from the event loop thread: refused


async def test_wrong_pin_is_permanent_and_never_retried(softhsm: SoftHsm) -> None:
    worker = get_worker(MODULE)
    uri = softhsm.uri(WRONG, "wrong-pin-key")
    wrong = StaticPin("000000")
    before = worker.login_calls
    with pytest.raises(PinRejected) as info:
        await open_token_key_async(uri, module=MODULE, pin=wrong)
    assert info.value.temporary is False
    assert "000000" not in str(info.value)
    assert worker.login_calls == before + 1
    # Asking again with the same PIN (a retry loop, a second key on the card) never reaches C_Login.
    for _ in range(3):
        with pytest.raises(PinRejected):
            await open_token_key_async(uri, module=MODULE, pin=StaticPin("000000"))
    assert worker.login_calls == before + 1
    state = worker.tokens[next(s for s in worker.tokens if s.token == WRONG)]
    assert state.login_calls == 1
    # The token was not harmed: the right PIN logs in (SoftHSM does not lock, a card would after 3).
    key = await open_token_key_async(uri, module=MODULE, pin=StaticPin(USER_PIN))
    assert worker.login_calls == before + 2
    signature = await key.sign(SIGNED_ATTRS, "sha256", "pkcs1v15")
    _verify_rsa(key.certificate.public_key(), signature, SIGNED_ATTRS, hashes.SHA256())


async def test_absent_token_is_temporary(softhsm: SoftHsm, pin_file) -> None:
    with pytest.raises(TokenAbsent) as info:
        await open_token_key_async(
            softhsm.uri("NO-SUCH-CARD", "Signature"), module=MODULE, pin=FilePin(pin_file)
        )
    assert isinstance(info.value, TemporaryError)
    assert info.value.smtp_reply().startswith("451 4.")


async def test_missing_key_is_permanent(softhsm: SoftHsm, pin_file) -> None:
    with pytest.raises(KeyNotFound) as info:
        await open_token_key_async(softhsm.uri(CPS, "No such key"), module=MODULE, pin=FilePin(pin_file))
    assert info.value.temporary is False


async def test_pin_file_missing_is_permanent(softhsm: SoftHsm, tmp_path) -> None:
    with pytest.raises(PermanentError):
        await open_token_key_async(
            softhsm.uri(LAB, "lab-sign"), module=MODULE, pin=FilePin(tmp_path / "nope")
        )
