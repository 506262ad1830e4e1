"""The gateway's loop has an executor wide enough for the spool's waits (issue 15, third round):
each spool call holds a thread while it waits for a group commit or an fsync, so asyncio's
default of min(32, cores + 4) threads (6 on the 2-core bench machine) queued new accepts behind
calls that were only waiting. Real threads, a real loop."""

from __future__ import annotations

import asyncio
import threading

from gateway.workers import run_on_loop


def test_the_loop_runs_twenty_four_waiting_calls_at_once() -> None:
    """24 blocking calls that each wait for all the others (a barrier) finish only when the
    executor runs them all at the same time."""
    parties = 24
    barrier = threading.Barrier(parties, timeout=5)
    done: list[int] = []

    async def main() -> None:
        done.extend(await asyncio.gather(*(asyncio.to_thread(barrier.wait) for _ in range(parties))))

    run_on_loop(main, "asyncio")
    assert sorted(done) == list(range(parties))
