"""One way to reach the shared PostgreSQL from the small stores (dedup, directory, harvested
certificates, CI-SIS ledger, delivered documents): the counterpart of `gateway.sqlitefile`.

Why a pool per store, synchronous psycopg 3: the stores' APIs are synchronous and called from
executor threads (as their SQLite twins are), so a `psycopg_pool.ConnectionPool` gives each
thread its own connection without a lock around the database. Every operation is bounded: the
pool waits at most ``connect_timeout`` for a connection (libpq's own ``connect_timeout`` bounds a
new one), a checked-out connection is checked first (a server restart leaves no dead connection
to fail on), and ``statement_timeout`` bounds a statement. A fault of any kind — server down,
network cut, timeout — becomes the store's own *temporary* error (4.3.0, a `GatewayError` with
``temporary``), never a silent yes: the caller defers, and the next call reconnects by itself
(no restart).

Schemas are created idempotently under a transaction-level advisory lock, so two nodes starting
together do not race on ``CREATE TABLE``; each store records its version in ``msgw_schema``.
Table names carry the store's prefix (``dedup_``, ``dir_``, ``zam_``, ``lps_``, ``harvest_``):
one database holds every store and the queue.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from gateway.errors import GatewayError

#: Bound on one statement (ms): a store's statements are small; an import batch is 5,000 rows.
STATEMENT_TIMEOUT_MS = 60_000


def reconnect_timeout(connect_timeout: float) -> float:
    """How long the pool retries one lost connection (backing off 1 s, 2 s, 4 s...) before it
    gives the slot up; the next call then connects afresh. psycopg_pool's default (5 min) would
    let the backoff grow to minutes: a server back after 30 s would be used only minutes later.
    Short, so the gateway resumes within seconds of the server's return (issue 18)."""
    return max(2 * connect_timeout, 5.0)


class PgDatabase:
    """A pool of connections to the shared database for one store, and its error type."""

    def __init__(self, dsn: str, *, error: type[GatewayError], what: str, password: str | None = None,
                 connect_timeout: float = 5.0, pool_size: int = 4, application: str = "msgw") -> None:
        self.error = error
        self.what = what
        self.connect_timeout = connect_timeout
        kwargs: dict[str, Any] = {
            # libpq takes whole seconds (and reads 1 as 2); the pool's own timeout is the exact bound
            "connect_timeout": max(2, math.ceil(connect_timeout)),
            "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
            "application_name": application,
        }
        if password is not None:
            kwargs["password"] = password
        self.pool = ConnectionPool(dsn, min_size=1, max_size=max(1, pool_size), kwargs=kwargs, open=False,
                                   timeout=connect_timeout, check=ConnectionPool.check_connection,
                                   reconnect_timeout=reconnect_timeout(connect_timeout), name=application)
        try:
            self.pool.open(wait=True, timeout=connect_timeout)
        except (psycopg.Error, PoolTimeout) as exc:
            self.pool.close(timeout=0)
            raise error(f"cannot reach {what} in PostgreSQL ({type(exc).__name__})") from None

    @contextmanager
    def transaction(self, doing: str) -> Iterator[psycopg.Connection[Any]]:
        """One transaction on a pooled connection (committed on exit, rolled back on an
        exception); a database fault is the store's temporary error."""
        try:
            with self.pool.connection(timeout=self.connect_timeout) as conn:
                yield conn
        except (psycopg.Error, PoolTimeout) as exc:
            raise self.error(f"cannot {doing} {self.what} in PostgreSQL ({type(exc).__name__})") from None

    def ensure_schema(self, store: str, version: int, schema: str) -> None:
        """Create the store's tables if missing, once across nodes (advisory lock)."""
        with self.transaction("create the tables of") as conn:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('msgw-schema'))")
            conn.execute("CREATE TABLE IF NOT EXISTS msgw_schema (store TEXT PRIMARY KEY, version INTEGER NOT NULL)")
            for statement in (s.strip() for s in schema.split(";")):
                if statement:
                    conn.execute(statement)  # type: ignore[call-overload]  # fixed DDL of the store
            conn.execute("INSERT INTO msgw_schema (store, version) VALUES (%s, %s) ON CONFLICT (store) "
                         "DO UPDATE SET version = GREATEST(msgw_schema.version, excluded.version)", (store, version))

    def close(self) -> None:
        self.pool.close(timeout=self.connect_timeout)


def serialize(conn: psycopg.Connection[Any], key: str) -> None:
    """Serialise this transaction with every other one taking the same key, on every node (what
    SQLite's ``BEGIN IMMEDIATE`` gave the single-node store): released at commit or rollback."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (key,))


__all__ = ["STATEMENT_TIMEOUT_MS", "PgDatabase", "reconnect_timeout", "serialize"]
