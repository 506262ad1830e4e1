"""The pipeline runner: turns *received* messages into *prepared* copies, once (Postfix's
cleanup before the queue, Mailman's pipeline runner before its `out` queue).

For each received message due, the runner runs `Pipeline.run` once for the recipients still
received (the stages are async; a large message's CPU work goes to worker threads, a small one's
stays on the loop: `gateway.smime.protect.INLINE_LIMIT`), then records the result with
`Spool.prepare` (with the message read back, one trip to a worker thread: a small message just
accepted is prepared with that one hop, issue 15): the copies' bytes in files, then one
transaction that links every recipient to its copy, writes the refusals (permanent → bounced
with the reason, temporary → still received, with a backoff) and marks the message prepared.
Delivery (gateway/delivery/) then only moves those bytes: a retry re-sends the same copy, it
never signs, encrypts or decides again, so the stages' audit decisions are written once per
preparation (a crash before the commit prepares again: at least once, as delivery itself).

A preparation without refusals is handed to delivery *before* it is recorded (`send_first`,
issue 15): what an attempt delivers or bounces is then written with its outcome, in the one
transaction that finishes the message, and only recipients the attempt defers get the
preparation recorded (their copy and the deferral, one transaction), for the retry to re-send.
Why: the preparation's own transaction, its copy file and its trip to a worker thread cost a
sixth of a signed message's CPU, for a record the usual message (delivered at once) never
reads. It is no weaker: the preparation was already a cache written without waiting for the
disk; a crash of the process before the outcome leaves the recipients received, prepared and
sent again (at least once, as before); an attempt cancelled at stop leaves them received
(prepared again at the next start); an exception in the attempt defers them with their copy
recorded, as any deferral (the retry re-sends it).

A temporary failure of the whole run (a key that is unavailable, a directory that does not
answer) leaves every recipient received with a backoff; an unexpected exception counts as a
crash, and after `CRASH_LIMIT` of them the message is quarantined for an operator. A full disk
(SpoolError) holds the message in memory and tries again later; nothing is lost, as the
recipients stay received on disk.

`QueueService` runs the runner and the delivery manager together (what `gateway.app` starts):
the runner wakes delivery as soon as it prepared something. On a shared store (PostgreSQL) a
`WorkWaker` thread per process turns `LISTEN msgw_queue` notifications (another node's or
worker's accept, preparation, retry) into wakes of both; the poll stays the safety net.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

from gateway.config import GatewayConfig
from gateway.delivery.manager import Batch, DeliveryManager
from gateway.delivery.nexthop import NextHopResolver
from gateway.errors import GatewayError, SpoolError
from gateway.logs import event
from gateway.ops import metrics
from gateway.pipeline import Envelope, Pipeline, PipelineResult
from gateway.queueworker import CRASH_LIMIT, QueueWorker
from gateway.spool import NewCopy, Outcome, PreparedCopy, QueuedMessage, QueuedRecipient, QueueStore, RecipientState

log = logging.getLogger("gateway.runner")

__all__ = ["CRASH_LIMIT", "PipelineRunner", "QueueService", "WorkWaker"]

#: Sends a preparation the spool could not record: (message, copies, refusals' outcomes).
Unrecorded = Callable[[QueuedMessage, list[Batch], list[Outcome]], Awaitable[None]]
#: Takes a preparation to deliver before recording it: (message, batches, the copies to record
#: for whatever the attempt defers); False when it cannot take it now (then it is recorded).
SendFirst = Callable[[QueuedMessage, list[Batch], list[NewCopy]], bool]


class PipelineRunner(QueueWorker):
    """Prepares received messages from the spool until stopped."""

    name = "prepare"

    def __init__(self, config: GatewayConfig, spool: QueueStore, pipeline: Pipeline | None = None, *,
                 clock: Callable[[], float] = time.time, audit: Callable[..., None] | None = None,
                 on_prepared: Callable[[str], None] | None = None, unrecorded: Unrecorded | None = None,
                 busy: Callable[[], set[str]] = set,
                 handoff: Callable[[QueuedMessage, dict[int, bytes]], object] | None = None,
                 send_first: SendFirst | None = None) -> None:
        super().__init__(config, spool, clock, log)
        self.pipeline = pipeline or Pipeline()
        self.audit = audit
        self.on_prepared = on_prepared
        #: Where a preparation the spool cannot record (full disk) is sent from memory.
        self.unrecorded = unrecorded
        #: Messages another worker holds in memory (their state not written yet): not prepared again.
        self.busy = busy
        #: Told of each recipient bounced here once it is written (the same listener as delivery's:
        #: queue id, recipient, "bounced", status, reason), e.g. the CI-SIS ZAM ledger.
        self.on_outcome: Callable[[str, str, str, str, str | None], None] | None = None
        #: Where a message goes once prepared, with its copies' bytes (delivery, without a poll).
        #: Only while running (`start`): `run_once` leaves delivery to its caller.
        self.handoff = handoff
        #: Where a preparation without refusals goes before it is recorded (see the module
        #: docstring); None: every preparation is recorded first. Only while running.
        self.send_first = send_first
        self._parallel = asyncio.Semaphore(config.delivery.max_parallel)

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking new work; let preparations in flight finish for `grace` seconds, then
        cancel them (their recipients stay received and are prepared on the next start)."""
        await self._stop_taking_work(grace)

    async def _due(self) -> list[QueuedMessage]:
        return await asyncio.to_thread(self.spool.due_received, self.clock(),
                                       limit=self.config.delivery.max_parallel * 4, exclude=self._excluded())

    def _work(self, msg: QueuedMessage) -> Coroutine[Any, Any, None]:
        return self._prepare_guarded(msg)

    def _excluded(self) -> set[str]:
        return super()._excluded() | self.busy()

    async def run_once(self) -> int:
        """Prepare everything due now and wait for it (tests and `QueueService.run_once`)."""
        due = await asyncio.to_thread(self.spool.due_received, self.clock(),
                                      exclude=self._excluded())
        await asyncio.gather(*(self._prepare_guarded(m) for m in due))
        return len(due)

    def prepare_now(self, msg_id: str) -> None:
        """A message just accepted (SMTP, intake doors): prepared at once, without a poll of the
        spool. Not running, already in hand or stopping: the poll takes it as any other."""
        if not self.running or msg_id in self._inflight:
            self._wake.set()
            return
        self._take(msg_id, self._fetch_and_prepare(msg_id))

    async def _fetch_and_prepare(self, msg_id: str) -> None:
        kept = self.spool.take_accepted(msg_id)  # as accepted, with its bytes: nothing to read back
        if kept is not None:
            fresh, data = kept
            if fresh.stage == "prepared" and self.handoff is not None:  # accepted as its own copy
                self.handoff(fresh, {copy.id: data for copy in fresh.copies})
                return
            await self._prepare_guarded(fresh, data)
            return
        try:
            # The bytes only while a preparation slot is free: a message waiting for one holds
            # its row, never its bytes (what the accepted-memory bound is for).
            msg, stored = await asyncio.to_thread(self._read, msg_id, not self._parallel.locked())
        except GatewayError as exc:
            event(log, "spool-unavailable", logging.ERROR, msg=msg_id, reason=str(exc))
            self._wake.set()
            return
        if msg is not None and not msg.quarantined:
            await self._prepare_guarded(msg, stored)

    def _read(self, msg_id: str, with_bytes: bool = True) -> tuple[QueuedMessage | None, bytes | None]:
        """The message and, when it has recipients to prepare now, its bytes: one trip to a
        worker thread instead of two (issue 15). Bytes that cannot be read are None: `_prepare`
        reads them again and meets the error where it always did (under `_guard`)."""
        msg = self.spool.get(msg_id)
        if not with_bytes or msg is None or msg.quarantined or not any(
                not r.prepared and r.next_attempt <= self.clock() for r in msg.pending):
            return msg, None
        try:
            return msg, self.spool.message_bytes(msg_id)
        except GatewayError:
            return msg, None

    # -- one message ------------------------------------------------------------------------
    async def _prepare_guarded(self, msg: QueuedMessage, data: bytes | None = None) -> None:
        todo = [r for r in msg.pending if not r.prepared and r.next_attempt <= self.clock()]
        if not todo:
            return
        async with self._parallel:
            await self._guard(msg, todo, self._prepare(msg, todo, data))

    async def _prepare(self, msg: QueuedMessage, todo: list[QueuedRecipient], data: bytes | None = None) -> None:
        if self.clock() >= msg.expires:
            await self._write(msg, [_bounced(r, "message expired in the queue before it could be delivered "
                                             f"(last error: {todo[0].last_error or 'none'})", "4.4.7")
                                    for r in todo])
            return
        if data is None:
            data = await asyncio.to_thread(self.spool.message_bytes, msg.id)
        if len(data) != msg.size:  # e.g. emptied by `msgw queue delete` on a full disk: never send it
            raise SpoolError(f"queued message {msg.id} is damaged ({len(data)} bytes on disk, {msg.size} queued)")
        envelope = Envelope(queue_id=msg.id, sender=msg.sender, recipients=tuple(r.address for r in todo),
                            auth_user=msg.auth_user, listener=msg.listener)
        try:
            result = await self.pipeline.run(envelope, data)
        except GatewayError as exc:
            if exc.temporary:
                await self._defer(msg, todo, str(exc), exc.status)
                key = getattr(exc, "needs_key", "")  # `stages.build.TokenNotHere`: the card is on another node
                if key:
                    await self._route_to_key(msg, key)
            else:
                await self._write(msg, [_bounced(r, str(exc), exc.status) for r in todo])
            return
        copies, outcomes = self._plan(msg, todo, data, result)
        if (copies and not outcomes and self.send_first is not None and self.running
                and self.send_first(*_unrecorded(msg, copies), copies)):
            event(log, "prepared", msg=msg.id, copies=len(copies), forms=sorted({c.form for c in copies}),
                  rcpts=sum(len(c.rcpt_ids) for c in copies), refused=0, recorded=False)
            return
        try:
            fresh = await asyncio.to_thread(self._record, msg.id, copies, outcomes)
        except SpoolError as exc:  # full disk: the recipients stay received on disk
            self._hold(msg.id, exc)
            if self.unrecorded is not None:
                await self.unrecorded(*_unrecorded(msg, copies), outcomes)
            return
        event(log, "prepared", msg=msg.id, copies=len(copies), forms=sorted({c.form for c in copies}),
              rcpts=sum(len(c.rcpt_ids) for c in copies), refused=len(outcomes))
        self._report(msg, outcomes)
        if fresh is not None and self.handoff is not None and self.running:
            self.handoff(fresh, _in_memory(fresh, copies))
        else:
            self._prepared(msg.id)

    async def _route_to_key(self, msg: QueuedMessage, key: str) -> None:
        """The token of `key` is not in this machine: mark the message for a node holding it
        (a shared queue; on SQLite a no-op: the deferral waits for the card)."""
        try:
            await asyncio.to_thread(self.spool.route_to_key, msg.id, key)
        except SpoolError as exc:  # the deferral is written: the message still waits, here or anywhere
            event(log, "route-to-key-failed", logging.WARNING, msg=msg.id, reason=str(exc))
            return
        event(log, "routed-to-key", msg=msg.id, key=key)

    def _record(self, msg_id: str, copies: list[NewCopy], outcomes: list[Outcome]) -> QueuedMessage | None:
        """The preparation recorded and the message as it now is (for the hand-off to delivery),
        read in the same transaction (`prepare_for_delivery`); None when it was deleted meanwhile."""
        return self.spool.prepare_for_delivery(msg_id, copies, outcomes)

    def _plan(self, msg: QueuedMessage, todo: list[QueuedRecipient], data: bytes, result: PipelineResult
              ) -> tuple[list[NewCopy], list[Outcome]]:
        """The pipeline's result as spool rows: one copy per distinct buffer and TLS demand, and
        an outcome for every refused recipient (and for any the stages left without a copy)."""
        by_address = {r.address: r for r in todo}
        outcomes: list[Outcome] = []
        for refusal in result.refusals:
            rcpt = by_address.pop(refusal.recipient, None)
            if rcpt is None:
                continue
            if refusal.temporary:
                outcomes.append(self._deferral(msg, rcpt, refusal.reason, refusal.status))
            else:
                outcomes.append(_bounced(rcpt, refusal.reason, refusal.status))
        copies: list[NewCopy] = []
        for copy_data, form, require_tls, addresses in _shared_copies(result.outgoing):
            ids = tuple(by_address.pop(a).id for a in addresses if a in by_address)
            if ids:
                same = copy_data is data or copy_data == data
                copies.append(NewCopy(form, require_tls, copy_data, ids, same_as_message=same))
        # A recipient no stage gave a copy or a refusal: kept, and tried again later.
        outcomes += [self._deferral(msg, r, "no copy was prepared for this recipient", "4.3.0")
                     for r in by_address.values()]
        return copies, outcomes

    # -- outcomes ---------------------------------------------------------------------------
    def _deferral(self, msg: QueuedMessage, rcpt: QueuedRecipient, error: str, status: str) -> Outcome:
        """Received again at the next attempt, or bounced when that would be past the expiry."""
        status = status if status.startswith("4") else "4" + status[1:]
        schedule = self.config.spool.retry_schedule
        when = self.clock() + schedule[min(rcpt.attempts, len(schedule) - 1)]
        if when > msg.expires:
            return _bounced(rcpt, f"retry period expired; last error: {error}", "4.4.7")
        return Outcome(rcpt.id, RecipientState.DEFERRED, status, error[:500], next_attempt=when,
                       address=rcpt.address)

    async def _defer(self, msg: QueuedMessage, rcpts: list[QueuedRecipient], error: str, status: str) -> None:
        await self._write(msg, [self._deferral(msg, r, error, status) for r in rcpts])

    async def _write(self, msg: QueuedMessage, outcomes: list[Outcome]) -> None:
        """Record outcomes without copies (the whole run failed, or the message expired)."""
        try:
            await asyncio.to_thread(self.spool.record_outcomes, outcomes)
        except SpoolError as exc:
            self._hold(msg.id, exc)  # nothing recorded: the recipients are still received
            return
        self._report(msg, outcomes)
        self._prepared(msg.id)

    def _prepared(self, msg_id: str) -> None:
        if self.on_prepared is not None:
            self.on_prepared(msg_id)

    def _report(self, msg: QueuedMessage, outcomes: Iterable[Outcome]) -> None:
        outcomes = list(outcomes)
        metrics.outcomes(msg, outcomes, self.clock())
        counts: dict[tuple[RecipientState, str], int] = defaultdict(int)
        for o in outcomes:
            counts[(o.state, o.status)] += 1
            if o.state is RecipientState.BOUNCED:
                self._audit(msg, o)
                self._tell(msg, o)
        for (state, status), n in counts.items():
            if state is RecipientState.DEFERRED:
                event(log, "deferred", msg=msg.id, rcpts=n, status=status)
            elif state is RecipientState.BOUNCED:
                event(log, "bounced", logging.WARNING, msg=msg.id, rcpts=n, status=status)

    def _tell(self, msg: QueuedMessage, outcome: Outcome) -> None:
        """The outcome listener hears of a refusal here as of a bounce in delivery; its fault is its own."""
        if self.on_outcome is None:
            return
        try:
            self.on_outcome(msg.id, outcome.address, outcome.state.value, outcome.status, outcome.error)
        except Exception as exc:  # noqa: BLE001 - the listener's fault is not the runner's
            event(log, "outcome-listener-failed", logging.ERROR, msg=msg.id, exc_type=type(exc).__name__)

    def _audit(self, msg: QueuedMessage, outcome: Outcome) -> None:
        if self.audit is None:
            return
        try:
            self.audit(message_id=msg.id, sender=msg.sender, recipient=outcome.address, decision="outcome",
                       outcome=f"{outcome.state.value} {outcome.status}", next_hop=None)
        except GatewayError as exc:
            event(log, "audit-failed", logging.ERROR, msg=msg.id, reason=str(exc))


