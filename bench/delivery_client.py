"""CPU of the delivery client per message on a reused session: pipelined vs one command at a time.

Why: issue 15's lean delivery client (branch perf-pipe). `SmtpSession.send` pipelines MAIL, the
RCPTs and DATA in one write when the server offers PIPELINING (RFC 2920) and goes command by
command through aiosmtplib otherwise. This measures both on the same kind of session to the
relay benchmark's own sink (`_support.BenchSink`, another process, which offers PIPELINING):
one session each, opened once (as the connection cache keeps it), then `--count` messages in
rounds that alternate the two ways. The figures are this process's CPU (`time.process_time`,
the event loop's thread: no other thread runs) and the wall time per message; the sink's CPU is
not counted. "stepwise" is the same session with PIPELINING removed from what the client knows.

    .venv/bin/python bench/delivery_client.py [--sizes 1KB,20KB] [--count 2000] [--rounds 3] [--rcpts 1]
No thresholds, no asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _support import RECIPIENT, SENDER, BenchSink, bench_message, body_lines, loadavg  # noqa: E402

from gateway.config import TlsSettings  # noqa: E402
from gateway.delivery.smtp_client import SmtpSession, open_session  # noqa: E402

SIZES = {"1KB": 1_000, "20KB": 20_000, "1MB": 1_000_000}


async def _session(port: int, pipelining: bool) -> SmtpSession:
    session = await open_session(host="127.0.0.1", address="127.0.0.1", port=port, tls=TlsSettings(policy="none"),
                                 helo_name="bench.example")
    if not pipelining:
        session.client.esmtp_extensions.pop("pipelining", None)
    return session


async def _batch(session: SmtpSession, messages: list[bytes], recipients: list[str]) -> tuple[float, float]:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for data in messages:
        results = await session.send(SENDER, recipients, data)
        assert all(r.ok for r in results.values()), results
    return time.process_time() - cpu0, time.perf_counter() - wall0


async def run(port: int, size: int, count: int, rounds: int, rcpts: int) -> dict[str, tuple[float, float]]:
    body = body_lines(size)
    messages = [bench_message(0, i, body) for i in range(count)]
    recipients = [RECIPIENT] + [f"r{i}.{RECIPIENT}" for i in range(1, rcpts)]
    sessions = {"pipelined": await _session(port, True), "stepwise": await _session(port, False)}
    per: dict[str, list[tuple[float, float]]] = {name: [] for name in sessions}
    for session in sessions.values():  # warm-up
        await _batch(session, messages[:50], recipients)
    for _ in range(rounds):
        for name, session in sessions.items():
            cpu, wall = await _batch(session, messages, recipients)
            per[name].append((cpu / count * 1000, wall / count * 1000))
    for session in sessions.values():
        await session.quit()
    return {name: (statistics.median(c for c, _ in v), statistics.median(w for _, w in v)) for name, v in per.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1KB,20KB")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rcpts", type=int, default=1)
    parser.add_argument("--event-loop", choices=("asyncio", "uvloop"), default="uvloop")
    args = parser.parse_args()
    if args.event_loop == "uvloop":
        import uvloop
        uvloop.install()
    with tempfile.TemporaryDirectory() as work:
        sink = BenchSink(Path(work)).start()
        try:
            print(f"load average {loadavg():.2f}; {args.event_loop}; {args.rcpts} recipient(s); median of "
                  f"{args.rounds} rounds of {args.count}", flush=True)
            print("| size | way | CPU ms/msg | wall ms/msg |\n|---|---|---|---|")
            for name in args.sizes.split(","):
                figures = asyncio.run(run(sink.port, SIZES[name], args.count, args.rounds, args.rcpts))
                for way, (cpu, wall) in figures.items():
                    print(f"| {name} | {way} | {cpu:.3f} | {wall:.3f} |", flush=True)
        finally:
            sink.stop()
    print(f"load average {loadavg():.2f}")


if __name__ == "__main__":
    main()
