"""The durable queue: message bytes in files, queue state in SQLite (WAL, synchronous=FULL).

Why both: message bytes are large and written once, so they go to a file written to
`tmp/`, fsynced, renamed into `msg/` and the directory fsynced (the Maildir / Postfix way);
the per-recipient state changes often and must be queried ("what is due now?"), so it lives
in SQLite whose commit is itself durable. `accept()` returns only after both are on disk, and
the SMTP layer answers 250 only after `accept()` returned. Any OS or SQLite failure on the
way (disk full, read-only, permissions) becomes `SpoolError` (452 4.3.1), never a 250.

Crash recovery (`open()`): `tmp/` leftovers are removed (never acknowledged); a file in
`msg/` with no queue row was never acknowledged either (the row commit is the last step) and
is moved to `orphans/` for inspection; every recipient not in a final state is due again.
A message is deleted (file and rows) only once every recipient is final. Messages whose
processing crashes repeatedly are moved to `quarantine/` rather than retried forever.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from gateway.errors import GatewayError, SpoolError

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
"""

_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


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

    @property
    def pending(self) -> tuple[QueuedRecipient, ...]:
        return tuple(r for r in self.recipients if not r.state.final)

    def to_json(self) -> dict:
        return {
            "id": self.id, "sender": self.sender, "size": self.size, "received": self.received,
            "expires": self.expires, "listener": self.listener, "client": self.client,
            "auth_user": self.auth_user, "quarantined": self.quarantined,
            "recipients": [{
                "address": r.address, "state": r.state.value, "attempts": r.attempts,
                "next_attempt": r.next_attempt, "last_error": r.last_error, "last_status": r.last_status,
                "remote": r.remote,
            } for r in self.recipients],
        }


