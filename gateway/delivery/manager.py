"""Delivery: takes due *prepared* recipients from the spool, reads their copy's bytes, hands
them to the transport the next-hop table names, and records per-recipient outcomes (delivered,
deferred with backoff, bounced with a DSN). It moves bytes only: the content was processed
once, before (gateway/runner.py), so a retry re-sends the same bytes (no new signature, no new
decision); it never imports the pipeline. A preparation the runner hands over before recording it
(`send_first`) is sent from memory; a recipient that attempt defers gets its copy recorded with
the deferral, so the retry re-sends those bytes too. DSNs and delay notices enter the spool as prepared
copies of themselves (`Spool.accept_prepared`), so they never meet the pipeline either.

Ordering rules that keep the "never lose, never leak" promise:
* queue state changes only after the next hop answered; a crash or a SIGTERM in between
  leaves the recipient pending, so it is tried again (at worst delivered twice, never zero);
* a DSN is itself spooled durably *before* the bounced recipients are marked as notified;
* no DSN for a null sender (no bounce loops);
* an unexpected exception while processing a message is a temporary failure; after a few
  of them the message is quarantined (kept, not retried) for an operator;
* an attempt's outcomes are written together, one transaction per group and attempt (a
  10,000-recipient message is not 10,000 fsyncs);
* on a full disk, an outcome the spool cannot write is kept in memory and the message is held:
  the outcome is written before the message is looked at again, so this process never sends a
  delivered copy again (a restart in between sends it once more: at worst twice).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

from gateway.config import GatewayConfig
from gateway.delivery.dsn import RecipientReport, build_dsn, returned_headers
from gateway.delivery.nexthop import Destination, NextHopResolver
from gateway.delivery.sessions import SessionCache
from gateway.delivery.transports import TRANSPORTS, Hop, Transport, transport_for
from gateway.errors import DeliveryError, GatewayError, SpoolError
from gateway.logs import event
from gateway.ops import metrics
from gateway.queueworker import QueueWorker
from gateway.spool import (
    DamagedCopy,
    NewCopy,
    Outcome,
    PreparedCopy,
    QueuedMessage,
    QueuedRecipient,
    QueueStore,
    RecipientState,
)

log = logging.getLogger("gateway.delivery")

#: Transports kept built, at most (then all forgotten at once; see `DeliveryManager._transport`).
TRANSPORTS_KEPT = 1024

#: One prepared copy, its bytes, and the recipients of this attempt that receive it.
Batch = tuple[PreparedCopy, bytes, list[QueuedRecipient]]


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


class DeliveryManager(QueueWorker):
    """Runs deliveries from the spool until stopped."""

    name = "deliver"

    def __init__(self, config: GatewayConfig, spool: QueueStore, resolver: NextHopResolver | None = None,
                 clock: Callable[[], float] = time.time, audit: Callable[..., None] | None = None,
                 on_unprepared: Callable[[str], None] | None = None,
                 on_outcome: Callable[[str, str, str, str, str | None], None] | None = None) -> None:
        super().__init__(config, spool, clock, log)
        self.audit = audit
        #: Told of each final outcome once it is written: (queue id, recipient, "delivered" or
        #: "bounced", status, remote reply). Runs in the spool's executor thread (it may block).
        self.on_outcome = on_outcome
        #: Called when a damaged copy was forgotten: its recipients wait for the runner again.
        self.on_unprepared = on_unprepared
        self.resolver = resolver or NextHopResolver(config)
        #: Outcomes the spool could not write, per message, in order: written before the
        #: message is processed again (a delivered copy is not sent twice by this process).
        self._unwritten: dict[str, list[Callable[[], None]]] = {}
        #: Finished messages whose removal could not be written yet.
        self._unfinished: set[str] = set()
        #: Messages sent before their preparation was recorded (`send_first`), with the copies
        #: to record for the recipients an attempt defers.
        self._first: dict[str, list[NewCopy]] = {}
        self._global = asyncio.Semaphore(config.delivery.max_parallel)
        self._per_destination: dict[str, asyncio.Semaphore] = {}
        #: Transports built per (destination, mutual TLS, factory), with what they were built
        #: from (`_transport`).
        self._transports: dict[tuple[Destination, bool, object], tuple[Transport, Hop]] = {}
        d = config.delivery
        #: Idle SMTP sessions kept for the next message to the same destination (None: off).
        self.sessions = SessionCache(d.connection_cache_time, d.connection_reuse_limit) \
            if d.connection_cache_time > 0 else None

    # -- life cycle -------------------------------------------------------------------------
    async def stop(self, grace: float | None = None) -> None:
        """Stop taking new work; let in-flight deliveries finish for `grace` seconds, then
        cancel them (their recipients stay pending and are retried on the next start)."""
        finished, requeued = await self._stop_taking_work(grace)
        if finished or requeued:
            event(log, "shutdown", finished=finished, requeued=requeued)
        await self._close_sessions()
        for msg_id in list(self._unwritten):
            if not await self._flush(msg_id):
                # Those recipients are still pending on disk: the next start sends them again.
                event(log, "outcomes-unwritten-at-stop", logging.ERROR, msg=msg_id,
                      outcomes=len(self._unwritten.get(msg_id, ())))

    async def _due(self) -> list[QueuedMessage]:
        await self._finish_postponed()
        due: list[QueuedMessage] = await self._io(
            self.spool.due_prepared, self.clock(), limit=self.config.delivery.max_parallel * 4,
            exclude=self._excluded(), delay_notice_before=self._delay_notice_before())
        return due + await self._backlog_due()

    def _work(self, msg: QueuedMessage) -> Coroutine[Any, Any, None]:
        return self._process_guarded(msg)

    def deliver_now(self, msg: QueuedMessage, preloaded: Mapping[int, bytes]) -> bool:
        """The runner's hand-off of a message it has just prepared, with its copies' bytes still
        in memory: delivered at once, without a poll of the spool nor a re-read of the files
        (they are the very bytes the copy rows describe). False when the message is already in
        hand here, held, or we are stopping: then the poll takes it as any other."""
        if self._stopping or msg.id in self._inflight or msg.id in self._held or msg.id in self._unwritten:
            self._wake.set()
            return False
        self._take(msg.id, self._process_guarded(msg, preloaded))
        return True

    async def _backlog_due(self) -> list[QueuedMessage]:
        """Messages with outcomes waiting in memory whose hold is over, that the spool would not
        list as due (their preparation itself could not be recorded): written, then finished."""
        skip = set(self._inflight) | self._held_now()
        out = []
        for msg_id in set(self._unwritten) - skip:
            msg = await self._io(self.spool.get, msg_id)
            if msg is not None and not any(r.prepared for r in msg.pending):
                out.append(msg)
        return out

    def _delay_notice_before(self) -> float | None:
        """Messages received before this time may owe their sender a delay notice."""
        delay = self.config.spool.delay_warning
        return self.clock() - delay if delay > 0 else None

    async def run_once(self) -> int:
        """Process everything due now and wait for it (tests and `msgw queue flush`)."""
        await self._finish_postponed()
        due = self.spool.due_prepared(self.clock(), exclude=self._excluded(),
                                      delay_notice_before=self._delay_notice_before())
        due += await self._backlog_due()
        await asyncio.gather(*(self._process_guarded(m) for m in due))
        # A one-shot run (`msgw queue flush`, tests) keeps no session past its end (nor its loop).
        await self._close_sessions()
        return len(due)

    async def _close_sessions(self) -> None:
        """QUIT the cached sessions (shutdown, the end of a one-shot run)."""
        if self.sessions is not None:
            await self.sessions.close()

    # -- one message ------------------------------------------------------------------------
    async def _process_guarded(self, msg: QueuedMessage, preloaded: Mapping[int, bytes] | None = None) -> None:
        async with self._global:
            await self._guard(msg, _prepared(msg), self._process_written(msg, preloaded))

    async def _process_written(self, msg: QueuedMessage, preloaded: Mapping[int, bytes] | None) -> None:
        """Write what a full disk kept in memory for this message first, then deliver it as the
        spool now has it."""
        if msg.id in self._unwritten:
            if not await self._flush(msg.id):
                return
            fresh = await self._io(self.spool.get, msg.id)
            if fresh is None:
                return
            msg, preloaded = fresh, None
        await self._process(msg, preloaded)

    async def _io(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args, **kwargs))

    async def _process(self, msg: QueuedMessage, preloaded: Mapping[int, bytes] | None = None) -> None:
        pending = [r for r in msg.pending if r.prepared and r.next_attempt <= self.clock()]
        if not pending:
            await self._after(msg.id)  # only DSNs owed
            return
        now = self.clock()
        if now >= msg.expires:
            await self._bounce(msg, pending, "message expired in the queue before it could be delivered "
                               f"(last error: {pending[0].last_error or 'none'})", "4.4.7")
            await self._after(msg.id)
            return
        by_copy: dict[int, list[QueuedRecipient]] = defaultdict(list)
        for rcpt in pending:
            by_copy[rcpt.copy_id or 0].append(rcpt)
        batches = []
        for copy_id, rcpts in by_copy.items():
            copy = msg.copy(copy_id)
            try:
                data = preloaded.get(copy.id) if preloaded else None
                if data is None:
                    data = await self._io(self.spool.copy_bytes, copy)
            except DamagedCopy as exc:  # never sent: its recipients are prepared again
                event(log, "copy-damaged", logging.WARNING, msg=msg.id, copy=copy.id, rcpts=len(rcpts),
                      reason=str(exc))
                await self._io(self.spool.unprepare, msg.id, copy.id)
                if self.on_unprepared is not None:
                    self.on_unprepared(msg.id)
                continue
            batches.append((copy, data, rcpts))
        await self._send(msg, batches)
        await self._after(msg.id)

    async def deliver_unrecorded(self, msg: QueuedMessage, batches: list[Batch], outcomes: list[Outcome]) -> None:
        """Send a preparation the spool could not record (full disk) from memory.

        Its outcomes then wait in memory like any other (`_write`), and the runner leaves the
        message alone while they do (`backlog`): this process sends it once; a restart before
        they are written prepares and sends it again (at worst twice, never zero)."""
        async with self._global:
            await self._write(msg, outcomes)
            await self._send(msg, batches)
            await self._after(msg.id)

    def backlog(self) -> set[str]:
        """Messages whose outcomes wait in memory to be written."""
        return set(self._unwritten)

    def busy(self) -> set[str]:
        """Messages the runner must leave alone: outcomes waiting in memory, or an attempt under
        way on a preparation not recorded (`send_first`: its recipients are received on disk)."""
        return set(self._unwritten) | set(self._first)

    def send_first(self, msg: QueuedMessage, batches: list[Batch], copies: list[NewCopy]) -> bool:
        """The runner's hand-off of a preparation it has not recorded (see gateway/runner.py):
        sent at once from memory; what the attempt delivers or bounces is written as any
        outcome, and a deferral records the copy of its recipients with it (`_keep_for_retry`),
        so a retry re-sends what was prepared. False, and nothing taken, when the message is
        already in hand here, held, or we are stopping, or when an outcome listener may read
        the delivered copy from the spool (`gateway.lps.reporter`): then the runner records it."""
        if (self._stopping or self.on_outcome is not None or msg.id in self._inflight or msg.id in self._held
                or msg.id in self._unwritten):
            return False
        self._first[msg.id] = copies
        rcpts = [r for _, _, group in batches for r in group]
        self._take(msg.id, self._send_first(msg, batches, rcpts))
        return True

    async def _send_first(self, msg: QueuedMessage, batches: list[Batch], rcpts: list[QueuedRecipient]) -> None:
        try:
            async with self._global:
                await self._guard(msg, rcpts, self._send_then_after(msg, batches))
        finally:
            self._first.pop(msg.id, None)

    async def _send_then_after(self, msg: QueuedMessage, batches: list[Batch]) -> None:
        await self._send(msg, batches)
        await self._after(msg.id)

    def _keep_for_retry(self, msg_id: str, outcomes: list[Outcome]) -> list[NewCopy] | None:
        """For a message sent before its preparation was recorded: the copies of the recipients
        these outcomes defer (their preparation is recorded with the deferral); None otherwise."""
        copies = self._first.get(msg_id)
        if copies is None:
            return None
        deferred = {o.rcpt_id for o in outcomes if o.state is RecipientState.DEFERRED}
        if not deferred:
            return None
        kept = [dataclasses.replace(c, rcpt_ids=tuple(i for i in c.rcpt_ids if i in deferred)) for c in copies]
        return [c for c in kept if c.rcpt_ids] or None

    async def _send(self, msg: QueuedMessage, batches: list[Batch]) -> None:
        """Each copy to its recipients, grouped by destination, every group at once."""
        destinations: dict[str, Destination] = {}
        jobs = []
        for copy, data, rcpts in batches:
            groups: dict[Destination, list[QueuedRecipient]] = defaultdict(list)
            consumers = self.config.delivery.consumers
            for rcpt in rcpts:
                address = rcpt.address.lower()
                # an application mailbox has its own destination; everyone else shares their domain's
                key = address if consumers and self.config.delivery.consumer_for(address) else \
                    address.rpartition("@")[2]
                dest = destinations.get(key)
                if dest is None:
                    dest = destinations[key] = self.resolver.destination_for(address)
                groups[dest].append(rcpt)
            for dest, group in groups.items():
                problem = self._tls_problem(copy, dest)
                if problem:
                    # Fail closed: this copy is protected only by (mutual) TLS, and this route cannot give it.
                    await self._bounce(msg, group, problem, "5.7.10")
                    continue
                jobs.append(self._deliver_group(msg, dest, group, data, mutual_tls=copy.require_tls))
        if len(jobs) == 1:
            await jobs[0]  # the usual message: one copy, one destination (no task, no extra loop turn)
        else:
            await asyncio.gather(*jobs)

    def _transport(self, dest: Destination, mutual_tls: bool) -> Transport:
        """The transport the next-hop table names for `dest`, built once per destination and TLS
        demand (a `Hop` and a transport per message cost more than the rest of `_deliver_group`;
        transports keep nothing between deliveries). Built again when the registry, the config,
        the resolver or the connection cache is another object than the one it was built from."""
        key = (dest, mutual_tls, TRANSPORTS.get(dest.transport))
        kept = self._transports.get(key)
        if kept is not None:
            transport, hop = kept
            if hop.config is self.config and hop.resolver is self.resolver and hop.sessions is self.sessions:
                return transport
        hop = Hop(self.config, dest, self.resolver, require_client_cert=mutual_tls, sessions=self.sessions)
        transport = transport_for(hop)
        if len(self._transports) >= TRANSPORTS_KEPT:
            self._transports.clear()
        self._transports[key] = (transport, hop)
        return transport

    @staticmethod
    def _tls_problem(copy: PreparedCopy, dest: Destination) -> str | None:
        """Why this route cannot carry a copy that relies on mutual TLS (None when it can)."""
        if not copy.require_tls or dest.local:
            return None
        return dest.tls.mutual_tls_problem(f"the route to {dest.domain}")

    async def _deliver_group(self, msg: QueuedMessage, dest: Destination, rcpts: list[QueuedRecipient],
                             data: bytes, *, mutual_tls: bool = False) -> None:
        sem = self._per_destination.setdefault(dest.key, asyncio.Semaphore(dest.concurrency))
        async with sem:
            started = time.monotonic()
            try:
                transport = self._transport(dest, mutual_tls)
                results, remote = await transport.deliver(msg.sender, [r.address for r in rcpts], data)
            except DeliveryError as exc:
                event(log, "delivery-failed", logging.WARNING, msg=msg.id, dest=dest.key, rcpts=len(rcpts),
                      temporary=exc.temporary, status=exc.status, reason=str(exc))
                if exc.temporary:
                    await self._defer(msg, rcpts, str(exc), exc.status, exc.remote)
                else:
                    await self._bounce(msg, rcpts, str(exc), exc.status, exc.remote)
                return
        elapsed = round((time.monotonic() - started) * 1000, 1)
        outcomes: list[Outcome] = []
        delivered = deferred = bounced = 0
        for r in rcpts:
            res = results[r.address]
            reply = f"{res.code} {res.message}"
            if res.ok:
                outcomes.append(Outcome(r.id, RecipientState.DELIVERED, res.status, reply[:300], remote,
                                        address=r.address))
                delivered += 1
            elif res.temporary:
                outcomes.append(self._deferral(msg, r, reply, res.status, remote))
                deferred += 1
            else:
                outcomes.append(_bounced(r, reply, res.status, remote))
                bounced += 1
        await self._write(msg, outcomes)
        event(log, "delivery", msg=msg.id, dest=dest.key, remote=remote, size=len(data), delivered=delivered,
              deferred=deferred, bounced=bounced, ms=elapsed)

    # -- outcomes ---------------------------------------------------------------------------
    def _next_attempt(self, attempts: int) -> float:
        schedule = self.config.spool.retry_schedule
        return self.clock() + schedule[min(attempts, len(schedule) - 1)]

    def _deferral(self, msg: QueuedMessage, rcpt: QueuedRecipient, error: str, status: str,
                  remote: str | None = None) -> Outcome:
        """Deferred until the next attempt, or bounced when that would be past the message's expiry."""
        status = status if status.startswith("4") else "4" + status[1:]
        when = self._next_attempt(rcpt.attempts)
        if when > msg.expires:
            return _bounced(rcpt, f"retry period expired; last error: {error}", "4.4.7", remote)
        return Outcome(rcpt.id, RecipientState.DEFERRED, status, error[:500], remote, next_attempt=when,
                       address=rcpt.address)

    async def _defer(self, msg: QueuedMessage, rcpts: list[QueuedRecipient], error: str, status: str,
                     remote: str | None = None) -> None:
        await self._write(msg, [self._deferral(msg, r, error, status, remote) for r in rcpts])

    async def _bounce(self, msg: QueuedMessage, rcpts: list[QueuedRecipient], error: str, status: str,
                      remote: str | None = None) -> None:
        await self._write(msg, [_bounced(r, error, status, remote) for r in rcpts])

    async def _write(self, msg: QueuedMessage, outcomes: list[Outcome]) -> None:
        """Record outcomes in one transaction, then log and audit them.

        When the spool cannot write them (full disk): deferrals alone are dropped (the
        recipients stay pending, the message is held and retried later); anything else is
        kept in memory and written before the message is processed again."""
        if not outcomes:
            return
        write = functools.partial(self._record_outcomes, msg, outcomes, self._keep_for_retry(msg.id, outcomes))
        if msg.id in self._unwritten:  # earlier outcomes wait: keep the order
            self._unwritten[msg.id].append(write)
        else:
            try:
                await self._io(write)
            except SpoolError as exc:
                self._hold(msg.id, exc)
                if all(o.state is RecipientState.DEFERRED for o in outcomes):
                    return  # nothing recorded, nothing to report: the recipients are simply still due
                self._unwritten[msg.id] = [write]
        self._report(msg, outcomes)

    def _record_outcomes(self, msg: QueuedMessage, outcomes: list[Outcome],
                         keep: list[NewCopy] | None = None) -> None:
        """Write outcomes, then tell `on_outcome` of the final ones: only what is on disk is
        told (also when a full disk delayed the write); a listener fault never breaks delivery.

        Without a listener, the same transaction removes the message when these outcomes finish
        it (`finish=`: `_after` then learns it from `take_finished`, without a second trip); with
        one, the message stays until `_after`, so the listener still finds it in the spool.
        `keep`: copies not recorded yet (`send_first`) of recipients these outcomes defer: the
        final outcomes are written first as any (durable, the reserve if need be), then the
        deferrals with those copies (`Spool.prepare`), for the retry to re-send them; when the
        copies cannot be written (a full disk), the deferrals alone (prepared again then)."""
        if keep is not None:
            deferrals = [o for o in outcomes if o.state is RecipientState.DEFERRED]
            finals = [o for o in outcomes if o.state is not RecipientState.DEFERRED]
            if finals:
                self.spool.record_outcomes(finals)
            try:
                self.spool.prepare(msg.id, keep, deferrals)
            except SpoolError as exc:
                event(log, "copy-not-kept", logging.WARNING, msg=msg.id, rcpts=len(deferrals), reason=str(exc))
                self.spool.record_outcomes(deferrals)
        elif self.on_outcome is None:
            self.spool.record_outcomes(outcomes, finish=msg.id)
            return
        else:
            self.spool.record_outcomes(outcomes)
        if self.on_outcome is None:
            return
        for o in outcomes:
            if o.state in (RecipientState.DELIVERED, RecipientState.BOUNCED):
                try:
                    self.on_outcome(msg.id, o.address, o.state.value, o.status, o.error)
                except Exception as exc:  # noqa: BLE001 - the listener's fault is not the delivery's
                    event(log, "outcome-listener-failed", logging.ERROR, msg=msg.id, exc_type=type(exc).__name__)

    def _report(self, msg: QueuedMessage, outcomes: Iterable[Outcome]) -> None:
        outcomes = list(outcomes)
        metrics.outcomes(msg, outcomes, self.clock())
        counts: dict[tuple[RecipientState, str], int] = defaultdict(int)
        for o in outcomes:
            counts[(o.state, o.status)] += 1
            if o.state is not RecipientState.DEFERRED:
                self._audit(msg, o.address, o.state.value, remote=o.remote, status=o.status)
        for (state, status), n in counts.items():
            if state is RecipientState.DEFERRED:
                event(log, "deferred", msg=msg.id, rcpts=n, status=status)
            elif state is RecipientState.BOUNCED:
                event(log, "bounced", logging.WARNING, msg=msg.id, rcpts=n, status=status)

    async def _record(self, msg_id: str, fn: Callable[..., None], *args: Any, **kwargs: Any) -> bool:
        """Write one state change, or keep it for later (as `_write`); True when written."""
        call = functools.partial(fn, *args, **kwargs)
        if msg_id in self._unwritten:
            self._unwritten[msg_id].append(call)
            return False
        try:
            await self._io(call)
        except SpoolError as exc:
            self._unwritten[msg_id] = [call]
            self._hold(msg_id, exc)
            return False
        return True

    async def _flush(self, msg_id: str) -> bool:
        """Write what a full disk kept in memory for this message; False (and held) if it still cannot."""
        backlog = self._unwritten.get(msg_id, [])
        while backlog:
            try:
                await self._io(backlog[0])
            except GatewayError as exc:
                self._hold(msg_id, exc)
                return False
            backlog.pop(0)
        self._unwritten.pop(msg_id, None)
        return True

    def _audit(self, msg: QueuedMessage, rcpt: str, outcome: str, *, remote: str | None, status: str) -> None:
        if self.audit is None:
            return
        try:
            self.audit(message_id=msg.id, sender=msg.sender, recipient=rcpt, decision="outcome",
                       outcome=f"{outcome} {status}", next_hop=remote)
        except GatewayError as exc:
            event(log, "audit-failed", logging.ERROR, msg=msg.id, reason=str(exc))

    async def _after(self, msg_id: str) -> None:
        """Send the DSNs this message now owes, then drop it if it is finished."""
        if msg_id in self._unwritten:
            return  # the spool is behind this message's real state: decide once it is written
        if self.spool.take_finished(msg_id):
            return  # removed with its last outcomes (`_record_outcomes`): nothing owed
        msg, finished = await self._io(self._finish_quietly, msg_id)
        if msg is None or finished is not None:
            if finished is not None and not finished[0]:
                self._unfinished.add(msg_id)
                event(log, "finish-postponed", logging.WARNING, msg=msg_id, reason=finished[1])
            return
        try:
            owed = [r for r in msg.recipients if r.state is RecipientState.BOUNCED and not r.dsn_sent]
            if owed:
                if msg.sender:
                    await self._send_dsn(msg, owed, "failed")
                else:
                    event(log, "dsn-suppressed", msg=msg.id, reason="null sender", rcpts=len(owed))
                if not await self._record(msg.id, self.spool.mark_dsn_sent, [r.id for r in owed]):
                    return
            delay = self.config.spool.delay_warning
            deferred = [r for r in msg.recipients if r.state is RecipientState.DEFERRED]
            if (delay > 0 and deferred and msg.sender and not msg.delay_notified
                    and self.clock() - msg.received >= delay):
                await self._send_dsn(msg, deferred, "delayed")
                if not await self._record(msg.id, self.spool.mark_delay_notified, msg.id):
                    return
        except SpoolError as exc:  # the DSN itself cannot be queued (full disk): it stays owed
            self._hold(msg.id, exc)
            return
        try:
            await self._io(self.spool.finish_if_done, msg.id)
        except SpoolError as exc:
            self._unfinished.add(msg.id)
            event(log, "finish-postponed", logging.WARNING, msg=msg.id, reason=str(exc))

    def _finish_quietly(self, msg_id: str) -> tuple[QueuedMessage | None, tuple[bool, str] | None]:
        """The message as the spool has it and, when it owes no DSN nor delay notice (the common
        case: everyone delivered), `finish_if_done` in the same trip to the executor: (message,
        None) when `_after` has notices to send, (message, (True, "")) when that was all, (message,
        (False, why)) when the removal could not be written. Why one trip: each executor hop wakes
        a thread and the loop again (issue 15, third round)."""
        msg = self.spool.get(msg_id)
        if msg is None:
            return None, None
        if any(r.state is RecipientState.BOUNCED and not r.dsn_sent for r in msg.recipients):
            return msg, None
        delay = self.config.spool.delay_warning
        if (delay > 0 and msg.sender and not msg.delay_notified and self.clock() - msg.received >= delay
                and any(r.state is RecipientState.DEFERRED for r in msg.recipients)):
            return msg, None
        try:
            self.spool.finish_if_done(msg_id)
        except SpoolError as exc:
            return msg, (False, str(exc))
        return msg, (True, "")

    async def _finish_postponed(self) -> None:
        for msg_id in list(self._unfinished):
            try:
                await self._io(self.spool.finish_if_done, msg_id)
            except GatewayError:
                return
            self._unfinished.discard(msg_id)

    async def _send_dsn(self, msg: QueuedMessage, rcpts: list[QueuedRecipient], action: str) -> None:
        original = await self._io(self.spool.message_bytes, msg.id)
        reports = [RecipientReport(
            recipient=r.address, action=action,  # type: ignore[arg-type]
            status=(r.last_status or ("5.0.0" if action == "failed" else "4.0.0")),
            diagnostic=_diagnostic(r.last_error), remote_mta=f"dns; {r.remote}" if r.remote else None,
            last_attempt=_utc(r.updated),
            will_retry_until=_utc(msg.expires) if action == "delayed" else None) for r in rcpts]
        if action == "failed":
            reports = [r if r.status.startswith("5") or r.status == "4.4.7" else
                       RecipientReport(**{**r.__dict__, "status": "5" + r.status[1:]}) for r in reports]
        # Identifying headers only: a Subject may carry health content, and a DSN is not encrypted.
        # Built off the event loop: a report for thousands of recipients is real work.
        dsn = await asyncio.to_thread(
            lambda: build_dsn(original=returned_headers(original), envelope_id=msg.id, envelope_from=msg.sender,
                              reporting_mta=self.config.hostname, recipients=reports, arrival=_utc(msg.received)))
        # Queued as a prepared copy of itself: identifying headers only, so it goes as it is (a
        # sender we cannot protect must still learn that its message failed).
        dsn_id = await self._io(self.spool.accept_prepared, "", [msg.sender], dsn, form="dsn",
                                lifetime=self.config.spool.max_queue_lifetime, listener="dsn")
        event(log, "dsn-queued", msg=msg.id, dsn=dsn_id, action=action, rcpts=len(rcpts))
        self._wake.set()


def _prepared(msg: QueuedMessage) -> list[QueuedRecipient]:
    """The pending recipients that are delivery's (the received ones are the runner's)."""
    return [r for r in msg.pending if r.prepared]


def _bounced(rcpt: QueuedRecipient, error: str, status: str, remote: str | None = None) -> Outcome:
    return Outcome(rcpt.id, RecipientState.BOUNCED, status, error[:500], remote, address=rcpt.address)


def _diagnostic(error: str | None) -> str | None:
    if not error:
        return None
    first = error.split(" ", 1)[0]
    if first.isdigit() and len(first) == 3:
        return f"smtp; {error}"
    return f"x-gateway; {error}"
