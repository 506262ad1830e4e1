"""`msgw storage`: the state's backend. `msgw storage migrate` copies a single node's SQLite
state (directory, harvested certificates, intake duplicates, CI-SIS ZAM ledger, LPS delivered
documents, and the pending queue) into the PostgreSQL database that ``[storage]`` names (issue 18, item 6).

Idempotent: run it again and nothing is copied twice. Tables with a natural key (directory rows,
duplicate keys, delivered documents) are copied with ``ON CONFLICT DO NOTHING`` — what a node
already wrote in the shared database is never overwritten (a duplicate key keeps the later time).
Rows whose key is the SQLite file's own counter (the ledger's transmissions, copies and ZAMs, the
queue's messages) get new ids and a row in ``msgw_migration`` (source, item → target), so a
second run skips them. Each store is copied in one transaction: a failure leaves it as it was.
``--dry-run`` runs the same transactions and rolls them back: the counts are exact.

The queue goes through the queue stores' public methods only: every message with a pending
recipient is read with ``list``, ``message_bytes`` and ``copy_bytes`` and written with the shared
store's ``import_message`` — same queue id, recipient and copy ids (the LPS and CI-SIS rows name
them), states, attempts and prepared copies (nothing signed twice); idempotent by queue id. A
store without ``import_message`` gets ``accept`` (new id, pending recipients, *received*: its
copies are prepared again) and a ``msgw_migration`` row; there a crash between the accept and
that row copies the message again on the next run. Run it with the node stopped. The SQLite
files are opened read-only and kept.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.commands.common import add_config_option, config_from
from gateway.config import GatewayConfig
from gateway.errors import TemporaryError
from gateway.storage import DEDUP_FILE, HARVEST_FILE, PG_QUEUE, describe, node_name, open_queue_store, password

if TYPE_CHECKING:  # psycopg is the [postgresql] extra: imported where used, so `msgw` runs without it
    import psycopg

STORES = ("directory", "harvest", "dedup", "ledger", "lps", "queue")
_MIGRATION = ("CREATE TABLE IF NOT EXISTS msgw_migration (source TEXT NOT NULL, item TEXT NOT NULL, "
              "target TEXT NOT NULL, PRIMARY KEY (source, item))")


class MigrationError(TemporaryError):
    """The shared database cannot be written (nothing of the store in progress was kept)."""

    code = "storage-migrate"
    status = "4.3.0"


@dataclass
class Counts:
    """One store's outcome: rows read from SQLite, copied, already in PostgreSQL."""

    store: str
    read: int = 0
    copied: int = 0
    present: int = 0
    note: str = ""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("storage", help="the state's backend (SQLite or a shared PostgreSQL)")
    ssub = p.add_subparsers(dest="storage_command", required=True)
    mp = ssub.add_parser("migrate", help="copy this node's SQLite state into the [storage] PostgreSQL database")
    add_config_option(mp)
    mp.add_argument("--dry-run", action="store_true", help="count what would be copied, change nothing")
    mp.add_argument("--only", action="append", choices=STORES, metavar="STORE",
                    help=f"copy only these stores ({', '.join(STORES)}; repeatable)")
    mp.add_argument("--json", action="store_true", help="print the counts as JSON")
    mp.set_defaults(func=run_migrate)


def run_migrate(args: argparse.Namespace) -> int:
    config = config_from(args)
    if not config.storage.shared:
        print('msgw: [storage] backend is "sqlite": set backend = "postgresql", dsn and the password first',
              file=sys.stderr)
        return 2
    results = migrate(config, stores=tuple(args.only or STORES), dry_run=args.dry_run)
    if args.json:
        print(json.dumps({"target": describe(config.storage), "dry_run": args.dry_run,
                          "stores": [asdict(c) for c in results]}, indent=2))
        return 0
    print(f"{'would copy' if args.dry_run else 'copied'} into {describe(config.storage)}:")
    for c in results:
        print(f"  {c.store:<10} read {c.read:>7}  {'new' if args.dry_run else 'copied'} {c.copied:>7}  "
              f"already there {c.present:>7}{'  (' + c.note + ')' if c.note else ''}")
    return 0


