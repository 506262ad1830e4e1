"""The queue on PostgreSQL, shared by several gateway nodes (issue 18, items 1-3).

Same public API and crash-safety contract as `gateway.spool.store.Spool` (the `QueueStore`
Protocol of `gateway.spool.base`); what differs, and why:

* **Everything in PostgreSQL.** A message's bytes are a row of `queue_bodies`, keyed by their
  SHA-256 (`bytea`, written with `INSERT … ON CONFLICT DO NOTHING`: two messages with the same
  bytes share one row); prepared copies' bytes too. Nothing acknowledged lives on one node's disk,
  so a dead node holds no mail hostage (Stalwart writes the blob before the queue entry; here both
  are in one transaction, which is stronger and as cheap).
* **`accept()` is one transaction**: body, message row, (copy row), recipients, `NOTIFY`. It
  returns, and the SMTP server answers 250, only after the COMMIT returned, i.e. as durable as the
  server's `synchronous_commit` says (production: on, with a synchronous standby). A kill at any
  point before the COMMIT leaves nothing (PostgreSQL rolls the transaction back). A body no message
  or copy references any more (a message finished while an accept of the same bytes was in flight)
  is harmless: the foreign keys forbid deleting a body still referenced, and `recover()` sweeps
  unreferenced ones.
* **Preparation** (copy rows + their bodies + links + refusals) is one transaction committed with
  `synchronous_commit = off`, as SQLite's `synchronous=NORMAL`: a prepared copy is a verified cache
  and the next synchronous commit (WAL is sequential) makes it durable. Claims, lease renewals and
  the removal of finished messages are committed the same way; outcomes and accepts are not.
* **Claiming with leases, on the database's clock.** `due*()` run one short transaction:
  `SELECT … FOR UPDATE OF m SKIP LOCKED` the due messages that are free, ours, or whose lease
  expired (`lease_until < now()`), set `claimed_by = owner, lease_until = now() + lease`, COMMIT.
  No row lock is held across a delivery. What this process has *in hand* (claimed by `due*()` or
  `accept()` and not settled) is renewed by a heartbeat thread every `lease / 3` (`renew()`); a
  message is settled — its claim released — when it is finished, deleted, quarantined, or when an
  attempt left nothing of it due now (all recipients final or deferred to later). So a node that
  dies loses its claims after `lease` seconds and any other node takes its work; taking a claim
  whose lease expired counts a *takeover* (`counts()["takeovers"]`): the copies then in flight may
  be delivered twice (at least once, never lost).
* **Synchronous psycopg 3 with a `psycopg_pool.ConnectionPool`**: the `Spool` API is synchronous
  and its callers already run it in executor threads (`run_in_executor`, `asyncio.to_thread`), so
  an async driver would add a second event loop or change every caller. Each call takes a pooled
  connection for one transaction; concurrent accepts are concurrent transactions, and PostgreSQL
  groups their WAL flushes itself, so the SQLite spool's hand-written group commit is not repeated.
* **Bounded time, typed error.** Connecting is bounded by `connect_timeout`, waiting for a pooled
  connection by 0.8 × `connect_timeout` (so while the server is down every call, an SMTP client's
  DATA included, fails within `connect_timeout`: 4 s with the default 5), each statement by
  `statement_timeout` (server side), a durable COMMIT (a synchronous standby's confirmation) by
  `commit_timeout` (a watchdog, see `_tx`), and a peer that vanished without a reset by TCP
  keepalives and `tcp_user_timeout` (client side). Any failure to reach the server
  becomes `StoreUnavailable` (a `SpoolError`: `451 4.3.0`, never a 250); a connection broken by a
  server restart is checked and replaced by the pool before use, so the node resumes by itself.
  Error texts carry the error's class and SQLSTATE only, never a value (no health content).
* **Schema** created or migrated at `open()` in one transaction holding an advisory lock, so two
  nodes starting together do not race; its version is in `queue_schema_version`. Tables are
  prefixed `queue_` (other stores share the database).
* **`LISTEN/NOTIFY`**: `accept()`, `accept_prepared()` and `prepare()` notify `msgw_queue` (sent
  at COMMIT); `wait_for_work(timeout)` blocks a thread until a notification or the timeout. It
  only wakes workers: polling stays the safety net.

Times of recipients (`next_attempt`, `received`, …) stay the node's epoch seconds, as the callers
pass them; only leases use the server's clock (`now()`), so nodes with skewed clocks cannot steal
each other's work.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg import sql

from gateway.errors import GatewayError, SpoolError
from gateway.logs import event
from gateway.spool import store
from gateway.spool.base import StoreUnavailable
from gateway.spool.finished import FinishedMemo
from gateway.spool.store import (
    PENDING,
    DamagedCopy,
    NewCopy,
    Outcome,
    PreparedCopy,
    QueuedMessage,
    QueuedRecipient,
    QueueStats,
    RecipientState,
    new_message_id,
)

log = logging.getLogger("gateway.spool")
T = TypeVar("T")

#: The `NOTIFY` channel of new work.
CHANNEL = "msgw_queue"
#: Key of the advisory lock that serialises schema creation across nodes ("msgwQ").
_SCHEMA_LOCK = 0x6D7367775100
SCHEMA_VERSION = 2

_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS queue_bodies (
    digest bytea PRIMARY KEY,
    data bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS queue_messages (
    id text PRIMARY KEY,
    sender text NOT NULL,
    size bigint NOT NULL,
    received double precision NOT NULL,
    expires double precision NOT NULL,
    listener text NOT NULL DEFAULT '',
    client text NOT NULL DEFAULT '',
    auth_user text,
    delay_notified boolean NOT NULL DEFAULT false,
    crashes integer NOT NULL DEFAULT 0,
    quarantined boolean NOT NULL DEFAULT false,
    prepared boolean NOT NULL DEFAULT false,
    body bytea NOT NULL REFERENCES queue_bodies(digest),
    claimed_by text NOT NULL DEFAULT '',
    lease_until timestamptz,
    takeovers integer NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS queue_messages_body ON queue_messages(body);
CREATE INDEX IF NOT EXISTS queue_messages_claim ON queue_messages(claimed_by) WHERE claimed_by <> '';
CREATE TABLE IF NOT EXISTS queue_copies (
    id bigserial PRIMARY KEY,
    message_id text NOT NULL REFERENCES queue_messages(id) ON DELETE CASCADE,
    form text NOT NULL,
    require_tls boolean NOT NULL DEFAULT false,
    size bigint NOT NULL,
    file text NOT NULL,
    digest bytea REFERENCES queue_bodies(digest)
);
CREATE INDEX IF NOT EXISTS queue_copies_msg ON queue_copies(message_id);
CREATE INDEX IF NOT EXISTS queue_copies_digest ON queue_copies(digest);
CREATE TABLE IF NOT EXISTS queue_recipients (
    id bigserial PRIMARY KEY,
    message_id text NOT NULL REFERENCES queue_messages(id) ON DELETE CASCADE,
    address text NOT NULL,
    state text NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    next_attempt double precision NOT NULL,
    last_error text,
    last_status text,
    remote text,
    updated double precision NOT NULL,
    dsn_sent boolean NOT NULL DEFAULT false,
    copy_id bigint REFERENCES queue_copies(id) ON DELETE SET NULL
);
CREATE INDEX IF NOT EXISTS queue_recipients_due ON queue_recipients(state, next_attempt);
CREATE INDEX IF NOT EXISTS queue_recipients_msg ON queue_recipients(message_id);
CREATE TABLE IF NOT EXISTS queue_stats (
    name text PRIMARY KEY,
    value bigint NOT NULL DEFAULT 0
);
"""

