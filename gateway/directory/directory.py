"""Directory of correspondents: who a person or organisation is, their addresses, and what each
address can read (its *capability*).

Why this shape: the same person reaches us from several public files (the MSSanté mailbox
extraction, the RPPS extraction, our own CSV) and from operators' manual entries. Each source
keeps its own rows (`source`, `rkey`), so a re-import of one file replaces exactly what that
file said — updates, removals, counts — without touching what another source said. Lookups
merge the rows of one entity by source priority (operator > csv > rpps > mssante).

The store is behind the small `DirectoryStore` protocol; `SqliteDirectory` (WAL) is the
embedded default, `gateway.directory.directory_pg.PgDirectory` the shared one (several nodes on
one PostgreSQL); `gateway.storage.open_directory` chooses.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import threading
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from gateway.errors import MalformedInput, PermanentError

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

# -- capabilities -------------------------------------------------------------------------

SMIME = "smime"
LOCAL = "local"
TRUSTED_DOMAIN = "trusted-domain"
LEGACY_PREFIX = "legacy:"
_CODEC = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")
MAILBOX_TYPES = ("PER", "ORG", "APP")

#: Sources in merge priority: an operator's manual entry wins over a CSV, which wins over
#: the public extractions (RPPS describes people better than the mailbox extraction).
SOURCE_PRIORITY = ("operator", "csv", "rpps-extraction", "mssante-extraction")

_ADDRESS = re.compile(r"^[^@\s<>()\[\],;:\"]{1,64}@([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
                      r"(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+)$", re.IGNORECASE)
_RPPS = re.compile(r"^\d{11}$")
_ADELI = re.compile(r"^[0-9A-Z]{9}$")
_FINESS = re.compile(r"^[0-9][0-9AB][0-9]{7}$")
_SIRET = re.compile(r"^\d{14}$")


# -- errors -------------------------------------------------------------------------------

class DirectoryError(PermanentError):
    """The directory could not do what was asked (bad record, unusable database)."""

    code = "directory"
    status = "5.3.0"


class InvalidRecord(DirectoryError):
    """A record breaks a rule (bad identifier, address, capability); names the field, never its value."""

    code = "directory-invalid"
    status = "5.1.3"


class DirectoryUnavailable(DirectoryError):
    """The database cannot be opened or written: temporary, the caller may retry."""

    code = "directory-unavailable"
    temporary = True
    status = "4.3.0"


class ImportFormatError(MalformedInput):
    """An import file cannot be read at all (unknown header, unreadable): nothing was imported."""

    code = "directory-import"


# -- records ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Activity:
    """One exercise situation (RPPS row) or one mailbox's attachment (MSSanté row)."""

    source: str = ""
    profession_code: str | None = None
    profession_label: str | None = None
    category_code: str | None = None
    category_label: str | None = None
    speciality_code: str | None = None
    speciality_label: str | None = None
    mode_code: str | None = None
    structure_type: str | None = None
    structure_id: str | None = None
    finess: str | None = None
    siret: str | None = None
    organisation: str | None = None
    service: str | None = None
    postcode: str | None = None
    city: str | None = None
    department: str | None = None


EntityKind = Literal["person", "organisation"]


@dataclass(frozen=True)
class Entity:
    """A person (kind `person`) or an organisation, merged over every source that names it."""

    key: str
    kind: EntityKind
    national_id: str | None = None
    rpps: str | None = None
    adeli: str | None = None
    finess: str | None = None
    siret: str | None = None
    civility: str | None = None
    last_name: str | None = None
    first_name: str | None = None
    organisation: str | None = None
    dematerialisation: bool | None = None
    activities: tuple[Activity, ...] = ()
    sources: tuple[str, ...] = ()


@dataclass(frozen=True)
class Address:
    """A mailbox and what it can read. `certificates` are DER encryption certificates."""

    address: str
    entity_key: str
    capability: str
    mailbox_type: str | None = None
    key_ref: str | None = None
    certificates: tuple[bytes, ...] = ()
    source: str = ""

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]

    @property
    def legacy_codec(self) -> str | None:
        return self.capability[len(LEGACY_PREFIX):] if self.capability.startswith(LEGACY_PREFIX) else None


