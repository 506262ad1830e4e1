"""The durable queue: message bytes in files, queue state in SQLite (WAL, synchronous=FULL).

Why both: message bytes are large and written once, so they go to a file written in place in
`msg/` under its new unique name, fsynced, and the directory fsynced (issue 15: no `tmp/` and
rename, as Maildir and Postfix do, since no reader trusts a `msg/` file before its row commits);
the per-recipient state changes often and must be queried ("what is due now?"), so it lives
in SQLite whose commit is itself durable. `accept()` returns only after both are on disk, and
the SMTP layer answers 250 only after `accept()` returned. Any OS or SQLite failure on the
way (disk full, read-only, permissions) becomes `SpoolError` (452 4.3.1), never a 250.

Crash recovery (`open()`): `tmp/` leftovers are removed (never acknowledged); a file in
`msg/` with no queue row was never acknowledged either (the row commit is the last step; it may
be whole or cut short by the crash) and is moved to `orphans/` for inspection, unless a
`finished` tombstone names it (removed with its last outcomes, the crash came before the unlink:
it is deleted); every recipient not in a final state is due again.
A message is deleted (file and rows) only once every recipient is final. Messages whose
processing crashes repeatedly are moved to `quarantine/` rather than retried forever.

Two states (issue 12, "prepare once"): a recipient is *received* until the pipeline runner
prepared it, then it points at a *prepared copy* (one row per copy: form, mutual-TLS demand,
size, SHA-256, and its bytes in a file of `copy/`, or the message file itself when the copy is
the message as it came). `prepare()` writes the copy files, then one transaction inserts the
copy rows, links the recipients, records the refusals and marks the message prepared: a crash
before that commit leaves the recipients received (recovery removes the copy files no row
names) and preparation runs again; after it, never again. Delivery then only reads bytes.
A prepared copy is a *verified cache*, not a record the gateway would lose mail without (the
message is durable since `accept()`): its file is written in place in `copy/` (no temporary name:
no row names it before the commit) and not fsynced, and its transaction does not wait
for the disk (synchronous=NORMAL; the next synchronous commit makes it durable), which keeps the
runner's step off the disk's critical path (measured in bench/relay_throughput.py). A copy that a
power cut left missing or different from its digest is never sent: delivery forgets it
(`unprepare()`) and it is prepared again. A spool of the older schema gains the columns on open;
its messages are received.

A full disk (issue 11): SQLite needs free space for every write (WAL frames, and the -shm
index when it reopens after a clean stop), so a spool that filled up could neither start nor
record a delivery nor delete a message. Three rules keep it working:
* a *reserve* file (`reserve`, pre-allocated, 1 MiB by default) holds space for queue state:
  a write that fails for lack of space releases it (and checkpoints the WAL so its space is
  reused) and tries again; deferrals, which change nothing that matters, never use it, nor
  does a preparation (the runner then sends it from memory, see gateway/runner.py);
* new mail never eats the reserve: `accept()` first puts it back, and answers SpoolError
  (452 4.3.1) while it cannot, so mail is refused until space returns;
* what frees space goes first: a finished or deleted message loses its file before its rows
  (rows without a file are swept by `recover()`), and `delete()` truncates the message when
  even the reserve is not enough. Recovery never fails for lack of space: what it cannot write
  waits for the next start or the next pass, and is logged.

Group commit (issue 15): every durable write (`accept`, outcomes, finish, …) goes through
`_write`, which queues the work; the first caller that finds no commit under way becomes the
*committer* of everything queued: one directory fsync for the message files that landed
together, one `BEGIN IMMEDIATE` … `COMMIT` (synchronous=FULL: one WAL fsync) for the whole
batch, each work in its own SAVEPOINT. Every caller still blocks until the batch holding its work
is durable, so `accept()` returns (and the SMTP layer answers 250) only once *its* file and row
are on disk. A work that fails is rolled back to its savepoint and run again alone (the old path,
with the reserve rules and its own `SpoolError`); a commit that fails runs every work of the batch
again alone: one caller's fault never becomes another's. Never call `_write` while holding
`self._lock` (the committer needs it).

Several processes on one spool (issue 15, item 6): each process opens its own `Spool` with an
`owner` ("w0", "w1", …; "" = the only process, today's behaviour). What a process accepts is
*claimed* by its owner (`messages.claim`); `due*()` return only messages unclaimed or claimed by
this owner and claim what they return in the same transaction, so two processes never take the
same message; `next_due_time()` considers the same set. A claim lasts until the message is
finished; `release_claims(owner)` frees them (the master frees all before starting workers, a
restarted worker frees its own on `open()`). `retry`/`delete` ignore claims.
`recover()` would orphan a message another process is between its rename and its commit, so it
runs only under an exclusive `flock` on `<spool>/running.lock`: `open()` (with recovery, or with
an owner) takes it exclusive without waiting, recovers, then keeps it *shared* until `close()`;
if another process holds it, recovery is skipped (logged) and the lock taken shared. A process
that accepts without holding it (`msgw send`, opened with `recover=False`) takes it shared for
the accept. SQLite: WAL, busy_timeout 30 s, `BEGIN IMMEDIATE` for every writer, so two processes'
commits queue instead of failing ("database is locked" after 30 s is a `SpoolError`, 452).

The write turn (issue 15, third round): before `BEGIN IMMEDIATE` a process takes
`<spool>/write.lock` (`flock`, exclusive) and keeps it until its COMMIT or ROLLBACK. Why: SQLite's
busy handler retries a locked database after sleeping 1, 2, 5, 10, 15, 20, 25 … ms, while the other
worker's commit holds it for about one WAL fsync (~1 ms); under load each worker's committer slept
there several times per batch and every accept of that batch waited with it (strace: 1–10 ms
sleeps at ~30 per second per worker, the event loops 25–35 % busy). Waiting for the turn polls
the flock every 0.1–0.5 ms instead (`_WRITE_TURN_STEPS`), for at most the busy timeout; past
that, or for a writer that does not take the turn (another SQLite client), SQLite's own busy
handling decides as before. Within a process `self._lock` already serialises the writers.
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from gateway.errors import GatewayError, SpoolError
from gateway.fsutil import fsync_dir, locked, write_synced
from gateway.logs import event
from gateway.spool.finished import FinishedMemo

log = logging.getLogger("gateway.spool")
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    sender TEXT NOT NULL,
    size INTEGER NOT NULL,
    received REAL NOT NULL,
    expires REAL NOT NULL,
    listener TEXT NOT NULL DEFAULT '',
    client TEXT NOT NULL DEFAULT '',
    auth_user TEXT,
    delay_notified INTEGER NOT NULL DEFAULT 0,
    crashes INTEGER NOT NULL DEFAULT 0,
    quarantined INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS recipients (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    address TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_error TEXT,
    last_status TEXT,
    remote TEXT,
    updated REAL NOT NULL,
    dsn_sent INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS recipients_due ON recipients(state, next_attempt);
CREATE INDEX IF NOT EXISTS recipients_msg ON recipients(message_id);
CREATE TABLE IF NOT EXISTS copies (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    form TEXT NOT NULL,
    require_tls INTEGER NOT NULL DEFAULT 0,
    size INTEGER NOT NULL,
    file TEXT NOT NULL,
    digest TEXT
);
CREATE INDEX IF NOT EXISTS copies_msg ON copies(message_id);
CREATE TABLE IF NOT EXISTS finished (
    id TEXT PRIMARY KEY
);
"""

#: Columns added after the first schema (issue 12): added on open to an older spool, whose
#: messages are then simply *received* (prepared = 0, no copy).
_MIGRATIONS = (
    ("messages", "prepared", "INTEGER NOT NULL DEFAULT 0"),
    ("recipients", "copy_id", "INTEGER"),
    ("copies", "digest", "TEXT"),
    # issue 15: the process (owner) that has the message in hand; '' = nobody.
    ("messages", "claim", "TEXT NOT NULL DEFAULT ''"),
)

_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_SQLITE_BUSY, _SQLITE_IOERR, _SQLITE_FULL = 5, 10, 13

#: Space kept aside for queue state on a full disk (see the module docstring).
RESERVE_BYTES = 1 << 20

