"""Sends the ledger's due ZAMs to each CRÉATEUR: over MLLP (waiting for its ACK ``AA``) or as one
``.hl7`` file per ZAM in its folder.

Why not a `gateway.queueworker.QueueWorker`: that loop works on spool messages (crash counts,
recipient deferrals in the spool); the outbox lives in the ledger. This loop keeps the same
shape (a poll woken early by `wake`, one task per unit of work in hand, stop = cancel the loop,
give the work in flight its grace, then cancel it) with a CRÉATEUR as the unit: its ZAMs go one
after the other in id order, and the first that fails stops the others until its retry (a Z03
never overtakes its Z02). A ZAM is marked sent only after the AA (or the durable rename); an ACK
lost on the way means it is sent again, never lost (the CRÉATEUR dedups on MSH-10).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import time
from collections.abc import Callable

from gateway import tlspolicy
from gateway.cisis.ledger import OutboxEntry, ZamLedger
from gateway.cisis.zam import read_ack
from gateway.config.cisis import CisisSettings, CreatorSettings
from gateway.errors import GatewayError
from gateway.fsutil import write_atomic
from gateway.logs import event
from gateway.queueworker import cancel_loop, finish_or_cancel
from gateway.routing.hl7 import MLLPDecoder, mllp_frame

log = logging.getLogger("gateway.cisis.zam")


def creator_tls_context(creator: CreatorSettings) -> ssl.SSLContext:
    """TLS 1.2+ to the CRÉATEUR, its certificate checked against ``tls_ca`` (system CAs if unset),
    with the broad "compatible" preset: a hospital system, not an MSSanté operator."""
    ctx = ssl.create_default_context(cafile=str(creator.tls_ca) if creator.tls_ca else None)
    tlspolicy.apply(ctx, "compatible")
    return ctx


async def send_mllp(creator: CreatorSettings, entry: OutboxEntry, timeout: float) -> str | None:
    """Send one ZAM and read the ACK: None when acknowledged ``AA`` for this ZAM, else why not
    (a refusal, another code, a timeout, a broken stream): the caller retries later."""
    host, port = creator.mllp_host or "", creator.mllp_port
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=creator_tls_context(creator) if creator.tls else None,
                server_hostname=host if creator.tls else None)
            writer.write(mllp_frame(entry.data))
            await writer.drain()
            decoder = MLLPDecoder()
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return "connection closed before an ACK"
                answers = decoder.feed(chunk)
                if answers:
                    code, acked = read_ack(answers[0])
                    if code != "AA":
                        return f"ACK {code[:2]}"
                    if acked != entry.control_id:
                        return "ACK for another message"
                    return None
    except TimeoutError:
        return "no ACK in time"
    except (OSError, ssl.SSLError) as exc:
        return f"connection failed ({type(exc).__name__})"
    except GatewayError as exc:  # an unreadable answer (MLLP framing, not an ACK)
        return f"unreadable answer ({exc.code})"
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 2)


def write_to_folder(creator: CreatorSettings, entry: OutboxEntry) -> None:
    """``<folder>/<outbox id>.hl7``, atomically (zero-padded: a listing is the send order)."""
    assert creator.folder is not None
    creator.folder.mkdir(parents=True, exist_ok=True, mode=0o750)  # loading the config creates no folder
    write_atomic(creator.folder / f"{entry.id:010d}.hl7", entry.data)


class ZamSender:
    """The outbox worker (see the module docstring)."""

    name = "zam-sender"

    def __init__(self, settings: CisisSettings, ledger: ZamLedger, *, poll_interval: float = 5.0,
                 shutdown_grace: float = 10.0, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.ledger = ledger
        self.poll_interval = poll_interval
        self.shutdown_grace = shutdown_grace
        self.clock = clock
        self._wake = asyncio.Event()
        self._stopping = False
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._loop_task: asyncio.Task[None] | None = None

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    def wake(self) -> None:
        """Look at the outbox now (a ZAM was just queued) rather than at the next poll."""
        self._wake.set()

    async def stop(self, grace: float | None = None) -> tuple[int, int]:
        """Stop polling; let the sends in flight finish for ``grace`` seconds, then cancel them
        (a cancelled ZAM stays pending and is sent again at the next start)."""
        self._stopping = True
        self._wake.set()
        await cancel_loop(self._loop_task)
        return await finish_or_cancel(self._inflight.values(), self.shutdown_grace if grace is None else grace)

    async def _run(self) -> None:
        while not self._stopping:
            await self.run_once()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval)

    async def run_once(self) -> int:
        """Start one task per CRÉATEUR with due ZAMs not already in hand; how many started."""
        try:
            due = await asyncio.to_thread(self.ledger.due, self.clock())
        except GatewayError as exc:
            event(log, "zam-outbox-unavailable", logging.ERROR, reason=str(exc))
            return 0
        started = 0
        for creator, entries in due.items():
            if creator in self._inflight or self._stopping:
                continue
            task = asyncio.get_running_loop().create_task(self._send_all(creator, entries),
                                                          name=f"{self.name}-{creator}")
            self._inflight[creator] = task
            task.add_done_callback(functools.partial(self._done, creator))
            started += 1
        return started

    def _done(self, creator: str, _task: object = None) -> None:
        self._inflight.pop(creator, None)

    async def drain(self) -> None:
        """Wait for the sends in hand (tests and a clean stop)."""
        if self._inflight:
            await asyncio.gather(*self._inflight.values(), return_exceptions=True)

    # -- one CRÉATEUR -------------------------------------------------------------------------
    async def _send_all(self, creator_name: str, entries: list[OutboxEntry]) -> None:
        creator = self.settings.creator_named(creator_name)
        for entry in entries:
            problem = await self._send_one(creator, entry) if creator else "no such creator in [intake.cisis]"
            try:
                if problem is None:
                    await asyncio.to_thread(self.ledger.sent, entry.id)
                    event(log, "zam-sent", creator=creator_name, zam=entry.id, control=entry.control_id)
                    continue
                await asyncio.to_thread(self.ledger.failed, entry.id, self.clock())
            except GatewayError as exc:
                event(log, "zam-outbox-unavailable", logging.ERROR, creator=creator_name, reason=str(exc))
                return
            event(log, "zam-deferred", logging.WARNING, creator=creator_name, zam=entry.id, reason=problem)
            return  # the later ones wait behind this one

    async def _send_one(self, creator: CreatorSettings, entry: OutboxEntry) -> str | None:
        if creator.folder is not None:
            try:
                await asyncio.to_thread(write_to_folder, creator, entry)
            except OSError as exc:
                return f"cannot write to the folder ({type(exc).__name__})"
            return None
        return await send_mllp(creator, entry, self.settings.zam_timeout)


__all__ = ["ZamSender", "creator_tls_context", "send_mllp", "write_to_folder"]
