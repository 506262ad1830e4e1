"""Health checks: `/healthz` (the process and its event loop answer) and `/readyz` (this gateway
can take mail now), each check named in the answer so an operator sees which one failed.

`/readyz` checks, each cheap enough for a probe every few seconds:

- ``spool`` (the SQLite spool, one node): free space on the spool's filesystem at least the
  spool's reserve (below it the spool answers 452 to new mail: `gateway.spool.store`), and a
  probe file can be written; computed at every request, so the answer turns ready again as soon
  as space is freed;
- ``storage`` (instead, on a shared PostgreSQL, issue 18): the shared queue store answers a
  trivial query within its bounds (`QueueStore.ping`: a connection within ``0.8 ×
  connect_timeout``, the query within 5 s); while it does not, the node answers 451 to new mail,
  so it is not ready, and it turns ready again by itself when the server is back;
- ``keys``: `gateway.startup.check_keys` (files readable, keys matching their certificates,
  dates, usages, paths; token keys probed without the PIN), the result kept for the inventory
  interval: it loads keys and checks chains, too much for every probe;
- ``tokens``: every PKCS#11 token a key lives on is in its slot (the cached inventory);
- ``listeners``: every SMTP listener (and the MLLP door) of this process is serving.

Blocking work runs in the executor given (the metrics thread), never on the event loop.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.ops.metrics import InventoryCache

#: Spool reserve assumed when the spool does not say (`gateway.spool.store.RESERVE_BYTES`).
DEFAULT_RESERVE = 1 << 20


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail}


def spool_check(path: Path, reserve: int) -> Check:
    """Room for new mail: free space at least the reserve, and a file can be written."""
    try:
        st = os.statvfs(path)
    except OSError as exc:
        return Check("spool", False, f"cannot stat the spool folder ({exc.strerror})")
    free = st.f_bavail * st.f_frsize
    if free < max(reserve, 1):
        return Check("spool", False, f"free space {free} bytes is below the spool's reserve ({reserve} bytes)")
    probe = path / "tmp" / f".readyz-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, b"ready?\n")
        finally:
            os.close(fd)
    except OSError as exc:
        return Check("spool", False, f"cannot write in the spool ({exc.strerror})")
    finally:
        try:
            os.unlink(probe)
        except OSError:
            pass
    return Check("spool", True, f"{free} bytes free")


def _keys_now(config: GatewayConfig) -> Check:
    """`check_keys` on a loop of its own (it is async, and blocking inside): called in a thread."""
    from gateway.startup import check_keys

    statuses = asyncio.run(check_keys(config))
    bad = [f"{s.where}: {s.errors[0]}" for s in statuses if s.errors]
    if bad:
        return Check("keys", False, "; ".join(bad)[:1000])
    return Check("keys", True, f"{len(statuses)} checked")


class Health:
    """The checks of one gateway process (the one serving the metrics)."""

    def __init__(self, config: GatewayConfig, spool: Any, inventory: InventoryCache, executor: Executor, *,
                 listeners: Callable[[], dict[str, bool]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.spool = spool
        self.inventory = inventory
        self.executor = executor
        self.listeners = listeners
        self.clock = clock
        self._keys: asyncio.Future[Check] | None = None
        self._keys_at = 0.0

    async def ready(self) -> tuple[bool, list[Check]]:
        loop = asyncio.get_running_loop()
        checks = [
            await loop.run_in_executor(self.executor, self._storage if self.config.storage.shared else self._spool),
            await self._keys_check(),
            await loop.run_in_executor(self.executor, self._tokens),
            self._listeners(),
        ]
        return all(c.ok for c in checks), checks

    def _spool(self) -> Check:
        path = getattr(self.spool, "path", None)
        if path is None:
            return Check("spool", True, "not a file spool")
        return spool_check(Path(path), int(getattr(self.spool, "reserve_size", DEFAULT_RESERVE)))

    def _storage(self) -> Check:
        """The shared store reachable now (a `StoreUnavailable`, or any spool error: not ready)."""
        from gateway.errors import SpoolError
        from gateway.storage import describe

        started = time.monotonic()
        try:
            self.spool.ping()
        except SpoolError as exc:
            return Check("storage", False, str(exc)[:300])
        return Check("storage", True, f"{describe(self.config.storage)} answered in "
                                      f"{(time.monotonic() - started) * 1000:.0f} ms")

    async def _keys_check(self) -> Check:
        """The last `check_keys` result, refreshed after the inventory interval (one at a time)."""
        stale = self.clock() - self._keys_at >= self.inventory.interval
        if self._keys is None or (stale and self._keys.done()):
            loop = asyncio.get_running_loop()
            self._keys_at = self.clock()
            self._keys = asyncio.ensure_future(loop.run_in_executor(self.executor, self._keys_safe))
        return await asyncio.shield(self._keys)

    def _keys_safe(self) -> Check:
        try:
            return _keys_now(self.config)
        except Exception as exc:  # noqa: BLE001 - a check that crashes is a failed check, named
            return Check("keys", False, f"check failed: {type(exc).__name__}")

    def _tokens(self) -> Check:
        tokens = self.inventory.get().tokens
        absent = [t.key for t in tokens if t.present is False]
        if absent:
            return Check("tokens", False, "not present: " + ", ".join(absent))
        return Check("tokens", True, f"{len(tokens)} present" if tokens else "no token keys")

    def _listeners(self) -> Check:
        up = self.listeners() if self.listeners is not None else {}
        down = sorted(name for name, ok in up.items() if not ok)
        if down:
            return Check("listeners", False, "not serving: " + ", ".join(down))
        return Check("listeners", True, f"{len(up)} serving")
