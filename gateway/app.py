"""The running gateway: spool + listeners + delivery, with graceful shutdown.

SIGTERM/SIGINT: stop accepting (listeners closed), let in-flight deliveries finish within
`spool.shutdown_grace`, then cancel the rest (they stay pending in the spool), close the spool.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from gateway.config import GatewayConfig
from gateway.delivery.manager import DeliveryManager
from gateway.logs import event
from gateway.pipeline import Pipeline
from gateway.server.smtp import SmtpServer
from gateway.spool import Spool

log = logging.getLogger("gateway")


class Gateway:
    def __init__(self, config: GatewayConfig, pipeline: Pipeline | None = None) -> None:
        self.config = config
        self.spool = Spool(config.spool.path)
        self.pipeline = pipeline
        self.context = None
        self.delivery: DeliveryManager | None = None
        self.server: SmtpServer | None = None
        self.intake = None
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.spool.open)
        stats = self.spool.recover()
        event(log, "recovered", **stats)
        if self.pipeline is None:
            from gateway.stages.build import build_pipeline

            self.pipeline, self.context = await loop.run_in_executor(None, build_pipeline, self.config)
        audit = self.context.audit if self.context is not None else None
        self.delivery = DeliveryManager(self.config, self.spool, self.pipeline, audit=audit)
        self.server = SmtpServer(self.config, self.spool, on_accept=lambda _id: self.delivery.wake(),
                                 rcpt_check=self.context.rcpt_refusal if self.context is not None else None)
        await self.server.start()
        self.delivery.start()
        if self.config.intake is not None and self.config.intake.enabled:
            from gateway.intake.service import IntakeService
            from gateway.routing.directory import directory_path

            self.intake = IntakeService(self.config.intake, self.spool, directory_path(self.config),
                                        self.config.state_dir, lambda _id: self.delivery.wake(),
                                        self.config.spool.max_queue_lifetime)
            await self.intake.start()

    async def stop(self) -> None:
        if self.intake is not None:
            await self.intake.stop()
        if self.server is not None:
            await self.server.stop()
        if self.delivery is not None:
            await self.delivery.stop()
        self.spool.close()
        if self.context is not None:
            self.context.close()
        self._stopped.set()
        event(log, "stopped")

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        await stop.wait()
        event(log, "stopping")
        await self.stop()