def migrate(config: GatewayConfig, *, stores: tuple[str, ...] = STORES, dry_run: bool = False) -> list[Counts]:
    """Copy each store in turn (see the module docstring); its counts."""
    import psycopg

    from gateway.directory.directory import directory_path

    storage = config.storage
    source = node_name(storage)
    spool = config.spool.path
    files: dict[str, tuple[Path, Callable[[psycopg.Connection[Any], sqlite3.Connection, str, Counts], None]]] = {
        "directory": (directory_path(config), _directory),
        "harvest": (config.state_dir / HARVEST_FILE, _harvest),
        "dedup": (config.state_dir / DEDUP_FILE, _dedup),
        "ledger": (spool / "cisis.sqlite", _ledger),
        "lps": (spool / "lps.sqlite", _lps),
    }
    out: list[Counts] = []
    with _connect(config) as conn:
        _ensure_schemas(config)
        for store in stores:
            counts = Counts(store)
            out.append(counts)
            if store == "queue":
                _queue(config, conn, f"{source}:{spool}", counts, dry_run)
                continue
            path, copy = files[store]
            if not path.exists():
                counts.note = "no SQLite file"
                continue
            with _sqlite(path) as db:
                try:
                    with conn.transaction():
                        copy(conn, db, f"{source}:{path}", counts)
                        if dry_run:
                            raise psycopg.Rollback  # the block is rolled back, nothing raised further
                except psycopg.Error as exc:
                    raise MigrationError(f"cannot copy the {store} into PostgreSQL ({type(exc).__name__}): "
                                         "nothing of it was kept") from None
    return out


@contextmanager
def _connect(config: GatewayConfig) -> Iterator[psycopg.Connection[Any]]:
    import psycopg

    storage = config.storage
    try:
        conn = psycopg.connect(storage.dsn, password=password(storage, config.source),
                               connect_timeout=max(2, int(storage.connect_timeout + 0.999)), autocommit=True)
    except psycopg.Error as exc:
        raise MigrationError(f"cannot reach {describe(storage)} ({type(exc).__name__})") from None
    try:
        conn.execute(_MIGRATION)
        yield conn
    finally:
        conn.close()


def _ensure_schemas(config: GatewayConfig) -> None:
    """Open (and close) each PostgreSQL store once: its tables exist, created as the gateway would."""
    from gateway.cisis.ledger_pg import PgZamLedger
    from gateway.directory.directory_pg import PgDirectory
    from gateway.directory.harvest_pg import PgHarvestStore
    from gateway.intake.dedup_pg import PgDedupStore
    from gateway.lps.store_pg import PgDeliveredStore

    storage = config.storage
    kwargs = {"password": password(storage, config.source), "connect_timeout": storage.connect_timeout,
              "pool_size": 1}
    for cls in (PgDirectory, PgHarvestStore, PgDedupStore, PgZamLedger, PgDeliveredStore):
        cls(storage.dsn, **kwargs).close()  # type: ignore[arg-type]


@contextmanager
def _sqlite(path: Path) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        yield db
    finally:
        db.close()


def _copy_rows(conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]], sql: str, counts: Counts) -> None:
    counts.read += len(rows)
    for row in rows:
        if conn.execute(sql, row).rowcount:  # type: ignore[call-overload]
            counts.copied += 1
        else:
            counts.present += 1


