"""Stopping the queue's workers (the pipeline runner, delivery) the same way: their poll loop is
cancelled at once, the work in flight gets a grace period, then is cancelled too.

Why one place: what is cancelled is left as it is on disk (still received, still pending) and
taken up again at the next start, so both workers must stop in exactly this order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable


async def cancel_loop(task: asyncio.Task[None] | None) -> None:
    """Cancel a worker's poll loop and wait until it has stopped."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def finish_or_cancel(tasks: Iterable[asyncio.Task[None]], grace: float) -> tuple[int, int]:
    """Let `tasks` finish for `grace` seconds, then cancel the rest: (finished, cancelled)."""
    running = list(tasks)
    if not running:
        return 0, 0
    _, pending = await asyncio.wait(running, timeout=grace)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    return len(running) - len(pending), len(pending)
