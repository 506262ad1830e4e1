"""Never lose a message: kill -9 the gateway in the middle of a burst of 200 messages, restart
it, and check that every message that got a 250 reached the next hop at least once."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import aiosmtplib

from tests.e2e.harness import GatewayProcess, Sink, make_message, queue_json, write_config

BURST = 200
CLIENTS = 8


async def _burst(port: int, acked: set[str], stop_after: int | None, killed: asyncio.Event) -> None:
    """Send BURST messages over CLIENTS connections; record the ones answered 250."""
    counter = iter(range(BURST))

    async def client() -> None:
        while not killed.is_set():
            try:
                n = next(counter)
            except StopIteration:
                return
            tag = f"seq-{n:04d}"
            msg = make_message("lab@partner.example", "dr@cabinet.example", tag, f"body {tag}",
                               extra_headers=f"X-Seq: {tag}\r\n")
            try:
                await aiosmtplib.send(msg, sender="lab@partner.example", recipients=["dr@cabinet.example"],
                                      hostname="127.0.0.1", port=port, start_tls=False, timeout=10,
                                      local_hostname="lis.partner.example")
                acked.add(tag)
            except (aiosmtplib.SMTPException, OSError):
                # The gateway died mid-transaction: no 250, so no promise was made.
                if killed.is_set():
                    return
            if stop_after is not None and len(acked) >= stop_after:
                killed.set()

    await asyncio.gather(*(client() for _ in range(CLIENTS)))


def test_kill9_mid_burst_loses_nothing(tmp_path: Path) -> None:
    sink = Sink().start()
    try:
        setup = write_config(tmp_path, sink_port=sink.port, relay_networks='["127.0.0.0/8"]')
        gw = GatewayProcess(setup).start()
        acked: set[str] = set()
        killed = asyncio.Event()

        async def run_and_kill() -> None:
            sender = asyncio.create_task(_burst(setup.relay_port, acked, BURST // 2, killed))
            await killed.wait()
            gw.kill9()  # SIGKILL: no clean-up at all, in the middle of accepting and delivering
            await sender

        asyncio.run(run_and_kill())
        assert len(acked) >= BURST // 2
        before_restart = {_seq(m.data) for m in sink.handler.snapshot()}
        # Restart on the same spool; send the rest of the burst too.
        gw = GatewayProcess(setup).start()
        try:
            remaining = [f"seq-{n:04d}" for n in range(BURST) if f"seq-{n:04d}" not in acked]

            async def send_rest() -> None:
                for tag in remaining:
                    msg = make_message("lab@partner.example", "dr@cabinet.example", tag, f"body {tag}",
                                       extra_headers=f"X-Seq: {tag}\r\n")
                    await aiosmtplib.send(msg, sender="lab@partner.example", recipients=["dr@cabinet.example"],
                                          hostname="127.0.0.1", port=setup.relay_port, timeout=10, start_tls=False,
                                          local_hostname="lis.partner.example")
                    acked.add(tag)
            asyncio.run(send_rest())
            assert len(acked) == BURST
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                seen = {_seq(m.data) for m in sink.handler.snapshot()}
                if acked <= seen and not queue_json(setup):
                    break
                time.sleep(0.25)
            assert queue_json(setup) == [], "the queue did not drain after the restart"
        finally:
            gw.terminate()
        counts: dict[str, int] = {}
        for m in sink.handler.snapshot():
            counts[_seq(m.data)] = counts.get(_seq(m.data), 0) + 1
        lost = sorted(acked - set(counts))
        assert not lost, f"{len(lost)} acknowledged message(s) lost: {lost[:5]}"
        duplicates = {k: v for k, v in counts.items() if v > 1}
        assert all(v <= 2 for v in counts.values()), duplicates
        print(f"kill -9 burst: {len(acked)} acknowledged, {len(before_restart)} delivered before the kill, "
              f"{len(duplicates)} delivered twice, 0 lost")
    finally:
        sink.stop()


def _seq(data: bytes) -> str:
    m = re.search(rb"X-Seq: (seq-\d{4})", data)
    assert m, "message without sequence header"
    return m.group(1).decode()
