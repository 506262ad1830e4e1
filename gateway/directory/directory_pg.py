"""The directory of correspondents in the shared PostgreSQL: `SqliteDirectory`'s semantics (see
`gateway.directory.directory`) for several nodes — an operator's entry or an import made on one
node is what every node answers at the next lookup.

Same tables (``dir_`` prefix), same per-source rows and generations, same merge (the merge
functions are the SQLite module's, shared). Differences, and why:

- no answer cache: SQLite's cache is kept valid by ``PRAGMA data_version``, which sees commits
  of any process on the same file; nothing as cheap tells a node that another node committed, and
  a stale capability or certificate is a wrong protection decision. A lookup is two indexed
  queries on a pooled connection.
- writes that SQLite serialised with ``BEGIN IMMEDIATE`` (an import's generation, its batches,
  its sweep; `put`; `remove`) take a transaction-level advisory lock per source, so two nodes
  importing the same source still see "another import ran meanwhile" instead of mixing rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg

from gateway.directory.directory import (
    _ENTRY_COLS,
    Address,
    Correspondent,
    DirectoryItem,
    DirectoryUnavailable,
    ImportCounts,
    _activity_json,
    _check_item,
    _merge_address,
    _merge_entity,
    fold,
    normalise_address,
    validate_source,
)
from gateway.pgstore import PgDatabase, serialize

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS dir_import_state (source TEXT PRIMARY KEY, gen INTEGER NOT NULL,
    finished DOUBLE PRECISION);
CREATE TABLE IF NOT EXISTS dir_entry (
    source TEXT NOT NULL, rkey TEXT NOT NULL, gen INTEGER NOT NULL, hash TEXT NOT NULL,
    ekey TEXT NOT NULL, kind TEXT NOT NULL, national_id TEXT, rpps TEXT, adeli TEXT,
    civility TEXT, last_name TEXT, first_name TEXT, organisation TEXT, dematerialisation INTEGER,
    last_norm TEXT, first_norm TEXT, org_norm TEXT, postcode TEXT, finess TEXT, activity TEXT,
    PRIMARY KEY (source, rkey));
CREATE INDEX IF NOT EXISTS dir_entry_ekey ON dir_entry (ekey);
CREATE INDEX IF NOT EXISTS dir_entry_rpps ON dir_entry (rpps) WHERE rpps IS NOT NULL;
CREATE INDEX IF NOT EXISTS dir_entry_adeli ON dir_entry (adeli) WHERE adeli IS NOT NULL;
CREATE INDEX IF NOT EXISTS dir_entry_national ON dir_entry (national_id) WHERE national_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS dir_entry_finess ON dir_entry (finess) WHERE finess IS NOT NULL;
CREATE INDEX IF NOT EXISTS dir_entry_last ON dir_entry (last_norm) WHERE last_norm IS NOT NULL;
CREATE INDEX IF NOT EXISTS dir_entry_org ON dir_entry (org_norm) WHERE org_norm IS NOT NULL;
CREATE TABLE IF NOT EXISTS dir_address (
    source TEXT NOT NULL, address TEXT NOT NULL, rkey TEXT NOT NULL, ekey TEXT NOT NULL,
    capability TEXT NOT NULL, mailbox_type TEXT, key_ref TEXT,
    PRIMARY KEY (source, address));
CREATE INDEX IF NOT EXISTS dir_address_addr ON dir_address (address);
CREATE INDEX IF NOT EXISTS dir_address_ekey ON dir_address (ekey);
CREATE INDEX IF NOT EXISTS dir_address_rkey ON dir_address (source, rkey);
CREATE TABLE IF NOT EXISTS dir_certificate (
    source TEXT NOT NULL, rkey TEXT NOT NULL, address TEXT NOT NULL, sha256 TEXT NOT NULL, der BYTEA NOT NULL,
    PRIMARY KEY (source, rkey, address, sha256));
CREATE INDEX IF NOT EXISTS dir_certificate_addr ON dir_certificate (address)
"""

_COLS = ",".join(_ENTRY_COLS)
_UPSERT_ENTRY = (f"INSERT INTO dir_entry ({_COLS}) VALUES ({','.join(['%s'] * len(_ENTRY_COLS))}) "  # noqa: S608
                 "ON CONFLICT (source, rkey) DO UPDATE SET "
                 + ",".join(f"{c}=excluded.{c}" for c in _ENTRY_COLS[2:]))
