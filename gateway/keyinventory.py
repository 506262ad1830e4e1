"""Which configured keys this node can sign with, published on the shared queue and kept current
(issue 18, item 4: a CPS card lives in one machine).

Why a periodic re-inventory: a card is inserted after the gateway started (a doctor's card in the
morning, `wait_for_token = true`), or pulled out. Read once at start, a node that got its card
later would never advertise the key: messages that need it would wait for the backoff and a lucky
claim. Every ``[storage] token_check`` the node asks its tokens again (without the PIN, as the
inventory does; the PKCS#11 discovery re-initialises the module, rate-limited, to see new tokens)
and publishes the keys again when they changed. The queue's own heartbeat keeps the row alive in
between; a process that met an absent token at signing time withdraws the key at once
(`QueueStore.route_to_key`) and the next inventory puts it back only if the token is there."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gateway.config import GatewayConfig
from gateway.logs import event
from gateway.smime.keystore import KeyRef
from gateway.spool.base import QueueStore

log = logging.getLogger("gateway")


def keys_here(config: GatewayConfig) -> frozenset[str]:
    """The configured keys this node can use now: every key but those on a PKCS#11 token that
    is not in this machine (asked without the PIN; an absent token with a rate-limited rescan,
    `check_token`). Published on a shared queue so that a message needing a card is prepared by
    the node that has it."""
    from gateway.smime.pkcs11.presence import check_token

    def usable(ref: KeyRef) -> bool:
        if not ref.is_token:
            return True  # a key file: wherever the configuration is
        try:
            check_token(ref.ref, ref.module, rescan=True)
        except Exception:  # noqa: BLE001 - absent, unloadable or invalid: not usable here
            return False
        return True

    return frozenset(name for name, ref in config.keys.items() if usable(ref))


class KeyInventory:
    """Publish this node's keys at start, then again whenever the tokens present change."""

    def __init__(self, config: GatewayConfig, spool: QueueStore) -> None:
        self.config = config
        self.spool = spool
        self.interval = config.storage.token_check
        self._task: asyncio.Task[None] | None = None

    async def publish(self) -> frozenset[str]:
        """Ask the tokens now and publish what this node holds (always: the start's announcement)."""
        loop = asyncio.get_running_loop()
        keys = await loop.run_in_executor(None, keys_here, self.config)
        await loop.run_in_executor(None, self.spool.publish_keys, keys)
        event(log, "keys-published", keys=sorted(keys))
        return keys

    def start(self) -> None:
        """The periodic check (only where there are keys to look for)."""
        if self.config.keys and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="key-inventory")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.interval)
            try:
                keys = await loop.run_in_executor(None, keys_here, self.config)
                held = getattr(self.spool, "keys", None)
                if held is None or frozenset(held) != keys:
                    await loop.run_in_executor(None, self.spool.publish_keys, keys)
                    event(log, "keys-published", keys=sorted(keys), reason="tokens changed")
            except Exception as exc:  # noqa: BLE001 - a token or store hiccup: try again next time
                event(log, "key-inventory-failed", logging.WARNING, reason=type(exc).__name__)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


__all__ = ["KeyInventory", "keys_here"]