#: Keys per node (issue 18, item 4): a message whose preparation needs a key (a PKCS#11 token)
#: this process lacks is marked `needs_key`; each queue process publishes, with a heartbeat, the
#: keys it can use (`queue_nodes`: one row per owner, so a worker that lost its card stops
#: advertising it without waiting for its siblings).
_SCHEMA_V2 = """
ALTER TABLE queue_messages ADD COLUMN IF NOT EXISTS needs_key text;
CREATE TABLE IF NOT EXISTS queue_nodes (
    owner text PRIMARY KEY,
    keys text[] NOT NULL DEFAULT '{}',
    seen_at timestamptz NOT NULL DEFAULT now()
);
"""

#: Schema migrations by version (index 0 brings an empty database to version 1).
_MIGRATIONS: tuple[str, ...] = (_SCHEMA_V1, _SCHEMA_V2)

_MESSAGE_COLUMNS = ("SELECT id, sender, size, received, expires, listener, client, auth_user, delay_notified,"
                    " crashes, quarantined, needs_key FROM queue_messages")
_RCPT_COLUMNS = ("SELECT id, message_id, address, state, attempts, next_attempt, last_error, last_status, remote,"
                 " updated, dsn_sent, copy_id FROM queue_recipients")
_COPY_COLUMNS = "SELECT id, message_id, form, require_tls, size, file, digest FROM queue_copies"

#: Recipients with work left (pending, or a bounce whose DSN is still owed): a message with none
#: is finished.
_LEFT = "(r.state IN ('queued', 'deferred') OR (r.state = 'bounced' AND NOT r.dsn_sent))"

#: A message `due*()` may claim, as far as keys go: it needs none, or one this process holds, or one
#: no live process holds (then any node takes it, fails again on the absent token and defers it
#: with the backoff: it waits, and expires at the queue lifetime like any deferral, never sooner).
_KEY_HERE = ("(m.needs_key IS NULL OR m.needs_key = ANY(%(keys)s) OR NOT EXISTS (SELECT 1 FROM queue_nodes n"
             " WHERE m.needs_key = ANY(n.keys) AND n.seen_at > now() - make_interval(secs => %(lease)s)))")

#: SQLSTATE classes that mean "the server is not there or not usable now": 08 connection
#: exception, 57 operator intervention (shutdown, cancel), 53 insufficient resources, 58 system
#: error, 40 transaction rollback (serialization, deadlock: try again).
_UNAVAILABLE_CLASSES = ("08", "57", "53", "58", "40")