def _shared_copies(outgoing: Iterable[Any]) -> list[tuple[bytes, str, bool, list[str]]]:
    """Copies that share one buffer (and the same TLS demand) merged into one recipient list.

    Why: a stage may give each local mailbox its own Outgoing on the same bytes; stored and
    delivered one by one, each would be its own file and its own LMTP transaction. Merged by the
    buffer's identity, not its content: comparing 10 MB buffers would cost what it saves."""
    merged: dict[tuple[int, bool], tuple[bytes, str, bool, dict[str, None]]] = {}
    for copy in outgoing:
        entry = merged.setdefault((id(copy.data), copy.require_tls), (copy.data, copy.form, copy.require_tls, {}))
        entry[3].update(dict.fromkeys(copy.recipients))
    return [(data, form, require_tls, list(addresses)) for data, form, require_tls, addresses in merged.values()]


def _in_memory(msg: QueuedMessage, copies: list[NewCopy]) -> dict[int, bytes]:
    """The bytes of the copies just recorded, by their row id: `prepare` inserts them in order,
    in one transaction, so they are the message's last `len(copies)` copies."""
    rows = sorted(msg.copies, key=lambda c: c.id)[-len(copies):] if copies else []
    return {row.id: new.data for row, new in zip(rows, copies, strict=False)
            if row.size == len(new.data) and row.form == new.form}


