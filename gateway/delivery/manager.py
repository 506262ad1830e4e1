"""The queue runner: takes due messages from the spool, runs the pipeline, delivers each copy,
and records per-recipient outcomes (delivered, deferred with backoff, bounced with a DSN).

Ordering rules that keep the "never lose, never leak" promise:
* queue state changes only after the next hop answered; a crash or a SIGTERM in between
  leaves the recipient pending, so it is tried again (at worst delivered twice, never zero);
* a DSN is itself spooled durably *before* the bounced recipients are marked as notified;
* no DSN for a null sender (no bounce loops);
* an unexpected exception while processing a message is a temporary failure; after a few
  of them the message is quarantined (kept, not retried) for an operator.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections import defaultdict
from collections.abc import Callable

from gateway.config import GatewayConfig
from gateway.delivery.dsn import RecipientReport, build_dsn, returned_headers
from gateway.delivery.nexthop import Destination, NextHopResolver
from gateway.delivery.smtp_client import RecipientResult, send_via_smtp
from gateway.errors import DeliveryError, GatewayError
from gateway.logs import event
from gateway.pipeline import Envelope, Pipeline
from gateway.spool import QueuedMessage, QueuedRecipient, RecipientState, Spool

log = logging.getLogger("gateway.delivery")

CRASH_LIMIT = 5


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


class DeliveryManager:
    """Runs deliveries from the spool until stopped."""

    def __init__(self, config: GatewayConfig, spool: Spool, pipeline: Pipeline | None = None,
                 resolver: NextHopResolver | None = None, clock: Callable[[], float] = time.time,
                 audit: Callable[..., None] | None = None) -> None:
        self.config = config
        self.audit = audit
        self.spool = spool
        self.pipeline = pipeline or Pipeline()
        self.resolver = resolver or NextHopResolver(config)
        self.clock = clock
        self._wake = asyncio.Event()
        self._stopping = False
        self._inflight: dict[str, asyncio.Task[None]] = {}
        #: Messages whose new state could not be written (spool full or unwritable): left alone
        #: in memory until this time, instead of being picked up again at once (a busy loop).
        self._held: dict[str, float] = {}
        self._global = asyncio.Semaphore(config.delivery.max_parallel)
        self._per_destination: dict[str, asyncio.Semaphore] = {}
        self._runner: asyncio.Task[None] | None = None

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._runner = asyncio.get_running_loop().create_task(self._run(), name="delivery-runner")

    def wake(self) -> None:
        """Called after a message was accepted, so it goes out without waiting for the poll."""
        self._wake.set()

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking new work; let in-flight deliveries finish for `grace` seconds, then
        cancel them (their recipients stay pending and are retried on the next start)."""
        self._stopping = True
        self._wake.set()
        if self._runner:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        tasks = list(self._inflight.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.config.spool.shutdown_grace if grace is None
                                            else grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            event(log, "shutdown", finished=len(tasks) - len(pending), requeued=len(pending))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            try:
                due = await loop.run_in_executor(None, lambda: self.spool.due(
                    self.clock(), limit=self.config.delivery.max_parallel * 4,
                    exclude=set(self._inflight) | self._held_now()))
            except GatewayError as exc:
                event(log, "spool-unavailable", logging.ERROR, reason=str(exc))
                due = []
            for msg in due:
                if self._stopping:
                    break
                task = loop.create_task(self._process_guarded(msg), name=f"deliver-{msg.id}")
                self._inflight[msg.id] = task
                task.add_done_callback(lambda _t, mid=msg.id: self._done(mid))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.config.spool.poll_interval)

    def _held_now(self) -> set[str]:
        now = self.clock()
        for msg_id in [m for m, until in self._held.items() if until <= now]:
            del self._held[msg_id]
        return set(self._held)

    def _hold(self, msg: QueuedMessage, exc: GatewayError) -> None:
        self._held[msg.id] = self.clock() + self.config.spool.retry_schedule[0]
        event(log, "spool-unavailable", logging.ERROR, msg=msg.id, reason=str(exc))

    def _done(self, msg_id: str) -> None:
        self._inflight.pop(msg_id, None)
        self._wake.set()

    async def run_once(self) -> int:
        """Process everything due now and wait for it (tests and `msgw queue flush`)."""
        due = self.spool.due(self.clock(), exclude=set(self._inflight))
        await asyncio.gather(*(self._process_guarded(m) for m in due))
        return len(due)

    # -- one message ------------------------------------------------------------------------
    async def _process_guarded(self, msg: QueuedMessage) -> None:
        async with self._global:
            try:
                await self._process(msg)
            except asyncio.CancelledError:
                raise
            except GatewayError as exc:
                event(log, "processing-deferred", logging.WARNING, msg=msg.id, reason=str(exc))
                try:
                    await self._defer(msg, list(msg.pending), str(exc), exc.status if exc.temporary else "4.3.0")
                except GatewayError as again:  # the deferral itself cannot be written (full disk)
                    self._hold(msg, again)
            except Exception as exc:  # noqa: BLE001 - a poison message must not stop the runner
                event(log, "processing-crashed", logging.ERROR, msg=msg.id, exc_type=type(exc).__name__)
                try:
                    quarantined = await self._io(self.spool.record_crash, msg.id, limit=CRASH_LIMIT)
                    if quarantined:
                        event(log, "quarantined", logging.ERROR, msg=msg.id)
                    else:
                        await self._defer(msg, list(msg.pending), "internal error while processing", "4.3.0")
                except GatewayError as again:
                    self._hold(msg, again)

    async def _io(self, fn, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(None, lambda: fn(*args, **kwargs))

    async def _process(self, msg: QueuedMessage) -> None:
        pending = [r for r in msg.pending if r.next_attempt <= self.clock()]
        if not pending:
            await self._after(msg.id)  # only DSNs owed
            return
        now = self.clock()
        if now >= msg.expires:
            await self._bounce(msg, pending, "message expired in the queue before it could be delivered "
                               f"(last error: {pending[0].last_error or 'none'})", "4.4.7")
            await self._after(msg.id)
            return
        data = await self._io(self.spool.message_bytes, msg.id)
        envelope = Envelope(queue_id=msg.id, sender=msg.sender, recipients=tuple(r.address for r in pending),
                            auth_user=msg.auth_user, listener=msg.listener)
        by_address = {r.address: r for r in pending}
        try:
            result = await self.pipeline.run(envelope, data)
        except GatewayError as exc:
            if exc.temporary:
                await self._defer(msg, pending, str(exc), exc.status)
            else:
                await self._bounce(msg, pending, str(exc), exc.status)
            await self._after(msg.id)
            return
        for refusal in result.refusals:
            rcpt = by_address.get(refusal.recipient)
            if rcpt is None:
                continue
            if refusal.temporary:
                await self._defer(msg, [rcpt], refusal.reason, refusal.status)
            else:
                await self._bounce(msg, [rcpt], refusal.reason, refusal.status)
        jobs = []
        for copy in result.outgoing:
            groups: dict[Destination, list[QueuedRecipient]] = defaultdict(list)
            for address in copy.recipients:
                rcpt = by_address.get(address)
                if rcpt is not None:
                    groups[self.resolver.destination(_domain(address))].append(rcpt)
            for dest, rcpts in groups.items():
                if copy.require_tls and not dest.local and dest.tls.policy != "required":
                    # Fail closed: this copy is protected only by TLS, and this route does not enforce it.
                    await self._bounce(msg, rcpts, f"no TLS-required route to {dest.domain} for a message "
                                       "protected by transport security only", "5.7.10")
                    continue
                jobs.append(self._deliver_group(msg, dest, rcpts, copy.data))
        await asyncio.gather(*jobs)
        await self._after(msg.id)

    async def _deliver_group(self, msg: QueuedMessage, dest: Destination, rcpts: list[QueuedRecipient],
                             data: bytes) -> None:
        sem = self._per_destination.setdefault(dest.key, asyncio.Semaphore(dest.concurrency))
        async with sem:
            started = time.monotonic()
            try:
                results, remote = await self._attempt(msg, dest, rcpts, data)
            except DeliveryError as exc:
                event(log, "delivery-failed", logging.WARNING, msg=msg.id, dest=dest.key, rcpts=len(rcpts),
                      temporary=exc.temporary, status=exc.status, reason=str(exc))
                if exc.temporary:
                    await self._defer(msg, rcpts, str(exc), exc.status, exc.remote)
                else:
                    await self._bounce(msg, rcpts, str(exc), exc.status, exc.remote)
                return
        elapsed = round((time.monotonic() - started) * 1000, 1)
        delivered = [r for r in rcpts if results[r.address].ok]
        deferred = [r for r in rcpts if results[r.address].temporary]
        bounced = [r for r in rcpts if not results[r.address].ok and not results[r.address].temporary]
        if delivered:
            first = results[delivered[0].address]
            await self._io(self.spool.mark_delivered, [r.id for r in delivered], status=first.status,
                           remote=remote, reply=f"{first.code} {first.message}"[:300])
            for r in delivered:
                self._audit(msg, r.address, "delivered", remote=remote, status=first.status)
        for r in deferred:
            res = results[r.address]
            await self._defer(msg, [r], f"{res.code} {res.message}", res.status, remote)
        for r in bounced:
            res = results[r.address]
            await self._bounce(msg, [r], f"{res.code} {res.message}", res.status, remote, smtp=True)
        event(log, "delivery", msg=msg.id, dest=dest.key, remote=remote, size=len(data), delivered=len(delivered),
              deferred=len(deferred), bounced=len(bounced), ms=elapsed)

    async def _attempt(self, msg: QueuedMessage, dest: Destination, rcpts: list[QueuedRecipient],
                       data: bytes) -> tuple[dict[str, RecipientResult], str]:
        if dest.local:
            return await self.resolver.deliver_local(msg.sender, [r.address for r in rcpts], data)
        hops = await self.resolver.hops(dest)
        last_error: DeliveryError | None = None
        for hop in hops:
            for address in hop.addresses:
                try:
                    results = await send_via_smtp(
                        host=hop.host, address=address, port=hop.port, sender=msg.sender,
                        recipients=[r.address for r in rcpts], data=data, tls=dest.tls,
                        helo_name=self.config.hostname, connect_timeout=self.config.delivery.connect_timeout,
                        command_timeout=self.config.delivery.command_timeout)
                    return results, hop.host
                except DeliveryError as exc:
                    if not exc.temporary:
                        raise
                    last_error = exc
        raise last_error or DeliveryError(f"no usable next hop for {dest.key}", temporary=True, status="4.4.4")

    # -- outcomes ---------------------------------------------------------------------------
    def _next_attempt(self, attempts: int) -> float:
        schedule = self.config.spool.retry_schedule
        return self.clock() + schedule[min(attempts, len(schedule) - 1)]

    async def _defer(self, msg: QueuedMessage, rcpts: list[QueuedRecipient], error: str, status: str,
                     remote: str | None = None) -> None:
        if not rcpts:
            return
        status = status if status.startswith("4") else "4" + status[1:]
        expired = [r for r in rcpts if self._next_attempt(r.attempts) > msg.expires]
        keep = [r for r in rcpts if r not in expired]
        for r in keep:
            await self._io(self.spool.mark_deferred, [r.id], next_attempt=self._next_attempt(r.attempts),
                           error=error[:500], status=status, remote=remote)
        if expired:
            await self._bounce(msg, expired, f"retry period expired; last error: {error}", "4.4.7", remote)
        if keep:
            event(log, "deferred", msg=msg.id, rcpts=len(keep), status=status)

    async def _bounce(self, msg: QueuedMessage, rcpts: list[QueuedRecipient], error: str, status: str,
                      remote: str | None = None, smtp: bool = False) -> None:
        if not rcpts:
            return
        await self._io(self.spool.mark_bounced, [r.id for r in rcpts], error=error[:500], status=status,
                       remote=remote)
        event(log, "bounced", logging.WARNING, msg=msg.id, rcpts=len(rcpts), status=status)
        for r in rcpts:
            self._audit(msg, r.address, "bounced", remote=remote, status=status)

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
        msg = await self._io(self.spool.get, msg_id)
        if msg is None:
            return
        owed = [r for r in msg.recipients if r.state is RecipientState.BOUNCED and not r.dsn_sent]
        if owed:
            if msg.sender:
                await self._send_dsn(msg, owed, "failed")
            else:
                event(log, "dsn-suppressed", msg=msg.id, reason="null sender", rcpts=len(owed))
            await self._io(self.spool.mark_dsn_sent, [r.id for r in owed])
        delay = self.config.spool.delay_warning
        deferred = [r for r in msg.recipients if r.state is RecipientState.DEFERRED]
        if (delay > 0 and deferred and msg.sender and not msg.delay_notified
                and self.clock() - msg.received >= delay):
            await self._send_dsn(msg, deferred, "delayed")
            await self._io(self.spool.mark_delay_notified, msg.id)
        await self._io(self.spool.finish_if_done, msg.id)

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
        dsn = build_dsn(original=returned_headers(original), envelope_id=msg.id, envelope_from=msg.sender,
                        reporting_mta=self.config.hostname, recipients=reports, arrival=_utc(msg.received))
        dsn_id = await self._io(self.spool.accept, "", [msg.sender], dsn,
                                lifetime=self.config.spool.max_queue_lifetime, listener="dsn")
        event(log, "dsn-queued", msg=msg.id, dsn=dsn_id, action=action, rcpts=len(rcpts))
        self._wake.set()


def _diagnostic(error: str | None) -> str | None:
    if not error:
        return None
    first = error.split(" ", 1)[0]
    if first.isdigit() and len(first) == 3:
        return f"smtp; {error}"
    return f"x-gateway; {error}"
