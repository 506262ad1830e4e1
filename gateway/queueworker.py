"""What the spool's two workers (the pipeline runner, delivery) share: a poll loop woken early by
hand-offs, one task per message in hand, messages held back after a spool failure, and the way
they stop (the loop cancelled at once, the work in flight given its grace, then cancelled).

Why one class: what is cancelled is left as it is on disk (still received, still pending) and
taken up again at the next start, so both workers must take and leave work in exactly this way.
A worker says what is due (`_due`) and what to do with one message (`_work`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.logs import event
from gateway.spool import QueueStore

#: Unexpected failures of one message before it is quarantined (kept, not retried).
CRASH_LIMIT = 5


class QueueWorker:
    """A poll loop over the spool with one task per message in hand (see the module docstring)."""

    #: The loop's task name, and the prefix of each message's task.
    name = "queue-worker"

    def __init__(self, config: GatewayConfig, spool: QueueStore, clock: Callable[[], float],
                 log: logging.Logger) -> None:
        self.config = config
        self.spool = spool
        self.clock = clock
        self._log = log
        self._wake = asyncio.Event()
        self._stopping = False
        self._inflight: dict[str, asyncio.Task[None]] = {}
        #: Messages whose new state could not be written (spool full or unwritable): left alone
        #: in memory until this time, instead of being picked up again at once (a busy loop).
        self._held: dict[str, float] = {}
        self._loop_task: asyncio.Task[None] | None = None

    # -- what a worker defines ----------------------------------------------------------------
    async def _due(self) -> list[Any]:
        """The messages due now that are not in hand (`_excluded`)."""
        raise NotImplementedError

    def _work(self, msg: Any) -> Coroutine[Any, Any, None]:
        """What to do with one due message."""
        raise NotImplementedError

    async def _defer(self, msg: Any, rcpts: list[Any], error: str, status: str) -> None:
        """Put these recipients back for a later attempt (with the backoff)."""
        raise NotImplementedError

    # -- one message, guarded -----------------------------------------------------------------
    async def _guard(self, msg: Any, rcpts: list[Any], work: Awaitable[None]) -> None:
        """Run one message's work. A typed error defers its recipients (a permanent one as
        4.3.0: at this point it is ours, not the message's); anything else is a crash, counted in
        the spool: after CRASH_LIMIT the message is quarantined for an operator instead of
        stopping the worker or being retried forever."""
        try:
            await work
        except asyncio.CancelledError:
            raise
        except GatewayError as exc:
            event(self._log, "processing-deferred", logging.WARNING, msg=msg.id, reason=str(exc))
            await self._defer(msg, rcpts, str(exc), exc.status if exc.temporary else "4.3.0")
        except Exception as exc:  # noqa: BLE001 - a poison message must not stop the worker
            event(self._log, "processing-crashed", logging.ERROR, msg=msg.id, exc_type=type(exc).__name__)
            try:
                quarantined = await asyncio.to_thread(self.spool.record_crash, msg.id, limit=CRASH_LIMIT)
            except GatewayError as again:
                self._hold(msg.id, again)
                return
            if quarantined:
                event(self._log, "quarantined", logging.ERROR, msg=msg.id)
            else:
                await self._defer(msg, rcpts, "internal error while processing", "4.3.0")

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    @property
    def running(self) -> bool:
        return self._loop_task is not None and not self._stopping

    def wake(self) -> None:
        """Look at the spool now rather than at the next poll."""
        self._wake.set()

    async def _stop_taking_work(self, grace: float | None) -> tuple[int, int]:
        """Stop the loop, let the work in flight finish for `grace` seconds (the configured
        shutdown grace by default), then cancel it: (finished, cancelled)."""
        self._stopping = True
        self._wake.set()
        await cancel_loop(self._loop_task)
        return await finish_or_cancel(self._inflight.values(),
                                      self.config.spool.shutdown_grace if grace is None else grace)

    async def _run(self) -> None:
        while not self._stopping:
            try:
                due = await self._due()
            except GatewayError as exc:
                event(self._log, "spool-unavailable", logging.ERROR, reason=str(exc))
                due = []
            for msg in due:
                if self._stopping:
                    break
                if msg.id not in self._inflight:  # else handed over while the query ran
                    self._take(msg.id, self._work(msg))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.config.spool.poll_interval)

    # -- messages in hand -----------------------------------------------------------------------
    def _take(self, msg_id: str, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` for this message as its own task, known as in hand until it ends."""
        task = asyncio.get_running_loop().create_task(work, name=f"{self.name}-{msg_id}")
        self._inflight[msg_id] = task
        task.add_done_callback(functools.partial(self._done, msg_id))

    def _done(self, msg_id: str, _task: object = None) -> None:
        # No wake: new work arrives by hand-off or is woken by whoever made it; what an attempt
        # deferred waits for its time, which the poll finds. A spool query per finished message
        # would cost what the hand-offs save.
        self._inflight.pop(msg_id, None)

    def _excluded(self) -> set[str]:
        return set(self._inflight) | self._held_now()

    def _held_now(self) -> set[str]:
        now = self.clock()
        for msg_id in [m for m, until in self._held.items() if until <= now]:
            del self._held[msg_id]
        return set(self._held)

    def _hold(self, msg_id: str, exc: GatewayError) -> None:
        self._held[msg_id] = self.clock() + self.config.spool.retry_schedule[0]
        event(self._log, "spool-unavailable", logging.ERROR, msg=msg_id, reason=str(exc))


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


__all__ = ["CRASH_LIMIT", "QueueWorker", "cancel_loop", "finish_or_cancel"]
