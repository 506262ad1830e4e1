"""The ZAM ledger: which business acknowledgments each transmission owes, which copy each DSN
or MDN belongs to, and the outbox of ZAMs not yet acknowledged by their CRÉATEUR.

Why durable, and why one transaction per fact: a ZAM replaces an answer the CRÉATEUR already
got (the ACK AA said "taken in charge"), so an owed ZAM must survive a crash and be sent once
per fact: the outcome or the report that causes it and the queued ZAM are written together
(SQLite, WAL, synchronous=FULL), never one without the other.

What is stored is what a ZAM needs and nothing more: the original MSH tokens, each copy's queue
id and Message-ID, each recipient's MSSanté address (for a patient ``<INS>@patient.mssante.fr``,
as the ZAM must name it) and RPPS, and the ZAM bytes, which hold the same tokens. No name, no
subject, no document.

A report that matches no copy (an unknown Message-ID, or a Final-Recipient that is not a
recipient of that copy: a forged read receipt) is counted and dropped, never turned into a ZAM.
Blocking (SQLite): async callers use an executor. Thread-safe: one connection and a lock.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gateway.cisis.model import MessageHeader, ZamEvent
from gateway.cisis.returns import Return, message_id_key, parse_returns
from gateway.cisis.zam import ERROR_SYSTEM, build_zam, parse_zam
from gateway.errors import TemporaryError
from gateway.sqlitefile import open_private_db

FILE_NAME = "cisis.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS transmissions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    creator TEXT NOT NULL,
    header TEXT NOT NULL,
    ack_reception INTEGER NOT NULL,
    ack_read INTEGER NOT NULL,
    created REAL NOT NULL,
    origin TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS transmissions_origin ON transmissions(origin);
CREATE TABLE IF NOT EXISTS copies (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    transmission INTEGER NOT NULL REFERENCES transmissions(id),
    queue_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    recipient_address TEXT NOT NULL,
    recipient_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    z02 TEXT NOT NULL DEFAULT '',
    z03 TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS copies_queue ON copies(queue_id, recipient_address);
CREATE INDEX IF NOT EXISTS copies_message ON copies(message_id);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    creator TEXT NOT NULL,
    control_id TEXT NOT NULL,
    data BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    created REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending'
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(state, creator, id);
CREATE TABLE IF NOT EXISTS ignored (
    reason TEXT PRIMARY KEY,
    count INTEGER NOT NULL
);
"""

def origin_key(header: MessageHeader, digest: str = "") -> str:
    """Who sent which message: MSH-3, MSH-4, MSH-10 (the CRÉATEUR's own unique id) and a digest of
    what it said (a CRÉATEUR that reuses a control id for another document is not a resend)."""
    return "|".join((header.sending_application.casefold(), header.sending_facility.casefold(), header.control_id,
                     digest))


#: One recipient of one MSSanté copy: (queue id, Message-ID, address, RPPS or other id, kind).
CopyRow = tuple[str, str, str, str, str]
_SMTP_CODE = re.compile(r"^\s*([245]\d\d)\b")


class LedgerError(TemporaryError):
    """The ledger cannot be read or written (a local fault: the caller defers)."""

    code = "cisis-ledger"
    status = "4.3.0"


@dataclass(frozen=True)
class OutboxEntry:
    """A ZAM waiting for its CRÉATEUR's ACK."""

    id: int
    creator: str
    control_id: str
    data: bytes
    attempts: int
    created: float
    state: str = "pending"


