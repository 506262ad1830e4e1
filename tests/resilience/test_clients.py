"""Slow and hostile clients: 500 concurrent connections, slowloris (one byte per second),
clients that drop in the middle of DATA. Meanwhile a normal client's message gets its 250 and
is delivered; idle and slow clients are dropped after the listener's `timeout`; the gateway's
memory stays bounded (VmRSS from /proc before, during and after)."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from pathlib import Path

import aiosmtplib

from tests.e2e.harness import GatewayProcess, Sink, write_config
from tests.resilience.conftest import SCALE, ResilienceReport, raise_nofile, vm_rss_kb
from tests.resilience.support import RCPT, SENDER, counts, tagged

CONNECTIONS = 500
SLOWLORIS = 4
DROPPERS = 20
TIMEOUT = 5.0
RSS_LIMIT_KB = 300 * 1024
MAX_SIZE_MB = 2
OVERSIZERS = 4
OVERSIZE_MB = 25


async def _hold(port: int, opened: list, ready: asyncio.Event) -> float | None:
    """Connect, read the banner, then stay silent; return how long until the server hung up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    banner = await reader.readline()
    assert banner.startswith(b"220"), banner
    opened.append(writer)
    if len(opened) >= CONNECTIONS:
        ready.set()
    start = time.monotonic()
    try:
        while await asyncio.wait_for(reader.read(1024), timeout=TIMEOUT + 15):
            pass
        return time.monotonic() - start
    except (TimeoutError, ConnectionError):
        return None
    finally:
        writer.close()


async def _slowloris(port: int) -> tuple[float | None, int]:
    """One byte per second of an endless EHLO line; return when the server hung up, bytes sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reader.readline()
    start, sent = time.monotonic(), 0
    line = b"EHLO " + b"s" * 200
    try:
        while time.monotonic() - start < TIMEOUT + 15:
            writer.write(line[sent % len(line):sent % len(line) + 1])
            await writer.drain()
            sent += 1
            try:
                got = await asyncio.wait_for(reader.read(1024), timeout=1.0)
                if not got or b"421" in got:
                    return time.monotonic() - start, sent
            except TimeoutError:
                pass
        return None, sent
    except ConnectionError:
        return time.monotonic() - start, sent
    finally:
        writer.close()


async def _start_data(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reader.readline()
    for cmd in (b"EHLO client.example", f"MAIL FROM:<{SENDER}>".encode(), f"RCPT TO:<{RCPT}>".encode(), b"DATA"):
        writer.write(cmd + b"\r\n")
        await writer.drain()
        while True:
            line = await reader.readline()
            if line[3:4] != b"-":
                break
    assert line.startswith(b"354"), line
    return reader, writer


async def _slow_data(port: int) -> float | None:
    """Slowloris inside DATA: one byte per second of the message; return when the server hung up."""
    reader, writer = await _start_data(port)
    msg = tagged("slowdata-00000")
    start = time.monotonic()
    try:
        for i in range(int(TIMEOUT + 15)):
            writer.write(msg[i:i + 1])
            await writer.drain()
            try:
                if not await asyncio.wait_for(reader.read(1024), timeout=1.0):
                    return time.monotonic() - start
            except TimeoutError:
                pass
        return None
    except ConnectionError:
        return time.monotonic() - start
    finally:
        writer.close()


async def _oversize(port: int, megabytes: int) -> bytes:
    """Stream a message far over the listener's max_message_size; return the final reply."""
    reader, writer = await _start_data(port)
    line = b"z" * 998 + b"\r\n"
    chunk = line * 1024
    for _ in range(megabytes):
        writer.write(chunk)
        await writer.drain()
    writer.write(b".\r\n")
    await writer.drain()
    reply = await asyncio.wait_for(reader.readline(), timeout=20)
    writer.close()
    return reply