def new_message_id() -> str:
    """Time-ordered, unguessable queue id (hex milliseconds + 40 random bits)."""
    return f"{int(time.time() * 1000):011X}{secrets.token_hex(5).upper()}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Durable message store with per-recipient state. Thread-safe; all methods block on I/O,
    so async callers run them in an executor."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.msg_dir = self.path / "msg"
        self.tmp_dir = self.path / "tmp"
        self.quarantine_dir = self.path / "quarantine"
        self.orphan_dir = self.path / "orphans"
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None

    # -- life cycle -------------------------------------------------------------------------
    def open(self, *, recover: bool = True) -> Spool:
        try:
            for d in (self.path, self.msg_dir, self.tmp_dir, self.quarantine_dir, self.orphan_dir):
                d.mkdir(parents=True, exist_ok=True, mode=0o700)
            db = sqlite3.connect(self.path / "queue.sqlite", check_same_thread=False, isolation_level=None,
                                 timeout=30)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise SpoolError(f"spool unavailable: {_describe(exc)}") from None
        self._db = db
        if recover:
            self.recover()
        return self

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

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
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = self.db
            try:
                db.execute("BEGIN IMMEDIATE")
                yield db
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise

    def recover(self) -> dict[str, int]:
        """Clean what was never acknowledged; everything pending becomes due again."""
        stats = {"tmp_removed": 0, "orphans": 0, "pending": 0}
        for leftover in self.tmp_dir.iterdir():
            with contextlib.suppress(OSError):
                leftover.unlink()
                stats["tmp_removed"] += 1
        with self._lock:
            known = {row[0] for row in self.db.execute("SELECT id FROM messages")}
        for f in self.msg_dir.iterdir():
            if f.name not in known:
                with contextlib.suppress(OSError):
                    os.replace(f, self.orphan_dir / f.name)
                    stats["orphans"] += 1
        with self._lock:
            stats["pending"] = self.db.execute(
                "SELECT COUNT(*) FROM recipients WHERE state IN (?, ?)", PENDING).fetchone()[0]
            finished = [r[0] for r in self.db.execute(
                "SELECT id FROM messages m WHERE NOT EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id"
                " AND (r.state IN (?, ?) OR (r.state = 'bounced' AND r.dsn_sent = 0)))", PENDING)]
        # Messages whose last outcome was recorded just before a crash: remove them now.
        stats["finished"] = sum(1 for msg_id in finished if self.finish_if_done(msg_id))
        return stats

    # -- accepting --------------------------------------------------------------------------
    def accept(self, sender: str, recipients: Iterable[str], data: bytes, *, lifetime: float,
               listener: str = "", client: str = "", auth_user: str | None = None,
               now: float | None = None) -> str:
        """Store a message durably and return its queue id; raise SpoolError otherwise."""
        rcpts = list(dict.fromkeys(recipients))
        if not rcpts:
            raise GatewayError("no recipients", status="5.5.1")
        now = time.time() if now is None else now
        msg_id = new_message_id()
        tmp = self.tmp_dir / msg_id
        final = self.msg_dir / msg_id
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
            _fsync_dir(self.msg_dir)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise SpoolError(f"cannot store message: {_describe(exc)}") from None
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT INTO messages (id, sender, size, received, expires, listener, client, auth_user)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (msg_id, sender, len(data), now, now + lifetime, listener, client, auth_user))
                db.executemany(
                    "INSERT INTO recipients (message_id, address, state, next_attempt, updated)"
                    " VALUES (?, ?, 'queued', ?, ?)", [(msg_id, r, now, now) for r in rcpts])
        except (sqlite3.Error, OSError) as exc:
            with contextlib.suppress(OSError):
                final.unlink()
            raise SpoolError(f"cannot record message: {_describe(exc)}") from None
        return msg_id

    # -- reading ----------------------------------------------------------------------------
    def message_bytes(self, msg_id: str) -> bytes:
        try:
            return (self.msg_dir / _safe_id(msg_id)).read_bytes()
        except OSError as exc:
            raise SpoolError(f"cannot read queued message {msg_id}: {_describe(exc)}") from None

    def get(self, msg_id: str) -> QueuedMessage | None:
        with self._lock:
            row = self.db.execute("SELECT * FROM messages WHERE id = ?", (msg_id,)).fetchone()
            if row is None:
                return None
            return self._message(row)

    def list(self) -> list[QueuedMessage]:
        with self._lock:
            rows = self.db.execute("SELECT * FROM messages ORDER BY received, id").fetchall()
            return [self._message(row) for row in rows]

    def due(self, now: float | None = None, limit: int = 500, exclude: set[str] | frozenset[str] = frozenset()
            ) -> list[QueuedMessage]:
        """Messages with at least one pending recipient whose next attempt has come."""
        now = time.time() if now is None else now
        with self._lock:
            # Due: a pending recipient whose time has come, or a bounce whose DSN is still owed
            # (a crash between recording the bounce and queueing the DSN).
            ids = [r[0] for r in self.db.execute(
                "SELECT r.message_id FROM recipients r JOIN messages m ON m.id = r.message_id"
                " WHERE ((r.state IN (?, ?) AND r.next_attempt <= ?) OR (r.state = 'bounced' AND r.dsn_sent = 0))"
                " AND m.quarantined = 0 GROUP BY r.message_id ORDER BY MIN(r.next_attempt) LIMIT ?",
                (*PENDING, now, limit + len(exclude)))]
            out = []
            for msg_id in ids:
                if msg_id in exclude:
                    continue
                msg = self.get(msg_id)
                if msg is not None:
                    out.append(msg)
                if len(out) >= limit:
                    break
            return out

    def next_due_time(self) -> float | None:
        with self._lock:
            row = self.db.execute(
                "SELECT MIN(r.next_attempt) FROM recipients r JOIN messages m ON m.id = r.message_id"
                " WHERE r.state IN (?, ?) AND m.quarantined = 0", PENDING).fetchone()
        return row[0] if row and row[0] is not None else None

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.db.execute("SELECT state, COUNT(*) FROM recipients GROUP BY state").fetchall())

    def _message(self, row: tuple) -> QueuedMessage:
        rcpts = self.db.execute(
            "SELECT id, message_id, address, state, attempts, next_attempt, last_error, last_status, remote,"
            " updated, dsn_sent FROM recipients WHERE message_id = ? ORDER BY id", (row[0],)).fetchall()
        return QueuedMessage(
            id=row[0], sender=row[1], size=row[2], received=row[3], expires=row[4], listener=row[5],
            client=row[6], auth_user=row[7], delay_notified=bool(row[8]), crashes=row[9],
            quarantined=bool(row[10]),
            recipients=tuple(QueuedRecipient(
                id=r[0], message_id=r[1], address=r[2], state=RecipientState(r[3]), attempts=r[4],
                next_attempt=r[5], last_error=r[6], last_status=r[7], remote=r[8], updated=r[9],
                dsn_sent=bool(r[10])) for r in rcpts))

    # -- state changes ----------------------------------------------------------------------
    def _set(self, rcpt_ids: Iterable[int], state: RecipientState, *, error: str | None, status: str | None,
             remote: str | None, next_attempt: float | None = None, count_attempt: bool = True) -> None:
        now = time.time()
        ids = list(rcpt_ids)
        if not ids:
            return
        try:
            with self._tx() as db:
                for rid in ids:
                    # Only pending recipients change: an operator's delete is not undone by a late result.
                    db.execute(
                        "UPDATE recipients SET state = ?, attempts = attempts + ?, last_error = ?,"
                        " last_status = ?, remote = COALESCE(?, remote), next_attempt = COALESCE(?, next_attempt),"
                        " updated = ? WHERE id = ? AND state IN (?, ?)",
                        (state.value, 1 if count_attempt else 0, error, status, remote, next_attempt, now, rid,
                         *PENDING))
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot update queue state: {_describe(exc)}") from None

    def mark_delivered(self, rcpt_ids: Iterable[int], *, status: str, remote: str | None = None,
                       reply: str | None = None) -> None:
        self._set(rcpt_ids, RecipientState.DELIVERED, error=reply, status=status, remote=remote)

    def mark_deferred(self, rcpt_ids: Iterable[int], *, next_attempt: float, error: str, status: str,
                      remote: str | None = None) -> None:
        self._set(rcpt_ids, RecipientState.DEFERRED, error=error, status=status, remote=remote,
                  next_attempt=next_attempt)

    def mark_bounced(self, rcpt_ids: Iterable[int], *, error: str, status: str, remote: str | None = None,
                     count_attempt: bool = True) -> None:
        self._set(rcpt_ids, RecipientState.BOUNCED, error=error, status=status, remote=remote,
                  count_attempt=count_attempt)

    def mark_dsn_sent(self, rcpt_ids: Iterable[int]) -> None:
        with self._tx() as db:
            db.executemany("UPDATE recipients SET dsn_sent = 1 WHERE id = ?", [(i,) for i in rcpt_ids])

    def mark_delay_notified(self, msg_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE messages SET delay_notified = 1 WHERE id = ?", (msg_id,))

    def record_crash(self, msg_id: str, *, limit: int) -> bool:
        """Count an unexpected processing failure; quarantine at `limit`. True when quarantined."""
        with self._tx() as db:
            db.execute("UPDATE messages SET crashes = crashes + 1 WHERE id = ?", (msg_id,))
            crashes = db.execute("SELECT crashes FROM messages WHERE id = ?", (msg_id,)).fetchone()
            if crashes is None or crashes[0] < limit:
                return False
            db.execute("UPDATE messages SET quarantined = 1 WHERE id = ?", (msg_id,))
        with contextlib.suppress(OSError):
            os.link(self.msg_dir / msg_id, self.quarantine_dir / msg_id)
        return True

    def retry(self, msg_id: str | None = None) -> int:
        """Make deferred recipients (of one message, or all) due now; lift quarantine."""
        now = time.time()
        with self._tx() as db:
            if msg_id is None:
                db.execute("UPDATE messages SET quarantined = 0, crashes = 0")
                cur = db.execute("UPDATE recipients SET next_attempt = ? WHERE state IN (?, ?)", (now, *PENDING))
            else:
                db.execute("UPDATE messages SET quarantined = 0, crashes = 0 WHERE id = ?", (msg_id,))
                cur = db.execute("UPDATE recipients SET next_attempt = ? WHERE message_id = ? AND state IN (?, ?)",
                                 (now, msg_id, *PENDING))
            return cur.rowcount

    def delete(self, msg_id: str) -> bool:
        """Operator removal: pending recipients become 'deleted' (no DSN), the message goes."""
        with self._tx() as db:
            found = db.execute("SELECT 1 FROM messages WHERE id = ?", (msg_id,)).fetchone()
            if not found:
                return False
            db.execute("UPDATE recipients SET state = 'deleted', updated = ? WHERE message_id = ? AND state IN (?, ?)",
                       (time.time(), msg_id, *PENDING))
        self.finish_if_done(msg_id)
        return True

    def finish_if_done(self, msg_id: str) -> bool:
        """Remove a message whose recipients are all final and whose DSNs are queued."""
        with self._lock:
            left = self.db.execute(
                "SELECT COUNT(*) FROM recipients WHERE message_id = ? AND (state IN (?, ?)"
                " OR (state = 'bounced' AND dsn_sent = 0))", (msg_id, *PENDING)).fetchone()[0]
            if left:
                return False
            with self._tx() as db:
                db.execute("DELETE FROM recipients WHERE message_id = ?", (msg_id,))
                db.execute("DELETE FROM messages WHERE id = ?", (msg_id,))
        with contextlib.suppress(FileNotFoundError):
            (self.msg_dir / _safe_id(msg_id)).unlink()
        return True


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