def _unrecorded(msg: QueuedMessage, copies: list[NewCopy]) -> tuple[QueuedMessage, list[Batch]]:
    """Copies not recorded (yet), in the form delivery sends: the message as delivery sees it
    (each copy under a negative id, no row, no file, its recipients linked to it, so metrics
    and logs name the form), and one batch per copy."""
    rows = [PreparedCopy(-n, msg.id, c.form, c.require_tls, len(c.data), "") for n, c in enumerate(copies, 1)]
    link = {i: row.id for row, c in zip(rows, copies, strict=True) for i in c.rcpt_ids}
    view = dataclasses.replace(msg, copies=(*msg.copies, *rows), recipients=tuple(
        dataclasses.replace(r, copy_id=link[r.id]) if r.id in link else r for r in msg.recipients))
    rcpts = {r.id: r for r in view.recipients}
    return view, [(row, c.data, [rcpts[i] for i in c.rcpt_ids]) for row, c in zip(rows, copies, strict=True)]


def _bounced(rcpt: QueuedRecipient, error: str, status: str) -> Outcome:
    return Outcome(rcpt.id, RecipientState.BOUNCED, status, error[:500], address=rcpt.address)


class WorkWaker:
    """A thread that waits on the shared store's `LISTEN msgw_queue` (`PgSpool.wait_for_work`)
    and wakes this process's runner and delivery on the event loop: a message accepted, prepared
    or retried on another node (or another worker of this one) is taken up at once instead of at
    the next poll. Only a wake: the poll (`spool.poll_interval`) stays the safety net, so a lost
    notification (a dropped LISTEN connection, the server restarting) costs one poll interval,
    never a message. A burst is one wake every `gap` seconds at most (the workers' loop claims
    everything due in one query)."""

    #: How long `wait_for_work` blocks at a time (the longest `stop` waits for the thread).
    WAIT = 1.0

    def __init__(self, spool: Any, loop: asyncio.AbstractEventLoop, wake: Callable[[], None],
                 gap: float = 0.05) -> None:
        self.spool = spool
        self.loop = loop
        self.wake = wake
        self.gap = gap
        self.wakes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="msgw-queue-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self) -> None:
        self._thread.join(timeout=self.WAIT + 5.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                woken = self.spool.wait_for_work(self.WAIT)
            except Exception as exc:  # noqa: BLE001 - the poll is the safety net; never die
                event(log, "queue-listen-failed", logging.WARNING, exc_type=type(exc).__name__)
                self._stop.wait(self.WAIT)
                continue
            if woken and not self._stop.is_set():
                self.wakes += 1
                try:
                    self.loop.call_soon_threadsafe(self.wake)
                except RuntimeError:  # the loop is closed: the gateway is stopping
                    return
                self._stop.wait(self.gap)


class QueueService:
    """The spool's two workers: the runner (received → prepared) and delivery (prepared →
    sent). The runner wakes delivery as soon as it prepared something."""

    def __init__(self, config: GatewayConfig, spool: QueueStore, pipeline: Pipeline | None = None,
                 resolver: NextHopResolver | None = None, clock: Callable[[], float] = time.time,
                 audit: Callable[..., None] | None = None) -> None:
        self._listeners: list[Callable[[str, str, str, str, str | None], None]] = []
        self.spool = spool
        #: The LISTEN/NOTIFY thread on a shared store (None on SQLite: one node, hand-offs suffice).
        self._waker: WorkWaker | None = None
        self.delivery = DeliveryManager(config, spool, resolver, clock=clock, audit=audit,
                                        on_unprepared=lambda _id: self.runner.wake())
        self.runner = PipelineRunner(config, spool, pipeline, clock=clock, audit=audit,
                                     on_prepared=lambda _id: self.delivery.wake(),
                                     handoff=self.delivery.deliver_now,
                                     unrecorded=self.delivery.deliver_unrecorded, busy=self.delivery.busy,
                                     send_first=self.delivery.send_first)

    def add_outcome_listener(self, listener: Callable[[str, str, str, str, str | None], None]) -> None:
        """Tell ``listener`` of every final outcome, from the runner (refusals) and delivery alike;
        several listeners (the CI-SIS ledger, the LPS reporter) each hear every outcome, in the
        order added, one's fault not keeping the others from hearing it."""
        self._listeners.append(listener)
        self.runner.on_outcome = self.delivery.on_outcome = self._tell_all

    #: The one-listener name of before (issue 13); adds a listener.
    listen_outcomes = add_outcome_listener

    def _tell_all(self, queue_id: str, rcpt: str, state: str, status: str, reply: str | None) -> None:
        for listener in self._listeners:
            try:
                listener(queue_id, rcpt, state, status, reply)
            except Exception as exc:  # noqa: BLE001 - one listener's fault is not the others'
                event(log, "outcome-listener-failed", logging.ERROR, msg=queue_id, exc_type=type(exc).__name__)

    def start(self) -> None:
        self.runner.start()
        self.delivery.start()
        if callable(getattr(self.spool, "wait_for_work", None)):  # a shared store: LISTEN/NOTIFY
            self._waker = WorkWaker(self.spool, asyncio.get_running_loop(), self._woken)
            self._waker.start()

    def _woken(self) -> None:
        """Another process (this node's or another's) queued, prepared or retried something."""
        self.runner.wake()
        self.delivery.wake()

    def wake(self) -> None:
        """Look at the spool now (a retry, a recovery): what is due is prepared, then delivered."""
        self.runner.wake()

    def accepted(self, msg_id: str) -> None:
        """A message was accepted: prepared now, then handed to delivery (no poll on the way)."""
        self.runner.prepare_now(msg_id)

    async def stop(self, grace: float | None = None) -> None:
        """Both stop taking work and share the one grace period (run side by side)."""
        waker, self._waker = self._waker, None
        if waker is not None:
            waker.stop()
        await asyncio.gather(self.runner.stop(grace), self.delivery.stop(grace))
        if waker is not None:
            await asyncio.to_thread(waker.join)

    async def run_once(self) -> int:
        """Prepare, then deliver, everything due now (tests and one-shot commands)."""
        prepared = await self.runner.run_once()
        return prepared + await self.delivery.run_once()
