"""Is a key's token in a slot now? Asked without the PIN, on the module's own thread
(python-pkcs11 modules are not thread-safe: `gateway.smime.pkcs11.worker`). Used by the operator's
inventory (`gateway.ops.status`, no rescan) and by a node's key inventory on a shared queue
(`gateway.keyinventory`, a rescan for an absent token so that SoftHSM-like modules, which only
see a new token after a re-initialisation, show a card inserted since the start)."""

from __future__ import annotations

from gateway.smime.pkcs11.keys import resolve_module
from gateway.smime.pkcs11.session import token_state
from gateway.smime.pkcs11.uri import parse_uri
from gateway.smime.pkcs11.worker import get_worker


def check_token(uri: str, module: str | None, *, rescan: bool = False) -> None:
    """Return when the token `uri` names is present; `TokenAbsent` (or another `GatewayError`:
    module not loadable, invalid URI) otherwise. ``rescan``: re-initialise the module (rate-limited
    by its worker) when the token is not found — every session of that module is dropped and logs
    in again, which is why the operator's inventory never does it: a card reader's slot list
    follows insertions by itself."""
    parsed = parse_uri(uri)
    worker = get_worker(resolve_module(parsed, module))
    worker.run_sync(lambda: token_state(worker, parsed.token_selector).find_token(rescan=rescan))


__all__ = ["check_token"]