#: The sleeps between tries of another process's write turn (then the last one, repeated), and
#: how long to try before leaving the wait to SQLite's busy timeout (its `timeout`, 30 s).
_WRITE_TURN_STEPS = (0.0001, 0.0002, 0.0003, 0.0005)
_WRITE_TURN_WAIT = 30.0
#: How many times `_due` asks again when another owner took every free candidate first.
_CLAIM_RACES = 5


class RecipientState(StrEnum):
    QUEUED = "queued"
    DEFERRED = "deferred"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    DELETED = "deleted"

    @property
    def final(self) -> bool:
        return self in (RecipientState.DELIVERED, RecipientState.BOUNCED, RecipientState.DELETED)


PENDING = (RecipientState.QUEUED.value, RecipientState.DEFERRED.value)


@dataclass(frozen=True)
class QueuedRecipient:
    id: int
    message_id: str
    address: str
    state: RecipientState
    attempts: int
    next_attempt: float
    last_error: str | None
    last_status: str | None
    remote: str | None
    updated: float
    dsn_sent: bool
    #: The prepared copy this recipient receives; None while it is still *received*.
    copy_id: int | None = None

    @property
    def prepared(self) -> bool:
        return self.copy_id is not None


@dataclass(frozen=True)
class PreparedCopy:
    """A copy made once by the pipeline runner: what delivery sends, as bytes in `file`."""

    id: int
    message_id: str
    form: str
    require_tls: bool
    size: int
    file: str
    #: SHA-256 of the bytes, hex; None for a copy that is the message file itself (fsynced).
    digest: str | None = None


@dataclass(frozen=True)
class NewCopy:
    """A copy to record with `Spool.prepare`: its bytes and the recipient rows it is for.

    `same_as_message`: the bytes are the message as it came, so the message file serves (no
    second file for a relayed or as-is copy)."""

    form: str
    require_tls: bool
    data: bytes
    rcpt_ids: tuple[int, ...]
    same_as_message: bool = False


@dataclass(frozen=True)
class QueuedMessage:
    id: str
    sender: str
    size: int
    received: float
    expires: float
    listener: str
    client: str
    auth_user: str | None
    delay_notified: bool
    crashes: int
    quarantined: bool
    recipients: tuple[QueuedRecipient, ...]
    copies: tuple[PreparedCopy, ...] = ()
    #: On a shared queue: the configured key (its PKCS#11 token) the preparation needs and this
    #: node lacked; only a node holding it claims the message (`PgSpool`, issue 18 item 4).
    needs_key: str | None = None

    @property
    def pending(self) -> tuple[QueuedRecipient, ...]:
        return tuple(r for r in self.recipients if not r.state.final)

    @property
    def stage(self) -> str:
        """`received` while a pending recipient still waits for preparation, else `prepared`."""
        return "received" if any(not r.prepared for r in self.pending) else "prepared"

    def copy(self, copy_id: int) -> PreparedCopy:
        return next(c for c in self.copies if c.id == copy_id)

    def to_json(self) -> dict:
        forms = {c.id: c.form for c in self.copies}
        return {
            "id": self.id, "sender": self.sender, "size": self.size, "received": self.received,
            "expires": self.expires, "listener": self.listener, "client": self.client,
            "auth_user": self.auth_user, "quarantined": self.quarantined, "stage": self.stage,
            **({"needs_key": self.needs_key} if self.needs_key else {}),
            "copies": [{"id": c.id, "form": c.form, "require_tls": c.require_tls, "size": c.size}
                       for c in self.copies],
            "recipients": [{
                "address": r.address, "state": r.state.value, "attempts": r.attempts,
                "next_attempt": r.next_attempt, "last_error": r.last_error, "last_status": r.last_status,
                "remote": r.remote, "stage": "prepared" if r.prepared else "received",
                "copy": r.copy_id, "form": forms.get(r.copy_id) if r.copy_id is not None else None,
            } for r in self.recipients],
        }


@dataclass(frozen=True)
class Outcome:
    """One recipient's result of a delivery attempt, to be written with the others of the
    attempt in a single transaction (`Spool.record_outcomes`)."""

    rcpt_id: int
    state: RecipientState
    status: str
    error: str | None = None
    remote: str | None = None
    next_attempt: float | None = None
    count_attempt: bool = True
    #: For the caller's logs and audit trail only (the row is found by `rcpt_id`).
    address: str = ""


@dataclass(frozen=True)
class QueueStats:
    """The queue as it is now, for the metrics and the console (`queue_stats()` of a backend):
    pending recipients by (state, stage), messages with one pending, when the oldest of them was
    received, and how many are quarantined."""

    recipients: dict[tuple[str, str], int]  # (state, stage) -> count; stage: received | prepared
    messages: int
    oldest: float | None
    quarantined: int


#: `Spool.queue_stats`: pending recipients by state and stage, pending messages, quarantined.
_STATS_SQL = (
    "SELECT r.state, r.copy_id IS NOT NULL, COUNT(*) FROM recipients r JOIN messages m ON m.id = r.message_id"
    " WHERE r.state IN ('queued', 'deferred') AND m.quarantined = 0 GROUP BY 1, 2",
    "SELECT COUNT(*), MIN(m.received) FROM messages m WHERE m.quarantined = 0 AND EXISTS"
    " (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND r.state IN ('queued', 'deferred'))",
    "SELECT COUNT(*) FROM messages WHERE quarantined = 1",
)


class DamagedCopy(SpoolError):
    """A prepared copy whose file is missing or differs from what was prepared: prepare again."""

    code = "spool-copy-damaged"


#: How many just-accepted messages (and bytes) the spool keeps for the runner (`take_accepted`).
ACCEPTED_KEPT = 256
ACCEPTED_KEPT_BYTES = 64 * 1024 * 1024


class _Work:
    """One caller's write waiting in (or done by) a group commit."""

    __slots__ = ("what", "work", "reserve", "durable", "sync_dir", "done", "ok", "result", "error")

    def __init__(self, what: str, work: Callable[[sqlite3.Connection], object], reserve: bool, durable: bool,
                 sync_dir: Path | None) -> None:
        self.what, self.work, self.reserve, self.durable, self.sync_dir = what, work, reserve, durable, sync_dir
        self.done = False
        #: Committed: only then may the caller be told its work is done (an accept: a 250).
        self.ok = False
        self.result: object = None
        self.error: BaseException | None = None

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        if not self.ok:
            raise SpoolError(f"cannot {self.what}: not committed")
        return self.result



class AcceptedMemory:
    """The last messages accepted, with their bytes, for the runner to take once
    (`take_accepted`) instead of reading them back: bounded in count and bytes, oldest dropped
    first (those are read from the store). Thread-safe; shared by both queue backends."""

    def __init__(self) -> None:
        self._kept: collections.OrderedDict[str, tuple[QueuedMessage, bytes]] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def remember(self, msg: QueuedMessage, data: bytes) -> None:
        with self._lock:
            self._kept[msg.id] = (msg, data)
            self._bytes += len(data)
            while self._kept and (len(self._kept) > ACCEPTED_KEPT or self._bytes > ACCEPTED_KEPT_BYTES):
                _, (_, dropped) = self._kept.popitem(last=False)
                self._bytes -= len(dropped)

    def take(self, msg_id: str) -> tuple[QueuedMessage, bytes] | None:
        with self._lock:
            entry = self._kept.pop(msg_id, None)
            if entry is not None:
                self._bytes -= len(entry[1])
            return entry


def just_accepted(msg_id: str, sender: str, data: bytes, rows: Iterable[tuple[int, str, int | None]], *,
                  now: float, lifetime: float, listener: str, client: str, auth_user: str | None,
                  prepared: tuple[str, bool] | None) -> QueuedMessage:
    """The message as `accept()` just recorded it (`rows`: recipient id, address, copy id), without
    reading it back: what the runner takes from `AcceptedMemory`."""
    rows = list(rows)
    copy_id = rows[0][2] if rows else None
    copies = (PreparedCopy(copy_id, msg_id, prepared[0], prepared[1], len(data), f"msg/{msg_id}"),) \
        if prepared is not None and copy_id is not None else ()
    return QueuedMessage(
        id=msg_id, sender=sender, size=len(data), received=now, expires=now + lifetime, listener=listener,
        client=client, auth_user=auth_user, delay_notified=False, crashes=0, quarantined=False,
        recipients=tuple(QueuedRecipient(rid, msg_id, address, RecipientState.QUEUED, 0, now, None, None,
                                         None, now, False, cid) for rid, address, cid in rows),
        copies=copies)