@dataclass(frozen=True)
class Correspondent:
    """The answer of a lookup: the entity and all its addresses."""

    entity: Entity
    addresses: tuple[Address, ...]

    def to_json(self) -> dict[str, Any]:
        ent = asdict(self.entity)
        return {"entity": ent, "addresses": [
            {"address": a.address, "capability": a.capability, "mailbox_type": a.mailbox_type,
             "key_ref": a.key_ref, "source": a.source,
             "certificates_sha256": [hashlib.sha256(c).hexdigest() for c in a.certificates]}
            for a in self.addresses]}


@dataclass(frozen=True)
class Identity:
    """Who an import row or manual entry is about (input side)."""

    kind: EntityKind = "person"
    national_id: str | None = None
    rpps: str | None = None
    adeli: str | None = None
    civility: str | None = None
    last_name: str | None = None
    first_name: str | None = None
    organisation: str | None = None
    dematerialisation: bool | None = None


@dataclass(frozen=True)
class AddressInput:
    address: str
    capability: str
    mailbox_type: str | None = None
    key_ref: str | None = None
    certificates: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class DirectoryItem:
    """One row to store: `rkey` is stable within its source (what makes re-import idempotent)."""

    rkey: str
    entity_key: str
    identity: Identity
    activity: Activity | None = None
    address: AddressInput | None = None

    @cached_property
    def digest(self) -> str:
        """Content hash: an unchanged row on re-import costs one comparison, no write."""
        blob = repr((self.entity_key, _values(self.identity), _values(self.activity) if self.activity else None,
                     _address_blob(self.address)))
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class ImportCounts:
    """Outcome of a source sync. `duplicates` are rows whose key appeared earlier in the same file."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    rejected: int = 0
    duplicates: int = 0
    swept: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_FIELDS: dict[type, tuple[str, ...]] = {}


def _values(obj: Any) -> list[Any]:
    """Field values in order; dataclasses.asdict deep-copies and dominated import time."""
    names = _FIELDS.get(type(obj))
    if names is None:
        names = _FIELDS[type(obj)] = tuple(f.name for f in fields(obj))
    return [getattr(obj, n) for n in names]


def _activity_json(act: Activity) -> str:
    names = _FIELDS.get(Activity) or tuple(f.name for f in fields(Activity))
    return json.dumps({n: v for n in names if n != "source" and (v := getattr(act, n)) is not None},
                      ensure_ascii=False)


def _address_blob(a: AddressInput | None) -> Any:
    if a is None:
        return None
    return [a.address, a.capability, a.mailbox_type, a.key_ref, [hashlib.sha256(c).hexdigest() for c in a.certificates]]


# -- validation helpers (shared with the readers) --------------------------------------------

def normalise_address(address: str) -> str:
    """Addresses compare case-insensitively (MSSanté local parts are case-insensitive in practice)."""
    return address.strip().lower()


def is_address(address: str) -> bool:
    return bool(_ADDRESS.match(address))


def is_rpps(value: str) -> bool:
    return bool(_RPPS.match(value))


def is_adeli(value: str) -> bool:
    return bool(_ADELI.match(value))


def is_finess(value: str) -> bool:
    return bool(_FINESS.match(value))


def is_siret(value: str) -> bool:
    return bool(_SIRET.match(value))


def check_capability(capability: str, *, key_ref: str | None = None, certificates: Sequence[bytes] = ()) -> None:
    """Raise InvalidRecord unless the capability is known and has what it needs."""
    if capability == SMIME:
        if not certificates:
            raise InvalidRecord("capability smime needs at least one encryption certificate")
    elif capability == LOCAL:
        if not key_ref:
            raise InvalidRecord("capability local needs a key reference")
    elif capability.startswith(LEGACY_PREFIX):
        if not _CODEC.match(capability[len(LEGACY_PREFIX):]):
            raise InvalidRecord("capability legacy:<codec> needs a codec name of [a-z0-9_.-]")
    elif capability != TRUSTED_DOMAIN:
        raise InvalidRecord("unknown capability (use smime, local, trusted-domain or legacy:<codec>)")


def national_id_for(rpps: str | None = None, adeli: str | None = None) -> str | None:
    """The identifiant national PP: `8` + RPPS, or `0` + ADELI."""
    if rpps:
        return "8" + rpps
    if adeli:
        return "0" + adeli
    return None


def split_national_id(national_id: str) -> tuple[str | None, str | None]:
    """(rpps, adeli) read from an identifiant national PP; (None, None) for other prefixes."""
    if national_id.startswith("8") and is_rpps(national_id[1:]):
        return national_id[1:], None
    if national_id.startswith("0") and is_adeli(national_id[1:]):
        return None, national_id[1:]
    return None, None


def entity_key_for(identity: Identity, activity: Activity | None = None, address: str | None = None) -> str:
    """Stable key of the entity a row is about: person by national id, else structure, else mailbox."""
    if identity.national_id:
        return "pp:" + identity.national_id
    if activity is not None and activity.structure_id:
        return f"st:{activity.structure_type or ''}:{activity.structure_id}"
    if activity is not None and (activity.finess or activity.siret):
        return "st:" + (activity.finess or activity.siret or "")
    if address:
        return "bal:" + normalise_address(address)
    raise InvalidRecord("no identifier, structure or address to key the entity")


@lru_cache(maxsize=65536)
def fold(text: str | None) -> str | None:
    """Accent- and case-insensitive form used for name search."""
    if not text:
        return None
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    plain = re.sub(r"[\s'’\-]+", " ", plain).strip().upper()
    return plain or None


# -- the store interface ----------------------------------------------------------------------

class DirectoryStore(Protocol):
    """What the rest of the gateway needs from a directory (`SqliteDirectory`, `PgDirectory`)."""

    def __enter__(self) -> DirectoryStore: ...

    def __exit__(self, *exc: object) -> None: ...

    def put(self, item: DirectoryItem, source: str = "operator") -> None: ...

    def remove(self, rkey: str, source: str = "operator") -> bool: ...

    def sync_source(self, source: str, items: Iterable[DirectoryItem], *, batch_size: int = 5000,
                    allow_empty: bool = False) -> ImportCounts: ...

    def by_rpps(self, rpps: str) -> Correspondent | None: ...

    def by_adeli(self, adeli: str) -> Correspondent | None: ...

    def by_national_id(self, national_id: str) -> Correspondent | None: ...

    def by_finess(self, finess: str) -> list[Correspondent]: ...

    def by_address(self, address: str) -> Correspondent | None: ...

    def address(self, address: str) -> Address | None: ...

    def find_by_name(self, name: str, postcode: str | None = None, limit: int = 50) -> list[Correspondent]: ...

    def counts(self) -> dict[str, int]: ...

    def close(self) -> None: ...


# -- SQLite implementation --------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS import_state(source TEXT PRIMARY KEY, gen INTEGER NOT NULL, finished REAL);
CREATE TABLE IF NOT EXISTS entry(
    source TEXT NOT NULL, rkey TEXT NOT NULL, gen INTEGER NOT NULL, hash TEXT NOT NULL,
    ekey TEXT NOT NULL, kind TEXT NOT NULL, national_id TEXT, rpps TEXT, adeli TEXT,
    civility TEXT, last_name TEXT, first_name TEXT, organisation TEXT, dematerialisation INTEGER,
    last_norm TEXT, first_norm TEXT, org_norm TEXT, postcode TEXT, finess TEXT, activity TEXT,
    PRIMARY KEY(source, rkey));
CREATE INDEX IF NOT EXISTS entry_ekey ON entry(ekey);
CREATE INDEX IF NOT EXISTS entry_rpps ON entry(rpps) WHERE rpps IS NOT NULL;
CREATE INDEX IF NOT EXISTS entry_adeli ON entry(adeli) WHERE adeli IS NOT NULL;
CREATE INDEX IF NOT EXISTS entry_national ON entry(national_id) WHERE national_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS entry_finess ON entry(finess) WHERE finess IS NOT NULL;
CREATE INDEX IF NOT EXISTS entry_last ON entry(last_norm) WHERE last_norm IS NOT NULL;
CREATE INDEX IF NOT EXISTS entry_org ON entry(org_norm) WHERE org_norm IS NOT NULL;
CREATE TABLE IF NOT EXISTS address(
    source TEXT NOT NULL, address TEXT NOT NULL, rkey TEXT NOT NULL, ekey TEXT NOT NULL,
    capability TEXT NOT NULL, mailbox_type TEXT, key_ref TEXT,
    PRIMARY KEY(source, address));
CREATE INDEX IF NOT EXISTS address_addr ON address(address);
CREATE INDEX IF NOT EXISTS address_ekey ON address(ekey);
CREATE INDEX IF NOT EXISTS address_rkey ON address(source, rkey);
CREATE TABLE IF NOT EXISTS certificate(
    source TEXT NOT NULL, rkey TEXT NOT NULL, address TEXT NOT NULL, sha256 TEXT NOT NULL, der BLOB NOT NULL,
    PRIMARY KEY(source, rkey, address, sha256));
CREATE INDEX IF NOT EXISTS certificate_addr ON certificate(address);
"""