def _directory(conn: psycopg.Connection[Any], db: sqlite3.Connection, source: str, counts: Counts) -> None:
    from gateway.directory.directory import _ENTRY_COLS

    tables = {"import_state": ("source", "gen", "finished"), "entry": _ENTRY_COLS,
              "address": ("source", "address", "rkey", "ekey", "capability", "mailbox_type", "key_ref"),
              "certificate": ("source", "rkey", "address", "sha256", "der")}
    for table, cols in tables.items():
        rows = db.execute(f"SELECT {','.join(cols)} FROM {table}").fetchall()  # noqa: S608 - fixed names
        sql = (f"INSERT INTO dir_{table} ({','.join(cols)}) VALUES ({','.join(['%s'] * len(cols))}) "  # noqa: S608
               "ON CONFLICT DO NOTHING")
        if table == "import_state":  # bookkeeping, not a directory row: not counted
            for row in rows:
                conn.execute(sql, row)  # type: ignore[call-overload]
            continue
        _copy_rows(conn, rows, sql, counts)


def _dedup(conn: psycopg.Connection[Any], db: sqlite3.Connection, source: str, counts: Counts) -> None:
    rows = db.execute("SELECT kind, document, recipient, first_sent, last_sent FROM sent").fetchall()
    counts.read = len(rows)
    for row in rows:
        # xmax = 0: the row was inserted, not updated (a key already there keeps the later time)
        new = conn.execute("INSERT INTO dedup_sent (kind, document, recipient, first_sent, last_sent) "
                           "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (kind, document, recipient) DO UPDATE SET "
                           "last_sent = GREATEST(dedup_sent.last_sent, excluded.last_sent) "
                           "RETURNING xmax = 0", row).fetchone()
        if new and new[0]:
            counts.copied += 1
        else:
            counts.present += 1


def _harvest(conn: psycopg.Connection[Any], db: sqlite3.Connection, source: str, counts: Counts) -> None:
    rows = db.execute("SELECT address, fingerprint, der, seen_at, not_after FROM harvested").fetchall()
    counts.read = len(rows)
    for row in rows:
        new = conn.execute("INSERT INTO harvest_certificates (address, fingerprint, der, seen_at, not_after) "
                           "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (address, fingerprint) DO UPDATE SET "
                           "seen_at = GREATEST(harvest_certificates.seen_at, excluded.seen_at) "
                           "RETURNING xmax = 0", row).fetchone()
        if new and new[0]:
            counts.copied += 1
        else:
            counts.present += 1


def _lps(conn: psycopg.Connection[Any], db: sqlite3.Connection, source: str, counts: Counts) -> None:
    cols = "unique_id, set_id, version, author, organisation, patient, confidentiality, recorded"
    rows = db.execute(f"SELECT {cols} FROM delivered").fetchall()  # noqa: S608 - fixed names
    _copy_rows(conn, rows, f"INSERT INTO lps_delivered ({cols}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "  # noqa: S608
               "ON CONFLICT DO NOTHING", counts)


def _mapped(conn: psycopg.Connection[Any], source: str, item: str) -> str | None:
    row = conn.execute("SELECT target FROM msgw_migration WHERE source=%s AND item=%s", (source, item)).fetchone()
    return None if row is None else str(row[0])


def _map(conn: psycopg.Connection[Any], source: str, item: str, target: object) -> None:
    conn.execute("INSERT INTO msgw_migration (source, item, target) VALUES (%s, %s, %s)", (source, item, str(target)))


