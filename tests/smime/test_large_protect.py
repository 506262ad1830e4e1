"""A large message through `protect_smime` (issue 15, the 50 MB target): sign then encrypt with
the real TEST keys, measured with tracemalloc (a bound on memory relative to the message, not
on time), and which of its whole-message steps run on the event loop: the multipart/signed
entity around the signature (a 50 MB message: 0.34 s of copies on the loop before) and the
content digest (65 ms) go to a worker thread above 1 MiB, and stay on the loop below (a thread
hop costs more than the work: tests/stages/test_one_parse.py counts them)."""

from __future__ import annotations

import asyncio
import threading
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

from gateway.smime import cms_sign, protect
from gateway.smime.softkeys import SoftKey
from gateway.smime.testpki import ORG_EMAIL, PERSON_EMAIL, TestPKI


def _message(size: int) -> bytes:
    head = (f"From: <{ORG_EMAIL}>\r\nTo: <{PERSON_EMAIL}>\r\nSubject: Resultat\r\nMessage-ID: <big@x.test>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n").encode()
    line = b"HbA1c 6,1 % - resultat du laboratoire, valeurs de reference 4,0 - 6,0\r\n"
    return head + line * (size // len(line))


def _protect(pki: TestPKI, message: bytes) -> bytes:
    key = SoftKey(pki["org_sign"].key, pki["org_sign"].cert, ())
    return asyncio.run(protect.protect_smime(message, key, [pki["person_encrypt"].cert], neutral_subject="x",
                                             sender_copy=None))


def test_sign_and_encrypt_8_mb_peaks_under_three_and_a_third_copies(pki: TestPKI) -> None:
    """Beside the message: the base64 blocks and the joined result (2.8×; the signed entity is
    handed over to `encrypt_entity` and freed before the join). Before: the signed entity, the
    whole ciphertext and DER too, and the signed entity built by a chain of `+` (4.75× after one
    parse per message, 6.75× before it)."""
    message = _message(8_000_000)
    tracemalloc.start()
    try:
        sealed = _protect(pki, message)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(sealed) > 1.3 * len(message)
    assert peak < 3.3 * len(message), f"peak {peak / len(message):.2f}x the message"


@pytest.mark.parametrize("size, on_loop", [(2 << 20, False), (200_000, True)], ids=["2MiB", "200KB"])
def test_whole_message_steps_leave_the_loop_above_1_mib(pki: TestPKI, monkeypatch: pytest.MonkeyPatch,
                                                        size: int, on_loop: bool) -> None:
    where: dict[str, bool] = {}

    def traced(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            where[name] = threading.current_thread() is threading.main_thread()
            return fn(*args, **kwargs)
        return call

    monkeypatch.setattr(protect, "signed_entity", traced("signed_entity", protect.signed_entity))
    monkeypatch.setattr(cms_sign, "_digest", traced("digest", cms_sign._digest))
    sealed = _protect(pki, _message(size))
    assert where == {"signed_entity": on_loop, "digest": on_loop}
    assert sealed.count(b"enveloped-data") == 1



def test_sign_and_encrypt_8_mb_writes_the_result_once(pki: TestPKI) -> None:
    """Beside the message: the signed entity (handed over) and the S/MIME message base64-encoded
    straight into the buffer returned (2.64× measured). Before: the entity was freed, but the
    base64 blocks and their join were both held at the end (2.74×). Measured inside the loop's
    coroutine: `asyncio.run`'s teardown itself copies a worker thread's result once."""
    message = _message(8_000_000)
    key = SoftKey(pki["org_sign"].key, pki["org_sign"].cert, ())

    async def protected_peak() -> tuple[bytes, int]:
        tracemalloc.start()
        try:
            sealed = await protect.protect_smime(message, key, [pki["person_encrypt"].cert], neutral_subject="x",
                                                 sender_copy=None)
            return sealed, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    sealed, peak = asyncio.run(protected_peak())
    assert len(sealed) > 1.3 * len(message)
    assert peak < 2.7 * len(message), f"peak {peak / len(message):.2f}x the message"