_UPSERT_ADDRESS = ("INSERT INTO dir_address (source, address, rkey, ekey, capability, mailbox_type, key_ref) "
                   "VALUES (%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (source, address) DO UPDATE SET rkey=excluded.rkey, "
                   "ekey=excluded.ekey, capability=excluded.capability, mailbox_type=excluded.mailbox_type, "
                   "key_ref=excluded.key_ref")
_UPSERT_CERT = ("INSERT INTO dir_certificate (source, rkey, address, sha256, der) VALUES (%s,%s,%s,%s,%s) "
                "ON CONFLICT (source, rkey, address, sha256) DO UPDATE SET der=excluded.der")
_ADDRESS_COLS = "source, address, ekey, capability, mailbox_type, key_ref"

Conn = psycopg.Connection[Any]


class PgDirectory:
    """The shared directory store (PostgreSQL). Thread-safe: one pooled connection per call."""

    def __init__(self, dsn: str, *, password: str | None = None, connect_timeout: float = 5.0,
                 pool_size: int = 4) -> None:
        self._db = PgDatabase(dsn, error=DirectoryUnavailable, what="the directory", password=password,
                              connect_timeout=connect_timeout, pool_size=pool_size, application="msgw-directory")
        try:
            self._db.ensure_schema("directory", SCHEMA_VERSION, _SCHEMA)
        except BaseException:
            self._db.close()
            raise

    def __enter__(self) -> PgDirectory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    # -- writing ---------------------------------------------------------------------------

    def put(self, item: DirectoryItem, source: str = "operator") -> None:
        """Store (or replace) one item under a source, outside any import sweep."""
        validate_source(source)
        _check_item(item)
        with self._db.transaction("write") as conn:
            serialize(conn, "msgw-dir:" + source)
            gen = _current_gen(conn, source)
            conn.execute("DELETE FROM dir_address WHERE source=%s AND rkey=%s", (source, item.rkey))
            conn.execute("DELETE FROM dir_certificate WHERE source=%s AND rkey=%s", (source, item.rkey))
            _write_items(conn, source, gen, [item])

    def remove(self, rkey: str, source: str = "operator") -> bool:
        with self._db.transaction("write") as conn:
            serialize(conn, "msgw-dir:" + source)
            cur = conn.execute("DELETE FROM dir_entry WHERE source=%s AND rkey=%s", (source, rkey))
            conn.execute("DELETE FROM dir_address WHERE source=%s AND rkey=%s", (source, rkey))
            conn.execute("DELETE FROM dir_certificate WHERE source=%s AND rkey=%s", (source, rkey))
            return cur.rowcount > 0

    def sync_source(self, source: str, items: Iterable[DirectoryItem], *, batch_size: int = 5000,
                    allow_empty: bool = False) -> ImportCounts:
        """Make `source` say exactly what `items` say (`SqliteDirectory.sync_source`'s rules:
        one transaction per batch, the sweep only after the whole input, never on an empty one)."""
        validate_source(source)
        counts = ImportCounts()
        with self._db.transaction("write") as conn:
            serialize(conn, "msgw-dir:" + source)
            gen = _current_gen(conn, source) + 1
            conn.execute("INSERT INTO dir_import_state (source, gen) VALUES (%s, %s) ON CONFLICT (source) "
                         "DO UPDATE SET gen=excluded.gen", (source, gen))
        batch: list[DirectoryItem] = []
        for item in items:
            batch.append(item)
            if len(batch) >= batch_size:
                self._sync_batch(source, gen, batch, counts)
                batch = []
        if batch:
            self._sync_batch(source, gen, batch, counts)
        seen = counts.added + counts.updated + counts.unchanged
        if seen == 0 and not allow_empty:
            counts.swept = False
            return counts
        with self._db.transaction("write") as conn:
            serialize(conn, "msgw-dir:" + source)
            if _current_gen(conn, source) != gen:
                raise DirectoryUnavailable("another import of the same source ran meanwhile: run it again")
            cur = conn.execute("DELETE FROM dir_entry WHERE source=%s AND gen<>%s", (source, gen))
            counts.removed = cur.rowcount
            for table in ("dir_address", "dir_certificate"):
                conn.execute(f"DELETE FROM {table} t WHERE source=%s AND NOT EXISTS "  # type: ignore[call-overload]  # noqa: S608
                             "(SELECT 1 FROM dir_entry e WHERE e.source=t.source AND e.rkey=t.rkey)", (source,))
            conn.execute("UPDATE dir_import_state SET finished=extract(epoch from now()) WHERE source=%s", (source,))
        return counts

    def _sync_batch(self, source: str, gen: int, batch: list[DirectoryItem], counts: ImportCounts) -> None:
        unique: dict[str, tuple[DirectoryItem, str]] = {}
        for item in batch:
            if item.rkey in unique:
                counts.duplicates += 1
            else:
                unique[item.rkey] = (item, item.digest)
        with self._db.transaction("write") as conn:
            serialize(conn, "msgw-dir:" + source)
            existing = {r[0]: (r[1], r[2]) for r in conn.execute(
                "SELECT rkey, hash, gen FROM dir_entry WHERE source=%s AND rkey = ANY(%s)", (source, list(unique)))}
            changed: list[DirectoryItem] = []
            replaced: list[tuple[str, str]] = []
            touched: list[tuple[int, str, str]] = []
            for rkey, (item, digest) in unique.items():
                old = existing.get(rkey)
                if old is None:
                    counts.added += 1
                    changed.append(item)
                elif old[1] == gen:
                    counts.duplicates += 1  # seen in an earlier batch of this run: first one wins
                elif old[0] == digest:
                    counts.unchanged += 1
                    touched.append((gen, source, rkey))
                else:
                    counts.updated += 1
                    changed.append(item)
                    replaced.append((source, rkey))
            with conn.cursor() as cur:
                if touched:
                    cur.executemany("UPDATE dir_entry SET gen=%s WHERE source=%s AND rkey=%s", touched)
                if replaced:
                    cur.executemany("DELETE FROM dir_address WHERE source=%s AND rkey=%s", replaced)
                    cur.executemany("DELETE FROM dir_certificate WHERE source=%s AND rkey=%s", replaced)
            if changed:
                _write_items(conn, source, gen, changed)

    # -- reading ---------------------------------------------------------------------------

    def by_rpps(self, rpps: str) -> Correspondent | None:
        return self._first("SELECT DISTINCT ekey FROM dir_entry WHERE rpps=%s", (rpps,))

    def by_adeli(self, adeli: str) -> Correspondent | None:
        return self._first("SELECT DISTINCT ekey FROM dir_entry WHERE adeli=%s", (adeli.upper(),))

    def by_national_id(self, national_id: str) -> Correspondent | None:
        return self._first("SELECT DISTINCT ekey FROM dir_entry WHERE national_id=%s", (national_id,))

    def by_finess(self, finess: str) -> list[Correspondent]:
        with self._db.transaction("read") as conn:
            return _many(conn, _ekeys(conn, "SELECT DISTINCT ekey FROM dir_entry WHERE finess=%s", (finess,)))

    def by_address(self, address: str) -> Correspondent | None:
        addr = self.address(address)
        if addr is None:
            return None
        with self._db.transaction("read") as conn:
            return _correspondent(conn, addr.entity_key)

    def address(self, address: str) -> Address | None:
        """The address with the capability of its highest-priority source (no cache: module docstring)."""
        addr = normalise_address(address)
        with self._db.transaction("read") as conn:
            rows = conn.execute(f"SELECT {_ADDRESS_COLS} FROM dir_address WHERE address=%s",  # noqa: S608
                                (addr,)).fetchall()
            return _merge_address(rows, _certificates(conn, [addr]).get(addr, ())) if rows else None

    def find_by_name(self, name: str, postcode: str | None = None, limit: int = 50) -> list[Correspondent]:
        """As `SqliteDirectory.find_by_name` (accent- and case-insensitive names, postcode prefix)."""
        query = fold(name)
        if not query:
            return []
        tokens = query.split()
        with self._db.transaction("read") as conn:
            ekeys = _ekeys(conn, "SELECT DISTINCT ekey FROM dir_entry WHERE org_norm=%s OR last_norm=%s "
                           "OR last_norm = ANY(%s)", (query, query, tokens), limit=10 * limit + 100)
            found = _many(conn, ekeys)
        out = []
        for c in found:
            e = c.entity
            last, first = fold(e.last_name) or "", fold(e.first_name) or ""
            names = {last, f"{last} {first}".strip(), f"{first} {last}".strip(), fold(e.organisation) or ""}
            names |= {fold(a.organisation) or "" for a in e.activities}
            if query not in names:
                continue
            if postcode and not any((a.postcode or "").startswith(postcode) for a in e.activities):
                continue
            out.append(c)
            if len(out) >= limit:
                break
        return out

    def counts(self) -> dict[str, int]:
        """Rows per source (for `msgw check` and reports)."""
        with self._db.transaction("read") as conn:
            return {r[0]: r[1] for r in conn.execute("SELECT source, COUNT(*) FROM dir_entry GROUP BY source")}

    def _first(self, sql: str, params: tuple[Any, ...]) -> Correspondent | None:
        with self._db.transaction("read") as conn:
            found = _many(conn, _ekeys(conn, sql, params)[:1])
        return found[0] if found else None


