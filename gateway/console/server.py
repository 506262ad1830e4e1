"""The console's listener: its own TLS socket on the gateway's event loop (aiohttp AppRunner +
TCPSite), started by the primary process only (`gateway.app`)."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable

from aiohttp import web

from gateway import tlspolicy
from gateway.config import GatewayConfig
from gateway.config.console import ConsoleConfig
from gateway.console.web import AuditSink, CertCheck, Console
from gateway.logs import event
from gateway.spool import QueueStore

log = logging.getLogger("gateway.console")


def console_tls_context(settings: ConsoleConfig) -> ssl.SSLContext:
    """TLS 1.2+ with the console's preset; operators' certificates asked for (never required:
    a password login stays possible) when `client_ca` is set, and verified against it."""
    if settings.tls_cert is None or settings.tls_key is None:
        raise ValueError("the console needs tls_cert and tls_key")
    ctx = tlspolicy.apply(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), settings.tls_policy)
    ctx.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    if settings.client_ca is not None:
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.load_verify_locations(cafile=str(settings.client_ca))
    return ctx


class ConsoleServer:
    def __init__(self, config: GatewayConfig, spool: QueueStore, *, audit: AuditSink | None = None,
                 wake: Callable[[], None] | None = None, cert_check: CertCheck | None = None) -> None:
        self.config = config
        self.console = Console(config, spool, audit=audit, wake=wake, cert_check=cert_check)
        self._runner: web.AppRunner | None = None
        #: The bound (address, port) once started (port 0 in the config: the one the kernel gave).
        self.address: tuple[str, int] | None = None

    async def start(self) -> None:
        settings = self.config.console
        runner = web.AppRunner(self.console.app(), access_log=None, handle_signals=False)
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, settings.address, settings.port, ssl_context=console_tls_context(settings),
                           reuse_address=True)
        await site.start()
        bound = runner.addresses[0] if runner.addresses else (settings.address, settings.port)
        self.address = (str(bound[0]), int(bound[1]))
        event(log, "console-listening", address=self.address[0], port=self.address[1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
