"""A bounded, first-come-first-served request queue per token.

A lab signs thousands of results a day with one organisation key: requests must be served in
arrival order, only a few may be in flight at once (the module thread or the worker
processes do the real work), and the waiting line must be bounded so a stuck token turns
into quick temporary errors (the spool retries) instead of unbounded memory. asyncio
primitives bind to one event loop, and a key object lives longer than a loop in tests and
CLI runs, so there is one limiter per (key, loop).
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from types import TracebackType

from gateway.smime.pkcs11.errors import TokenBusy


class FifoLimiter:
    """At most `concurrency` holders; up to `max_waiting` more wait in FIFO order."""

    def __init__(self, concurrency: int, max_waiting: int, name: str = "token") -> None:
        if concurrency < 1 or max_waiting < 0:
            raise ValueError("concurrency must be >= 1 and max_waiting >= 0")
        self.concurrency = concurrency
        self.max_waiting = max_waiting
        self.name = name
        self._active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def active(self) -> int:
        return self._active

    async def acquire(self) -> None:
        if self._active < self.concurrency and not self._waiters:
            self._active += 1
            return
        if len(self._waiters) >= self.max_waiting:
            raise TokenBusy(f"too many requests waiting for {self.name} ({self.max_waiting}); retry later")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut  # the releaser hands its slot over: _active is unchanged
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # we were handed a slot while being cancelled: pass it on
            else:
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass
            raise

    def release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self._active -= 1

    async def __aenter__(self) -> FifoLimiter:
        await self.acquire()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.release()


class PerLoopLimiter:
    """One FifoLimiter per running event loop (loops are weakly referenced)."""

    def __init__(self, concurrency: int, max_waiting: int, name: str = "token") -> None:
        self.concurrency = concurrency
        self.max_waiting = max_waiting
        self.name = name
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, FifoLimiter] = (
            weakref.WeakKeyDictionary())

    def current(self) -> FifoLimiter:
        loop = asyncio.get_running_loop()
        limiter = self._by_loop.get(loop)
        if limiter is None:
            limiter = self._by_loop[loop] = FifoLimiter(self.concurrency, self.max_waiting, self.name)
        return limiter