def new_message_id() -> str:
    """Time-ordered, unguessable queue id (hex milliseconds + 40 random bits)."""
    return f"{int(time.time() * 1000):011X}{secrets.token_hex(5).upper()}"


class Spool:
    """Durable message store with per-recipient state. Thread-safe; all methods block on I/O,
    so async callers run them in an executor."""

    def __init__(self, path: Path, *, reserve: int = RESERVE_BYTES, owner: str = "") -> None:
        self.path = Path(path)
        #: The name this process claims work under ("" = the only process: no claims).
        self.owner = owner
        self.lock_path = self.path / "running.lock"
        self._run_lock: int | None = None  # fd holding the shared (or exclusive) flock
        #: `<spool>/write.lock`, held exclusive around each write transaction (see the docstring).
        self.write_lock_path = self.path / "write.lock"
        self._turn_fd: int | None = None
        #: Group commit: works waiting for the next batch, and whether a committer is at work.
        self._pending: list[_Work] = []
        self._commit_cv = threading.Condition(threading.Lock())
        self._committing = False
        #: Counters for tests and benchmarks: batches committed, works in them.
        self.batches = 0
        self.batched_works = 0
        self.msg_dir = self.path / "msg"
        self.copy_dir = self.path / "copy"
        self.tmp_dir = self.path / "tmp"
        self.quarantine_dir = self.path / "quarantine"
        self.orphan_dir = self.path / "orphans"
        self.reserve_path = self.path / "reserve"
        self.reserve_size = reserve
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        #: Messages just accepted, with their bytes, for the runner to take without reading them
        #: back (`take_accepted`); bounded, oldest dropped first: those are read from disk.
        self._accepted = AcceptedMemory()
        #: A gateway whose pipeline changes nothing (the plain relay, no `[policy]`) records each
        #: accepted message as the one prepared copy of itself, with this form: exactly what the
        #: runner would record, without the runner's transaction (set by `gateway.app`).
        self.prepare_on_accept: str | None = None
        #: Messages `record_outcomes(finish=…)` removed, for `take_finished`; and those whose
        #: files are gone since, whose tombstone rows the next finishing transaction deletes.
        self._finished = FinishedMemo()
        self._unlinked: builtins.list[str] = []
        self._unlinked_lock = threading.Lock()

    # -- life cycle -------------------------------------------------------------------------
    def open(self, *, recover: bool = True) -> Spool:
        """Open (and by default recover) the spool. On a full disk SQLite cannot even rebuild
        its WAL index after a clean stop: the reserve pays for that (a second try)."""
        try:
            for d in (self.path, self.msg_dir, self.copy_dir, self.tmp_dir, self.quarantine_dir, self.orphan_dir):
                d.mkdir(parents=True, exist_ok=True, mode=0o700)
            db = self._connect()
        except (OSError, sqlite3.Error) as exc:
            if not (self._lacks_space(exc) and self._release_reserve("open")):
                raise SpoolError(f"spool unavailable: {_describe(exc)}") from None
            try:
                db = self._connect()
            except (OSError, sqlite3.Error) as again:
                raise SpoolError(f"spool unavailable: {_describe(again)}") from None
        self._db = db
        if recover or self.owner:
            self._take_run_lock(recover=recover)
        if self.owner:
            self.release_claims(self.owner)  # a restarted worker's messages are free again
        return self

    def _take_run_lock(self, *, recover: bool) -> None:
        """Exclusive (without waiting) to recover, then shared until `close()`: see the module
        docstring. Another process holding it means recovery is not ours to do."""
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise SpoolError(f"spool unavailable: {_describe(exc)}") from None
        self._run_lock = fd
        if recover:
            self.recover()  # exclusive if nobody else has the spool open; shared afterwards
        else:
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits while another process recovers

    @contextlib.contextmanager
    def _accepting(self) -> Iterator[None]:
        """Hold the run lock shared while a file is in `msg/` without its row (another process's
        `recover()` would orphan it); already held by an open gateway, taken here for `msgw send`."""
        if self._run_lock is not None:
            yield
            return
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(locked(self.lock_path, exclusive=False))
            except OSError as exc:
                raise SpoolError(f"cannot store message: {_describe(exc)}") from None
            yield

    def release_claims(self, owner: str | None = None) -> int:
        """Free the messages claimed by `owner` (None: by anyone); how many were freed. Not
        durable on its own (a claim lost to a power cut is freed anyway at the next open)."""
        def free(db: sqlite3.Connection) -> int:
            if owner is None:
                return db.execute("UPDATE messages SET claim = '' WHERE claim != ''").rowcount
            return db.execute("UPDATE messages SET claim = '' WHERE claim = ?", (owner,)).rowcount

        return self._write_alone("release claims", free, reserve=False, durable=False)

    def route_to_key(self, msg_id: str, key: str) -> None:
        """One node: a token that is not here is nowhere; the deferral already written waits for
        it (as `PgSpool.route_to_key` does for a node of a shared queue)."""

    def publish_keys(self, keys: Iterable[str]) -> None:
        """One node: no other node to tell which keys it can use (see `PgSpool.publish_keys`)."""

    def ping(self) -> None:
        """Nothing to reach (a local file; `/readyz` checks its disk): as `PgSpool.ping`."""

    def leases(self) -> builtins.list[tuple[str, str, float]]:
        """(message id, owner, seconds left) of every claimed message, as `PgSpool.leases`: here a
        claim does not lapse (one node; freed at the next open), so the time left is infinite."""
        with self._lock:
            rows = self.db.execute("SELECT id, claim FROM messages WHERE claim != '' ORDER BY id").fetchall()
        return [(r[0], r[1], float("inf")) for r in rows]

    def renew(self, ids: Iterable[str] | None = None) -> int:
        """Nothing to renew: a claim here lasts until the message is finished or released
        (`QueueStore` protocol; `PgSpool`'s claims are leases). Always 0."""
        return 0

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path / "queue.sqlite", check_same_thread=False, isolation_level=None, timeout=30)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            db.executescript(_SCHEMA)  # IF NOT EXISTS: no write on an existing spool (once: `finished`)
            _migrate(db)
        except BaseException:
            db.close()
            raise
        return db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
            if self._turn_fd is not None:
                os.close(self._turn_fd)
                self._turn_fd = None
            if self._run_lock is not None:
                os.close(self._run_lock)  # releases the flock
                self._run_lock = None

    def __enter__(self) -> Spool:
        return self if self._db is not None else self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise SpoolError("spool is not open")
        return self._db

    @contextlib.contextmanager
    def _tx(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = self.db
            if not durable:
                db.execute("PRAGMA synchronous=NORMAL")
            turn = self._take_write_turn()
            try:
                db.execute("BEGIN IMMEDIATE")
                yield db
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
            finally:
                if turn is not None:
                    fcntl.flock(turn, fcntl.LOCK_UN)
                if not durable:
                    db.execute("PRAGMA synchronous=FULL")

    def _take_write_turn(self) -> int | None:
        """This process's turn to write (called under `self._lock`): the flock's fd once held,
        None when the lock file cannot be used or the wait outlasted `_WRITE_TURN_WAIT` (then
        SQLite's busy timeout decides, as it did before the turn existed)."""
        if self._turn_fd is None:
            try:
                self._turn_fd = os.open(self.write_lock_path,
                                        os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            except OSError:
                return None  # e.g. a read-only spool: the transaction will say why
        fd = self._turn_fd
        deadline = None
        step = 0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                pass
            except OSError:
                return None
            now = time.monotonic()
            if deadline is None:
                deadline = now + _WRITE_TURN_WAIT
            elif now >= deadline:
                return None
            time.sleep(_WRITE_TURN_STEPS[min(step, len(_WRITE_TURN_STEPS) - 1)])
            step += 1

    def _write(self, what: str, work: Callable[[sqlite3.Connection], T], *, reserve: bool = True,
               durable: bool = True, sync_dir: Path | None = None) -> T:
        """Run `work` in a transaction, batched with the works of concurrent callers (group
        commit, see the module docstring); returns once that transaction is durable (or, with
        `durable=False`, committed). SpoolError when it cannot be written. `sync_dir`: a folder
        whose new names must be durable before the commit (fsynced once for the batch)."""
        job = _Work(what, work, reserve, durable, sync_dir)
        with self._commit_cv:
            self._pending.append(job)
            while not job.done and self._committing:
                self._commit_cv.wait()
            if job.done:
                return job.outcome()
            self._committing = True
            batch, self._pending = self._pending, []
        try:
            self._commit_batch(batch)
        finally:
            with self._commit_cv:
                self._committing = False
                for other in batch:
                    if not other.ok and other.error is None:  # the committer itself was interrupted
                        other.error = SpoolError(f"cannot {other.what}: interrupted")
                    other.done = True
                self._commit_cv.notify_all()
        return job.outcome()

    def _commit_batch(self, batch: builtins.list[_Work]) -> None:
        """One folder fsync per folder, one transaction for every work (each in a savepoint);
        what fails is run again alone, so its error is its own."""
        alone: builtins.list[_Work] = []
        ready: builtins.list[_Work] = []
        for folder in {w.sync_dir for w in batch if w.sync_dir is not None}:
            try:
                fsync_dir(folder)
            except OSError as exc:
                for w in batch:
                    if w.sync_dir == folder:
                        w.error = SpoolError(f"cannot {w.what}: {_describe(exc)}")
        ready = [w for w in batch if w.error is None]
        if len(ready) == 1:
            alone = ready
        elif ready:
            try:
                with self._tx(any(w.durable for w in ready)) as db:
                    for n, w in enumerate(ready):
                        db.execute(f"SAVEPOINT w{n}")
                        try:
                            w.result = w.work(db)
                        except BaseException:
                            db.execute(f"ROLLBACK TO w{n}")
                            db.execute(f"RELEASE w{n}")
                            alone.append(w)
                            continue
                        db.execute(f"RELEASE w{n}")
                for w in ready:
                    w.ok = w not in alone
                self.batches += 1
                self.batched_works += len(ready) - len(alone)
            except (sqlite3.Error, OSError) as exc:
                if getattr(exc, "sqlite_errorcode", 0) & 0xFF == _SQLITE_BUSY:
                    # Another process held the database for the whole busy timeout: each caller
                    # gets a temporary error now rather than waiting that long again, alone.
                    for w in ready:
                        w.error = SpoolError(f"cannot {w.what}: {_describe(exc)}")
                    ready = []
                alone = ready  # the commit failed: nothing of the batch is written
        for w in alone:
            w.result, w.ok = None, False
            try:
                w.result = self._write_alone(w.what, w.work, reserve=w.reserve, durable=w.durable)
                w.ok = True
            except BaseException as exc:  # noqa: BLE001 - handed to that work's caller
                w.error = exc

    def _write_alone(self, what: str, work: Callable[[sqlite3.Connection], T], *, reserve: bool = True,
                     durable: bool = True) -> T:
        """Run `work` in one transaction; SpoolError when it cannot be written.

        On a full disk (and when `reserve`), make room — checkpoint the WAL so it is reused,
        release the reserve file — and try once more."""
        try:
            with self._tx(durable) as db:
                return work(db)
        except (sqlite3.Error, OSError) as exc:
            if not (reserve and self._lacks_space(exc)):
                raise SpoolError(f"cannot {what}: {_describe(exc)}") from None
        self._make_room(what)
        try:
            with self._tx() as db:
                return work(db)
        except (sqlite3.Error, OSError) as exc:
            raise SpoolError(f"cannot {what}: {_describe(exc)}") from None

    # -- the space reserve ------------------------------------------------------------------
    def _lacks_space(self, exc: BaseException) -> bool:
        """Did `exc` come from a full disk? (SQLITE_FULL; an I/O error while nearly no space is
        left, which is how a failed -shm allocation shows; ENOSPC or EDQUOT.)"""
        if isinstance(exc, OSError):
            return exc.errno in _SPACE_ERRNOS
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code == _SQLITE_FULL:
            return True
        return code == _SQLITE_IOERR and self._free_bytes() < max(self.reserve_size, 1 << 16)

    def _free_bytes(self) -> int:
        try:
            st = os.statvfs(self.path)
        except OSError:
            return 0
        return st.f_bavail * st.f_frsize

    def _release_reserve(self, why: str) -> bool:
        """Give the reserve's space to the queue state; True when there was one."""
        try:
            self.reserve_path.unlink()
        except FileNotFoundError:
            return False
        except OSError:
            return False
        event(log, "spool-reserve-released", logging.WARNING, reason=why, bytes=self.reserve_size)
        return True

    def _make_room(self, why: str) -> None:
        with self._lock:
            # A complete checkpoint lets the next transaction reuse the WAL from its start
            # (no new blocks); it may itself need room to grow the database file.
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        if self._release_reserve(why):
            with self._lock, contextlib.suppress(sqlite3.Error):
                self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def ensure_reserve(self) -> bool:
        """Put the reserve back if it is missing; False when there is no room for it."""
        if self.reserve_size <= 0:
            return True
        with contextlib.suppress(OSError):  # the usual case, without waiting for a commit's lock
            if self.reserve_path.stat().st_size >= self.reserve_size:
                return True
        with self._lock:
            try:
                if self.reserve_path.stat().st_size >= self.reserve_size:
                    return True
            except FileNotFoundError:
                pass
            except OSError:
                return False
            tmp = self.tmp_dir / "reserve"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    os.posix_fallocate(fd, 0, self.reserve_size)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, self.reserve_path)
            except OSError:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                return False
        event(log, "spool-reserve-restored", bytes=self.reserve_size)
        return True

    def recover(self) -> dict[str, int]:
        """Clean what was never acknowledged; everything pending becomes due again.

        Only under the exclusive run lock, taken without waiting: another process with the spool
        open may be between a message's rename and its commit, so then nothing is done (logged,
        zeros returned; "skipped": 1). The lock is kept shared afterwards, as `open()` leaves it.

        Needs no free space: what cannot be written now (removing finished messages) is
        logged and left for later; the reserve is put back only if there is room."""
        if self._run_lock is None:
            try:
                self._run_lock = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise SpoolError(f"spool unavailable: {_describe(exc)}") from None
        try:
            # From shared, Linux drops the shared lock before trying: re-taken below either way.
            fcntl.flock(self._run_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fcntl.flock(self._run_lock, fcntl.LOCK_SH)
            event(log, "spool-recovery-skipped", reason="another process has the spool open")
            return {"tmp_removed": 0, "orphans": 0, "pending": 0, "copies_removed": 0, "finished": 0,
                    "finish_postponed": 0, "skipped": 1}
        try:
            return self._recover()
        finally:
            fcntl.flock(self._run_lock, fcntl.LOCK_SH)

    def _recover(self) -> dict[str, int]:
        stats = {"tmp_removed": 0, "orphans": 0, "pending": 0}
        for leftover in self.tmp_dir.iterdir():
            with contextlib.suppress(OSError):
                leftover.unlink()
                stats["tmp_removed"] += 1
        with self._lock:
            known = {row[0] for row in self.db.execute("SELECT id FROM messages")}
            tombs = {row[0] for row in self.db.execute("SELECT id FROM finished")}
        tombstoned = 0
        for f in self.msg_dir.iterdir():
            if f.name in tombs and f.name not in known:  # finished; the crash came before its unlink
                try:
                    f.unlink()
                    tombstoned += 1
                except OSError:
                    tombs.discard(f.name)  # its tombstone stays until the file can go
                continue
            if f.name not in known:
                with contextlib.suppress(OSError):
                    os.replace(f, self.orphan_dir / f.name)
                    stats["orphans"] += 1
        stats["copies_removed"] = self._remove_unrecorded_copies()
        if tombs:
            try:  # not waited for: a tombstone a power cut brings back is harmless
                self._write_alone("clear finished messages",
                                  lambda db: db.executemany("DELETE FROM finished WHERE id = ?",
                                                            [(i,) for i in tombs]), reserve=False, durable=False)
            except SpoolError as exc:
                event(log, "spool-finish-postponed", logging.WARNING, reason=str(exc))
        with self._lock:
            stats["pending"] = self.db.execute(
                "SELECT COUNT(*) FROM recipients WHERE state IN (?, ?)", PENDING).fetchone()[0]
            finished = [r[0] for r in self.db.execute(
                "SELECT id FROM messages m WHERE NOT EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id"
                " AND (r.state IN (?, ?) OR (r.state = 'bounced' AND r.dsn_sent = 0)))", PENDING)]
        # Messages whose last outcome was recorded just before a crash: remove them now.
        stats["finished"], stats["finish_postponed"] = tombstoned, 0
        for msg_id in finished:
            try:
                stats["finished"] += self.finish_if_done(msg_id)
            except SpoolError as exc:
                stats["finish_postponed"] += 1
                event(log, "spool-finish-postponed", logging.WARNING, msg=msg_id, reason=str(exc))
        stats["reserve"] = int(self.ensure_reserve())
        if not stats["reserve"]:
            event(log, "spool-reserve-missing", logging.WARNING, free=self._free_bytes(), wanted=self.reserve_size)
        return stats

    def _remove_unrecorded_copies(self) -> int:
        """Copy files no row names: written by a preparation that crashed before its commit
        (the recipients are still received and will be prepared again)."""
        with self._lock:
            known = {row[0] for row in self.db.execute("SELECT file FROM copies")}
        removed = 0
        for f in self.copy_dir.iterdir():
            if f"copy/{f.name}" not in known:
                with contextlib.suppress(OSError):
                    f.unlink()
                    removed += 1
        return removed

    # -- accepting --------------------------------------------------------------------------
    def accept(self, sender: str, recipients: Iterable[str], data: bytes, *, lifetime: float,
               listener: str = "", client: str = "", auth_user: str | None = None,
               now: float | None = None) -> str:
        """Store a message durably (as *received*, or prepared as itself under `prepare_on_accept`)
        and return its queue id; SpoolError otherwise. The runner can `take_accepted` it."""
        prepared = (self.prepare_on_accept, False) if self.prepare_on_accept else None
        return self._accept(sender, recipients, data, lifetime=lifetime, listener=listener, client=client,
                            auth_user=auth_user, now=now, prepared=prepared, keep=True)

    def accept_prepared(self, sender: str, recipients: Iterable[str], data: bytes, *, form: str,
                        lifetime: float, listener: str = "", require_tls: bool = False,
                        now: float | None = None) -> str:
        """Store a message that needs no preparation (our DSNs and notices) directly as one
        prepared copy of itself: delivery sends it as it is, the pipeline never sees it."""
        return self._accept(sender, recipients, data, lifetime=lifetime, listener=listener, now=now,
                            prepared=(form, require_tls))

    def _accept(self, sender: str, recipients: Iterable[str], data: bytes, *, lifetime: float,
                listener: str = "", client: str = "", auth_user: str | None = None, now: float | None = None,
                prepared: tuple[str, bool] | None = None, keep: bool = False) -> str:
        rcpts = list(dict.fromkeys(recipients))
        if not rcpts:
            raise GatewayError("no recipients", status="5.5.1")
        if not self.ensure_reserve():
            # What space there is belongs to the mail already accepted (its queue state).
            raise SpoolError("cannot store message: insufficient disk space (the queue's reserve is in use)")
        now = time.time() if now is None else now
        msg_id = new_message_id()
        final = self.msg_dir / msg_id
        with self._accepting():
            rows = self._store_and_record(final, msg_id, sender, rcpts, data, now=now, lifetime=lifetime,
                                          listener=listener, client=client, auth_user=auth_user,
                                          prepared=prepared, keep=keep)
        if rows:
            self._accepted.remember(just_accepted(msg_id, sender, data, rows, now=now, lifetime=lifetime,
                                                  listener=listener, client=client, auth_user=auth_user,
                                                  prepared=prepared), data)
        return msg_id

    def _store_and_record(self, final: Path, msg_id: str, sender: str, rcpts: builtins.list[str], data: bytes, *,
                          now: float, lifetime: float, listener: str, client: str, auth_user: str | None,
                          prepared: tuple[str, bool] | None, keep: bool) -> builtins.list[tuple[int, str, int | None]]:
        """The file (fsynced; its folder fsynced by the group commit, once for the batch), then
        the rows, claimed by this process; the recipient rows when `keep`.

        The file is written in place in `msg/` under its new, unique name (O_EXCL), not through
        `tmp/` and a rename (issue 15: one rename and one directory entry less per message). Safe
        because nothing trusts a `msg/` file before its row commits: a crash half-way leaves a
        file no row names, which `recover()` moves to `orphans/` as it does a whole one whose
        commit never came (neither was acknowledged); a failure here removes it at once."""
        try:
            write_synced(final, data)
        except OSError as exc:
            if not isinstance(exc, FileExistsError):  # not ours to remove
                with contextlib.suppress(OSError):
                    final.unlink()
            raise SpoolError(f"cannot store message: {_describe(exc)}") from None
        claim = self.owner

        def record(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO messages (id, sender, size, received, expires, listener, client, auth_user, prepared,"
                " claim) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (msg_id, sender, len(data), now, now + lifetime, listener, client, auth_user, int(bool(prepared)),
                 claim))
            copy_id = None
            if prepared is not None:
                copy_id = db.execute(
                    "INSERT INTO copies (message_id, form, require_tls, size, file) VALUES (?, ?, ?, ?, ?)",
                    (msg_id, prepared[0], int(prepared[1]), len(data), f"msg/{msg_id}")).lastrowid
            db.executemany(
                "INSERT INTO recipients (message_id, address, state, next_attempt, updated, copy_id)"
                " VALUES (?, ?, 'queued', ?, ?, ?)", [(msg_id, r, now, now, copy_id) for r in rcpts])
            if keep:
                rows[:] = db.execute("SELECT id, address, copy_id FROM recipients WHERE message_id = ? ORDER BY id",
                                     (msg_id,)).fetchall()

        rows: builtins.list[tuple[int, str, int | None]] = []
        try:
            # New mail never uses the reserve.
            self._write("record message", record, reserve=False, sync_dir=self.msg_dir)
        except BaseException:
            with contextlib.suppress(OSError):
                final.unlink()
            raise
        return rows

    def take_accepted(self, msg_id: str) -> tuple[QueuedMessage, bytes] | None:
        """The message as `accept()` recorded it a moment ago, and its bytes, once; None when it
        is no longer kept (then read it with `get` and `message_bytes`). The state is the one
        committed at accept: fresh, received, nothing tried yet."""
        return self._accepted.take(msg_id)

    # -- preparing --------------------------------------------------------------------------
    def prepare(self, msg_id: str, copies: Iterable[NewCopy], outcomes: Iterable[Outcome] = ()) -> bool:
        """`prepare_for_delivery` without reading the message back: False when it is gone."""
        return self._prepare(msg_id, copies, outcomes, fetch=False)[0]

    def prepare_for_delivery(self, msg_id: str, copies: Iterable[NewCopy], outcomes: Iterable[Outcome] = ()
                             ) -> QueuedMessage | None:
        """`prepare`, and the message as it now is (what `get` then returns), read in the same
        transaction; None when the message is gone. Why: the runner hands the prepared message
        to delivery; the same call on both backends, where PostgreSQL saves a whole transaction
        (here only a second round of the spool's lock: within noise, bench/prepare_read.py)."""
        done, fresh = self._prepare(msg_id, copies, outcomes, fetch=True)
        return fresh if done else None

    def _prepare(self, msg_id: str, copies: Iterable[NewCopy], outcomes: Iterable[Outcome], *, fetch: bool
                 ) -> tuple[bool, QueuedMessage | None]:
        """Record a preparation: copy files first, then one transaction that inserts the copy
        rows (with each copy's SHA-256), links their recipients, writes the refusals and marks
        the message prepared. False when the message is gone (deleted meanwhile): nothing is
        recorded.

        A prepared copy is a *verified cache* of the pipeline's result, not the only record of
        anything: the message itself is durable since `accept()`. So the copy files are not
        fsynced and the transaction is committed without waiting for the disk (WAL with
        synchronous=NORMAL: atomic, durable at the next synchronous commit, which any outcome
        or accept is). After a crash, either the preparation is gone (the recipients are
        received again: prepared again) or `copy_bytes` finds a copy missing or not matching
        its digest (`DamagedCopy`: delivery calls `unprepare`, and it is prepared again). Either
        way a copy can be signed twice or sent twice, never lost: at least once, as delivery.

        Only recipients still received and pending are linked, so a late preparation never
        undoes an operator's delete nor gives a recipient a second copy."""
        items = list(copies)
        results = list(outcomes)
        name = _safe_id(msg_id)
        files: list[tuple[NewCopy, str, str | None]] = []
        try:
            for n, copy in enumerate(items):
                if copy.same_as_message:
                    files.append((copy, f"msg/{name}", None))
                    continue
                # Written in place under a new name (O_EXCL), not through tmp/ and a rename:
                # nothing names the file before the commit below, so a half-written one (a
                # crash, a full disk) is a copy file no row names, which recovery removes; and a
                # whole file is only ever checked by its size and digest anyway.
                file = self.copy_dir / f"{name}C{n}{secrets.token_hex(3).upper()}"
                files.append((copy, f"copy/{file.name}", hashlib.sha256(copy.data).hexdigest()))
                try:
                    write_synced(file, copy.data, sync=False)
                except FileExistsError:
                    files.pop()  # not ours to remove
                    raise
        except (OSError, SpoolError) as exc:
            self._unlink_copies(f for _, f, _ in files)
            raise exc if isinstance(exc, SpoolError) else SpoolError(
                f"cannot store a prepared copy: {_describe(exc)}") from None
        now = time.time()

        def record(db: sqlite3.Connection) -> tuple[bool, QueuedMessage | None]:
            if db.execute("SELECT 1 FROM messages WHERE id = ?", (msg_id,)).fetchone() is None:
                return False, None
            for copy, file, digest in files:
                copy_id = db.execute(
                    "INSERT INTO copies (message_id, form, require_tls, size, file, digest) VALUES (?, ?, ?, ?, ?, ?)",
                    (msg_id, copy.form, int(copy.require_tls), len(copy.data), file, digest)).lastrowid
                db.executemany(
                    "UPDATE recipients SET copy_id = ?, updated = ? WHERE id = ? AND message_id = ?"
                    " AND copy_id IS NULL AND state IN (?, ?)",
                    [(copy_id, now, rid, msg_id, *PENDING) for rid in copy.rcpt_ids])
            _apply_outcomes(db, results, now)
            db.execute("UPDATE messages SET prepared = 1 WHERE id = ?", (msg_id,))
            if not fetch:
                return True, None
            return True, self._message(db.execute(_MESSAGE_COLUMNS + " WHERE id = ?", (msg_id,)).fetchone(), db)

        try:
            # Never the reserve: it pays for outcomes, which free space. On a full disk the runner
            # sends an unrecorded preparation from memory instead (see gateway/runner.py).
            done, fresh = self._write("record a prepared message", record, reserve=False, durable=False)
        except SpoolError:
            self._unlink_copies(f for _, f, _ in files)
            raise
        if not done:
            self._unlink_copies(f for _, f, _ in files)
        return done, fresh

    def unprepare(self, msg_id: str, copy_id: int) -> None:
        """Forget a copy that is missing or damaged (see `prepare`): its pending recipients are
        received again, so the runner prepares them anew. Durable, as any state change."""
        def forget(db: sqlite3.Connection) -> str | None:
            row = db.execute("SELECT file FROM copies WHERE id = ? AND message_id = ?", (copy_id, msg_id)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE recipients SET copy_id = NULL WHERE copy_id = ? AND state IN (?, ?)",
                       (copy_id, *PENDING))
            db.execute("DELETE FROM copies WHERE id = ?", (copy_id,))
            db.execute("UPDATE messages SET prepared = 0 WHERE id = ?", (msg_id,))
            return str(row[0])

        file = self._write("forget a damaged copy", forget)
        if file is not None:
            self._unlink_copies([file])

    def _unlink_copies(self, files: Iterable[str]) -> None:
        for file in files:
            if file.startswith("copy/"):
                with contextlib.suppress(OSError):
                    (self.copy_dir / file[5:]).unlink()

    # -- reading ----------------------------------------------------------------------------
    def message_bytes(self, msg_id: str) -> bytes:
        try:
            return (self.msg_dir / _safe_id(msg_id)).read_bytes()
        except OSError as exc:
            raise SpoolError(f"cannot read queued message {msg_id}: {_describe(exc)}") from None

    def copy_bytes(self, copy: PreparedCopy) -> bytes:
        """A prepared copy's bytes. `DamagedCopy` when the file is missing or is not what was
        prepared (size or digest: a crash before the unsynced file reached the disk, or a
        truncation by `msgw queue delete` on a full disk): never sent, prepared again.
        SpoolError when it cannot be read now (I/O error, permissions): tried again later."""
        folder, _, name = copy.file.partition("/")
        base = {"msg": self.msg_dir, "copy": self.copy_dir}.get(folder)
        if base is None:
            raise SpoolError(f"not a copy file: {copy.file[:40]!r}")
        try:
            data = (base / _safe_id(name)).read_bytes()
        except FileNotFoundError:
            raise DamagedCopy(f"prepared copy {copy.id} of {copy.message_id} is missing") from None
        except OSError as exc:
            raise SpoolError(f"cannot read prepared copy {copy.id} of {copy.message_id}: {_describe(exc)}") from None
        if len(data) != copy.size:
            raise DamagedCopy(f"prepared copy {copy.id} of {copy.message_id} is damaged "
                              f"({len(data)} bytes on disk, {copy.size} recorded)")
        if copy.digest is not None and hashlib.sha256(data).hexdigest() != copy.digest:
            raise DamagedCopy(f"prepared copy {copy.id} of {copy.message_id} is damaged (digest differs)")
        return data

    def get(self, msg_id: str) -> QueuedMessage | None:
        with self._lock:
            row = self.db.execute(_MESSAGE_COLUMNS + " WHERE id = ?", (msg_id,)).fetchone()
            if row is None:
                return None
            return self._message(row)

    def list(self) -> list[QueuedMessage]:
        with self._lock:
            rows = self.db.execute(_MESSAGE_COLUMNS + " ORDER BY received, id").fetchall()
            return [self._message(row) for row in rows]

    def due(self, now: float | None = None, limit: int = 500, exclude: set[str] | frozenset[str] = frozenset()
            ) -> builtins.list[QueuedMessage]:
        """Messages with at least one pending recipient whose next attempt has come (either
        step), or a bounce whose DSN is still owed."""
        return self._due("", now, limit, exclude)

    def due_received(self, now: float | None = None, limit: int = 500,
                     exclude: set[str] | frozenset[str] = frozenset()) -> builtins.list[QueuedMessage]:
        """Messages with a received (not yet prepared) recipient due now: the runner's work."""
        return self._due("received", now, limit, exclude)

    def due_prepared(self, now: float | None = None, limit: int = 500,
                     exclude: set[str] | frozenset[str] = frozenset(), *, delay_notice_before: float | None = None
                     ) -> builtins.list[QueuedMessage]:
        """Messages with a prepared recipient due now, or a DSN owed: delivery's work. With
        `delay_notice_before`, also messages received before then whose sender is owed a delay
        notice (a recipient deferred, at either step, and none sent yet)."""
        return self._due("prepared", now, limit, exclude, delay_notice_before)

    def _due(self, stage: str, now: float | None, limit: int, exclude: set[str] | frozenset[str],
             delay_notice_before: float | None = None) -> builtins.list[QueuedMessage]:
        now = time.time() if now is None else now
        pending = "(r.state IN (?, ?) AND r.next_attempt <= ?"
        pending += {"received": " AND r.copy_id IS NULL)", "prepared": " AND r.copy_id IS NOT NULL)"}.get(stage, ")")
        # A bounce whose DSN is still owed (a crash between recording the bounce and queueing
        # the DSN, or a refusal at preparation) is delivery's work.
        owed = "" if stage == "received" else " OR (r.state = 'bounced' AND r.dsn_sent = 0)"
        args: list[object] = [*PENDING, now]
        if delay_notice_before is not None:
            owed += " OR (r.state = 'deferred' AND m.delay_notified = 0 AND m.sender != '' AND m.received <= ?)"
            args.append(delay_notice_before)
        mine = ""
        if self.owner:
            mine = " AND m.claim IN ('', ?)"
            args.append(self.owner)
        query = (f"SELECT r.message_id, m.claim FROM recipients r JOIN messages m ON m.id = r.message_id"  # noqa: S608
                 f" WHERE ({pending}{owed}) AND m.quarantined = 0{mine} GROUP BY r.message_id"
                 f" ORDER BY MIN(r.next_attempt) LIMIT ?")
        with self._lock:
            # Another owner may take every free candidate between the SELECT and our claim: that
            # is a lost race, not "nothing due" (work of ours, e.g. what this process accepted,
            # may sort after those candidates). Ask again, a few times, before answering empty.
            for _ in range(_CLAIM_RACES):
                found = [(r[0], r[1]) for r in self.db.execute(query, (*args, limit + len(exclude)))
                         if r[0] not in exclude]
                ids = [i for i, _ in found]
                lost = False
                if self.owner:  # a write only when something due is still free
                    free = [i for i, claim in found if not claim]
                    won = self._claim(free)
                    lost = len(won) < len(free)
                    ids = [i for i, claim in found if claim == self.owner or i in won]
                out = []
                for msg_id in ids:
                    if msg_id in exclude:
                        continue
                    msg = self.get(msg_id)
                    if msg is not None:
                        out.append(msg)
                    if len(out) >= limit:
                        break
                if out or not lost:
                    return out
            return []

    def _claim(self, ids: builtins.list[str]) -> set[str]:
        """Claim for this owner those of `ids` still free (one transaction: another process's
        claim in between wins); the ids now ours. Not fsynced: claims are freed on open."""
        if not ids:
            return set()
        marks = ",".join("?" * len(ids))

        def take(db: sqlite3.Connection) -> set[str]:
            db.execute(f"UPDATE messages SET claim = ? WHERE claim = '' AND id IN ({marks})",  # noqa: S608
                       (self.owner, *ids))
            return {r[0] for r in db.execute(f"SELECT id FROM messages WHERE claim = ? AND id IN ({marks})",  # noqa: S608
                                             (self.owner, *ids))}

        try:
            with self._tx(durable=False) as db:
                ours = take(db)
        except (sqlite3.Error, OSError) as exc:
            raise SpoolError(f"cannot claim due messages: {_describe(exc)}") from None
        return ours

    def next_due_time(self) -> float | None:
        mine, args = ("", PENDING) if not self.owner else (" AND m.claim IN ('', ?)", (*PENDING, self.owner))
        with self._lock:
            row = self.db.execute(
                "SELECT MIN(r.next_attempt) FROM recipients r JOIN messages m ON m.id = r.message_id"  # noqa: S608
                f" WHERE r.state IN (?, ?) AND m.quarantined = 0{mine}", args).fetchone()
        return row[0] if row and row[0] is not None else None

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.db.execute("SELECT state, COUNT(*) FROM recipients GROUP BY state").fetchall())

    def queue_stats(self) -> QueueStats:
        """The queue's figures for a scrape, through a read-only connection of its own: never
        `self._lock`, so a scrape never delays a group commit (WAL readers do not block the
        writer). Callable from any process sharing the spool folder. `SpoolError` if unreadable."""
        path = self.path / "queue.sqlite"
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot read the queue: {type(exc).__name__}") from None
        try:
            rows = db.execute(_STATS_SQL[0]).fetchall()
            messages, oldest = db.execute(_STATS_SQL[1]).fetchone()
            quarantined = db.execute(_STATS_SQL[2]).fetchone()[0]
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot read the queue: {type(exc).__name__}") from None
        finally:
            db.close()
        counts = {(state, "prepared" if prepared else "received"): n for state, prepared, n in rows}
        return QueueStats(counts, messages or 0, oldest, quarantined or 0)

    def _message(self, row: tuple, db: sqlite3.Connection | None = None) -> QueuedMessage:
        """A message row with its recipients and copies, read on `db` (a transaction's) or ours."""
        db = self.db if db is None else db
        rcpts = db.execute(
            "SELECT id, message_id, address, state, attempts, next_attempt, last_error, last_status, remote,"
            " updated, dsn_sent, copy_id FROM recipients WHERE message_id = ? ORDER BY id", (row[0],)).fetchall()
        copies = db.execute(
            "SELECT id, message_id, form, require_tls, size, file, digest FROM copies WHERE message_id = ? ORDER BY id",
            (row[0],)).fetchall()
        return QueuedMessage(
            id=row[0], sender=row[1], size=row[2], received=row[3], expires=row[4], listener=row[5],
            client=row[6], auth_user=row[7], delay_notified=bool(row[8]), crashes=row[9],
            quarantined=bool(row[10]),
            recipients=tuple(QueuedRecipient(
                id=r[0], message_id=r[1], address=r[2], state=RecipientState(r[3]), attempts=r[4],
                next_attempt=r[5], last_error=r[6], last_status=r[7], remote=r[8], updated=r[9],
                dsn_sent=bool(r[10]), copy_id=r[11]) for r in rcpts),
            copies=tuple(PreparedCopy(id=c[0], message_id=c[1], form=c[2], require_tls=bool(c[3]), size=c[4],
                                      file=c[5], digest=c[6]) for c in copies))

    # -- state changes ----------------------------------------------------------------------
    def record_outcomes(self, outcomes: Iterable[Outcome], *, finish: str | None = None) -> None:
        """Write an attempt's outcomes in one transaction (one fsync for 10,000 recipients, not
        10,000). Only pending recipients change: an operator's delete is not undone by a late
        result. Deferrals alone never use the reserve (see `mark_deferred`).

        `finish`: a message id; when these outcomes leave it finished (as `finish_if_done` means
        it), its rows go in the same transaction and a tombstone row (`finished`) takes their
        place; its files are unlinked after the commit, then `take_finished(finish)` is True.
        Why: the delivery manager's read and removal were a second transaction and a second
        executor trip per delivered message (issue 15). A crash between the commit and the
        unlink leaves files that `recover()` removes by their tombstone (not orphans)."""
        now = time.time()
        items = list(outcomes)
        if not items:
            return
        if finish is not None:
            _safe_id(finish)
        with self._unlinked_lock:
            cleared, self._unlinked = self._unlinked, []

        def work(db: sqlite3.Connection) -> builtins.list[str] | None:
            _apply_outcomes(db, items, now)
            if cleared:
                db.executemany("DELETE FROM finished WHERE id = ?", [(i,) for i in cleared])
            return None if finish is None else _finish_rows(db, finish)

        try:
            files = self._write("update queue state", work,
                                reserve=any(o.state is not RecipientState.DEFERRED for o in items))
        except BaseException:
            with self._unlinked_lock:
                self._unlinked[:0] = cleared
            raise
        if finish is not None and files is not None:
            self._unlink_finished(finish, files)
            self._finished.add(finish)

    def _unlink_finished(self, msg_id: str, files: builtins.list[str]) -> None:
        """The files of a message whose rows `record_outcomes` removed; the tombstone row goes with
        the next finishing transaction once they are gone, else it stays for `recover()`."""
        paths = [self.copy_dir / _safe_id(f[5:]) for f in files if f.startswith("copy/")]
        for path in [*paths, self.msg_dir / msg_id]:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                event(log, "spool-finish-postponed", logging.WARNING, msg=msg_id, reason=_describe(exc))
                return
        with self._unlinked_lock:
            self._unlinked.append(msg_id)

    def take_finished(self, msg_id: str) -> bool:
        """True once when `record_outcomes(…, finish=msg_id)` removed the message (no I/O)."""
        return self._finished.take(msg_id)

    def _set(self, rcpt_ids: Iterable[int], state: RecipientState, *, error: str | None, status: str,
             remote: str | None, next_attempt: float | None = None, count_attempt: bool = True) -> None:
        self.record_outcomes(Outcome(rid, state, status, error, remote, next_attempt, count_attempt)
                             for rid in rcpt_ids)

    def mark_delivered(self, rcpt_ids: Iterable[int], *, status: str, remote: str | None = None,
                       reply: str | None = None) -> None:
        self._set(rcpt_ids, RecipientState.DELIVERED, error=reply, status=status, remote=remote)

    def mark_deferred(self, rcpt_ids: Iterable[int], *, next_attempt: float, error: str, status: str,
                      remote: str | None = None) -> None:
        """A deferral changes nothing that matters (the recipients stay pending): it never uses
        the reserve, so on a full disk it fails with SpoolError and the caller waits."""
        self._set(rcpt_ids, RecipientState.DEFERRED, error=error, status=status, remote=remote,
                  next_attempt=next_attempt)

    def mark_bounced(self, rcpt_ids: Iterable[int], *, error: str, status: str, remote: str | None = None,
                     count_attempt: bool = True) -> None:
        self._set(rcpt_ids, RecipientState.BOUNCED, error=error, status=status, remote=remote,
                  count_attempt=count_attempt)

    def mark_dsn_sent(self, rcpt_ids: Iterable[int]) -> None:
        ids = [(i,) for i in rcpt_ids]
        self._write("record a queued DSN",
                    lambda db: db.executemany("UPDATE recipients SET dsn_sent = 1 WHERE id = ?", ids))

    def mark_delay_notified(self, msg_id: str) -> None:
        self._write("record a delay notice",
                    lambda db: db.execute("UPDATE messages SET delay_notified = 1 WHERE id = ?", (msg_id,)))

    def record_crash(self, msg_id: str, *, limit: int) -> bool:
        """Count an unexpected processing failure; quarantine at `limit`. True when quarantined."""
        def count(db: sqlite3.Connection) -> bool:
            db.execute("UPDATE messages SET crashes = crashes + 1 WHERE id = ?", (msg_id,))
            crashes = db.execute("SELECT crashes FROM messages WHERE id = ?", (msg_id,)).fetchone()
            if crashes is None or crashes[0] < limit:
                return False
            db.execute("UPDATE messages SET quarantined = 1 WHERE id = ?", (msg_id,))
            return True

        if not self._write("record a processing failure", count, reserve=False):
            return False
        with contextlib.suppress(OSError):
            os.link(self.msg_dir / msg_id, self.quarantine_dir / msg_id)
        return True

    def retry(self, msg_id: str | None = None) -> int:
        """Make deferred recipients (of one message, or all) due now; lift quarantine."""
        now = time.time()

        def schedule(db: sqlite3.Connection) -> int:
            if msg_id is None:
                db.execute("UPDATE messages SET quarantined = 0, crashes = 0")
                cur = db.execute("UPDATE recipients SET next_attempt = ? WHERE state IN (?, ?)", (now, *PENDING))
            else:
                db.execute("UPDATE messages SET quarantined = 0, crashes = 0 WHERE id = ?", (msg_id,))
                cur = db.execute("UPDATE recipients SET next_attempt = ? WHERE message_id = ? AND state IN (?, ?)",
                                 (now, msg_id, *PENDING))
            return cur.rowcount

        return self._write("schedule a retry", schedule, reserve=False)

    def delete(self, msg_id: str) -> bool:
        """Operator removal: pending recipients become 'deleted' (no DSN), the message goes.

        Works on a full disk: the reserve pays for the rows; without one, the message's bytes
        are dropped first (the operator wants them gone) to make room, then the rows follow.
        If even that fails, SpoolError says so and the (now empty) file is never delivered:
        the runner checks a message's size before sending it."""
        name = _safe_id(msg_id)
        self.take_accepted(msg_id)  # never prepared from memory after its deletion
        with self._lock:
            found = self.db.execute("SELECT 1 FROM messages WHERE id = ?", (msg_id,)).fetchone()
        if not found:
            return False

        def mark(db: sqlite3.Connection) -> None:
            db.execute("UPDATE recipients SET state = 'deleted', updated = ? WHERE message_id = ? AND state IN (?, ?)",
                       (time.time(), msg_id, *PENDING))

        try:
            self._write("delete a queued message", mark)
        except SpoolError:
            for path in [self.msg_dir / name, *self._copy_paths(msg_id)]:
                with contextlib.suppress(FileNotFoundError), open(path, "r+b") as f:
                    f.truncate(0)
            self._make_room("delete")
            self._write("delete a queued message", mark)
        self.finish_if_done(msg_id)
        return True

    def finish_done(self) -> int:
        """Remove every message whose last outcome was recorded but which was not removed (a
        worker killed between the two; issue 15). Safe beside other processes: only final
        messages are touched, as `finish_if_done` always is. How many were removed."""
        with self._lock:
            done = [r[0] for r in self.db.execute(
                "SELECT id FROM messages m WHERE NOT EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id"
                " AND (r.state IN (?, ?) OR (r.state = 'bounced' AND r.dsn_sent = 0)))", PENDING)]
        return sum(self.finish_if_done(msg_id) for msg_id in done)

    def finish_if_done(self, msg_id: str) -> bool:
        """Remove a message whose recipients are all final and whose DSNs are queued.

        The file goes first: nothing needs it any more, and on a full disk its space is what
        lets the row deletion be written. Rows left without a file (a crash, or a disk still
        full) are removed by the next `recover()` or call; so the deletion does not wait for
        the disk."""
        name = _safe_id(msg_id)
        with self._lock:
            left = self.db.execute(
                "SELECT COUNT(*) FROM recipients WHERE message_id = ? AND (state IN (?, ?)"
                " OR (state = 'bounced' AND dsn_sent = 0))", (msg_id, *PENDING)).fetchone()[0]
        if left:
            return False
        for path in [*self._copy_paths(msg_id), self.msg_dir / name]:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise SpoolError(f"cannot remove finished message {msg_id}: {_describe(exc)}") from None

        def remove(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM recipients WHERE message_id = ?", (msg_id,))
            db.execute("DELETE FROM copies WHERE message_id = ?", (msg_id,))
            db.execute("DELETE FROM messages WHERE id = ?", (msg_id,))

        # Not waited for (synchronous=NORMAL, durable with the next FULL commit): the outcomes
        # that made the message final are durable already, and rows a power cut would bring back
        # are those recover() sweeps (final, no file). One fsync per message less.
        self._write("remove a finished message", remove, durable=False)
        return True


    def _copy_paths(self, msg_id: str) -> builtins.list[Path]:
        """The files of a message's own prepared copies (not the message file it may share)."""
        with self._lock:
            files = [r[0] for r in self.db.execute("SELECT file FROM copies WHERE message_id = ?", (msg_id,))]
        return [self.copy_dir / _safe_id(f[5:]) for f in files if f.startswith("copy/")]


_MESSAGE_COLUMNS = ("SELECT id, sender, size, received, expires, listener, client, auth_user, delay_notified,"
                    " crashes, quarantined, prepared FROM messages")


def _migrate(db: sqlite3.Connection) -> None:
    """Add the columns of a newer schema to an older spool (written only when missing)."""
    for table, column, decl in _MIGRATIONS:
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")


def _apply_outcomes(db: sqlite3.Connection, outcomes: builtins.list[Outcome], now: float) -> None:
    """Only pending recipients change: an operator's delete is not undone by a late result."""
    db.executemany(
        "UPDATE recipients SET state = ?, attempts = attempts + ?, last_error = ?,"
        " last_status = ?, remote = COALESCE(?, remote), next_attempt = COALESCE(?, next_attempt),"
        " updated = ? WHERE id = ? AND state IN (?, ?)",
        [(o.state.value, 1 if o.count_attempt else 0, o.error, o.status, o.remote, o.next_attempt, now,
          o.rcpt_id, *PENDING) for o in outcomes])


def _finish_rows(db: sqlite3.Connection, msg_id: str) -> builtins.list[str] | None:
    """In a transaction: remove a finished message's rows (all recipients final, no DSN owed) and
    leave its tombstone; the copy files to unlink after the commit, or None when not finished."""
    if db.execute("SELECT 1 FROM messages WHERE id = ?", (msg_id,)).fetchone() is None:
        return None
    left = db.execute("SELECT COUNT(*) FROM recipients WHERE message_id = ? AND (state IN (?, ?)"
                      " OR (state = 'bounced' AND dsn_sent = 0))", (msg_id, *PENDING)).fetchone()[0]
    if left:
        return None
    files = [r[0] for r in db.execute("SELECT file FROM copies WHERE message_id = ?", (msg_id,))]
    db.execute("DELETE FROM recipients WHERE message_id = ?", (msg_id,))
    db.execute("DELETE FROM copies WHERE message_id = ?", (msg_id,))
    db.execute("DELETE FROM messages WHERE id = ?", (msg_id,))
    db.execute("INSERT OR IGNORE INTO finished (id) VALUES (?)", (msg_id,))
    return files


def _safe_id(msg_id: str) -> str:
    if not msg_id or not msg_id.isalnum():
        raise SpoolError(f"not a queue id: {msg_id[:40]!r}")
    return msg_id


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return "insufficient disk space"
        if exc.errno in _DISK_ERRNOS:
            return f"spool not writable ({os.strerror(exc.errno or 0)})"
        return exc.strerror or type(exc).__name__
    text = str(exc)
    if "full" in text:
        return "insufficient disk space"
    return f"{type(exc).__name__}: {text[:100]}"