def _current_gen(conn: Conn, source: str) -> int:
    row = conn.execute("SELECT gen FROM dir_import_state WHERE source=%s", (source,)).fetchone()
    return int(row[0]) if row else 0


def _write_items(conn: Conn, source: str, gen: int, items: Sequence[DirectoryItem]) -> None:
    entries, addresses, certs = [], [], []
    for item in items:
        ident, act = item.identity, item.activity
        entries.append((
            source, item.rkey, gen, item.digest, item.entity_key, ident.kind, ident.national_id, ident.rpps,
            ident.adeli, ident.civility, ident.last_name, ident.first_name, ident.organisation,
            None if ident.dematerialisation is None else int(ident.dematerialisation),
            fold(ident.last_name), fold(ident.first_name),
            fold(ident.organisation or (act.organisation if act else None)),
            act.postcode if act else None, act.finess if act else None,
            _activity_json(act) if act else None))
        if item.address is not None:
            a = item.address
            addr = normalise_address(a.address)
            addresses.append((source, addr, item.rkey, item.entity_key, a.capability, a.mailbox_type, a.key_ref))
            for der in a.certificates:
                certs.append((source, item.rkey, addr, hashlib.sha256(der).hexdigest(), der))
    with conn.cursor() as cur:
        cur.executemany(_UPSERT_ENTRY, entries)  # type: ignore[arg-type]
        if addresses:
            cur.executemany(_UPSERT_ADDRESS, addresses)
        if certs:
            cur.executemany(_UPSERT_CERT, certs)