async def _drop_mid_data(port: int, n: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reader.readline()
    for cmd in (b"EHLO dropper.example", f"MAIL FROM:<{SENDER}>".encode(), f"RCPT TO:<{RCPT}>".encode(), b"DATA"):
        writer.write(cmd + b"\r\n")
        await writer.drain()
        while True:
            line = await reader.readline()
            if line[3:4] != b"-":
                break
    msg = tagged(f"dropped-{n:05d}")
    writer.write(msg[: len(msg) // 2])
    await writer.drain()
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN
    writer.transport.abort()


def test_many_slow_and_hostile_clients_do_not_stop_service(tmp_path: Path,
                                                           resilience_report: ResilienceReport) -> None:
    limit = raise_nofile(4 * CONNECTIONS * SCALE + 256)
    assert limit >= CONNECTIONS * SCALE + 64, f"open-files limit {limit} too low for {CONNECTIONS} connections"
    sink = Sink().start()
    try:
        setup = write_config(tmp_path, sink_port=sink.port, relay_networks='["127.0.0.0/8"]')
        text = setup.config.read_text().replace('allowed_networks = ["127.0.0.0/8"]',
                                                f'allowed_networks = ["127.0.0.0/8"]\ntimeout = "{TIMEOUT:g}s"\n'
                                                f'max_message_size = "{MAX_SIZE_MB}MB"')
        setup.config.write_text(text)
        with GatewayProcess(setup) as gw:
            assert gw.proc is not None
            pid = gw.proc.pid
            rss_before = vm_rss_kb(pid)
            figures: dict[str, object] = {}

            async def scenario() -> None:
                opened: list = []
                ready = asyncio.Event()
                holders = [asyncio.create_task(_hold(setup.relay_port, opened, ready))
                           for _ in range(CONNECTIONS * SCALE)]
                await asyncio.wait_for(ready.wait(), timeout=30)
                slow = [asyncio.create_task(_slowloris(setup.relay_port)) for _ in range(SLOWLORIS)]
                slow_data = [asyncio.create_task(_slow_data(setup.relay_port)) for _ in range(SLOWLORIS)]
                await asyncio.gather(*(_drop_mid_data(setup.relay_port, n) for n in range(DROPPERS)))
                # Oversized DATA: aiosmtpd discards past the limit, memory must not follow the stream.
                oversize = [asyncio.create_task(_oversize(setup.relay_port, OVERSIZE_MB)) for _ in range(OVERSIZERS)]
                peak = vm_rss_kb(pid)
                while not all(t.done() for t in oversize):
                    peak = max(peak, vm_rss_kb(pid))
                    await asyncio.sleep(0.05)
                figures["oversize"] = [t.result() for t in oversize]
                figures["rss_busy"] = max(peak, vm_rss_kb(pid))
                # A normal client is served while all of that is going on.
                t0 = time.monotonic()
                await aiosmtplib.send(tagged("normal-00000"), sender=SENDER, recipients=[RCPT],
                                      hostname="127.0.0.1", port=setup.relay_port, start_tls=False, timeout=15,
                                      local_hostname="lis.partner.example")
                figures["normal_ms"] = (time.monotonic() - t0) * 1000
                figures["held"] = await asyncio.gather(*holders)
                figures["slow"] = await asyncio.gather(*slow)
                figures["slow_data"] = await asyncio.gather(*slow_data)

            started = time.monotonic()
            asyncio.run(scenario())
            sink.wait_for(1, timeout=20)
            time.sleep(0.5)
            rss_after = vm_rss_kb(pid)
            assert gw.proc.poll() is None, "the gateway died"
            # Still serving after the storm.
            asyncio.run(aiosmtplib.send(tagged("after-00000"), sender=SENDER, recipients=[RCPT],
                                        hostname="127.0.0.1", port=setup.relay_port, start_tls=False, timeout=15,
                                        local_hostname="lis.partner.example"))
            sink.wait_for(2, timeout=20)
        held: list[float | None] = figures["held"]  # type: ignore[assignment]
        slow: list[tuple[float | None, int]] = figures["slow"]  # type: ignore[assignment]
        dropped_idle = [t for t in held if t is not None]
        slow_data: list[float | None] = figures["slow_data"]  # type: ignore[assignment]
        oversize: list[bytes] = figures["oversize"]  # type: ignore[assignment]
        print(f"clients: VmRSS before {rss_before} kB, with {CONNECTIONS * SCALE} connections {figures['rss_busy']} "
              f"kB, after {rss_after} kB; normal client served in {figures['normal_ms']:.0f} ms; idle clients "
              f"dropped after {min(dropped_idle):.1f}-{max(dropped_idle):.1f}s; slowloris dropped after "
              f"{[round(t, 1) if t else None for t, _ in slow]}s, in DATA after "
              f"{[round(t, 1) if t else None for t in slow_data]}s; "
              f"{OVERSIZERS} x {OVERSIZE_MB} MB DATA answered {set(oversize)}")
        assert len(dropped_idle) == len(held), f"{len(held) - len(dropped_idle)} idle connection(s) never dropped"
        assert max(dropped_idle) <= TIMEOUT + 10
        assert all(t is not None and t <= TIMEOUT + 10 for t, _ in slow), slow
        assert all(t is not None and t <= TIMEOUT + 10 for t in slow_data), slow_data
        assert all(r.startswith(b"552") for r in oversize), oversize
        for rss in (rss_before, figures["rss_busy"], rss_after):
            assert rss < RSS_LIMIT_KB, f"gateway VmRSS {rss} kB"
        seen = counts(sink.handler.snapshot())
        assert set(seen) == {"normal-00000", "after-00000"}, seen  # nothing half-sent was delivered
        resilience_report.record(
            f"clients: {CONNECTIONS * SCALE} idle, {2 * SLOWLORIS} slow, {DROPPERS} drops, {OVERSIZERS} oversize",
            sent=2 + DROPPERS + OVERSIZERS,
            acknowledged=2, delivered=len(seen), lost=0, duplicated=sum(1 for v in seen.values() if v > 1),
            note=f"RSS {rss_before // 1024}->{figures['rss_busy'] // 1024}->{rss_after // 1024} MB; normal "  # type: ignore[operator]
                 f"client {figures['normal_ms']:.0f} ms; {time.monotonic() - started:.0f}s")
    finally:
        sink.stop()