class PgSpool:
    """The queue in a shared PostgreSQL database. Thread-safe; every method blocks on the
    network, so async callers run them in an executor (as they do for `Spool`)."""

    def __init__(self, dsn: str, *, owner: str = "", password: str | None = None, lease: float = 60.0,
                 connect_timeout: float = 5.0, statement_timeout: float = 15.0, pool_size: int = 8,
                 renew_every: float | None = None, commit_timeout: float | None = None) -> None:
        """`owner`: the name this node (or worker) claims under; "" = a name of its own
        (host:pid:random), never reused, so nothing of an earlier run is released at `open()`.
        `renew_every`: the heartbeat's period (default `lease / 3`; 0 = no heartbeat, for tests
        of an owner that stops renewing). `commit_timeout`: how long a durable transaction may
        take, COMMIT included (default `statement_timeout`; see `_tx`)."""
        self.dsn = dsn
        self._named = bool(owner)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.lease = float(lease)
        self.connect_timeout = float(connect_timeout)
        #: How long a call waits for a pooled connection (none comes while the server is down).
        self.pool_wait = 0.8 * self.connect_timeout
        self.statement_timeout = float(statement_timeout)
        self.renew_every = lease / 3 if renew_every is None else float(renew_every)
        self.commit_timeout = self.statement_timeout if commit_timeout is None else float(commit_timeout)
        self._password = password
        self._pool_size = max(1, pool_size)
        self._pool: psycopg_pool.ConnectionPool | None = None
        self._lock = threading.Lock()
        #: Messages this process has in hand (claimed and not settled): renewed by the heartbeat.
        self._in_hand: set[str] = set()
        #: Messages `record_outcomes(finish=…)` removed, for `take_finished`.
        self._finished = FinishedMemo()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._listener: psycopg.Connection | None = None
        self._listen_lock = threading.Lock()
        self._accepted = store.AcceptedMemory()
        #: As `Spool.prepare_on_accept` (set by `gateway.app` for the plain relay).
        self.prepare_on_accept: str | None = None
        #: The configured keys this process can use now (its tokens present): published in
        #: `queue_nodes` by the heartbeat; `due*()` claim a message needing one of them.
        self.keys: frozenset[str] = frozenset()
        self._published = False
        #: Kept for callers written against `Spool` (PostgreSQL groups commits itself).
        self.batches = 0
        self.batched_works = 0

    # -- life cycle -------------------------------------------------------------------------
    def _connect_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(1, round(self.connect_timeout)),
            "application_name": f"msgw-queue {self.owner}"[:63],
            "options": (f"-c statement_timeout={int(self.statement_timeout * 1000)}"
                        f" -c lock_timeout={int(self.statement_timeout * 1000)}"
                        f" -c idle_in_transaction_session_timeout={int(max(self.statement_timeout, 1) * 4000)}"),
            # A peer that vanished (no RST: a dead host, a cut link) is noticed in bounded time.
            "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
            "tcp_user_timeout": int(max(self.statement_timeout, self.connect_timeout) * 1000),
        }
        if self._password is not None:
            kwargs["password"] = self._password
        return kwargs

    def open(self, *, recover: bool = True) -> PgSpool:
        """Connect, create or migrate the schema (once, under an advisory lock), release this
        owner's claims of an earlier run (a named owner restarting), start the heartbeat.
        `StoreUnavailable` when the server cannot be reached within `connect_timeout`."""
        if self._pool is not None:
            return self
        pool = psycopg_pool.ConnectionPool(
            self.dsn, min_size=1, max_size=self._pool_size, kwargs=self._connect_kwargs(), open=False,
            timeout=self.pool_wait, check=psycopg_pool.ConnectionPool.check_connection,
            reconnect_timeout=max(self.connect_timeout * 4, 30.0), name=f"msgw-queue-{self.owner}")
        try:
            pool.open(wait=True, timeout=self.connect_timeout)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            pool.close(timeout=0)
            raise StoreUnavailable(f"queue store unavailable: {_describe(exc)}") from None
        self._pool = pool
        try:
            self._tx("create the queue schema", self._migrate)
            if self._named:
                self.release_claims(self.owner)
            if recover:
                self.recover()
        except BaseException:
            self.close()
            raise
        self._stop.clear()
        if self.renew_every > 0:
            self._heartbeat = threading.Thread(target=self._beat, name=f"msgw-lease-{self.owner}", daemon=True)
            self._heartbeat.start()
        return self

    @staticmethod
    def _migrate(conn: psycopg.Connection) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS queue_schema_version (version integer NOT NULL)")
        row = conn.execute("SELECT max(version) FROM queue_schema_version").fetchone()
        have = row[0] if row and row[0] is not None else 0
        if have > SCHEMA_VERSION:
            raise SpoolError(f"queue schema version {have} is newer than this gateway's ({SCHEMA_VERSION})")
        for version in range(have, SCHEMA_VERSION):
            conn.execute(_MIGRATIONS[version])
        if have < SCHEMA_VERSION:
            conn.execute("DELETE FROM queue_schema_version")
            conn.execute("INSERT INTO queue_schema_version (version) VALUES (%s)", (SCHEMA_VERSION,))

    def close(self) -> None:
        """Stop the heartbeat, release this owner's claims (a clean stop: other nodes take the
        work at once, and it is no takeover; `msgw send`'s message is not held for a lease),
        close the connections. If the release fails, the claims lapse after the lease."""
        self._stop.set()
        beat, self._heartbeat = self._heartbeat, None
        if beat is not None and beat is not threading.current_thread():
            beat.join(timeout=self.statement_timeout + self.connect_timeout)
        if self._pool is not None:
            try:
                self.release_claims(self.owner)
                if self._published:  # a clean stop holds no key any more (a dead one lapses)
                    self._tx("withdraw this node's keys", lambda conn: conn.execute(
                        "DELETE FROM queue_nodes WHERE owner = %s", (self.owner,)), durable=False)
            except SpoolError as exc:
                event(log, "claims-kept", logging.WARNING, owner=self.owner, reason=str(exc))
        with self._listen_lock:
            if self._listener is not None:
                with contextlib.suppress(psycopg.Error):
                    self._listener.close()
                self._listener = None
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close(timeout=1.0)

    def __enter__(self) -> PgSpool:
        return self if self._pool is not None else self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def recover(self) -> dict[str, int]:
        """What a restart does on the shared store: remove messages whose last outcome was
        recorded but which were not removed, and bodies nothing references (an accept that lost
        the race with a removal). Safe beside other running nodes: it touches only finished
        messages and unreferenced bodies; the claims of live nodes are theirs until they lapse."""
        finished = self.finish_done()

        def count(conn: psycopg.Connection) -> int:
            row = conn.execute("SELECT count(*) FROM queue_recipients WHERE state IN ('queued', 'deferred')"
                               ).fetchone()
            return int(row[0]) if row else 0

        pending = self._tx("count pending recipients", count)
        orphans = self.collect_bodies()
        return {"tmp_removed": 0, "orphans": orphans, "pending": pending, "copies_removed": 0,
                "finished": finished, "finish_postponed": 0, "reserve": 1}

    def ensure_reserve(self) -> bool:
        """No local disk to reserve space on: always True (kept for `Spool`'s callers)."""
        return True

    # -- transactions -----------------------------------------------------------------------
    @property
    def pool(self) -> psycopg_pool.ConnectionPool:
        if self._pool is None:
            raise SpoolError("queue store is not open")
        return self._pool

    @contextlib.contextmanager
    def _conn(self, what: str) -> Iterator[psycopg.Connection]:
        """A pooled connection; every failure becomes a `SpoolError` (`StoreUnavailable` when the
        server is not reachable), in bounded time."""
        try:
            with self.pool.connection(timeout=self.pool_wait) as conn:
                yield conn
        except GatewayError:
            raise
        except psycopg_pool.PoolTimeout:
            raise StoreUnavailable(f"cannot {what}: queue store unavailable (no connection within "
                                   f"{self.pool_wait:g} s)") from None
        except psycopg.Error as exc:
            raise _error(what, exc) from None

    def _tx(self, what: str, work: Callable[[psycopg.Connection], T], *, durable: bool = True,
            notify: str | None = None) -> T:
        """Run `work` in one transaction; returns after the COMMIT (with `durable=False`, a
        commit that does not wait for the WAL flush: see the module docstring).

        A durable transaction is watched for `commit_timeout`: `statement_timeout` does not
        bound a COMMIT waiting for a synchronous standby, so a watchdog cancels it. PostgreSQL
        then ends the wait with a WARNING ("canceling wait for synchronous replication") and a
        *successful* COMMIT, committed on the primary only: that is not "committed in the shared
        store", so it becomes `StoreUnavailable` (4xx; the message may be delivered although
        unacknowledged: a duplicate if the client sends it again, never a loss)."""
        if not durable or self.commit_timeout <= 0:
            with self._conn(what) as conn, conn.transaction():
                if not durable:
                    conn.execute("SET LOCAL synchronous_commit = off")
                result = work(conn)
                if notify is not None:
                    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, notify))
            return result
        with self._conn(what) as conn:
            watch = _Watchdog(conn, self.commit_timeout, self.connect_timeout)
            try:
                with conn.transaction():
                    result = work(conn)
                    if notify is not None:
                        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, notify))
            finally:
                watch.stop()
            if watch.unreplicated:
                raise StoreUnavailable(f"cannot {what}: the synchronous standby did not confirm the commit within "
                                       f"{self.commit_timeout:g} s")
        return result

    def _read(self, what: str, work: Callable[[psycopg.Connection], T]) -> T:
        with self._conn(what) as conn:
            return work(conn)

    # -- leases ------------------------------------------------------------------------------
    def _hold(self, ids: Iterable[str]) -> None:
        with self._lock:
            self._in_hand.update(ids)

    def _settle(self, ids: Iterable[str]) -> None:
        with self._lock:
            self._in_hand.difference_update(ids)

    def in_hand(self) -> frozenset[str]:
        """The messages this process holds claims on and renews."""
        with self._lock:
            return frozenset(self._in_hand)

    def renew(self, ids: Iterable[str] | None = None) -> int:
        """Extend the lease of messages in hand (`ids`, or all of them) by `lease` from the
        server's `now()`; how many were still ours. A message another owner took meanwhile (our
        lease lapsed: this process stalled) is dropped from hand and logged."""
        wanted = sorted(self.in_hand() if ids is None else set(ids))
        if not wanted:
            return 0

        def extend(conn: psycopg.Connection) -> tuple[int, set[str]]:
            # Rows a writer holds right now are skipped (renewed at the next beat), so the
            # heartbeat never waits on nor deadlocks with a writer.
            renewed = conn.execute(
                "UPDATE queue_messages SET lease_until = now() + make_interval(secs => %s) WHERE id IN"
                " (SELECT id FROM queue_messages WHERE claimed_by = %s AND id = ANY(%s) ORDER BY id"
                " FOR UPDATE SKIP LOCKED)", (self.lease, self.owner, wanted)).rowcount
            ours = {r[0] for r in conn.execute("SELECT id FROM queue_messages WHERE claimed_by = %s AND id = ANY(%s)",
                                                (self.owner, wanted))}
            return renewed, ours

        renewed, ours = self._tx("renew leases", extend, durable=False)
        lost = [i for i in wanted if i not in ours]
        if lost:
            self._settle(lost)
            event(log, "lease-lost", logging.WARNING, owner=self.owner, count=len(lost))
        return renewed

    def _beat(self) -> None:
        beats = 0
        while not self._stop.wait(self.renew_every):
            beats += 1
            try:
                self.renew()
                if self._published:
                    self._publish()
                if beats % 3 == 0:  # about once a lease: what a killed node delivered but never
                    self.finish_done()  # removed (no restart of it may ever come to recover it)
            except SpoolError as exc:
                event(log, "lease-renewal-failed", logging.WARNING, owner=self.owner, reason=str(exc))

    # -- keys per node ------------------------------------------------------------------------
    def publish_keys(self, keys: Iterable[str]) -> None:
        """The keys this process can use now (files readable, tokens present): written at once
        in `queue_nodes` and refreshed by the heartbeat (every `renew_every`); a row not seen
        for a lease counts for nothing (a dead node holds no key). Messages waiting for one of
        these keys are due here now: the other nodes are told (NOTIFY)."""
        self.keys = frozenset(keys)
        self._published = True
        self._publish(notify=True)

    def _publish(self, *, notify: bool = False) -> None:
        def write(conn: psycopg.Connection) -> None:
            conn.execute("INSERT INTO queue_nodes (owner, keys, seen_at) VALUES (%s, %s, now())"
                         " ON CONFLICT (owner) DO UPDATE SET keys = EXCLUDED.keys, seen_at = EXCLUDED.seen_at",
                         (self.owner, sorted(self.keys)))

        self._tx("publish this node's keys", write, durable=False, notify="keys" if notify and self.keys else None)

    def route_to_key(self, msg_id: str, key: str) -> None:
        """This process lacks `key` (its token is not here: `TokenNotHere`): the message, just
        deferred, is now for a process that holds it (`needs_key`; claimed there when due), and
        this process stops advertising the key. With no live holder, any node may take it when
        due and defer it again: it waits with the backoff, never bounced before its lifetime."""
        if key in self.keys:
            self.keys = self.keys - {key}
            if self._published:
                self._publish()

        def mark(conn: psycopg.Connection) -> None:
            # released too: it is for another process now (ours only if no holder is alive)
            conn.execute("UPDATE queue_messages SET needs_key = %s, claimed_by = CASE WHEN claimed_by = %s THEN ''"
                         " ELSE claimed_by END, lease_until = CASE WHEN claimed_by = %s THEN NULL ELSE lease_until"
                         " END WHERE id = %s", (key, self.owner, self.owner, _safe_id(msg_id)))

        self._tx("route a message to a node with its key", mark, durable=False, notify="needs-key")
        self._settle([msg_id])

    def nodes(self) -> builtins.list[tuple[str, builtins.list[str], float]]:
        """(owner, keys, seconds since its last heartbeat) of every process that published keys."""
        def read(conn: psycopg.Connection) -> builtins.list[tuple[str, builtins.list[str], float]]:
            return [(r[0], list(r[1]), float(r[2])) for r in conn.execute(
                "SELECT owner, keys, EXTRACT(EPOCH FROM now() - seen_at) FROM queue_nodes ORDER BY owner")]

        return self._read("read the nodes' keys", read)

    def release_claims(self, owner: str | None = None) -> int:
        """Free the messages claimed by `owner`; how many were freed. None: by this node, i.e.
        this store's owner and its worker processes named `<owner>/…` (on a single-node spool
        None means everyone; here other nodes are alive and their claims are theirs: a node
        starting must never free them, their leases lapse if they are dead)."""
        def free(conn: psycopg.Connection) -> int:
            # The rows are locked in id order first, as every writer does (no deadlock).
            args: tuple[str, ...]
            if owner is None:
                mine, args = "claimed_by = %s OR starts_with(claimed_by, %s)", (self.owner, self.owner + "/")
            else:
                mine, args = "claimed_by = %s", (owner,)
            freed = conn.execute(
                "UPDATE queue_messages SET claimed_by = '', lease_until = NULL WHERE id IN"  # noqa: S608
                f" (SELECT id FROM queue_messages WHERE {mine} ORDER BY id FOR UPDATE)", args).rowcount
            if freed:  # free work now: wake the other nodes (a NOTIFY of the accept came while claimed)
                conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, "released"))
            return freed

        freed = self._tx("release claims", free, durable=False)
        if owner is None or owner == self.owner:
            with self._lock:
                self._in_hand.clear()
        return freed

    def leases(self) -> builtins.list[tuple[str, str, float]]:
        """(message id, owner, seconds left on the server's clock) of every claimed message:
        which node holds which lease (`msgw queue`)."""
        def read(conn: psycopg.Connection) -> builtins.list[tuple[str, str, float]]:
            return [(r[0], r[1], float(r[2])) for r in conn.execute(
                "SELECT id, claimed_by, EXTRACT(EPOCH FROM lease_until - now()) FROM queue_messages"
                " WHERE claimed_by <> '' ORDER BY id")]

        return self._read("read leases", read)

    def wait_for_work(self, timeout: float) -> bool:
        """Block until a `NOTIFY msgw_queue` (True) or `timeout` seconds (False). On a dedicated
        connection; when the server cannot be reached it sleeps the timeout instead of spinning
        (polling is the safety net). Call from a thread, not from the event loop."""
        deadline = time.monotonic() + timeout
        with self._listen_lock:
            try:
                if self._listener is None or self._listener.closed:
                    self._listener = psycopg.Connection.connect(self.dsn, **self._connect_kwargs())
                    self._listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
                got = False
                for _ in self._listener.notifies(timeout=max(0.0, timeout), stop_after=1):
                    got = True
                if got:  # a burst (many accepts) is one wake: drain what else arrived meanwhile
                    for _ in self._listener.notifies(timeout=0.0):
                        pass
                return got
            except psycopg.Error:
                if self._listener is not None:
                    with contextlib.suppress(psycopg.Error):
                        self._listener.close()
                    self._listener = None
        self._stop.wait(max(0.0, deadline - time.monotonic()))
        return False

    # -- accepting --------------------------------------------------------------------------
    def accept(self, sender: str, recipients: Iterable[str], data: bytes, *, lifetime: float,
               listener: str = "", client: str = "", auth_user: str | None = None,
               now: float | None = None) -> str:
        """Store a message (body, rows, claim by this owner) in one transaction; return its queue
        id only after the COMMIT. `SpoolError` (`StoreUnavailable`: 451 4.3.0) otherwise."""
        prepared = (self.prepare_on_accept, False) if self.prepare_on_accept else None
        return self._accept(sender, recipients, data, lifetime=lifetime, listener=listener, client=client,
                            auth_user=auth_user, now=now, prepared=prepared, keep=True)

    def accept_prepared(self, sender: str, recipients: Iterable[str], data: bytes, *, form: str,
                        lifetime: float, listener: str = "", require_tls: bool = False,
                        now: float | None = None) -> str:
        """Store a message that needs no preparation (DSNs, notices) as one prepared copy of itself."""
        return self._accept(sender, recipients, data, lifetime=lifetime, listener=listener, now=now,
                            prepared=(form, require_tls))

    def _accept(self, sender: str, recipients: Iterable[str], data: bytes, *, lifetime: float,
                listener: str = "", client: str = "", auth_user: str | None = None, now: float | None = None,
                prepared: tuple[str, bool] | None = None, keep: bool = False) -> str:
        rcpts = list(dict.fromkeys(recipients))
        if not rcpts:
            raise GatewayError("no recipients", status="5.5.1")
        now = time.time() if now is None else now
        msg_id = new_message_id()
        digest = hashlib.sha256(data).digest()

        def record(conn: psycopg.Connection) -> builtins.list[tuple[int, str, int | None]]:
            self._insert_body(conn, digest, data)
            conn.execute(
                "INSERT INTO queue_messages (id, sender, size, received, expires, listener, client, auth_user,"
                " prepared, body, claimed_by, lease_until)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now() + make_interval(secs => %s))",
                (msg_id, sender, len(data), now, now + lifetime, listener, client, auth_user, prepared is not None,
                 digest, self.owner, self.lease))
            copy_id = None
            if prepared is not None:
                row = conn.execute(
                    "INSERT INTO queue_copies (message_id, form, require_tls, size, file) VALUES (%s, %s, %s, %s, %s)"
                    " RETURNING id", (msg_id, prepared[0], prepared[1], len(data), f"msg/{msg_id}")).fetchone()
                copy_id = row[0] if row else None
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO queue_recipients (message_id, address, state, next_attempt, updated, copy_id)"
                    " VALUES (%s, %s, 'queued', %s, %s, %s) RETURNING id, address, copy_id",
                    [(msg_id, r, now, now, copy_id) for r in rcpts], returning=True)
                rows: builtins.list[tuple[int, str, int | None]] = []
                while True:
                    rows.extend(cur.fetchall())
                    if not cur.nextset():
                        break
            return rows

        rows = self._tx("store message", record, notify="prepared" if prepared else "received")
        self._hold([msg_id])
        if keep:
            self._accepted.remember(store.just_accepted(msg_id, sender, data, rows, now=now, lifetime=lifetime,
                                                        listener=listener, client=client, auth_user=auth_user,
                                                        prepared=prepared), data)
        return msg_id

    def import_message(self, msg: QueuedMessage, data: bytes, copies: dict[int, bytes]) -> bool:
        """Copy a message of another store (`msgw storage migrate`: a single node's SQLite spool
        into PostgreSQL) as it is: same queue id, recipient and copy ids (other stores, e.g. the
        LPS store, name them), states, attempts and copies (`copies`: each copy's bytes by copy
        id; a copy that is the message itself may be left out). Unclaimed. Idempotent: False when
        the id is already here. Meant for an empty queue: an id already used by another message's
        recipient or copy is a `SpoolError`, and nothing of that message is written."""
        _safe_id(msg.id)
        digest = hashlib.sha256(data).digest()

        def copy_in(conn: psycopg.Connection) -> bool:
            self._insert_body(conn, digest, data)
            if conn.execute(
                    "INSERT INTO queue_messages (id, sender, size, received, expires, listener, client, auth_user,"
                    " delay_notified, crashes, quarantined, prepared, body) VALUES (%s, %s, %s, %s, %s, %s, %s, %s,"
                    " %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING RETURNING id",
                    (msg.id, msg.sender, msg.size, msg.received, msg.expires, msg.listener, msg.client, msg.auth_user,
                     msg.delay_notified, msg.crashes, msg.quarantined, bool(msg.copies), digest)).fetchone() is None:
                return False
            for c in msg.copies:
                body = None
                if not c.file.startswith("msg/"):
                    body = hashlib.sha256(copies[c.id]).digest()
                    self._insert_body(conn, body, copies[c.id])
                conn.execute("INSERT INTO queue_copies (id, message_id, form, require_tls, size, file, digest)"
                             " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                             (c.id, msg.id, c.form, c.require_tls, c.size,
                              f"msg/{msg.id}" if body is None else c.file, body))  # a label here
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO queue_recipients (id, message_id, address, state, attempts, next_attempt, last_error,"
                    " last_status, remote, updated, dsn_sent, copy_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s,"
                    " %s, %s, %s)",
                    [(r.id, msg.id, r.address, r.state.value, r.attempts, r.next_attempt, r.last_error,
                      r.last_status, r.remote, r.updated, r.dsn_sent, r.copy_id) for r in msg.recipients])
            for table in ("queue_copies", "queue_recipients"):  # later inserts get ids above these
                conn.execute(sql.SQL("SELECT setval({s}, GREATEST((SELECT max(id) FROM {t}),"
                                     " (SELECT last_value FROM {q})))").format(
                                         s=sql.Literal(f"{table}_id_seq"), t=sql.Identifier(table),
                                         q=sql.Identifier(f"{table}_id_seq")))
            return True

        return self._tx("import a queued message", copy_in, notify="received")

    @staticmethod
    def _insert_body(conn: psycopg.Connection, digest: bytes, data: bytes) -> None:
        """A body by its SHA-256; the same bytes stored once (a second insert does nothing)."""
        conn.execute("INSERT INTO queue_bodies (digest, data) VALUES (%s, %s) ON CONFLICT (digest) DO NOTHING",
                     (digest, data))

    def take_accepted(self, msg_id: str) -> tuple[QueuedMessage, bytes] | None:
        """As `Spool.take_accepted`: the message as just accepted, and its bytes, once."""
        return self._accepted.take(msg_id)

    # -- preparing --------------------------------------------------------------------------
    def prepare(self, msg_id: str, copies: Iterable[NewCopy], outcomes: Iterable[Outcome] = ()) -> bool:
        """`prepare_for_delivery` without reading the message back: False when it is gone."""
        return self._prepare(msg_id, copies, outcomes, fetch=False)[0]

    def prepare_for_delivery(self, msg_id: str, copies: Iterable[NewCopy], outcomes: Iterable[Outcome] = ()
                             ) -> QueuedMessage | None:
        """As `Spool.prepare_for_delivery`: the message as it now is, read in the preparation's
        own transaction (a separate `get` was a second pool checkout, its three autocommit reads apart)."""
        done, fresh = self._prepare(msg_id, copies, outcomes, fetch=True)
        return fresh if done else None

    def _prepare(self, msg_id: str, copies: Iterable[NewCopy], outcomes: Iterable[Outcome], *, fetch: bool
                 ) -> tuple[bool, QueuedMessage | None]:
        """Record a preparation in one transaction: the copies' bodies, their rows, the links of
        still-received pending recipients, the refusals, the message marked prepared. False when
        the message is gone (deleted meanwhile): nothing is recorded."""
        items = list(copies)
        results = list(outcomes)
        _safe_id(msg_id)
        now = time.time()

        def record(conn: psycopg.Connection) -> tuple[bool, QueuedMessage | None]:
            if conn.execute("SELECT 1 FROM queue_messages WHERE id = %s FOR UPDATE", (msg_id,)).fetchone() is None:
                return False, None
            for n, copy in enumerate(items):
                if copy.same_as_message:
                    file, digest = f"msg/{msg_id}", None
                else:
                    digest = hashlib.sha256(copy.data).digest()
                    self._insert_body(conn, digest, copy.data)
                    file = f"copy/{msg_id}C{n}"
                row = conn.execute(
                    "INSERT INTO queue_copies (message_id, form, require_tls, size, file, digest)"
                    " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                    (msg_id, copy.form, copy.require_tls, len(copy.data), file, digest)).fetchone()
                assert row is not None
                conn.execute(
                    "UPDATE queue_recipients SET copy_id = %s, updated = %s WHERE id = ANY(%s) AND message_id = %s"
                    " AND copy_id IS NULL AND state IN ('queued', 'deferred')",
                    (row[0], now, list(copy.rcpt_ids), msg_id))
            _apply_outcomes(conn, results, now)
            # Outcomes that leave nothing due now release the claim, as `record_outcomes` does
            # (a deferral recorded with its copy, delivery's `send_first`; the runner's refusals).
            idle[:] = self._release_idle(conn, [o.rcpt_id for o in results], now) if results else []
            row = conn.execute(
                "UPDATE queue_messages m SET prepared = true, needs_key = NULL FROM (SELECT needs_key FROM"
                " queue_messages WHERE id = %s) old WHERE m.id = %s RETURNING old.needs_key",
                (msg_id, msg_id)).fetchone()
            used[:] = [row[0]] if row and row[0] else []
            if not fetch:
                return True, None
            found = _messages(conn, " WHERE id = %s", (msg_id,))
            return True, found[0] if found else None

        used: builtins.list[str] = []
        idle: builtins.list[str] = []
        done, fresh = self._tx("record a prepared message", record, durable=False, notify="prepared")
        self._settle(idle)
        if used and used[0] not in self.keys and self._published:
            # prepared here although routed for lack of this key: its token is back in this node
            self.keys = self.keys | {used[0]}
            self._publish()
        return done, fresh

    def unprepare(self, msg_id: str, copy_id: int) -> None:
        """Forget a damaged copy: its pending recipients are received again (prepared anew)."""
        def forget(conn: psycopg.Connection) -> None:
            conn.execute("SELECT 1 FROM queue_messages WHERE id = %s FOR UPDATE", (msg_id,))
            found = conn.execute("SELECT digest FROM queue_copies WHERE id = %s AND message_id = %s",
                                 (copy_id, msg_id)).fetchone()
            if found is None:
                return
            conn.execute("UPDATE queue_recipients SET copy_id = NULL WHERE copy_id = %s"
                         " AND state IN ('queued', 'deferred')", (copy_id,))
            conn.execute("DELETE FROM queue_copies WHERE id = %s", (copy_id,))
            conn.execute("UPDATE queue_messages SET prepared = false WHERE id = %s", (msg_id,))
            if found[0] is not None:
                _collect(conn, [found[0]])

        self._tx("forget a damaged copy", forget, notify="received")

    # -- reading ----------------------------------------------------------------------------
    def message_bytes(self, msg_id: str) -> bytes:
        _safe_id(msg_id)

        def read(conn: psycopg.Connection) -> bytes:
            row = conn.execute("SELECT b.data FROM queue_messages m JOIN queue_bodies b ON b.digest = m.body"
                               " WHERE m.id = %s", (msg_id,)).fetchone()
            if row is None:
                raise SpoolError(f"cannot read queued message {msg_id}: not in the queue")
            return bytes(row[0])

        return self._read(f"read queued message {msg_id}", read)

    def copy_bytes(self, copy: PreparedCopy) -> bytes:
        """A prepared copy's bytes, checked against its size and SHA-256 (`DamagedCopy` if not:
        never sent, prepared again); the message's own bytes for a copy that is the message."""
        folder, _, _name = copy.file.partition("/")
        if folder == "msg":
            data = self.message_bytes(copy.message_id)
        elif folder == "copy" and copy.digest is not None:
            digest = bytes.fromhex(copy.digest)

            def read(conn: psycopg.Connection) -> bytes | None:
                row = conn.execute("SELECT data FROM queue_bodies WHERE digest = %s", (digest,)).fetchone()
                return None if row is None else bytes(row[0])

            found = self._read(f"read prepared copy {copy.id} of {copy.message_id}", read)
            if found is None:
                raise DamagedCopy(f"prepared copy {copy.id} of {copy.message_id} is missing")
            data = found
        else:
            raise SpoolError(f"not a copy file: {copy.file[:40]!r}")
        if len(data) != copy.size:
            raise DamagedCopy(f"prepared copy {copy.id} of {copy.message_id} is damaged "
                              f"({len(data)} bytes stored, {copy.size} recorded)")
        if copy.digest is not None and hashlib.sha256(data).hexdigest() != copy.digest:
            raise DamagedCopy(f"prepared copy {copy.id} of {copy.message_id} is damaged (digest differs)")
        return data

    def get(self, msg_id: str) -> QueuedMessage | None:
        def read(conn: psycopg.Connection) -> QueuedMessage | None:
            found = _messages(conn, " WHERE id = %s", (msg_id,))
            return found[0] if found else None

        return self._read("read the queue", read)

    def list(self) -> builtins.list[QueuedMessage]:
        return self._read("read the queue", lambda conn: _messages(conn, " ORDER BY received, id", ()))

    def due(self, now: float | None = None, limit: int = 500, exclude: set[str] | frozenset[str] = frozenset()
            ) -> builtins.list[QueuedMessage]:
        """Messages with a pending recipient due now (either step), or a DSN owed; claimed."""
        return self._due("", now, limit, exclude)

    def due_received(self, now: float | None = None, limit: int = 500,
                     exclude: set[str] | frozenset[str] = frozenset()) -> builtins.list[QueuedMessage]:
        """Messages with a received recipient due now (the runner's work); claimed."""
        return self._due("received", now, limit, exclude)

    def due_prepared(self, now: float | None = None, limit: int = 500,
                     exclude: set[str] | frozenset[str] = frozenset(), *, delay_notice_before: float | None = None
                     ) -> builtins.list[QueuedMessage]:
        """Messages with a prepared recipient due now, a DSN owed, or (with `delay_notice_before`)
        a delay notice owed: delivery's work; claimed."""
        return self._due("prepared", now, limit, exclude, delay_notice_before)

    def _due(self, stage: str, now: float | None, limit: int, exclude: set[str] | frozenset[str],
             delay_notice_before: float | None = None) -> builtins.list[QueuedMessage]:
        """Claim (one short transaction, `FOR UPDATE SKIP LOCKED`) then read what was claimed."""
        now = time.time() if now is None else now
        cond = "(r.state IN ('queued', 'deferred') AND r.next_attempt <= %(now)s"
        cond += {"received": " AND r.copy_id IS NULL)", "prepared": " AND r.copy_id IS NOT NULL)"}.get(stage, ")")
        if stage != "received":
            cond += " OR (r.state = 'bounced' AND NOT r.dsn_sent)"
        if delay_notice_before is not None:
            cond += (" OR (r.state = 'deferred' AND NOT m.delay_notified AND m.sender <> ''"
                     " AND m.received <= %(notice)s)")
        query = (
            "WITH due AS (SELECT r.message_id, min(r.next_attempt) AS first FROM queue_recipients r"  # noqa: S608
            f" JOIN queue_messages m ON m.id = r.message_id WHERE ({cond}) GROUP BY r.message_id),"
            " cand AS (SELECT m.id, m.claimed_by, due.first FROM queue_messages m JOIN due ON due.message_id = m.id"
            " WHERE NOT m.quarantined AND NOT (m.id = ANY(%(exclude)s))"
            " AND (m.claimed_by IN ('', %(owner)s) OR m.lease_until IS NULL OR m.lease_until < now())"
            f" AND {_KEY_HERE}"
            " ORDER BY due.first, m.id LIMIT %(limit)s FOR UPDATE OF m SKIP LOCKED)"
            " UPDATE queue_messages m SET claimed_by = %(owner)s,"
            " lease_until = now() + make_interval(secs => %(lease)s),"
            " takeovers = m.takeovers + (cand.claimed_by NOT IN ('', %(owner)s))::int"
            " FROM cand WHERE m.id = cand.id"
            " RETURNING m.id, cand.first, (cand.claimed_by NOT IN ('', %(owner)s))")
        args = {"now": now, "notice": delay_notice_before, "exclude": sorted(exclude), "owner": self.owner,
                "limit": limit, "lease": self.lease, "keys": sorted(self.keys)}

        def claim(conn: psycopg.Connection) -> builtins.list[tuple[str, float, bool]]:
            rows = conn.execute(query, args).fetchall()
            taken = sum(1 for r in rows if r[2])
            if taken:
                conn.execute("INSERT INTO queue_stats (name, value) VALUES ('takeovers', %s)"
                             " ON CONFLICT (name) DO UPDATE SET value = queue_stats.value + EXCLUDED.value", (taken,))
            return [(r[0], r[1], r[2]) for r in rows]

        claimed = sorted(self._tx("claim due messages", claim, durable=False), key=lambda r: (r[1], r[0]))
        if not claimed:
            return []
        taken = [i for i, _, over in claimed if over]
        if taken:
            event(log, "leases-taken-over", logging.WARNING, owner=self.owner, count=len(taken))
        ids = [i for i, _, _ in claimed]
        self._hold(ids)

        def read(conn: psycopg.Connection) -> builtins.list[QueuedMessage]:
            found = {m.id: m for m in _messages(conn, " WHERE id = ANY(%s)", (ids,))}
            return [found[i] for i in ids if i in found]

        return self._read("read the queue", read)

    def next_due_time(self) -> float | None:
        def read(conn: psycopg.Connection) -> float | None:
            row = conn.execute(
                "SELECT min(r.next_attempt) FROM queue_recipients r JOIN queue_messages m ON m.id = r.message_id"
                " WHERE r.state IN ('queued', 'deferred') AND NOT m.quarantined"
                " AND (m.claimed_by IN ('', %s) OR m.lease_until IS NULL OR m.lease_until < now())",
                (self.owner,)).fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return self._read("read the queue", read)

    def counts(self) -> dict[str, int]:
        """Recipients by state, and `takeovers`: claims taken from an owner whose lease lapsed
        (each may have sent its copies in flight twice: failover duplicates)."""
        def read(conn: psycopg.Connection) -> dict[str, int]:
            out = {r[0]: int(r[1]) for r in conn.execute("SELECT state, count(*) FROM queue_recipients GROUP BY state")}
            row = conn.execute("SELECT value FROM queue_stats WHERE name = 'takeovers'").fetchone()
            out["takeovers"] = int(row[0]) if row else 0
            return out

        return self._read("count the queue", read)

    def queue_stats(self) -> QueueStats:
        """The figures of the metrics' queue gauges and the console, for the whole shared queue
        (every node's work): a read, no lock taken, bounded like every call."""
        def read(conn: psycopg.Connection) -> QueueStats:
            rows = conn.execute(
                "SELECT r.state, r.copy_id IS NOT NULL, count(*) FROM queue_recipients r"
                " JOIN queue_messages m ON m.id = r.message_id"
                " WHERE r.state IN ('queued', 'deferred') AND NOT m.quarantined GROUP BY 1, 2").fetchall()
            head = conn.execute(
                "SELECT count(*), min(m.received) FROM queue_messages m WHERE NOT m.quarantined AND EXISTS"
                " (SELECT 1 FROM queue_recipients r WHERE r.message_id = m.id"
                " AND r.state IN ('queued', 'deferred'))").fetchone()
            quarantined = conn.execute("SELECT count(*) FROM queue_messages WHERE quarantined").fetchone()
            counts = {(state, "prepared" if prepared else "received"): int(n) for state, prepared, n in rows}
            return QueueStats(counts, int(head[0]) if head else 0,
                              None if not head or head[1] is None else float(head[1]),
                              int(quarantined[0]) if quarantined else 0)

        return self._read("read the queue's figures", read)

    def ping(self) -> None:
        """One trivial query, bounded (`pool_wait` for a connection, at most 5 s for the query):
        `StoreUnavailable` when the shared store cannot be reached now (`/readyz`)."""
        def probe(conn: psycopg.Connection) -> None:
            with conn.transaction():
                conn.execute(f"SET LOCAL statement_timeout = {int(min(self.statement_timeout, 5.0) * 1000)}")
                conn.execute("SELECT 1").fetchone()

        self._read("reach the queue store", probe)

    # -- state changes ----------------------------------------------------------------------
    def record_outcomes(self, outcomes: Iterable[Outcome], *, finish: str | None = None) -> None:
        """An attempt's outcomes in one transaction (only pending recipients change). A message
        that has nothing due now any more is settled: its claim released, its lease no longer
        renewed (any node takes it when it is due again).

        `finish`: a message id removed in the same transaction when these outcomes leave it
        finished (as `finish_if_done`); then `take_finished(finish)` is True. Why: one
        transaction and one executor trip per delivered message instead of two (issue 15). No
        tombstone row is needed here: no file outlives the commit."""
        now = time.time()
        items = list(outcomes)
        if not items:
            return
        if finish is not None:
            _safe_id(finish)

        def write(conn: psycopg.Connection) -> tuple[builtins.list[str], bool]:
            _lock_messages_of(conn, [o.rcpt_id for o in items])
            _apply_outcomes(conn, items, now)
            idle = self._release_idle(conn, [o.rcpt_id for o in items], now)
            return idle, finish is not None and _remove_finished(conn, finish)

        idle, finished = self._tx("update queue state", write)
        self._settle(idle)
        if finished and finish is not None:
            self._settle([finish])
            self._finished.add(finish)

    def take_finished(self, msg_id: str) -> bool:
        """True once when `record_outcomes(…, finish=msg_id)` removed the message (no I/O)."""
        return self._finished.take(msg_id)

    def _release_idle(self, conn: psycopg.Connection, rcpt_ids: builtins.list[int], now: float) -> builtins.list[str]:
        """Release our claims on the messages of `rcpt_ids` that have nothing due now (nothing
        pending due, no DSN owed); their ids, to be settled."""
        return [r[0] for r in conn.execute(
            "UPDATE queue_messages m SET claimed_by = '', lease_until = NULL"
            " WHERE m.claimed_by = %s AND m.id IN (SELECT message_id FROM queue_recipients WHERE id = ANY(%s))"
            " AND NOT EXISTS (SELECT 1 FROM queue_recipients r WHERE r.message_id = m.id AND"
            " ((r.state IN ('queued', 'deferred') AND r.next_attempt <= %s)"
            " OR (r.state = 'bounced' AND NOT r.dsn_sent))) RETURNING m.id",
            (self.owner, rcpt_ids, now)).fetchall()]

    def _set(self, rcpt_ids: Iterable[int], state: RecipientState, *, error: str | None, status: str,
             remote: str | None, next_attempt: float | None = None, count_attempt: bool = True) -> None:
        self.record_outcomes(Outcome(rid, state, status, error, remote, next_attempt, count_attempt)
                             for rid in rcpt_ids)

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
        ids = list(rcpt_ids)
        now = time.time()

        def write(conn: psycopg.Connection) -> builtins.list[str]:
            _lock_messages_of(conn, ids)
            conn.execute("UPDATE queue_recipients SET dsn_sent = true WHERE id = ANY(%s)", (ids,))
            return self._release_idle(conn, ids, now)

        self._settle(self._tx("record a queued DSN", write))

    def mark_delay_notified(self, msg_id: str) -> None:
        now = time.time()

        def write(conn: psycopg.Connection) -> builtins.list[str]:
            conn.execute("UPDATE queue_messages SET delay_notified = true WHERE id = %s", (msg_id,))
            rcpts = [r[0] for r in conn.execute("SELECT id FROM queue_recipients WHERE message_id = %s", (msg_id,))]
            return self._release_idle(conn, rcpts, now)

        self._settle(self._tx("record a delay notice", write))

    def record_crash(self, msg_id: str, *, limit: int) -> bool:
        """Count an unexpected processing failure; quarantine (and release) at `limit`."""
        def count(conn: psycopg.Connection) -> bool:
            row = conn.execute("UPDATE queue_messages SET crashes = crashes + 1 WHERE id = %s RETURNING crashes",
                               (msg_id,)).fetchone()
            if row is None or row[0] < limit:
                return False
            conn.execute("UPDATE queue_messages SET quarantined = true, claimed_by = '', lease_until = NULL"
                         " WHERE id = %s", (msg_id,))
            return True

        quarantined = self._tx("record a processing failure", count)
        if quarantined:
            self._settle([msg_id])
        return quarantined

    def retry(self, msg_id: str | None = None) -> int:
        """Make pending recipients (of one message, or all) due now; lift quarantine."""
        now = time.time()

        def schedule(conn: psycopg.Connection) -> int:
            if msg_id is None:
                conn.execute("UPDATE queue_messages SET quarantined = false, crashes = 0")
                cur = conn.execute("UPDATE queue_recipients SET next_attempt = %s"
                                   " WHERE state IN ('queued', 'deferred')", (now,))
            else:
                conn.execute("UPDATE queue_messages SET quarantined = false, crashes = 0 WHERE id = %s", (msg_id,))
                cur = conn.execute("UPDATE queue_recipients SET next_attempt = %s WHERE message_id = %s"
                                   " AND state IN ('queued', 'deferred')", (now, msg_id))
            return cur.rowcount

        return self._tx("schedule a retry", schedule, notify="retry")

    def delete(self, msg_id: str) -> bool:
        """Operator removal: pending recipients become 'deleted' (no DSN), the message goes."""
        _safe_id(msg_id)
        self.take_accepted(msg_id)

        def mark(conn: psycopg.Connection) -> bool:
            if conn.execute("SELECT 1 FROM queue_messages WHERE id = %s FOR UPDATE", (msg_id,)).fetchone() is None:
                return False
            conn.execute("UPDATE queue_recipients SET state = 'deleted', updated = %s WHERE message_id = %s"
                         " AND state IN ('queued', 'deferred')", (time.time(), msg_id))
            return True

        if not self._tx("delete a queued message", mark):
            return False
        self.finish_if_done(msg_id)
        return True

    def finish_done(self) -> int:
        """Remove every finished message left behind (a node killed between its last outcome and
        the removal); safe beside other nodes. How many were removed."""
        def read(conn: psycopg.Connection) -> builtins.list[str]:
            return [r[0] for r in conn.execute(
                "SELECT id FROM queue_messages m WHERE NOT EXISTS (SELECT 1 FROM queue_recipients r"  # noqa: S608
                f" WHERE r.message_id = m.id AND {_LEFT})")]

        return sum(self.finish_if_done(msg_id) for msg_id in self._read("read the queue", read))

    def finish_if_done(self, msg_id: str) -> bool:
        """Remove a message whose recipients are all final and whose DSNs are queued, with its
        copies and the bodies nothing else references, in one transaction (not waited for:
        the outcomes that made it final are durable; a finished message a crash brings back
        is removed again by `finish_done`)."""
        _safe_id(msg_id)

        done = self._tx("remove a finished message", lambda conn: _remove_finished(conn, msg_id), durable=False)
        self._settle([msg_id])
        return done

    def collect_bodies(self) -> int:
        """Remove bodies no message or copy references (see the module docstring); how many."""
        def sweep(conn: psycopg.Connection) -> int:
            rows = conn.execute(
                "SELECT b.digest FROM queue_bodies b WHERE NOT EXISTS (SELECT 1 FROM queue_messages m"
                " WHERE m.body = b.digest) AND NOT EXISTS (SELECT 1 FROM queue_copies c WHERE c.digest = b.digest)"
            ).fetchall()
            return _collect(conn, [r[0] for r in rows])

        return self._tx("collect unreferenced bodies", sweep, durable=False)


class _Watchdog:
    """Cancels a connection's work after `timeout` (see `PgSpool._tx`), and tells whether a
    COMMIT ended its wait for the synchronous standby without the standby's confirmation."""

    _CANCELLED_SYNC = "canceling wait for synchronous replication"

    def __init__(self, conn: psycopg.Connection, timeout: float, cancel_timeout: float) -> None:
        self.conn, self.cancel_timeout = conn, cancel_timeout
        self.unreplicated = False
        self._fired = False
        self._done = False
        self._lock = threading.Lock()
        conn.add_notice_handler(self._notice)
        self._timer = threading.Timer(timeout, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _notice(self, diag: psycopg.errors.Diagnostic) -> None:
        if self._CANCELLED_SYNC in (diag.message_primary or ""):
            self.unreplicated = True

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self._fired = True
        with contextlib.suppress(psycopg.Error):
            self.conn.cancel_safe(timeout=self.cancel_timeout)

    def stop(self) -> None:
        """Disarm. A connection the watchdog fired on is closed (the pool replaces it): a late
        cancel request must never hit the next statement run on it."""
        self._timer.cancel()
        with self._lock:
            self._done = True
            fired = self._fired
        with contextlib.suppress(ValueError):
            self.conn.remove_notice_handler(self._notice)
        if fired:
            self.conn.close()


def _messages(conn: psycopg.Connection, where: str, args: tuple) -> builtins.list[QueuedMessage]:
    """Messages with their recipients and copies (three queries, whatever their number)."""
    rows = conn.execute(_MESSAGE_COLUMNS + where, args).fetchall()
    if not rows:
        return []
    ids = [r[0] for r in rows]
    rcpts: dict[str, builtins.list[QueuedRecipient]] = {i: [] for i in ids}
    for r in conn.execute(_RCPT_COLUMNS + " WHERE message_id = ANY(%s) ORDER BY id", (ids,)):
        rcpts[r[1]].append(QueuedRecipient(
            id=r[0], message_id=r[1], address=r[2], state=RecipientState(r[3]), attempts=r[4], next_attempt=r[5],
            last_error=r[6], last_status=r[7], remote=r[8], updated=r[9], dsn_sent=bool(r[10]), copy_id=r[11]))
    copies: dict[str, builtins.list[PreparedCopy]] = {i: [] for i in ids}
    for c in conn.execute(_COPY_COLUMNS + " WHERE message_id = ANY(%s) ORDER BY id", (ids,)):
        copies[c[1]].append(PreparedCopy(id=c[0], message_id=c[1], form=c[2], require_tls=bool(c[3]), size=c[4],
                                         file=c[5], digest=None if c[6] is None else bytes(c[6]).hex()))
    return [QueuedMessage(
        id=row[0], sender=row[1], size=row[2], received=row[3], expires=row[4], listener=row[5], client=row[6],
        auth_user=row[7], delay_notified=bool(row[8]), crashes=row[9], quarantined=bool(row[10]), needs_key=row[11],
        recipients=tuple(rcpts[row[0]]), copies=tuple(copies[row[0]])) for row in rows]


def _remove_finished(conn: psycopg.Connection, msg_id: str) -> bool:
    """In a transaction: remove a message whose recipients are all final and whose DSNs are
    queued, with its copies and the bodies nothing else references; False when it is not."""
    row = conn.execute("SELECT body FROM queue_messages WHERE id = %s FOR UPDATE", (msg_id,)).fetchone()
    if row is None:
        return False
    left = conn.execute(f"SELECT 1 FROM queue_recipients r WHERE r.message_id = %s AND {_LEFT} LIMIT 1",  # noqa: S608
                        (msg_id,)).fetchone()
    if left is not None:
        return False
    digests = [row[0], *(r[0] for r in conn.execute(
        "SELECT digest FROM queue_copies WHERE message_id = %s AND digest IS NOT NULL", (msg_id,)))]
    conn.execute("DELETE FROM queue_messages WHERE id = %s", (msg_id,))  # cascades
    _collect(conn, digests)
    return True


def _lock_messages_of(conn: psycopg.Connection, rcpt_ids: builtins.list[int]) -> None:
    """Lock the messages of these recipients, in id order, before touching their recipients:
    every writer takes a message's row first (as `prepare`, `finish_if_done`, `delete` do), so
    two writers on one message queue up instead of deadlocking."""
    conn.execute("SELECT 1 FROM queue_messages WHERE id IN (SELECT message_id FROM queue_recipients"
                 " WHERE id = ANY(%s)) ORDER BY id FOR UPDATE", (rcpt_ids,))


def _apply_outcomes(conn: psycopg.Connection, outcomes: builtins.list[Outcome], now: float) -> None:
    """Only pending recipients change: an operator's delete is not undone by a late result."""
    if not outcomes:
        return
    with conn.cursor() as cur:
        cur.executemany(
            "UPDATE queue_recipients SET state = %s, attempts = attempts + %s, last_error = %s, last_status = %s,"
            " remote = COALESCE(%s, remote), next_attempt = COALESCE(%s, next_attempt), updated = %s"
            " WHERE id = %s AND state IN ('queued', 'deferred')",
            [(o.state.value, 1 if o.count_attempt else 0, o.error, o.status, o.remote, o.next_attempt, now,
              o.rcpt_id) for o in outcomes])


def _collect(conn: psycopg.Connection, digests: builtins.list[bytes]) -> int:
    """Delete those bodies nothing references, in a savepoint: an accept of the same bytes
    committing meanwhile makes the foreign key refuse the deletion, and the body simply stays."""
    if not digests:
        return 0
    try:
        with conn.transaction():
            return conn.execute(
                "DELETE FROM queue_bodies b WHERE b.digest = ANY(%s)"
                " AND NOT EXISTS (SELECT 1 FROM queue_messages m WHERE m.body = b.digest)"
                " AND NOT EXISTS (SELECT 1 FROM queue_copies c WHERE c.digest = b.digest)",
                (list(dict.fromkeys(digests)),)).rowcount
    except psycopg.errors.ForeignKeyViolation:
        return 0


def _safe_id(msg_id: str) -> str:
    if not msg_id or not msg_id.isalnum():
        raise SpoolError(f"not a queue id: {msg_id[:40]!r}")
    return msg_id


def _describe(exc: BaseException) -> str:
    """The error's class and SQLSTATE: never its text (it may quote a value: health content)."""
    state = getattr(exc, "sqlstate", None)
    return f"{type(exc).__name__}" + (f" ({state})" if state else "")


def _error(what: str, exc: psycopg.Error) -> SpoolError:
    """`StoreUnavailable` for a server that is not there or not usable now, else `SpoolError`."""
    state = exc.sqlstate or ""
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) or state[:2] in _UNAVAILABLE_CLASSES:
        return StoreUnavailable(f"cannot {what}: queue store unavailable ({_describe(exc)})")
    return SpoolError(f"cannot {what}: {_describe(exc)}")


__all__ = ["CHANNEL", "PENDING", "PgSpool", "StoreUnavailable"]
