"""The running gateway: listeners → spool → pipeline runner → delivery, with graceful shutdown.

Accepted mail is *received* in the spool; the runner prepares it once (pipeline → copies in the
spool) and wakes delivery, which moves the prepared bytes (see gateway/runner.py).

SIGTERM/SIGINT: stop accepting (listeners closed), let in-flight preparations and deliveries
finish within `spool.shutdown_grace`, then cancel the rest (they stay pending in the spool),
close the spool.

One of several worker processes (`gateway.workers`, ``owner="w<i>"``; on a shared store the
queue owner is ``<node>/w<i>``, `gateway.storage.queue_owner`): the master has recovered the
spool, so a worker opens it without recovering; the master listens on the SMTP ports and hands
each connection to the least busy worker (``handoff``, `gateway.server.handoff`) — started
without one and ``workers > 1`` (in-process tests), the listeners share their ports with
``SO_REUSEPORT``; only the primary worker (w0) runs the singletons: the intake doors,
the CI-SIS ZAM sender, the supervision console (`[console]`, its sessions live in memory), the
metrics listener (`/metrics`, `/healthz`, `/readyz`) and, on PostgreSQL, the audit anchoring.

Stores a caller needs per message (the payload address's directory and duplicate store, the LPS
consumer's delivered documents) are kept one per process on a shared store
(`gateway.storage.process_store`) and closed at `stop`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway import sdnotify
from gateway.audit import AuditTrail, AuditWriter, audit_path
from gateway.config import GatewayConfig
from gateway.directory.directory import DirectoryStore, directory_path
from gateway.keyinventory import KeyInventory
from gateway.logs import event
from gateway.pipeline import RELAY_STAGES, Pipeline
from gateway.runner import QueueService
from gateway.server.logins import NationalIdLookup
from gateway.server.smtp import MailboxLookup, SmtpServer
from gateway.storage import (
    close_process_stores,
    open_directory,
    open_queue_store,
    open_zam_ledger,
    start_audit_anchoring,
)

if TYPE_CHECKING:  # imported where used: the plain relay needs none of them
    from gateway.audit_anchor import AnchorService
    from gateway.cisis.ledger import ZamLedger
    from gateway.cisis.zamsender import ZamSender
    from gateway.console.server import ConsoleServer
    from gateway.intake.service import IntakeService
    from gateway.ops.httpd import MetricsServer
    from gateway.server.handoff import HandoffReceiver
    from gateway.server.oauth import OAuthLogin
    from gateway.stages.build import GatewayContext

log = logging.getLogger("gateway")


def local_mailbox_lookup(directory: DirectoryStore) -> MailboxLookup:
    """RCPT-time question to the directory, asked off the event loop: is this a local mailbox?"""
    async def lookup(address: str) -> bool:
        entry = await asyncio.to_thread(directory.address, address)
        return entry is not None and entry.capability == "local"
    return lookup


def national_id_lookup(directory: DirectoryStore, config: GatewayConfig) -> NationalIdLookup:
    """Card login (SASL EXTERNAL): the local mailboxes the directory lists for an identifiant
    national, asked off the event loop."""
    async def lookup(national_id: str) -> tuple[str, ...]:
        found = await asyncio.to_thread(directory.by_national_id, national_id)
        if found is None:
            return ()
        return tuple(sorted(a.address for a in found.addresses
                            if a.capability == "local" and config.is_local(a.domain)))
    return lookup


def token_login(config: GatewayConfig, directory: DirectoryStore) -> OAuthLogin | None:
    """OAUTHBEARER/XOAUTH2 (issue 17) when `[auth.oidc]` is set: the issuer's tokens, and the
    directory's local mailboxes of a professional no `[accounts]` entry names."""
    if config.auth.oidc is None:
        return None
    from gateway.server.oauth import OAuthLogin
    from gateway.server.oidcjwks import TokenVerifier

    return OAuthLogin(config, TokenVerifier(config.auth.oidc), national_id_lookup(directory, config))


