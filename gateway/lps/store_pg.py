"""The documents msgw delivered to a consumer, in the shared PostgreSQL: `DeliveredStore`'s
semantics (see `gateway.lps.store`) for several nodes, so a replacement (T10) or deletion (T04)
delivered through another node is still checked against the version delivered before (900/901).

Identifiers only, never a document, a subject or a body. A fault is `StoreError` (temporary).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg

from gateway.lps.model import Delivered
from gateway.lps.store import StoreError
from gateway.pgstore import PgDatabase

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS lps_delivered (
    unique_id TEXT PRIMARY KEY,
    set_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    author TEXT NOT NULL,
    organisation TEXT NOT NULL DEFAULT '',
    patient TEXT NOT NULL,
    confidentiality TEXT NOT NULL DEFAULT '',
    recorded DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS lps_delivered_set ON lps_delivered (set_id, version)
"""
_COLS = "unique_id, set_id, version, author, organisation, patient, confidentiality"
_BY_ID = f"SELECT {_COLS} FROM lps_delivered WHERE unique_id = %s"  # noqa: S608 - fixed names
_BY_SET = (f"SELECT {_COLS} FROM lps_delivered WHERE set_id = %s "  # noqa: S608 - fixed names
           "ORDER BY version DESC, recorded DESC LIMIT 1")
#: SQLite's INSERT OR REPLACE: the row of a unique id is the last one recorded.
_RECORD = (f"INSERT INTO lps_delivered ({_COLS}, recorded) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "  # noqa: S608
           "ON CONFLICT (unique_id) DO UPDATE SET set_id = excluded.set_id, version = excluded.version, "
           "author = excluded.author, organisation = excluded.organisation, patient = excluded.patient, "
           "confidentiality = excluded.confidentiality, recorded = excluded.recorded")


class PgDeliveredStore:
    """The ``lps_delivered`` table (see the module docstring); safe to share between threads."""

    def __init__(self, dsn: str, *, password: str | None = None, connect_timeout: float = 5.0, pool_size: int = 4,
                 clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._db = PgDatabase(dsn, error=StoreError, what="the delivered-documents store", password=password,
                              connect_timeout=connect_timeout, pool_size=pool_size, application="msgw-lps")
        try:
            self._db.ensure_schema("lps", SCHEMA_VERSION, _SCHEMA)
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    def previous(self, document_id: str) -> Delivered | None:
        """The document delivered with this unique id, else the latest version of this set id."""
        with self._db.transaction("read") as conn:
            row = conn.execute(_BY_ID, (document_id,)).fetchone()
            if row is None:
                row = conn.execute(_BY_SET, (document_id,)).fetchone()
        return _delivered(row) if row is not None else None

    def record(self, delivered: Delivered) -> None:
        """Remember a document the consumer acknowledged (again: the same row, at least once)."""
        self.record_all([delivered])

    def record_all(self, documents: list[Delivered]) -> None:
        """Several in one transaction (one mail's documents)."""
        with self._db.transaction("write") as conn:
            for d in documents:
                self._record(conn, d)

    def _record(self, conn: psycopg.Connection[Any], d: Delivered) -> None:
        conn.execute(_RECORD, (d.unique_id, d.set_id, d.version, d.author, d.organisation, d.patient,
                               "\x1f".join(d.confidentiality), self.clock()))


def _delivered(row: tuple[Any, ...]) -> Delivered:
    unique_id, set_id, version, author, organisation, patient, confidentiality = row
    return Delivered(unique_id=unique_id, set_id=set_id, version=int(version), author=author, patient=patient,
                     organisation=organisation, confidentiality=tuple(c for c in confidentiality.split("\x1f") if c))


__all__ = ["PgDeliveredStore"]
