"""The one place that knows which backend holds the gateway's state (issue 18).

``[storage] backend = "sqlite"`` (the embedded default: files beside the spool, one node) or
``"postgresql"`` (one database shared by several nodes: nothing acknowledged lives on one node
alone). Everything that opens a store — the running gateway, the intake doors, the commands —
asks here, so a new backend or store is added in this module and nowhere else; a store's own
module takes a path or a DSN, never a configuration (docs/architecture.md §3, rule 7).

The PostgreSQL modules are imported only when chosen: ``psycopg`` is the ``[postgresql]`` extra,
and the single-node gateway never loads it. The password is read from its `Secret` when a store
opens (never written in the DSN, never logged); a missing one is a `ConfigError` naming
``storage.password_file`` / ``storage.password_env``.

What stays per node whatever the backend (issue 18, item 4): PKCS#11 tokens, the CRL/OCSP and
discovery caches, TLS keys, the configuration and the audit chain file (anchored in PostgreSQL by
`gateway.audit_anchor` when shared).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from gateway.config.storage import StorageConfig
from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.audit_anchor import AnchorReport, AnchorService, AnchorStore
    from gateway.cisis.ledger import ZamLedger
    from gateway.config import GatewayConfig
    from gateway.directory.certsources import CertificateHarvest
    from gateway.directory.directory import DirectoryStore
    from gateway.intake.dedup import DuplicateStore
    from gateway.lps.store import DeliveredDocuments
    from gateway.spool import Spool

#: The SQLite file of the intake duplicate store, beside the spool (`gateway.intake.service.DEDUP_FILE`).
DEDUP_FILE = "intake-dedup.sqlite"
#: The SQLite file of the harvested certificates, beside the spool (`gateway.stages.build`).
HARVEST_FILE = "harvest.sqlite"
#: The module and class of the shared queue store (branch pgqueue), imported by name when chosen.
PG_QUEUE = ("gateway.spool.pg", "PgSpool")

S = TypeVar("S")
#: Stores this process keeps open for callers that need one per message (see `process_store`).
_PROCESS_STORES: dict[tuple[str, ...], Any] = {}
_PROCESS_LOCK = threading.Lock()


def process_store(key: tuple[str, ...], opener: Callable[[], S]) -> S:
    """The store `key` of this process, opened by `opener` at the first call and kept until
    `close_process_stores` (the gateway's stop). For callers that work per message (the payload
    address, the LPS consumer): on PostgreSQL every store is a connection pool, and a pool per
    message would cost a connection set-up per message and exhaust the server's connections
    under load. A failed open is not kept (the next message tries again)."""
    with _PROCESS_LOCK:
        found = _PROCESS_STORES.get(key)
        if found is None:
            found = _PROCESS_STORES[key] = opener()
        return found  # type: ignore[no-any-return]


def close_process_stores() -> int:
    """Close the stores `process_store` opened (the gateway's stop); how many."""
    with _PROCESS_LOCK:
        stores = list(_PROCESS_STORES.values())
        _PROCESS_STORES.clear()
    for store in stores:
        with contextlib.suppress(Exception):  # closing at stop: nothing left to do about a failure
            store.close()
    return len(stores)


def node_name(storage: StorageConfig) -> str:
    """This node's name in the shared store: ``[storage] node``, else the host name."""
    return storage.node or socket.gethostname()


def queue_owner(storage: StorageConfig, owner: str = "") -> str:
    """The claim owner of a process: unique across the nodes on PostgreSQL (``node/w1``)."""
    if not storage.shared:
        return owner
    node = node_name(storage)
    return f"{node}/{owner}" if owner else node


def password(storage: StorageConfig, source: str = "config") -> str | None:
    """The database password from its file or environment variable (None: none configured)."""
    if storage.password is None:
        return None
    try:
        return storage.password.read()
    except ConfigError as exc:
        key = "storage.password_file" if storage.password.file is not None else "storage.password_env"
        raise ConfigError([(source, key, message) for _, _, message in exc.problems]) from None


def _require_driver(source: str) -> None:
    """psycopg is the ``[postgresql]`` extra: without it, say so (with the key), not an ImportError."""
    if importlib.util.find_spec("psycopg") is None or importlib.util.find_spec("psycopg_pool") is None:
        raise ConfigError([(source, "storage.backend",
                            'postgresql needs the [postgresql] extra: pip install "msgw[postgresql]"')])


def _pg(storage: StorageConfig, source: str) -> dict[str, Any]:
    """The keyword arguments every PostgreSQL store takes."""
    _require_driver(source)
    return {"password": password(storage, source), "connect_timeout": storage.connect_timeout,
            "pool_size": storage.pool_size}


def describe(storage: StorageConfig) -> str:
    """For logs and `msgw check`: the backend and where, never a user or a password."""
    if not storage.shared:
        return "sqlite"
    parts = urlsplit(storage.dsn)
    return f"postgresql {parts.hostname or 'localhost'}{':' + str(parts.port) if parts.port else ''}{parts.path}"


# -- the queue ---------------------------------------------------------------------------------

def open_queue_store(config: GatewayConfig, owner: str = "") -> Spool:
    """The queue (not opened: the caller calls ``open()`` as with `Spool`)."""
    storage = config.storage
    if not storage.shared:
        from gateway.spool import Spool

        return Spool(config.spool.path, owner=owner)
    _require_driver(config.source)
    module = importlib.import_module(PG_QUEUE[0])  # by name: it is the queue engineer's module
    store: Spool = getattr(module, PG_QUEUE[1])(storage.dsn, owner=queue_owner(storage, owner),
                                                password=password(storage, config.source), lease=storage.lease,
                                                connect_timeout=storage.connect_timeout,
                                                pool_size=storage.pool_size)
    return store


# -- the directory -------------------------------------------------------------------------------

def directory_store(storage: StorageConfig, path: str | Path, source: str = "config") -> DirectoryStore:
    """The directory: the SQLite file at ``path``, or the shared one."""
    if not storage.shared:
        from gateway.directory.directory import SqliteDirectory

        return SqliteDirectory(path)
    from gateway.directory.directory_pg import PgDirectory

    return PgDirectory(storage.dsn, **_pg(storage, source))


def open_directory(config: GatewayConfig) -> DirectoryStore:
    from gateway.directory.directory import directory_path

    return directory_store(config.storage, directory_path(config), config.source)


def harvest_store(storage: StorageConfig, state_dir: str | Path, source: str = "config") -> CertificateHarvest:
    """Certificates harvested from verified mail: ``<state_dir>/harvest.sqlite``, or the shared table."""
    if not storage.shared:
        from gateway.directory.certsources import HarvestStore

        return HarvestStore(Path(state_dir) / HARVEST_FILE)
    from gateway.directory.harvest_pg import PgHarvestStore

    return PgHarvestStore(storage.dsn, **_pg(storage, source))


def open_harvest_store(config: GatewayConfig) -> CertificateHarvest:
    return harvest_store(config.storage, config.state_dir, config.source)


# -- intake duplicates ---------------------------------------------------------------------------

def dedup_store(storage: StorageConfig, state_dir: str | Path, *, window: float,
                source: str = "config") -> DuplicateStore:
    """The intake duplicate store: ``<state_dir>/intake-dedup.sqlite``, or the shared one."""
    if not storage.shared:
        from gateway.intake.dedup import DedupStore

        return DedupStore(Path(state_dir) / DEDUP_FILE, window=window)
    from gateway.intake.dedup_pg import PgDedupStore

    return PgDedupStore(storage.dsn, window=window, **_pg(storage, source))


def open_dedup(config: GatewayConfig, window: float | None = None) -> DuplicateStore:
    span = config.intake.routing.dedup_window if window is None else window
    return dedup_store(config.storage, config.state_dir, window=span, source=config.source)


# -- CI-SIS and LPS ------------------------------------------------------------------------------

def open_zam_ledger(config: GatewayConfig) -> ZamLedger:
    """The CI-SIS ZAM ledger (``<spool>/cisis.sqlite``, or the shared one), on the spool's schedule."""
    spool = config.spool
    kwargs: dict[str, Any] = {"retry_schedule": spool.retry_schedule, "lifetime": spool.max_queue_lifetime}
    if not config.storage.shared:
        from gateway.cisis.ledger import ZamLedger

        return ZamLedger.beside(spool.path, **kwargs)
    from gateway.cisis.ledger_pg import PgZamLedger

    return PgZamLedger(config.storage.dsn, **kwargs, **_pg(config.storage, config.source))


def delivered_store(storage: StorageConfig, spool_path: str | Path, source: str = "config") -> DeliveredDocuments:
    """The LPS delivered-documents store (``<spool>/lps.sqlite``, or the shared one)."""
    if not storage.shared:
        from gateway.lps.store import DeliveredStore

        return DeliveredStore.beside(spool_path)
    from gateway.lps.store_pg import PgDeliveredStore

    return PgDeliveredStore(storage.dsn, **_pg(storage, source))


def open_delivered_store(config: GatewayConfig) -> DeliveredDocuments:
    return delivered_store(config.storage, config.spool.path, config.source)


# -- audit anchors -------------------------------------------------------------------------------

def anchor_store(config: GatewayConfig) -> AnchorStore:
    """The shared audit anchors (PostgreSQL only: one node's trail has nothing to anchor to)."""
    from gateway.audit_anchor import AnchorStore

    storage = config.storage
    return AnchorStore(storage.dsn, node=node_name(storage), password=password(storage, config.source),
                       connect_timeout=storage.connect_timeout)


def start_audit_anchoring(config: GatewayConfig) -> AnchorService | None:
    """On PostgreSQL, this node's anchoring thread (publish the head; anchor when elected);
    None with SQLite."""
    if not config.storage.shared:
        return None
    from gateway.audit import AuditTrail, audit_path
    from gateway.audit_anchor import AnchorService

    service = AnchorService(anchor_store(config), AuditTrail(audit_path(config)),
                            retention=config.storage.audit_retention, interval=config.storage.anchor_interval)
    service.start()
    return service


def verify_audit_anchors(config: GatewayConfig, others: list[str], *, require_all: bool = False) -> AnchorReport:
    """This node's trail (and `others`, ``NODE=PATH``) checked against the shared anchors."""
    from gateway.audit import AuditTrail, audit_path
    from gateway.audit_anchor import verify_trails

    trails = {node_name(config.storage): AuditTrail(audit_path(config))}
    for item in others:
        node, sep, path = item.partition("=")
        if not sep or not node or not path:
            raise ConfigError([("--trail", item, "expected NODE=PATH")])
        trails[node] = AuditTrail(path)
    store = anchor_store(config)
    try:
        anchors = store.anchors()
    finally:
        store.close()
    return verify_trails(trails, anchors, require_all=require_all)


__all__ = ["DEDUP_FILE", "HARVEST_FILE", "PG_QUEUE", "anchor_store", "close_process_stores", "dedup_store",
           "delivered_store", "describe", "directory_store", "harvest_store", "node_name", "open_dedup",
           "open_delivered_store", "open_directory", "open_harvest_store", "open_queue_store", "open_zam_ledger",
           "password", "process_store", "queue_owner", "start_audit_anchoring", "verify_audit_anchors"]
