"""Optional worker processes for one token key: more signatures per second from an HSM.

One module thread serialises every call of the process (python-pkcs11 gives the module no
locks), so a busy lab key tops out at what one session does. Each worker process is its own
PKCS#11 application: it loads the module, logs in once (lazily, at its first request) and
runs every call on its single task thread. The PIN handed to the processes is the one the
parent just logged in with, so a wrong PIN is never spread over several processes; processes
are started with `spawn`, never `fork` (forking a process that has a PKCS#11 module loaded
is undefined behaviour). Requests travel in batches (one inter-process round trip for up to
`BATCH` signatures), otherwise the parent's pickling and pipe work eats the gain.

Meant for HSMs: a smart card is one physical chip, several processes only queue on it.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import weakref
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from pkcs11 import Mechanism

from gateway.errors import GatewayError
from gateway.smime.pkcs11.errors import TokenAbsent, TokenDeviceError
from gateway.smime.pkcs11.mechanisms import SignPlan
from gateway.smime.pkcs11.pin import PinSource, StaticPin
from gateway.smime.pkcs11.uri import Pkcs11Uri

BATCH = 16
_OPEN_ATTEMPTS = 5

# Per worker process: (module path, URI text, PIN or None, usage) and, after the first call,
# the opened (worker, state, handle, pin source).
_params: tuple[str, str, str | None, str | None] | None = None
_opened: tuple[Any, Any, Any, PinSource | None] | None = None


def _child_init(module_path: str, uri_text: str, pin: str | None, usage: str | None) -> None:
    global _params
    _params = (module_path, uri_text, pin, usage)


def _child_open() -> tuple[Any, Any, Any, PinSource | None]:
    global _opened
    if _opened is None:
        from gateway.smime.pkcs11.session import find_key_on_thread
        from gateway.smime.pkcs11.uri import parse_uri
        from gateway.smime.pkcs11.worker import get_worker

        if _params is None:
            raise TokenDeviceError("PKCS#11 worker process started without parameters")
        module_path, uri_text, pin, usage = _params
        worker = get_worker(module_path)
        worker.adopt_current_thread()  # this process's task thread is its one module thread
        pin_source = StaticPin(pin) if pin else None
        for attempt in range(1, _OPEN_ATTEMPTS + 1):
            try:
                state, handle = find_key_on_thread(worker, parse_uri(uri_text), pin_source, usage)
                break
            except TokenAbsent:
                # The parent has just used this token, so it is there: SoftHSM's file store can
                # miss it when several processes initialise at once. Rescan a few times.
                if attempt == _OPEN_ATTEMPTS:
                    raise
                time.sleep(0.05 * attempt)
                worker.reinitialize(force=True)
        _opened = (worker, state, handle, pin_source)
    return _opened


def _child_batch(requests: list[tuple[str, tuple[Any, ...]]]) -> list[tuple[bool, Any]]:
    """Run a batch in order; each result is (True, bytes) or (False, GatewayError)."""
    out: list[tuple[bool, Any]] = []
    try:
        _, state, handle, pin = _child_open()
    except GatewayError as exc:
        return [(False, exc)] * len(requests)
    for op, args in requests:
        try:
            if op == "sign":
                out.append((True, state.sign(handle, args[0], pin)))
            else:
                out.append((True, state.decrypt(handle, args[0], args[1], args[2], pin)))
        except GatewayError as exc:
            out.append((False, exc))
    return out


def _child_ping() -> int:
    _child_open()
    return 1


class _LoopQueue:
    """Requests waiting for a batch, for one event loop."""

    def __init__(self) -> None:
        self.items: deque[tuple[str, tuple[Any, ...], asyncio.Future[Any]]] = deque()
        self.drainers = 0


class TokenProcessPool:
    """`processes` spawned workers, each with one login and one module thread."""

    def __init__(self, module_path: str, uri: Pkcs11Uri, pin: PinSource | None, processes: int,
                 usage: str | None) -> None:
        self.processes = processes
        self.batch = BATCH
        self._initargs = (module_path, str(uri), pin.read() if pin is not None else None, usage)
        self._executor: ProcessPoolExecutor | None = None
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopQueue] = (
            weakref.WeakKeyDictionary())

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=self.processes, mp_context=multiprocessing.get_context("spawn"),
                initializer=_child_init, initargs=self._initargs)
        return self._executor

    async def _run(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool(), fn, *args)
        except BrokenProcessPool:
            self.close()
            raise TokenDeviceError("a PKCS#11 worker process died; the pool restarts at the next request"
                                   ) from None

    async def warm_up(self) -> None:
        """Start every process and log each in (otherwise they start on demand)."""
        await asyncio.gather(*(self._run(_child_ping) for _ in range(self.processes * 2)))

    async def sign(self, plan: SignPlan) -> bytes:
        return await self._submit("sign", (plan,))

    async def decrypt(self, mechanism: Mechanism, param: Any, data: bytes) -> bytes:
        return await self._submit("decrypt", (mechanism, param, data))

    async def _submit(self, op: str, args: tuple[Any, ...]) -> Any:
        loop = asyncio.get_running_loop()
        queue = self._queues.get(loop)
        if queue is None:
            queue = self._queues[loop] = _LoopQueue()
        fut: asyncio.Future[Any] = loop.create_future()
        queue.items.append((op, args, fut))
        if queue.drainers < 2 * self.processes:
            queue.drainers += 1
            loop.create_task(self._drain(queue))
        return await fut

    async def _drain(self, queue: _LoopQueue) -> None:
        """Send waiting requests in batches, in arrival order, until none is left."""
        try:
            while queue.items:
                batch = [queue.items.popleft() for _ in range(min(BATCH, len(queue.items)))]
                try:
                    results = await self._run(_child_batch, [(op, args) for op, args, _ in batch])
                except GatewayError as exc:
                    results = [(False, exc)] * len(batch)
                for (_, _, fut), (ok, value) in zip(batch, results, strict=True):
                    if fut.done():
                        continue
                    if ok:
                        fut.set_result(value)
                    else:
                        fut.set_exception(value)
        finally:
            queue.drainers -= 1

    def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
