"""kill -9 at random moments (seeded) during a message burst, three kills, a restart after each:
every message that got a 250 reaches the next hop at least once; duplicates (the price of
at-least-once) are counted and reported.

Two runs: the relay core (1,000 messages over the relay listener, protection policy off), and
the protection policy on (lab submission over STARTTLS + AUTH, each message signed and
encrypted before it leaves; fewer messages, the crypto and the AUTH hashing cost more)."""

from __future__ import annotations

import asyncio
import random
import re
import ssl
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiosmtplib
import pytest

from gateway.smime.testpki import ORG_EMAIL, PERSON_EMAIL
from tests.e2e.harness import GatewayProcess, GatewaySetup, Sink, queue_json, write_config
from tests.e2e.test_protection_flow import LAB_PASSWORD, _protected_setup
from tests.resilience.conftest import SCALE, ResilienceReport
from tests.resilience.support import RCPT, SENDER, counts, tagged
from tests.smime.support import shared_pki

SEED = 20261125
KILLS = 3
CLIENTS = 12
Send = Callable[[str], Awaitable[None]]


async def _phase(send: Send, pending: deque[str], acked: set[str], kill_at: int | None, gw: GatewayProcess,
                 rng: random.Random, tries: list[int]) -> None:
    """Send from `pending` until it is empty, or kill -9 the gateway once `kill_at` are acknowledged."""
    killed = asyncio.Event()

    async def client() -> None:
        while not killed.is_set() and pending:
            tag = pending.popleft()
            tries[0] += 1
            try:
                await send(tag)
                acked.add(tag)
            except (aiosmtplib.SMTPException, OSError):
                pending.append(tag)  # no 250, no promise: the client tries again later
                if not killed.is_set():
                    await asyncio.sleep(0.05)

    async def killer() -> None:
        assert kill_at is not None
        while len(acked) < kill_at:
            await asyncio.sleep(0.002)
        await asyncio.sleep(rng.uniform(0, 0.03))  # land anywhere: mid-DATA, mid-fsync, mid-delivery
        gw.kill9()
        killed.set()

    jobs = [client() for _ in range(CLIENTS)]
    if kill_at is not None:
        jobs.append(killer())
    await asyncio.gather(*jobs)


def _relay_run(tmp_path: Path, sink: Sink) -> tuple[GatewaySetup, Send, Callable[[], Counter[str]]]:
    setup = write_config(tmp_path, sink_port=sink.port, relay_networks='["127.0.0.0/8"]')

    async def send(tag: str) -> None:
        await aiosmtplib.send(tagged(tag), sender=SENDER, recipients=[RCPT], hostname="127.0.0.1",
                              port=setup.relay_port, start_tls=False, timeout=15, local_hostname="lis.partner.example")

    return setup, send, lambda: counts(sink.handler.snapshot())


_MSGID = re.compile(rb"^To: (crash-\d{5}) <", re.MULTILINE)


def _protected_run(tmp_path: Path, sink: Sink) -> tuple[GatewaySetup, Send, Callable[[], Counter[str]]]:
    setup = _protected_setup(tmp_path / "gw", shared_pki().pki, sink.port)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the test's throw-away self-signed listener certificate

    async def send(tag: str) -> None:
        # The To display name survives encryption (the outer Message-ID is fresh and random since
        # issue 11): it identifies the message at the next hop.
        msg = (f"From: <{ORG_EMAIL}>\r\nTo: {tag} <{PERSON_EMAIL}>\r\nSubject: {tag}\r\n"
               f"Message-ID: <{tag}@labo-tests.sante.test>\r\nMIME-Version: 1.0\r\n"
               f"Content-Type: text/plain; charset=utf-8\r\n\r\nbody {tag}\r\n").encode()
        await aiosmtplib.send(msg, sender=ORG_EMAIL, recipients=[PERSON_EMAIL], hostname="127.0.0.1",
                              port=setup.submission_port, start_tls=True, tls_context=ctx, username=ORG_EMAIL,
                              password=LAB_PASSWORD, timeout=30, local_hostname="lis.labo-tests.sante.test")

    def delivered() -> Counter[str]:
        found: Counter[str] = Counter()
        for m in sink.handler.snapshot():
            head = m.data.split(b"\r\n\r\n", 1)[0]
            assert b"application/pkcs7-mime" in head, "a message left unprotected"
            hit = _MSGID.search(head)
            if hit:
                found[hit.group(1).decode()] += 1
        return found

    return setup, send, delivered


@pytest.mark.parametrize("mode,burst", [("relay", 1000 * SCALE), ("protected", 300 * SCALE)])
def test_three_kill9_during_burst_lose_nothing(mode: str, burst: int, tmp_path: Path,
                                               resilience_report: ResilienceReport) -> None:
    rng = random.Random(f"{SEED}-{mode}")
    kill_points = sorted(rng.sample(range(burst // 10, burst * 9 // 10), KILLS))
    started = time.monotonic()
    sink = Sink().start()
    try:
        setup, send, delivered = (_relay_run if mode == "relay" else _protected_run)(tmp_path, sink)
        names = [f"crash-{n:05d}" for n in range(burst)]
        pending = deque(names)
        acked: set[str] = set()
        tries = [0]
        delivered_at_kill = []
        for kill_at in [*kill_points, None]:
            gw = GatewayProcess(setup).start()
            asyncio.run(_phase(send, pending, acked, kill_at, gw, rng, tries))
            if kill_at is not None:
                delivered_at_kill.append(len(sink.handler.snapshot()))
        try:
            assert not pending and len(acked) == burst
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if acked <= set(delivered()) and not queue_json(setup):
                    break
                time.sleep(0.25)
            assert queue_json(setup) == [], "the queue did not drain after the last restart"
        finally:
            gw.terminate()
        seen = delivered()
        lost = sorted(acked - set(seen))
        duplicated = {k: v for k, v in seen.items() if v > 1}
        label = "relay, policy off" if mode == "relay" else "submission, policy on"
        resilience_report.record(
            f"crash: kill -9 x3, {burst} burst, {label}", sent=burst, acknowledged=len(acked), delivered=len(seen),
            lost=len(lost), duplicated=len(duplicated),
            note=f"kills after {kill_points} acks; {tries[0]} SMTP tries; "
                 f"{sum(duplicated.values()) - len(duplicated)} extra copies; {time.monotonic() - started:.0f}s")
        print(f"crash ({mode}): kills at {kill_points} acks, sink had {delivered_at_kill} at each kill, "
              f"{len(duplicated)} duplicated, {len(lost)} lost")
        assert not lost, f"{len(lost)} acknowledged message(s) lost: {lost[:5]}"
        assert set(seen) <= set(names)
        # At-least-once: a copy per crash at worst (a spooled message whose 250 or delivery record died).
        assert max(seen.values()) <= KILLS + 1, duplicated
    finally:
        sink.stop()
