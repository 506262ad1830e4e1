"""The intake duplicate store in the shared PostgreSQL: `DedupStore`'s semantics (see
`gateway.intake.dedup`) for several nodes, so a batch a LIS resends to another node behind the
load balancer is still recognised.

Same table shape and window rule; ``record`` is one upsert (``ON CONFLICT``), so two nodes
recording the same key concurrently keep one row (the last commit's time, as in SQLite). Identifiers and a digest
only, never a patient identifier.
"""

from __future__ import annotations

from gateway.intake.dedup import DedupError, DocumentKey
from gateway.pgstore import PgDatabase

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS dedup_sent (
    kind TEXT NOT NULL,
    document TEXT NOT NULL,
    recipient TEXT NOT NULL,
    first_sent DOUBLE PRECISION NOT NULL,
    last_sent DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (kind, document, recipient)
);
CREATE INDEX IF NOT EXISTS dedup_sent_last ON dedup_sent (last_sent)
"""


class PgDedupStore:
    """``seen``/``record`` of (document key, recipient) with a time window in seconds."""

    def __init__(self, dsn: str, *, window: float = 7 * 86400.0, password: str | None = None,
                 connect_timeout: float = 5.0, pool_size: int = 4) -> None:
        self.window = window
        self._db = PgDatabase(dsn, error=DedupError, what="the intake duplicate store", password=password,
                              connect_timeout=connect_timeout, pool_size=pool_size, application="msgw-dedup")
        self._writes = 0
        try:
            self._db.ensure_schema("dedup", SCHEMA_VERSION, _SCHEMA)
        except BaseException:
            self._db.close()
            raise

    def seen(self, document_key: DocumentKey, recipient: str, now: float, window: float | None = None) -> bool:
        """True when this document was sent to this recipient less than ``window`` seconds ago."""
        span = self.window if window is None else window
        with self._db.transaction("read") as conn:
            row = conn.execute("SELECT last_sent FROM dedup_sent WHERE kind=%s AND document=%s AND recipient=%s",
                               (*document_key, recipient.lower())).fetchone()
        return row is not None and now - float(row[0]) < span

    def record(self, document_key: DocumentKey, recipients: list[str] | tuple[str, ...] | str, now: float) -> None:
        """Remember that the document was queued for these recipients (call after the spool accepted it)."""
        rcpts = sorted({r.lower() for r in ([recipients] if isinstance(recipients, str) else recipients)})
        self._writes += 1
        with self._db.transaction("write") as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO dedup_sent (kind, document, recipient, first_sent, last_sent) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (kind, document, recipient) "
                "DO UPDATE SET last_sent = excluded.last_sent",
                [(*document_key, r, now, now) for r in rcpts])
            if self._writes % 500 == 0:  # keep the table to the window (and a margin)
                cur.execute("DELETE FROM dedup_sent WHERE last_sent < %s", (now - 2 * self.window,))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> PgDedupStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["PgDedupStore"]
