"""Token life: card pulled out and put back, the bounded FIFO queue, worker processes."""

from __future__ import annotations

import asyncio
import os

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from gateway.errors import TemporaryError
from gateway.smime.pkcs11 import FilePin, TokenAbsent, TokenBusy, get_worker, open_token_key
from gateway.smime.pkcs11.limiter import FifoLimiter
from tests.pkcs11.conftest import LAB, MODULE, REMOVABLE, SoftHsm


def _verify(key, signature: bytes, data: bytes) -> None:
    key.certificate.public_key().verify(signature, data, padding.PKCS1v15(), hashes.SHA256())


async def test_removed_then_put_back_logs_in_again(softhsm: SoftHsm, pin_file) -> None:
    key = open_token_key(softhsm.uri(REMOVABLE, "removable-sign"), module=MODULE, pin=FilePin(pin_file))
    data = os.urandom(40)
    _verify(key, await key.sign(data, "sha256", "pkcs1v15"), data)
    logins = key.login_calls
    softhsm.delete_token(REMOVABLE)  # the card is pulled out
    for _ in range(2):
        with pytest.raises(TokenAbsent) as info:
            await key.sign(data, "sha256", "pkcs1v15")
        assert isinstance(info.value, TemporaryError)
        assert info.value.smtp_reply().startswith("451 ")
    assert key.login_calls == logins  # no login attempt while the card is away
    softhsm.make_removable()  # ... and put back
    _verify(key, await key.sign(data, "sha256", "pkcs1v15"), data)
    assert key.login_calls == logins + 1  # exactly one re-login
    _verify(key, await key.sign(data, "sha256", "pkcs1v15"), data)
    assert key.login_calls == logins + 1


async def test_other_tokens_survive_a_module_rescan(softhsm: SoftHsm, pin_file) -> None:
    """Looking for an absent card re-initialises the module; keys on other tokens log in again."""
    lab = open_token_key(softhsm.uri(LAB, "lab-sign"), module=MODULE, pin=FilePin(pin_file))
    generation = get_worker(MODULE).generation
    with pytest.raises(TokenAbsent):
        open_token_key(softhsm.uri("NOT-INSERTED"), module=MODULE, pin=FilePin(pin_file))
    assert get_worker(MODULE).generation > generation
    data = os.urandom(16)
    _verify(lab, await lab.sign(data, "sha256", "pkcs1v15"), data)


async def test_bounded_queue_refuses_with_a_temporary_error(softhsm: SoftHsm, pin_file) -> None:
    key = open_token_key(
        softhsm.uri(LAB, "lab-sign"), module=MODULE, pin=FilePin(pin_file), concurrency=1, max_waiting=2
    )
    results = await asyncio.gather(
        *(key.sign(os.urandom(8), "sha256", "pkcs1v15") for _ in range(10)), return_exceptions=True
    )
    busy = [r for r in results if isinstance(r, TokenBusy)]
    done = [r for r in results if isinstance(r, bytes)]
    assert len(done) == 3 and len(busy) == 7
    assert all(b.temporary for b in busy)
    # Once the line is empty, requests are served again.
    assert isinstance(await key.sign(b"again", "sha256", "pkcs1v15"), bytes)


async def test_requests_are_served_in_arrival_order(softhsm: SoftHsm, pin_file) -> None:
    key = open_token_key(softhsm.uri(LAB, "lab-sign"), module=MODULE, pin=FilePin(pin_file), concurrency=1)
    finished: list[int] = []

    async def one(i: int) -> None:
        await key.sign(i.to_bytes(4, "big"), "sha256", "pkcs1v15")
        finished.append(i)

    await asyncio.gather(*(one(i) for i in range(50)))
    assert finished == list(range(50))


async def test_limiter_cancelled_waiter_does_not_leak_a_slot() -> None:
    limiter = FifoLimiter(1, 10)
    await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    limiter.release()
    assert limiter.active == 0 and limiter.waiting == 0
    await asyncio.wait_for(limiter.acquire(), 1)


async def test_worker_processes_sign(softhsm: SoftHsm, pin_file) -> None:
    key = open_token_key(softhsm.uri(LAB, "lab-sign"), module=MODULE, pin=FilePin(pin_file), processes=2)
    try:
        await key._pool.warm_up()
        messages = [os.urandom(32) for _ in range(60)]
        signatures = await asyncio.gather(*(key.sign(m, "sha256", "pkcs1v15") for m in messages))
        for message, signature in zip(messages, signatures, strict=True):
            _verify(key, signature, message)
        cek = os.urandom(32)
        wrapped = key.certificate.public_key().encrypt(cek, padding.PKCS1v15())
        assert await key.decrypt_key(wrapped, "pkcs1v15") == cek
    finally:
        key.close()


async def test_card_inserted_after_start(softhsm: SoftHsm, pin_file) -> None:
    """With the certificate in the config, a practice gateway starts before the card is inserted."""
    uri = softhsm.uri("LATE-CARD", "late-sign")
    cert = softhsm.pki.lab.cert
    with pytest.raises(TokenAbsent):
        open_token_key(uri, module=MODULE, pin=FilePin(pin_file), certificate=cert)
    key = open_token_key(uri, module=MODULE, pin=FilePin(pin_file), certificate=cert, defer_if_absent=True)
    assert key.certificate == cert and key.key_type is None
    with pytest.raises(TokenAbsent):
        await key.sign(b"x", "sha256", "pkcs1v15")
    softhsm.init_token("LATE-CARD")
    softhsm.put("LATE-CARD", softhsm.pki.lab, "30", "late-sign")
    data = os.urandom(24)
    _verify(key, await key.sign(data, "sha256", "pkcs1v15"), data)
    assert key.key_type == "RSA" and key.login_calls == 1


async def test_configured_certificate_must_match_the_token_key(softhsm: SoftHsm, pin_file) -> None:
    from gateway.smime.pkcs11 import KeyNotFound

    with pytest.raises(KeyNotFound):
        open_token_key(
            softhsm.uri(LAB, "lab-sign"),
            module=MODULE,
            pin=FilePin(pin_file),
            certificate=softhsm.pki.sign.cert,
        )