class ZamLedger:
    """The ``cisis.sqlite`` store beside the spool (see the module docstring)."""

    def __init__(self, path: str | Path, *, retry_schedule: Sequence[float] = (30.0, 60.0, 300.0, 900.0, 3600.0),
                 lifetime: float = 5 * 86400.0, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.retry_schedule = tuple(retry_schedule) or (60.0,)
        self.lifetime = lifetime
        self.clock = clock
        self._lock = threading.RLock()
        try:
            self._db = open_private_db(self.path, _SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(f"cannot open the CI-SIS ledger ({type(exc).__name__})") from None

    @classmethod
    def beside(cls, spool_path: str | Path, **kwargs: object) -> ZamLedger:
        """The ledger of a spool: ``<spool path>/cisis.sqlite``."""
        return cls(Path(spool_path) / FILE_NAME, **kwargs)  # type: ignore[arg-type]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self, what: str) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction; any SQLite fault is a temporary LedgerError."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise LedgerError(f"cannot {what} in the CI-SIS ledger ({type(exc).__name__})") from None

    # -- recording ------------------------------------------------------------------------------
    def record(self, header: MessageHeader, creator: str, flags: Mapping[str, bool], copies: Sequence[CopyRow] = (),
               owed_now: Sequence[bytes] = (), now: float | None = None, digest: str = "") -> int:
        """Remember a transmission, its copies and the ZAMs owed at once, in one transaction
        (call after the spool accepted the copies, before the ACK AA); its id."""
        when = self.clock() if now is None else now
        with self._tx("record a transmission") as db:
            cur = db.execute("INSERT INTO transmissions (creator, header, ack_reception, ack_read, created, origin) "
                             "VALUES (?, ?, ?, ?, ?, ?)",
                             (creator, json.dumps(dataclasses.asdict(header)), int(bool(flags.get("ACK_RECEPTION"))),
                              int(bool(flags.get("ACK_LECTURE_MSS"))), when, origin_key(header, digest)))
            tid = int(cur.lastrowid or 0)
            db.executemany("INSERT INTO copies (transmission, queue_id, message_id, recipient_address, recipient_id, "
                           "kind) VALUES (?, ?, ?, ?, ?, ?)",
                           [(tid, q, message_id_key(m), a.lower(), r, k) for q, m, a, r, k in copies])
            for data in owed_now:
                self._enqueue(db, creator, data, when)
        return tid

    def known(self, header: MessageHeader, digest: str = "") -> bool:
        """True when this CRÉATEUR's message (MSH-3, MSH-4, MSH-10, same content) was already taken
        in charge: its ACK was lost on the way back and it is sent again; nothing must go twice."""
        return bool(self._read("SELECT 1 FROM transmissions WHERE origin = ? LIMIT 1", (origin_key(header, digest),)))

    def _enqueue(self, db: sqlite3.Connection, creator: str, data: bytes, now: float) -> None:
        control_id = parse_zam(data).get("MSH-10", "")
        db.execute("INSERT INTO outbox (creator, control_id, data, next_attempt, created) VALUES (?, ?, ?, ?, ?)",
                   (creator, control_id, data, now, now))

    def _zam(self, db: sqlite3.Connection, row: sqlite3.Row | tuple, event: ZamEvent, now: float, *, ok: bool,
             recipient: str, recipient_id: str, error: tuple[str, str] | None) -> bytes:
        """Build one ZAM for a copy's transmission and queue it (inside the caller's transaction)."""
        creator, header_json = row
        header = MessageHeader(**json.loads(header_json))
        seq = db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM outbox").fetchone()[0]
        data = build_zam(event, header, ok=ok, recipient_address=recipient, recipient_id=recipient_id,
                         error=(*error, ERROR_SYSTEM[event]) if error else None, control_id=f"MSGWZAM{seq}",
                         now=dt.datetime.fromtimestamp(now, dt.UTC))
        self._enqueue(db, creator, data, now)
        return data

    # -- facts ------------------------------------------------------------------------------------
    def on_outcome(self, queue_id: str, recipient: str, delivered: bool, status: str, reply: str | None,
                   now: float | None = None) -> list[bytes]:
        """The next hop accepted or refused a copy: the Z02 owed for it (once per copy and
        recipient, only when the CRÉATEUR asked ACK_RECEPTION), queued in the same transaction."""
        when = self.clock() if now is None else now
        out: list[bytes] = []
        if not self._read("SELECT 1 FROM copies WHERE queue_id=? AND recipient_address=? AND z02='' LIMIT 1",
                          (queue_id, recipient.lower())):
            return out  # not a CI-SIS copy, or its Z02 is already queued: no write transaction
        with self._tx("record a delivery outcome") as db:
            rows = db.execute("SELECT c.id, c.recipient_address, c.recipient_id, t.creator, t.header FROM copies c "
                              "JOIN transmissions t ON t.id = c.transmission WHERE c.queue_id=? AND "
                              "c.recipient_address=? AND t.ack_reception=1 AND c.z02=''",
                              (queue_id, recipient.lower())).fetchall()
            for cid, address, rid, creator, header in rows:
                error = None if delivered else _smtp_error(status, reply)
                out.append(self._zam(db, (creator, header), ZamEvent.MSS_RECEPTION, when, ok=delivered,
                                     recipient=address, recipient_id=rid, error=error))
                db.execute("UPDATE copies SET z02=? WHERE id=?", ("Y" if delivered else "N", cid))
        return out

    def on_return(self, ret: Return, now: float | None = None) -> list[bytes]:
        """A DSN or an MDN for one of our copies: the Z02/Z03 it causes (queued), or nothing."""
        when = self.clock() if now is None else now
        with self._tx("apply a returned report") as db:
            known = db.execute("SELECT c.id, c.recipient_address, c.recipient_id, c.z02, c.z03, t.creator, t.header, "
                               "t.ack_reception, t.ack_read FROM copies c JOIN transmissions t "
                               "ON t.id = c.transmission WHERE c.message_id=?",
                               (message_id_key(ret.original_message_id),)).fetchall()
            if not known:
                self._ignore(db, "unknown-message")
                return []
            mine = [r for r in known if r[1] == ret.recipient.lower()]
            if not mine:
                self._ignore(db, "recipient-not-on-copy")
                return []
            apply = self._apply_mdn if ret.kind == "mdn" else self._apply_dsn
            return apply(db, ret, mine[0], when)

    def apply_report(self, data: bytes) -> list[bytes]:
        """A mail received by the application mailbox: parsed (a `ReturnError` when it is no
        DSN/MDN), then each recipient's outcome applied; the ZAMs queued. The SMTP listener's
        ``returns_sink``: it runs before the 250, so a report is never acknowledged unapplied."""
        out: list[bytes] = []
        for ret in parse_returns(data):
            out.extend(self.on_return(ret))
        return out

    def _apply_dsn(self, db: sqlite3.Connection, ret: Return, row: tuple, now: float) -> list[bytes]:
        cid, address, rid, z02, _, creator, header, ack_reception, _ = row
        # A failure overrides an earlier "next hop accepted"; a success only fills a gap.
        wanted = ack_reception and (z02 in ("", "Y") if not ret.ok else z02 == "")
        if not wanted:
            self._ignore(db, "dsn-nothing-owed")
            return []
        data = self._zam(db, (creator, header), ZamEvent.MSS_RECEPTION, now, ok=ret.ok, recipient=address,
                         recipient_id=rid, error=None if ret.ok else (ret.code or "550", ret.text))
        db.execute("UPDATE copies SET z02=? WHERE id=?", ("Y" if ret.ok else "N", cid))
        return [data]

    def _apply_mdn(self, db: sqlite3.Connection, ret: Return, row: tuple, now: float) -> list[bytes]:
        cid, address, rid, _, z03, creator, header, _, ack_read = row
        if not ack_read or z03:
            self._ignore(db, "mdn-nothing-owed")
            return []
        data = self._zam(db, (creator, header), ZamEvent.MSS_READ, now, ok=ret.ok, recipient=address,
                         recipient_id=rid, error=None if ret.ok else (ret.code or "906", ret.text))
        db.execute("UPDATE copies SET z03=? WHERE id=?", ("Y" if ret.ok else "N", cid))
        return [data]

    def _ignore(self, db: sqlite3.Connection, reason: str) -> None:
        db.execute("INSERT INTO ignored (reason, count) VALUES (?, 1) "
                   "ON CONFLICT(reason) DO UPDATE SET count = count + 1", (reason,))

    def ignored(self) -> dict[str, int]:
        """How many returns were dropped, by reason (``unknown-message``, ``recipient-not-on-copy``...)."""
        return dict(self._read("SELECT reason, count FROM ignored ORDER BY reason"))

    # -- the outbox --------------------------------------------------------------------------------
    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        try:
            with self._lock:
                return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot read the CI-SIS ledger ({type(exc).__name__})") from None

    def due(self, now: float | None = None) -> dict[str, list[OutboxEntry]]:
        """Per creator, its pending ZAMs in id order, when the oldest one is due (a later ZAM is
        never sent before an earlier one: a Z03 never before its Z02)."""
        when = self.clock() if now is None else now
        rows = self._read("SELECT id, creator, control_id, data, attempts, created, next_attempt FROM outbox "
                          "WHERE state='pending' ORDER BY creator, id")
        out: dict[str, list[OutboxEntry]] = {}
        blocked: set[str] = set()
        for oid, creator, control_id, data, attempts, created, next_attempt in rows:
            if creator in blocked:
                continue
            if creator not in out and next_attempt > when:
                blocked.add(creator)
                continue
            out.setdefault(creator, []).append(OutboxEntry(oid, creator, control_id, bytes(data), attempts, created))
        return out

    def sent(self, entry_id: int) -> None:
        """The CRÉATEUR acknowledged this ZAM (ACK AA) or it was written to its folder."""
        with self._tx("mark a ZAM sent") as db:
            db.execute("UPDATE outbox SET state='sent', attempts=attempts+1 WHERE id=?", (entry_id,))

    def failed(self, entry_id: int, now: float | None = None) -> None:
        """Try again later (the spool's retry schedule); past the spool lifetime it is kept ``expired``."""
        when = self.clock() if now is None else now
        with self._tx("reschedule a ZAM") as db:
            row = db.execute("SELECT attempts, created FROM outbox WHERE id=?", (entry_id,)).fetchone()
            if row is None:
                return
            attempts, created = row
            delay = self.retry_schedule[min(attempts, len(self.retry_schedule) - 1)]
            state = "expired" if when + delay - created > self.lifetime else "pending"
            db.execute("UPDATE outbox SET attempts=?, next_attempt=?, state=? WHERE id=?",
                       (attempts + 1, when + delay, state, entry_id))

    def expired(self) -> list[OutboxEntry]:
        """ZAMs never acknowledged within the spool lifetime (kept for an operator: ``msgw`` shows them)."""
        rows = self._read("SELECT id, creator, control_id, data, attempts, created FROM outbox "
                          "WHERE state='expired' ORDER BY id")
        return [OutboxEntry(r[0], r[1], r[2], bytes(r[3]), r[4], r[5], "expired") for r in rows]

    def pending_count(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM outbox WHERE state='pending'")[0][0])


def _smtp_error(status: str, reply: str | None) -> tuple[str, str]:
    """(SMTP reply code, text) of a refusal: the remote's code when it gave one, else from the status."""
    text = " ".join((reply or "").split())[:200]
    m = _SMTP_CODE.match(text)
    if m:
        return m.group(1), text[m.end():].strip() or status
    return ("550" if status.startswith("5") else "451"), text or f"status {status}"


__all__ = ["FILE_NAME", "CopyRow", "LedgerError", "OutboxEntry", "ZamLedger"]
