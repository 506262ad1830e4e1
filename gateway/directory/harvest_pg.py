"""Certificates harvested from verified signed mail, in the shared PostgreSQL: `HarvestStore`'s
semantics (see `gateway.directory.certsources`) for several nodes — a correspondent's encryption
certificate learnt from mail verified on one node encrypts the replies sent by any node.

Same rules: only after a verified signature; one row per (address, fingerprint) keeping the
newest sighting; at most ``max_per_address`` newest rows per address; rows older than
``max_age`` or past the certificate's notAfter are skipped at once and deleted at most every
``expire_every`` seconds. The discovery still validates every candidate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.directory.certsources import fingerprint
from gateway.directory.directory import DirectoryUnavailable
from gateway.pgstore import PgDatabase

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS harvest_certificates (
    address TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    der BYTEA NOT NULL,
    seen_at DOUBLE PRECISION NOT NULL,
    not_after DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (address, fingerprint)
);
CREATE INDEX IF NOT EXISTS harvest_certificates_seen ON harvest_certificates (seen_at)
"""


class PgHarvestStore:
    """The ``harvest_certificates`` table (see the module docstring); thread-safe."""

    def __init__(self, dsn: str, *, max_age: float = 400 * 86400, max_per_address: int = 10,
                 clock: Callable[[], float] = time.time, expire_every: float = 86400.0, password: str | None = None,
                 connect_timeout: float = 5.0, pool_size: int = 4) -> None:
        self.expire_every = expire_every
        self.max_age = max_age
        self.max_per_address = max_per_address
        self.clock = clock
        self._last_expire = float("-inf")
        self._db = PgDatabase(dsn, error=DirectoryUnavailable, what="the harvested certificates", password=password,
                              connect_timeout=connect_timeout, pool_size=pool_size, application="msgw-harvest")
        try:
            self._db.ensure_schema("harvest", SCHEMA_VERSION, _SCHEMA)
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> PgHarvestStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def harvest(self, address: str, cert: x509.Certificate, seen_at: float | None = None) -> None:
        """Remember `cert` for `address` (call only after the signature verified)."""
        addr = address.strip().lower()
        when = self.clock() if seen_at is None else seen_at
        with self._db.transaction("write") as conn:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('msgw-harvest:' || %s))", (addr,))
            conn.execute(
                "INSERT INTO harvest_certificates (address, fingerprint, der, seen_at, not_after) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (address, fingerprint) "
                "DO UPDATE SET seen_at = GREATEST(harvest_certificates.seen_at, excluded.seen_at)",
                (addr, fingerprint(cert), cert.public_bytes(Encoding.DER), when,
                 cert.not_valid_after_utc.timestamp()))
            conn.execute(
                "DELETE FROM harvest_certificates WHERE address = %s AND fingerprint NOT IN "
                "(SELECT fingerprint FROM harvest_certificates WHERE address = %s ORDER BY seen_at DESC LIMIT %s)",
                (addr, addr, self.max_per_address))
        if math.isfinite(self.expire_every) and self.clock() - self._last_expire >= self.expire_every:
            self.expire()

    def certificates(self, address: str) -> list[bytes]:
        """DER certificates harvested for `address`, newest sighting first, expired rows excluded."""
        now = self.clock()
        with self._db.transaction("read") as conn:
            rows = conn.execute("SELECT der FROM harvest_certificates WHERE address = %s AND seen_at >= %s "
                                "AND not_after > %s ORDER BY seen_at DESC",
                                (address.strip().lower(), now - self.max_age, now)).fetchall()
        return [bytes(row[0]) for row in rows]

    def expire(self) -> int:
        """Delete rows seen more than ``max_age`` ago or whose certificate expired; returns the count."""
        now = self.clock()
        self._last_expire = now
        with self._db.transaction("write") as conn:
            cur = conn.execute("DELETE FROM harvest_certificates WHERE seen_at < %s OR not_after <= %s",
                               (now - self.max_age, now))
            return cur.rowcount

    def count(self) -> int:
        with self._db.transaction("read") as conn:
            row = conn.execute("SELECT count(*) FROM harvest_certificates").fetchone()
        return int(row[0]) if row else 0


__all__ = ["PgHarvestStore"]
