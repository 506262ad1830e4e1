"""The documents msgw delivered to a consumer: ``<spool>/lps.sqlite``.

Why: a replacement (T10) or a deletion (T04) must name the version and come from the author of
the document delivered before (ANS codes 900 and 901), and only the gateway knows what it
delivered. It keeps identifiers only (unique id, set id, version, author, organisation, patient
INS, confidentiality codes), never a document, a subject or a body. The file is private (0600),
beside the spool, opened like the CI-SIS ledger; any SQLite fault is a temporary `StoreError`
(the mail is deferred, never bounced for it).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from gateway.errors import TemporaryError
from gateway.lps.model import Delivered
from gateway.sqlitefile import open_private_db

FILE_NAME = "lps.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS delivered (
    unique_id TEXT PRIMARY KEY,
    set_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    author TEXT NOT NULL,
    organisation TEXT NOT NULL DEFAULT '',
    patient TEXT NOT NULL,
    confidentiality TEXT NOT NULL DEFAULT '',
    recorded REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS delivered_set ON delivered(set_id, version);
"""

_BY_ID = ("SELECT unique_id, set_id, version, author, organisation, patient, confidentiality FROM delivered "
          "WHERE unique_id = ?")
_BY_SET = ("SELECT unique_id, set_id, version, author, organisation, patient, confidentiality FROM delivered "
           "WHERE set_id = ? ORDER BY version DESC, recorded DESC LIMIT 1")
_RECORD = ("INSERT OR REPLACE INTO delivered (unique_id, set_id, version, author, organisation, patient, "
           "confidentiality, recorded) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")


class StoreError(TemporaryError):
    """The delivered-documents store cannot be read or written (a local fault: defer)."""

    code = "lps-store"
    status = "4.3.0"


class DeliveredDocuments(Protocol):
    """What the consumer transport needs: `DeliveredStore` (SQLite) or
    `gateway.lps.store_pg.PgDeliveredStore` (PostgreSQL, shared by the nodes)."""

    def previous(self, document_id: str) -> Delivered | None: ...

    def record(self, delivered: Delivered) -> None: ...

    def record_all(self, documents: list[Delivered]) -> None: ...

    def close(self) -> None: ...


class DeliveredStore:
    """``lps.sqlite`` (see the module docstring); safe to share between threads."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self._lock = threading.RLock()
        try:
            self._db = open_private_db(self.path, _SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the delivered-documents store ({type(exc).__name__})") from None

    @classmethod
    def beside(cls, spool_path: str | Path, **kwargs: object) -> DeliveredStore:
        """The store of a spool: ``<spool path>/lps.sqlite``."""
        return cls(Path(spool_path) / FILE_NAME, **kwargs)  # type: ignore[arg-type]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _db_op(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise StoreError(f"cannot {what} the delivered-documents store ({type(exc).__name__})") from None

    def previous(self, document_id: str) -> Delivered | None:
        """The document delivered with this unique id, else the latest version of this set id."""
        with self._db_op("read") as db:
            row = db.execute(_BY_ID, (document_id,)).fetchone()
            if row is None:
                row = db.execute(_BY_SET, (document_id,)).fetchone()
        return _delivered(row) if row is not None else None

    def record(self, delivered: Delivered) -> None:
        """Remember a document the consumer acknowledged (again: the same row, at least once)."""
        with self._db_op("write") as db:
            db.execute(_RECORD,
                       (delivered.unique_id, delivered.set_id, delivered.version, delivered.author,
                        delivered.organisation, delivered.patient, "\x1f".join(delivered.confidentiality),
                        self.clock()))

    def record_all(self, documents: list[Delivered]) -> None:
        """Several in one transaction (one mail's documents)."""
        with self._db_op("write") as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                for d in documents:
                    self.record(d)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise


def _delivered(row: tuple) -> Delivered:
    unique_id, set_id, version, author, organisation, patient, confidentiality = row
    return Delivered(unique_id=unique_id, set_id=set_id, version=int(version), author=author, patient=patient,
                     organisation=organisation, confidentiality=tuple(c for c in confidentiality.split("\x1f") if c))


__all__ = ["FILE_NAME", "DeliveredDocuments", "DeliveredStore", "StoreError"]
