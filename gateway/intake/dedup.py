"""Duplicate suppression: the same document to the same recipient is sent once per window.

Why: LIS resend whole batches after a timeout or a restart, and HL7 senders resend a message
whose ACK they did not see. A recipient must not get the same result twice; but a *corrected*
result (HPRIM/HL7 correction, CDA new version) and a cancellation are always sent, marked, so
the doctor's software replaces the earlier one — the caller decides that, this store only
answers "was this key sent to this recipient within the window?".

The key (`dedup_key`) is the document id *and* who sent it, for which patient, with what
content: a document id is unique only within its sender (an HPRIM request number, an HL7
filler order number), so two patients' results may carry the same one, and suppressing on the
id alone dropped the second patient's result (issue 11). The sending facility, the patient
identifiers and a digest of the content enter the key only through one SHA-256 digest: the
store holds document ids, that digest and addresses, never a patient identifier. Transmission
metadata (HL7 MSH: control id, send time; the HPRIM H and L records; line endings) is left out
of the content digest, so a retransmission is still recognised.

Stores written before this key (document id only) stay readable; their rows match no new key,
so they suppress nothing — a resend within the window after the upgrade is sent again rather
than risk dropping another patient's result — and they are purged with the window.

SQLite (WAL, synchronous=FULL) beside the spool; thread-safe (one connection and a lock),
because intake work runs in executor threads.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from pathlib import Path
from typing import Protocol

from gateway.errors import TemporaryError
from gateway.routing import formats
from gateway.routing.model import PartyRef, PayloadInfo

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


def _document_key(info: PayloadInfo, qualifier: str) -> DocumentKey | None:
    if info.document_id:
        return info.kind, info.document_id + (f"|{qualifier}" if qualifier else "")
    if info.set_id:
        return info.kind, f"{info.set_id}#v{info.version if info.version is not None else ''}"
    return None


def document_key(info: PayloadInfo, payload: bytes | None = None) -> DocumentKey | None:
    """(kind, document id) or (kind, set id + version); None when the payload names no document.

    Given the payload, the format may qualify the id (:class:`~gateway.routing.model.DedupFacts`):
    an HL7 result keeps the filler order number as its id from the preliminary report (``P``)
    to the final one (``F``), so its OBR-25 statuses are added; without them the final result
    would be suppressed as a duplicate of the preliminary one.
    """
    if payload is None or not info.document_id:
        return _document_key(info, "")
    return _document_key(info, formats.of(info).dedup_facts(info, payload).qualifier)


def _party(party: PartyRef | None) -> str:
    if party is None:
        return ""
    return "^".join(x for x in (party.authority, party.id_type, party.value, party.organisation) if x)


def sending_facility(info: PayloadInfo, envelope_sender: str) -> str:
    """Who issued the document: the sending application and facility or author the payload
    names (HL7 MSH-3/MSH-4, HPRIM H-5, CDA author and its organisation, sidecar author),
    else the envelope sender."""
    named = "|".join(x for x in (info.sender, _party(info.author)) if x)
    return named or envelope_sender.strip().lower()


def content_digest(info: PayloadInfo, payload: bytes) -> bytes:
    """SHA-256 of what the document says, without what changes when it is only sent again (the
    format decides: HL7 leaves out MSH, HPRIM its H and L records, binary formats count every byte)."""
    return formats.of(info).dedup_facts(info, payload).digest


def dedup_key(info: PayloadInfo, payload: bytes, envelope_sender: str) -> DocumentKey | None:
    """The duplicate-suppression key: ``(kind, "<document id>#<digest>")``, the digest covering
    the sending facility, the patient identifiers and the content (see the module docstring);
    None when the payload names no document."""
    if not (info.document_id or info.set_id):
        return None
    facts = formats.of(info).dedup_facts(info, payload)
    base = _document_key(info, facts.qualifier)
    if base is None:
        return None
    digest = hashlib.sha256()
    patients = sorted(f"{p.kind}^{p.authority}^{p.value}" for p in info.patient_ids)
    for part in (sending_facility(info, envelope_sender), *patients):
        digest.update(part.encode("utf-8", "surrogatepass") + b"\0")
    digest.update(facts.digest)
    return base[0], f"{base[1]}#{digest.hexdigest()}"


class DuplicateStore(Protocol):
    """What the intake doors need from a duplicate store: `DedupStore` (SQLite, one node) or
    `gateway.intake.dedup_pg.PgDedupStore` (PostgreSQL, shared by the nodes); chosen by
    `gateway.storage.open_dedup`."""

    window: float

    def seen(self, document_key: DocumentKey, recipient: str, now: float, window: float | None = None) -> bool: ...

    def record(self, document_key: DocumentKey, recipients: list[str] | tuple[str, ...] | str, now: float) -> None: ...

    def close(self) -> None: ...


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


__all__ = ["DedupError", "DedupStore", "DocumentKey", "DuplicateStore", "content_digest", "dedup_key", "document_key",
           "sending_facility"]