class Gateway:
    def __init__(self, config: GatewayConfig, pipeline: Pipeline | None = None, *, owner: str = "",
                 primary: bool = True, workers: int = 1, handoff: HandoffReceiver | None = None) -> None:
        self.config = config
        #: A worker of a dispatching master: its SMTP connections come from the master
        #: (`gateway.server.handoff`); None: the listeners bind here.
        self.handoff = handoff
        #: This process's name among the workers ("w0", "w1", ...); "" when it is the only one.
        self.owner = owner
        #: Runs the singletons (intake doors, ZAM sender): the only process, or worker 0.
        self.primary = primary
        self.workers = workers
        self.spool = open_queue_store(config, owner=owner)
        self.pipeline = pipeline
        self.context: GatewayContext | None = None
        self.queue: QueueService | None = None
        self.server: SmtpServer | None = None
        self.intake: IntakeService | None = None
        #: CI-SIS GESTIONNAIRE (issue 13): what is owed to the CRÉATEURs, and their sender.
        self.zam_ledger: ZamLedger | None = None
        self.zam_sender: ZamSender | None = None
        #: The supervision console (issue 16, `[console]`): the primary process only.
        self.console: ConsoleServer | None = None
        #: `/metrics`, `/healthz`, `/readyz` (issue 16): served by the primary process only.
        self.metrics: MetricsServer | None = None
        self._own_directory: DirectoryStore | None = None
        self._own_audit: AuditWriter | None = None
        self._anchoring: AnchorService | None = None
        self._keys: KeyInventory | None = None
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.owner:  # a worker: the master recovered the spool before starting the workers
            await loop.run_in_executor(None, lambda: self.spool.open(recover=False))
            # what a killed predecessor delivered but did not remove (recovery would have)
            finished = await loop.run_in_executor(None, self.spool.finish_done)
            if finished:
                event(log, "finished-left-over", count=finished)
        else:
            await loop.run_in_executor(None, self.spool.open)
            stats = self.spool.recover()
            event(log, "recovered", **stats)
        if self.config.storage.shared:  # which keys (tokens) this node can sign with: issue 18, item 4
            self._keys = KeyInventory(self.config, self.spool)
            await self._keys.publish()
            self._keys.start()  # and again when a card comes or goes
        if self.pipeline is None:
            from gateway.stages.build import build_pipeline

            self.pipeline, self.context = await loop.run_in_executor(None, build_pipeline, self.config)
        if self.pipeline is not None and tuple(self.pipeline.stages) == RELAY_STAGES:
            # Nothing to prepare: each message is recorded at accept as the one copy of itself.
            self.spool.prepare_on_accept = "as-is"
        if self.context is not None:
            audit = self.context.audit
        else:  # the plain relay audits what its listeners refuse too
            self._own_audit = AuditWriter(AuditTrail(audit_path(self.config)))
            audit = self._own_audit
        queue = self.queue = QueueService(self.config, self.spool, self.pipeline, audit=audit)
        directory = self.context.directory if self.context is not None else self._open_directory()
        self.server = SmtpServer(self.config, self.spool, on_accept=queue.accepted,
                                 rcpt_check=self.context.rcpt_refusal if self.context is not None else None,
                                 audit=audit, mailbox_lookup=local_mailbox_lookup(directory),
                                 reuse_port=self.workers > 1 and self.handoff is None,
                                 handoff=self.handoff,
                                 national_lookup=national_id_lookup(directory, self.config),
                                 token_login=token_login(self.config, directory))
        self._anchoring = start_audit_anchoring(self.config) if self.primary else None  # issue 18: shared only
        gestionnaire = await self._start_cisis(queue, audit)
        self._start_lps(queue)
        await self.server.start()
        queue.start()
        if self.primary and self.config.intake is not None and self.config.intake.enabled:
            from gateway.intake.service import IntakeService

            self.intake = IntakeService(self.config.intake, self.spool, directory_path(self.config),
                                        self.config.state_dir, queue.accepted,
                                        self.config.spool.max_queue_lifetime, gestionnaire=gestionnaire,
                                        client_checks=self.server.client_checks, storage=self.config.storage)
            await self.intake.start()
        await self._start_console(queue, audit)
        if self.primary and self.config.metrics.enabled:
            from gateway.ops.httpd import MetricsServer

            self.metrics = MetricsServer(self.config, self.spool, listeners=self.listeners_up, owner=self.owner)
            await self.metrics.start()

    async def _start_console(self, queue: QueueService, audit: Any) -> None:
        """The console's TLS listener, in the primary process only (its sessions live in memory)."""
        if not (self.primary and self.config.console.enabled):
            return
        from gateway.console.server import ConsoleServer

        assert self.server is not None
        checker = self.server.client_checks.checker(self.config.console.client_ca, card=True) \
            if self.config.console.client_ca is not None else None

        def wake() -> None:
            queue.runner.wake()
            queue.delivery.wake()

        self.console = ConsoleServer(self.config, self.spool, audit=audit, wake=wake,
                                     cert_check=checker.check if checker is not None else None)
        await self.console.start()

    def listeners_up(self) -> dict[str, bool]:
        """Each SMTP listener (and the MLLP door) of this process: serving or not (for /readyz)."""
        servers = self.server.servers if self.server is not None else []
        up = {lc.name: i < len(servers) and servers[i].is_serving() for i, lc in enumerate(self.config.listeners)}
        intake = self.config.intake
        if self.primary and intake is not None and intake.enabled and intake.mllp is not None:
            mllp = self.intake.mllp if self.intake is not None else None
            server = getattr(mllp, "_server", None)
            up["mllp"] = server is not None and server.is_serving()
        return up

    async def _start_cisis(self, queue: QueueService, audit: Any) -> Any:
        """The CI-SIS GESTIONNAIRE when ``[intake.cisis]`` is set: its ledger, the ZAM sender, the
        delivery outcomes and the reports mailed to the application mailbox wired to the ledger."""
        settings = self.config.intake.cisis if self.config.intake is not None else None
        if settings is None or not settings.enabled:
            return None
        from gateway.cisis.gestionnaire import Gestionnaire
        from gateway.cisis.zamsender import ZamSender

        loop = asyncio.get_running_loop()
        spool = self.config.spool
        ledger = self.zam_ledger = await loop.run_in_executor(
            None, lambda: open_zam_ledger(self.config))
        # The sender is a singleton (worker 0): ZAMs another worker's outcomes owe wait in the
        # shared ledger for its next poll (`spool.poll_interval`).
        sender = self.zam_sender = ZamSender(settings, ledger, poll_interval=spool.poll_interval,
                                             shutdown_grace=spool.shutdown_grace) if self.primary else None

        def wake_sender(zams: object) -> None:
            if zams and sender is not None:
                loop.call_soon_threadsafe(sender.wake)

        def outcome(queue_id: str, rcpt: str, state: str, status: str, reply: str | None) -> None:
            wake_sender(ledger.on_outcome(queue_id, rcpt, state == "delivered", status, reply))

        def returns(data: bytes) -> object:
            zams = ledger.apply_report(data)
            wake_sender(zams)
            return zams

        queue.add_outcome_listener(outcome)
        assert self.server is not None
        self.server.returns_sink = returns
        if sender is not None:
            sender.start()
        return Gestionnaire(settings, self.spool, ledger, lifetime=spool.max_queue_lifetime, audit=audit,
                            on_owed=lambda: wake_sender(True))

    def _start_lps(self, queue: QueueService) -> None:
        """Application mailboxes (``[delivery.consumers]``, issue 14): the ``consumer`` transport
        needs no wiring (the next-hop table names it); their outcomes become MDNs, which are
        queued from the delivery's thread and handed to the runner on the loop."""
        if not self.config.delivery.consumers:
            return
        from gateway.lps.reporter import MdnReporter

        loop = asyncio.get_running_loop()

        def queued(msg_id: str) -> None:
            loop.call_soon_threadsafe(queue.accepted, msg_id)

        queue.add_outcome_listener(MdnReporter(self.config, self.spool, on_queued=queued))

    def _open_directory(self) -> DirectoryStore:
        self._own_directory = open_directory(self.config)
        return self._own_directory

    async def stop(self) -> None:
        if self.console is not None:
            await self.console.stop()
        if self.metrics is not None:
            await self.metrics.stop()
        if self.intake is not None:
            await self.intake.stop()
        if self.server is not None:
            await self.server.stop()
        if self.queue is not None:
            await self.queue.stop()
        if self.zam_sender is not None:
            await self.zam_sender.stop()
        if self.zam_ledger is not None:
            self.zam_ledger.close()
        if self._keys is not None:
            await self._keys.stop()
        self.spool.close()
        await asyncio.get_running_loop().run_in_executor(None, close_process_stores)
        if self.context is not None:
            self.context.close()
        if self._own_directory is not None:
            self._own_directory.close()
        if self._own_audit is not None:
            self._own_audit.close()
        if self._anchoring is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._anchoring.stop)
        self._stopped.set()
        event(log, "stopped")

    async def serve_forever(self, on_ready: Callable[[], object] | None = None) -> None:
        """Run until SIGTERM/SIGINT. Once `start` returned (every listener accepts connections)
        ``on_ready`` is called: a worker tells its master; the only process tells systemd
        (``READY=1``, `gateway.sdnotify`), and ``STOPPING=1`` when the signal comes."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        if on_ready is not None:
            on_ready()
        else:
            sdnotify.ready(self._status())
        await stop.wait()
        event(log, "stopping")
        if on_ready is None:
            sdnotify.stopping()
        await self.stop()

    def _status(self) -> str:
        """systemd's status line: the SMTP listeners' addresses (no message content, ever)."""
        bound = self.server.bound if self.server is not None else {}
        return "serving " + ", ".join(f"{name} {host}:{port}" for name, (host, port) in sorted(bound.items()))
