"""The metrics listener: `/metrics` (Prometheus text format), `/healthz`, `/readyz`, served by
aiohttp on the gateway's own event loop (`web.AppRunner` + `web.TCPSite`), on an address of its
own (`[metrics]`, loopback by default).

One process serves it: the only process, or worker 0 (`Gateway.primary`) among several. Why
worker 0 and not the master: the master is a plain supervision loop without an event loop (the
process-death signal is tied to the thread that forked the workers), it has the spool closed and
no listeners, so "ready" would be a guess there; worker 0 already runs the singletons, has the
spool open and its own listeners, and reads every worker's counters from the multiprocess folder.
While worker 0 restarts (1 s), the endpoint is down: a scrape fails, which is the honest answer.

Everything blocking (the workers' files, the spool's database, the inventory, the key check) runs
on one thread of its own, so a scrape never takes a thread the spool or delivery needs.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.logs import event
from gateway.ops.health import Health
from gateway.ops.metrics import InventoryCache, StateCollector, exposition_registry, render
from gateway.storage import node_name

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

log = logging.getLogger("gateway.metrics")

_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


class MetricsServer:
    """``await start()`` / ``await stop()``; `bound` is the (address, port) listened on."""

    def __init__(self, config: GatewayConfig, spool: Any, *, listeners: Callable[[], dict[str, bool]] | None = None,
                 owner: str = "") -> None:
        self.config = config
        self.owner = owner
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics")
        self.inventory = InventoryCache(config, config.metrics.inventory_interval)
        #: This node's name in every sample (`gateway.storage.node_name`; issue 18).
        self.node = node_name(config.storage)
        self.registry = exposition_registry(StateCollector(spool, self.inventory, listeners), node=self.node)
        self.health = Health(config, spool, self.inventory, self.executor, listeners=listeners)
        self.bound: tuple[str, int] | None = None
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        return app

    async def start(self) -> None:
        settings = self.config.metrics
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, settings.address, settings.port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or ()
        name = sockets[0].getsockname() if sockets else (settings.address, settings.port)
        self.bound = (str(name[0]), int(name[1]))
        event(log, "listening", listener="metrics", kind="metrics", address=self.bound[0], port=self.bound[1])
        # the first key check and inventory now, not at the first probe
        asyncio.get_running_loop().run_in_executor(self.executor, self.inventory.get)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def _metrics(self, request: web.Request) -> web.Response:
        body = await asyncio.get_running_loop().run_in_executor(self.executor, render, self.registry)
        return web.Response(body=body, headers={**_HEADERS, "Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive", "pid": os.getpid(), "worker": self.owner or None,
                                  "node": self.node},
                                 headers=_HEADERS)

    async def _readyz(self, request: web.Request) -> web.Response:
        ok, checks = await self.health.ready()
        body = {"status": "ready" if ok else "not ready", "node": self.node,
                "checks": {c.name: c.to_json() for c in checks}, "failed": [c.name for c in checks if not c.ok]}
        return web.json_response(body, status=200 if ok else 503, headers=_HEADERS)
