"""Duplicate suppression: the same document to the same recipient is sent once per window.

Why: LIS resend whole batches after a timeout or a restart, and HL7 senders resend a message
whose ACK they did not see. A recipient must not get the same result twice; but a *corrected*
result (HPRIM/HL7 correction, CDA new version) and a cancellation are always sent, marked, so
the doctor's software replaces the earlier one — the caller decides that, this store only
answers "was this key sent to this recipient within the window?".

SQLite (WAL, synchronous=FULL) beside the spool; thread-safe (one connection and a lock),
because intake work runs in executor threads. Keys hold document ids and addresses only.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from gateway.errors import TemporaryError
from gateway.routing.payload import PayloadError, PayloadInfo

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sent (
    kind TEXT NOT NULL,
    document TEXT NOT NULL,
    recipient TEXT NOT NULL,
    first_sent REAL NOT NULL,
    last_sent REAL NOT NULL,
    PRIMARY KEY (kind, document, recipient)
);
CREATE INDEX IF NOT EXISTS sent_last ON sent(last_sent);
"""

DocumentKey = tuple[str, str]


class DedupError(TemporaryError):
    code = "intake-dedup"
    status = "4.3.0"


def _hl7_result_statuses(payload: bytes) -> str:
    """OBR-25 result statuses of an HL7 message, e.g. "F" or "P" ('' when unreadable or absent)."""
    from gateway.routing.hl7 import parse_message

    try:
        msg = parse_message(payload)
    except PayloadError:
        return ""
    return "".join(sorted({msg.value(obr, 25).upper() for obr in msg.all("OBR")} - {""}))


def document_key(info: PayloadInfo, payload: bytes | None = None) -> DocumentKey | None:
    """(kind, document id) or (kind, set id + version); None when the payload names no document.

    Why HL7 adds its OBR-25 result statuses (given the payload): an HL7 result keeps the filler
    order number as its id from the preliminary report (``P``) to the final one (``F``); without
    the status the final result would be suppressed as a duplicate of the preliminary one.
    """
    if info.document_id:
        ident = info.document_id
        if info.kind == "hl7v2" and payload is not None:
            statuses = _hl7_result_statuses(payload)
            ident += f"|{statuses}" if statuses else ""
        return info.kind, ident
    if info.set_id:
        return info.kind, f"{info.set_id}#v{info.version if info.version is not None else ''}"
    return None


class DedupStore:
    """``seen``/``record`` of (document key, recipient) with a time window in seconds."""

    def __init__(self, path: str | Path, *, window: float = 7 * 86400.0) -> None:
        self.path = Path(path)
        self.window = window
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise DedupError(f"cannot open the intake duplicate store ({type(exc).__name__})") from None
        self._writes = 0

    def seen(self, document_key: DocumentKey, recipient: str, now: float, window: float | None = None) -> bool:
        """True when this document was sent to this recipient less than ``window`` seconds ago."""
        span = self.window if window is None else window
        try:
            with self._lock:
                row = self._db.execute("SELECT last_sent FROM sent WHERE kind=? AND document=? AND recipient=?",
                                       (*document_key, recipient.lower())).fetchone()
        except sqlite3.Error as exc:
            raise DedupError(f"cannot read the intake duplicate store ({type(exc).__name__})") from None
        return row is not None and now - float(row[0]) < span

    def record(self, document_key: DocumentKey, recipients: list[str] | tuple[str, ...] | str, now: float) -> None:
        """Remember that the document was queued for these recipients (call after the spool accepted it)."""
        rcpts = [recipients] if isinstance(recipients, str) else list(recipients)
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany(
                        "INSERT INTO sent (kind, document, recipient, first_sent, last_sent) VALUES (?,?,?,?,?) "
                        "ON CONFLICT(kind, document, recipient) DO UPDATE SET last_sent=excluded.last_sent",
                        [(*document_key, r.lower(), now, now) for r in rcpts])
                    self._writes += 1
                    if self._writes % 500 == 0:  # keep the table to the window (and a margin)
                        self._db.execute("DELETE FROM sent WHERE last_sent < ?", (now - 2 * self.window,))
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise DedupError(f"cannot write the intake duplicate store ({type(exc).__name__})") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> DedupStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["DedupError", "DedupStore", "DocumentKey", "document_key"]