def _ekeys(conn: Conn, sql: str, params: tuple[Any, ...], limit: int = 1000) -> list[str]:
    return [r[0] for r in conn.execute(sql + f" LIMIT {int(limit)}", params)]  # type: ignore[call-overload]


def _many(conn: Conn, ekeys: list[str]) -> list[Correspondent]:
    out = []
    for ekey in ekeys:
        c = _correspondent(conn, ekey)
        if c is not None:
            out.append(c)
    return out


def _correspondent(conn: Conn, ekey: str) -> Correspondent | None:
    rows = conn.execute(f"SELECT {_COLS} FROM dir_entry WHERE ekey=%s", (ekey,)).fetchall()  # noqa: S608
    arows = conn.execute(f"SELECT {_ADDRESS_COLS} FROM dir_address WHERE ekey=%s", (ekey,)).fetchall()  # noqa: S608
    if not rows and not arows:
        return None
    by_addr: dict[str, list[tuple[Any, ...]]] = {}
    for r in arows:
        by_addr.setdefault(r[1], []).append(r)
    # an address may also be named by another source under another entity key: take all its rows
    for addr in list(by_addr):
        by_addr[addr] = conn.execute(f"SELECT {_ADDRESS_COLS} FROM dir_address WHERE address=%s",  # noqa: S608
                                     (addr,)).fetchall()
    certs = _certificates(conn, list(by_addr))
    entity = _merge_entity(ekey, rows)
    addresses = tuple(_merge_address(arws, certs.get(addr, ())) for addr, arws in sorted(by_addr.items()))
    return Correspondent(entity=entity, addresses=addresses)


def _certificates(conn: Conn, addresses: list[str]) -> dict[str, tuple[bytes, ...]]:
    out: dict[str, dict[str, bytes]] = {}
    if not addresses:
        return {}
    for addr, sha, der in conn.execute("SELECT address, sha256, der FROM dir_certificate WHERE address = ANY(%s)",
                                       (addresses,)):
        out.setdefault(addr, {})[sha] = bytes(der)
    return {a: tuple(d[k] for k in sorted(d)) for a, d in out.items()}


__all__ = ["PgDirectory"]