_ENTRY_COLS = ("source", "rkey", "gen", "hash", "ekey", "kind", "national_id", "rpps", "adeli", "civility",
               "last_name", "first_name", "organisation", "dematerialisation", "last_norm", "first_norm",
               "org_norm", "postcode", "finess", "activity")
_SETS = ",".join(f"{c}=excluded.{c}" for c in _ENTRY_COLS[2:])
_UPSERT_ENTRY = f"INSERT INTO entry({','.join(_ENTRY_COLS)}) VALUES ({','.join('?' * len(_ENTRY_COLS))}) " \
    f"ON CONFLICT(source, rkey) DO UPDATE SET {_SETS}"  # noqa: S608 - fixed column names
_IN_CHUNK = 500


def _source_rank(source: str) -> int:
    base = source.split(":", 1)[0]
    return SOURCE_PRIORITY.index(base) if base in SOURCE_PRIORITY else len(SOURCE_PRIORITY)


def validate_source(source: str) -> str:
    base = source.split(":", 1)[0]
    if base not in SOURCE_PRIORITY or not re.match(r"^[a-z0-9:_.-]{1,64}$", source):
        raise InvalidRecord("unknown source name (operator, csv[:name], rpps-extraction, mssante-extraction)")
    return source


#: Addresses whose answer `SqliteDirectory.address` keeps (all dropped when full: a bound on
#: memory, not an eviction policy; the busy correspondents come back at once).
ADDRESS_CACHE_SIZE = 4096