def _ledger(conn: psycopg.Connection[Any], db: sqlite3.Connection, source: str, counts: Counts) -> None:
    from gateway.pgstore import serialize

    serialize(conn, "msgw-zam-ledger")  # the nodes' ledger writes wait for the copy
    tx = {}
    for row in db.execute("SELECT id, creator, header, ack_reception, ack_read, created, origin "
                          "FROM transmissions ORDER BY id").fetchall():
        counts.read += 1
        done = _mapped(conn, source, f"transmission:{row[0]}")
        if done is not None:
            tx[row[0]], counts.present = int(done), counts.present + 1
            continue
        new = conn.execute("INSERT INTO zam_transmissions (creator, header, ack_reception, ack_read, created, "
                           "origin) VALUES (%s, %s, %s, %s, %s, %s) RETURNING id", row[1:]).fetchone()
        tx[row[0]] = int(new[0]) if new else 0
        _map(conn, source, f"transmission:{row[0]}", tx[row[0]])
        counts.copied += 1
    for row in db.execute("SELECT id, transmission, queue_id, message_id, recipient_address, recipient_id, kind, "
                          "z02, z03 FROM copies ORDER BY id").fetchall():
        _ledger_row(conn, source, f"copy:{row[0]}", counts,
                    "INSERT INTO zam_copies (transmission, queue_id, message_id, recipient_address, recipient_id, "
                    "kind, z02, z03) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                    (tx[row[1]], *row[2:]))
    for row in db.execute("SELECT id, creator, control_id, data, attempts, next_attempt, created, state "
                          "FROM outbox ORDER BY id").fetchall():
        _ledger_row(conn, source, f"outbox:{row[0]}", counts,
                    "INSERT INTO zam_outbox (creator, control_id, data, attempts, next_attempt, created, state) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id", row[1:])
    for reason, count in db.execute("SELECT reason, count FROM ignored ORDER BY reason").fetchall():
        _ledger_row(conn, source, f"ignored:{reason}", counts,
                    "INSERT INTO zam_ignored (reason, count) VALUES (%s, %s) ON CONFLICT (reason) "
                    "DO UPDATE SET count = zam_ignored.count + excluded.count RETURNING reason", (reason, count))


def _ledger_row(conn: psycopg.Connection[Any], source: str, item: str, counts: Counts, sql: str,
                row: tuple[Any, ...]) -> None:
    counts.read += 1
    if _mapped(conn, source, item) is not None:
        counts.present += 1
        return
    new = conn.execute(sql, row).fetchone()  # type: ignore[call-overload]
    _map(conn, source, item, new[0] if new else "")
    counts.copied += 1


def _queue(config: GatewayConfig, conn: psycopg.Connection[Any], source: str, counts: Counts,
           dry_run: bool) -> None:
    """Pending messages through the queue stores' public methods (module docstring)."""
    from gateway.spool import Spool

    if not (config.spool.path / "queue.sqlite").exists() and not (config.spool.path / "msg").is_dir():
        counts.note = "no SQLite spool"
        return
    try:
        target = open_queue_store(config, owner="migrate")
    except ModuleNotFoundError as exc:
        if exc.name != PG_QUEUE[0]:
            raise
        counts.note = f"{PG_QUEUE[0]}.{PG_QUEUE[1]} is not in this build: the queue was not copied"
        return
    with Spool(config.spool.path).open(recover=False) as local:
        pending = [m for m in local.list() if m.pending]
        counts.read = len(pending)
        if dry_run:  # an id already in the shared queue, or mapped by an earlier run, is there
            with target.open(recover=False) as shared:
                counts.present = sum(1 for m in pending if shared.get(m.id) is not None
                                     or _mapped(conn, source, f"message:{m.id}") is not None)
            counts.copied = counts.read - counts.present
            return
        with target.open(recover=False) as shared:
            importer = getattr(shared, "import_message", None)
            for m in pending:
                if importer is not None:
                    copies = {c.id: local.copy_bytes(c) for c in m.copies if not c.file.startswith("msg/")}
                    if importer(m, local.message_bytes(m.id), copies):
                        counts.copied += 1
                    else:
                        counts.present += 1
                    continue
                if _mapped(conn, source, f"message:{m.id}") is not None:
                    counts.present += 1
                    continue
                new_id = shared.accept(m.sender, [r.address for r in m.pending], local.message_bytes(m.id),
                                       lifetime=max(m.expires - m.received, 0.0), listener=m.listener, client=m.client,
                                       auth_user=m.auth_user, now=m.received)
                _map(conn, source, f"message:{m.id}", new_id)
                counts.copied += 1


__all__ = ["STORES", "Counts", "MigrationError", "migrate", "register", "run_migrate"]