class SqliteDirectory:
    """The embedded directory store (SQLite, WAL). One connection, guarded by a lock (thread-safe)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA cache_size=-65536")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise DirectoryUnavailable(f"cannot open the directory database ({type(exc).__name__})") from None
        self._lock = threading.RLock()
        #: address → `address()`'s answer, valid while `_mark` holds (see `_cached`).
        self._addresses: dict[str, Address | None] = {}
        self._mark: tuple[int, int] | None = None

    # context manager
    def __enter__(self) -> SqliteDirectory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writing ---------------------------------------------------------------------------

    def put(self, item: DirectoryItem, source: str = "operator") -> None:
        """Store (or replace) one item under a source, outside any import sweep."""
        validate_source(source)
        _check_item(item)
        with self._lock, self._tx():
            gen = self._current_gen(source)
            self._db.execute("DELETE FROM address WHERE source=? AND rkey=?", (source, item.rkey))
            self._db.execute("DELETE FROM certificate WHERE source=? AND rkey=?", (source, item.rkey))
            self._write_items(source, gen, [item])

    def remove(self, rkey: str, source: str = "operator") -> bool:
        with self._lock, self._tx():
            cur = self._db.execute("DELETE FROM entry WHERE source=? AND rkey=?", (source, rkey))
            self._db.execute("DELETE FROM address WHERE source=? AND rkey=?", (source, rkey))
            self._db.execute("DELETE FROM certificate WHERE source=? AND rkey=?", (source, rkey))
            return cur.rowcount > 0

    def sync_source(self, source: str, items: Iterable[DirectoryItem], *, batch_size: int = 5000,
                    allow_empty: bool = False) -> ImportCounts:
        """Make `source` say exactly what `items` say: add, update, then remove the rest.

        Streams: items are consumed in batches, one transaction per batch. Rows not seen in
        this run are removed only after the whole input was read (so a failure half-way removes
        nothing), and not at all when the input had no valid row unless `allow_empty` (an empty
        or truncated extraction must not wipe the directory)."""
        validate_source(source)
        counts = ImportCounts()
        with self._lock, self._tx():
            gen = self._current_gen(source) + 1
            self._db.execute("INSERT INTO import_state(source, gen) VALUES (?, ?) ON CONFLICT(source) "
                             "DO UPDATE SET gen=excluded.gen", (source, gen))
        # the lock is taken per batch, not for the whole file: lookups of this process go on meanwhile
        batch: list[DirectoryItem] = []
        for item in items:
            batch.append(item)
            if len(batch) >= batch_size:
                with self._lock:
                    self._sync_batch(source, gen, batch, counts)
                batch = []
        with self._lock:
            if batch:
                self._sync_batch(source, gen, batch, counts)
            seen = counts.added + counts.updated + counts.unchanged
            if seen == 0 and not allow_empty:
                counts.swept = False
                return counts
            with self._tx():
                if self._current_gen(source) != gen:  # checked under the write lock of the sweep
                    raise DirectoryUnavailable("another import of the same source ran meanwhile: run it again")
                cur = self._db.execute("DELETE FROM entry WHERE source=? AND gen<>?", (source, gen))
                counts.removed = cur.rowcount
                for table in ("address", "certificate"):
                    self._db.execute(f"DELETE FROM {table} WHERE source=? AND rkey NOT IN "  # noqa: S608 - fixed names
                                     "(SELECT rkey FROM entry WHERE source=?)", (source, source))
                self._db.execute("UPDATE import_state SET finished=strftime('%s','now') WHERE source=?", (source,))
        return counts

    def _sync_batch(self, source: str, gen: int, batch: list[DirectoryItem], counts: ImportCounts) -> None:
        unique: dict[str, tuple[DirectoryItem, str]] = {}
        for item in batch:
            if item.rkey in unique:
                counts.duplicates += 1
            else:
                unique[item.rkey] = (item, item.digest)
        with self._tx():
            existing: dict[str, tuple[str, int]] = {}
            keys = list(unique)
            for i in range(0, len(keys), _IN_CHUNK):
                chunk = keys[i:i + _IN_CHUNK]
                rows = self._db.execute(
                    f"SELECT rkey, hash, gen FROM entry WHERE source=? AND rkey IN ({','.join('?' * len(chunk))})",  # noqa: S608
                    (source, *chunk))
                existing.update((r[0], (r[1], r[2])) for r in rows)
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
            if touched:
                self._db.executemany("UPDATE entry SET gen=? WHERE source=? AND rkey=?", touched)
            if replaced:
                self._db.executemany("DELETE FROM address WHERE source=? AND rkey=?", replaced)
                self._db.executemany("DELETE FROM certificate WHERE source=? AND rkey=?", replaced)
            if changed:
                self._write_items(source, gen, changed)

    def _write_items(self, source: str, gen: int, items: Sequence[DirectoryItem]) -> None:
        entries, addresses, certs = [], [], []
        for item in items:
            ident, act = item.identity, item.activity
            entries.append((
                source, item.rkey, gen, item.digest, item.entity_key, ident.kind, ident.national_id, ident.rpps,
                ident.adeli, ident.civility, ident.last_name, ident.first_name, ident.organisation,
                None if ident.dematerialisation is None else int(ident.dematerialisation),
                fold(ident.last_name), fold(ident.first_name), fold(ident.organisation or (act.organisation if act
                                                                                             else None)),
                act.postcode if act else None, act.finess if act else None,
                _activity_json(act) if act else None))
            if item.address is not None:
                a = item.address
                addr = normalise_address(a.address)
                addresses.append((source, addr, item.rkey, item.entity_key, a.capability, a.mailbox_type, a.key_ref))
                for der in a.certificates:
                    certs.append((source, item.rkey, addr, hashlib.sha256(der).hexdigest(), der))
        self._db.executemany(_UPSERT_ENTRY, entries)
        if addresses:
            self._db.executemany("INSERT OR REPLACE INTO address(source, address, rkey, ekey, capability, "
                                 "mailbox_type, key_ref) VALUES (?,?,?,?,?,?,?)", addresses)
        if certs:
            self._db.executemany("INSERT OR REPLACE INTO certificate(source, rkey, address, sha256, der) "
                                 "VALUES (?,?,?,?,?)", certs)

    def _current_gen(self, source: str) -> int:
        row = self._db.execute("SELECT gen FROM import_state WHERE source=?", (source,)).fetchone()
        return int(row[0]) if row else 0

    class _Tx:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def __enter__(self) -> None:
            try:
                self.db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as err:
                raise DirectoryUnavailable(f"the directory is busy or unwritable ({type(err).__name__})") from None

        def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
            if exc_type is None:
                try:
                    self.db.execute("COMMIT")
                except sqlite3.Error as err:
                    raise DirectoryUnavailable(f"cannot write the directory ({type(err).__name__})") from None
                return
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise DirectoryUnavailable(f"cannot write the directory ({type(exc).__name__})") from None

    def _tx(self) -> SqliteDirectory._Tx:
        self._addresses.clear()  # our own writes (total_changes in `_cached` sees them as well)
        return SqliteDirectory._Tx(self._db)

    # -- reading ---------------------------------------------------------------------------

    def by_rpps(self, rpps: str) -> Correspondent | None:
        return self._first(self._ekeys("SELECT DISTINCT ekey FROM entry WHERE rpps=?", (rpps,)))

    def by_adeli(self, adeli: str) -> Correspondent | None:
        return self._first(self._ekeys("SELECT DISTINCT ekey FROM entry WHERE adeli=?", (adeli.upper(),)))

    def by_national_id(self, national_id: str) -> Correspondent | None:
        return self._first(self._ekeys("SELECT DISTINCT ekey FROM entry WHERE national_id=?", (national_id,)))

    def by_finess(self, finess: str) -> list[Correspondent]:
        return self._many(self._ekeys("SELECT DISTINCT ekey FROM entry WHERE finess=?", (finess,)))

    def by_address(self, address: str) -> Correspondent | None:
        addr = self.address(address)
        return None if addr is None else self._correspondent(addr.entity_key)

    def address(self, address: str) -> Address | None:
        """The address with the capability of its highest-priority source.

        Asked on the event loop for every recipient at RCPT time and again when the message is
        routed, so answers are kept, but only while the database is provably unchanged: see
        `_cached`. A certificate or capability changed by `msgw directory` in another process is
        seen by the very next lookup, as without the cache."""
        addr = normalise_address(address)
        with self._lock:
            cache = self._cached()
            if addr in cache:
                return cache[addr]
            rows = self._db.execute("SELECT source, address, ekey, capability, mailbox_type, key_ref FROM address "
                                    "WHERE address=?", (addr,)).fetchall()
            found = _merge_address(rows, self._certificates([addr]).get(addr, ())) if rows else None
            if len(cache) >= ADDRESS_CACHE_SIZE:
                cache.clear()
            cache[addr] = found
            return found

    def _cached(self) -> dict[str, Address | None]:
        """The address answers, emptied first when the database may have changed since they were
        read. Caller holds the lock. `PRAGMA data_version` changes whenever another connection
        (any process) committed since this connection last asked; `total_changes` counts this
        connection's own writes. The mark is read *before* a lookup, so an answer read after a
        commit it missed is dropped at the next call, never kept stale. ~1 µs against ~25 µs for
        the two queries of a lookup."""
        mark = (self._db.execute("PRAGMA data_version").fetchone()[0], self._db.total_changes)
        if mark != self._mark:
            self._addresses.clear()
            self._mark = mark
        return self._addresses

    def find_by_name(self, name: str, postcode: str | None = None, limit: int = 50) -> list[Correspondent]:
        """Candidates whose surname, 'surname first name', 'first name surname' or organisation name
        matches (accent- and case-insensitive); narrowed to a postcode (or department prefix) if given."""
        query = fold(name)
        if not query:
            return []
        tokens = query.split()
        sql = ("SELECT DISTINCT ekey FROM entry WHERE org_norm=? OR last_norm=? "  # noqa: S608 - placeholders only
               f"OR last_norm IN ({','.join('?' * len(tokens))})")  # noqa: S608 - placeholders only
        ekeys = self._ekeys(sql, (query, query, *tokens), limit=10 * limit + 100)
        out = []
        for c in self._many(ekeys):
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
        with self._lock:
            return {r[0]: r[1] for r in self._db.execute("SELECT source, COUNT(*) FROM entry GROUP BY source")}

    def _ekeys(self, sql: str, params: tuple[Any, ...], limit: int = 1000) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute(sql + f" LIMIT {int(limit)}", params)]

    def _first(self, ekeys: list[str]) -> Correspondent | None:
        found = self._many(ekeys[:1])
        return found[0] if found else None

    def _many(self, ekeys: list[str]) -> list[Correspondent]:
        out = []
        for ekey in ekeys:
            c = self._correspondent(ekey)
            if c is not None:
                out.append(c)
        return out

    def _correspondent(self, ekey: str) -> Correspondent | None:
        with self._lock:
            rows = self._db.execute(f"SELECT {','.join(_ENTRY_COLS)} FROM entry WHERE ekey=?", (ekey,)).fetchall()  # noqa: S608
            arows = self._db.execute("SELECT source, address, ekey, capability, mailbox_type, key_ref FROM address "
                                     "WHERE ekey=?", (ekey,)).fetchall()
            if not rows and not arows:
                return None
            by_addr: dict[str, list[tuple[Any, ...]]] = {}
            for r in arows:
                by_addr.setdefault(r[1], []).append(r)
            # an address may also be named by another source under another entity key: take all its rows
            for addr in list(by_addr):
                by_addr[addr] = self._db.execute("SELECT source, address, ekey, capability, mailbox_type, key_ref "
                                                 "FROM address WHERE address=?", (addr,)).fetchall()
            certs = self._certificates(list(by_addr))
        entity = _merge_entity(ekey, rows)
        # every address one of this entity's rows names, with its merged capability (the winning
        # row may have been filed by an operator under another entity key: it is still this entity's)
        addresses = tuple(_merge_address(arws, certs.get(addr, ())) for addr, arws in sorted(by_addr.items()))
        return Correspondent(entity=entity, addresses=addresses)

    def _certificates(self, addresses: list[str]) -> dict[str, tuple[bytes, ...]]:
        out: dict[str, dict[str, bytes]] = {}
        for i in range(0, len(addresses), _IN_CHUNK):
            chunk = addresses[i:i + _IN_CHUNK]
            for addr, sha, der in self._db.execute(
                    f"SELECT address, sha256, der FROM certificate WHERE address IN ({','.join('?' * len(chunk))})",  # noqa: S608
                    chunk):
                out.setdefault(addr, {})[sha] = bytes(der)
        return {a: tuple(d[k] for k in sorted(d)) for a, d in out.items()}


def _merge_entity(ekey: str, rows: list[tuple[Any, ...]]) -> Entity:
    dicts = sorted((dict(zip(_ENTRY_COLS, r, strict=True)) for r in rows), key=lambda d: _source_rank(d["source"]))

    def pick(name: str) -> Any:
        for d in dicts:
            if d[name] is not None and d[name] != "":
                return d[name]
        return None

    activities = []
    for d in dicts:
        if d["activity"]:
            activities.append(Activity(source=d["source"], **json.loads(d["activity"])))
    demat = pick("dematerialisation")
    finess = next((a.finess for a in activities if a.finess), None)
    siret = next((a.siret for a in activities if a.siret), None)
    kind: EntityKind = pick("kind") or ("person" if ekey.startswith("pp:") else "organisation")
    return Entity(key=ekey, kind=kind, national_id=pick("national_id"), rpps=pick("rpps"), adeli=pick("adeli"),
                  finess=finess if kind == "organisation" else None, siret=siret if kind == "organisation" else None,
                  civility=pick("civility"), last_name=pick("last_name"), first_name=pick("first_name"),
                  organisation=pick("organisation"), dematerialisation=None if demat is None else bool(demat),
                  activities=tuple(activities), sources=tuple(dict.fromkeys(d["source"] for d in dicts)))


def _merge_address(rows: list[tuple[Any, ...]], certificates: tuple[bytes, ...]) -> Address:
    """Highest-priority source wins; an MSSanté `trusted-domain` address with a known certificate is `smime`."""
    best = min(rows, key=lambda r: _source_rank(r[0]))
    source, address, ekey, capability, mailbox_type, key_ref = best
    if capability == TRUSTED_DOMAIN and certificates and source.startswith("mssante-extraction"):
        capability = SMIME
    mailbox_type = mailbox_type or next((r[4] for r in rows if r[4]), None)
    return Address(address=address, entity_key=ekey, capability=capability, mailbox_type=mailbox_type,
                   key_ref=key_ref, certificates=certificates, source=source)


def _check_item(item: DirectoryItem) -> None:
    """Rules every stored item obeys (the readers check them too, to say which line broke them)."""
    ident = item.identity
    if ident.rpps is not None and not is_rpps(ident.rpps):
        raise InvalidRecord("RPPS must be 11 digits")
    if ident.adeli is not None and not is_adeli(ident.adeli):
        raise InvalidRecord("ADELI must be 9 characters")
    if item.address is not None:
        if not is_address(item.address.address):
            raise InvalidRecord("not a valid mail address")
        if item.address.mailbox_type is not None and item.address.mailbox_type not in MAILBOX_TYPES:
            raise InvalidRecord("mailbox type must be PER, ORG or APP")
        check_capability(item.address.capability, key_ref=item.address.key_ref,
                         certificates=item.address.certificates)


def check_item(item: DirectoryItem) -> None:
    """Public form of the item rules, raising InvalidRecord (used by the readers and the CLI)."""
    _check_item(item)


def operator_item(address: str, capability: str, *, key_ref: str | None = None,
                  certificates: Sequence[bytes] = (), mailbox_type: str | None = None,
                  identity: Identity | None = None, entity_key: str | None = None) -> DirectoryItem:
    """A manual entry: one address (and who it belongs to), keyed by the address."""
    addr = normalise_address(address)
    identity = identity or Identity(kind="organisation" if mailbox_type in ("ORG", "APP") else "person")
    ekey = entity_key or (entity_key_for(identity, None, addr))
    item = DirectoryItem(rkey="addr:" + addr, entity_key=ekey, identity=identity,
                         address=AddressInput(address=addr, capability=capability, mailbox_type=mailbox_type,
                                              key_ref=key_ref, certificates=tuple(certificates)))
    _check_item(item)
    return item


def directory_path(config: GatewayConfig) -> Path:
    """The directory file of a configuration (`[directory] path`, validated by `gateway.config`;
    default `directory.sqlite` beside the spool folder). Everything else here takes a path."""
    return config.directory.path


__all__ = [
    "LOCAL", "SMIME", "TRUSTED_DOMAIN", "LEGACY_PREFIX", "MAILBOX_TYPES", "SOURCE_PRIORITY",
    "DirectoryError", "InvalidRecord", "DirectoryUnavailable", "ImportFormatError",
    "Activity", "Entity", "Address", "Correspondent", "Identity", "AddressInput", "DirectoryItem", "ImportCounts",
    "DirectoryStore", "SqliteDirectory", "check_capability", "check_item", "operator_item", "directory_path",
    "normalise_address", "is_address", "is_rpps", "is_adeli", "is_finess", "is_siret", "national_id_for",
    "split_national_id", "entity_key_for", "fold", "validate_source",
]
