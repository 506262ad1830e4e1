"""Audit anchors across nodes (issue 18, item 5): each node keeps its own hash-chained trail
(`gateway.audit`, format unchanged); the nodes publish their chain heads in the shared
PostgreSQL, and one of them — the leader, elected with ``pg_try_advisory_lock`` — writes
periodic *anchors*: the hash of every node's head and of the previous anchor.

Why: a node's trail alone cannot tell a consistent forgery (records edited, deleted, reordered
or cut off, then the chain and the head file rewritten to match) from the truth. Once an anchor
names ``(node, seq, hash)`` outside that node, the forger would also have to rewrite the shared
database (another machine, another administrator, a synchronous standby). The verifier
(`verify_trails`) checks every chain and then every anchor against the chains: an anchored
record that is not where the anchor says, with the hash it says, is reported with its node and
seq; a trail that ends before an anchored seq is reported truncated.

Leader election: the advisory lock is a session lock held on one dedicated connection by the
anchoring thread; when that node dies or loses its connection, PostgreSQL releases the lock and
the next node's attempt (every ``interval``) takes over. Only the leader writes anchors; every
node publishes its head. An event is anchored within two intervals (the head is published, then
anchored at the leader's next turn): `ANCHOR_INTERVAL` 60 s keeps that under the issue's 5 min.
Anchors older than the retention are deleted (default 1 year; the MSSanté functional traces are
kept at least 6 months). What anchors hold is a node name, a seq and a hash: no content.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg

from gateway.audit import GENESIS, AuditTrail
from gateway.errors import TemporaryError
from gateway.logs import event
from gateway.pgstore import PgDatabase

log = logging.getLogger("gateway.audit")

#: Seconds between two head publications / anchor attempts.
ANCHOR_INTERVAL = 60.0
#: Default retention of the anchors (seconds): one year.
RETENTION = 365 * 86400.0
_LOCK_KEY = "msgw-audit-anchor-leader"
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_heads (
    node TEXT PRIMARY KEY,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    published DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_anchors (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created DOUBLE PRECISION NOT NULL,
    leader TEXT NOT NULL,
    heads TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
)
"""


class AnchorUnavailable(TemporaryError):
    """The shared database cannot take or give anchors now."""

    code = "audit-anchor"
    status = "4.3.0"


@dataclass(frozen=True)
class Anchor:
    id: int
    created: float
    leader: str
    #: node → (seq, hash) of its chain head when anchored.
    heads: dict[str, tuple[int, str]]
    prev_hash: str
    hash: str


def anchor_hash(created: float, leader: str, heads: Mapping[str, tuple[int, str]], prev_hash: str) -> str:
    """SHA-256 over the canonical JSON of an anchor's fields (sorted keys, compact, UTF-8)."""
    body = {"created": created, "leader": leader, "prev_hash": prev_hash,
            "heads": {n: [int(s), h] for n, (s, h) in sorted(heads.items())}}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class AnchorStore:
    """The ``audit_heads`` and ``audit_anchors`` tables; the leader's lock on its own connection."""

    def __init__(self, dsn: str, *, node: str, password: str | None = None, connect_timeout: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.node = node
        self.clock = clock
        self._dsn, self._password, self._timeout = dsn, password, connect_timeout
        self._db = PgDatabase(dsn, error=AnchorUnavailable, what="the audit anchors", password=password,
                              connect_timeout=connect_timeout, pool_size=2, application="msgw-audit")
        self._leader_conn: psycopg.Connection[Any] | None = None
        try:
            self._db.ensure_schema("audit-anchors", SCHEMA_VERSION, _SCHEMA)
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        self.resign()
        self._db.close()

    # -- every node --------------------------------------------------------------------------
    def publish_head(self, trail: AuditTrail) -> tuple[int, str] | None:
        """Publish this node's chain head (from its head file); None when the trail is empty."""
        head = trail.head()
        if head is None or head[0] <= 0:
            return None
        with self._db.transaction("publish a head in") as conn:
            conn.execute("INSERT INTO audit_heads (node, seq, hash, published) VALUES (%s, %s, %s, %s) "
                         "ON CONFLICT (node) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, "
                         "published = excluded.published WHERE audit_heads.seq <= excluded.seq",
                         (self.node, head[0], head[1], self.clock()))
        return head

    # -- the leader --------------------------------------------------------------------------
    @property
    def leading(self) -> bool:
        return self._leader_conn is not None and not self._leader_conn.closed

    def try_lead(self) -> bool:
        """Take the leadership if no live node holds it (``pg_try_advisory_lock`` on a session of
        its own: released by PostgreSQL when this process or its connection dies)."""
        if self.leading:
            conn = self._leader_conn
            assert conn is not None
            try:
                conn.execute("SELECT 1")
                return True
            except psycopg.Error:
                self.resign()
        try:
            conn = psycopg.connect(self._dsn, password=self._password, autocommit=True,
                                   connect_timeout=max(2, int(self._timeout + 0.999)))
        except psycopg.Error as exc:
            raise AnchorUnavailable(f"cannot reach the audit anchors in PostgreSQL ({type(exc).__name__})") from None
        try:
            got = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (_LOCK_KEY,)).fetchone()
        except psycopg.Error as exc:
            conn.close()
            raise AnchorUnavailable(f"cannot elect the anchoring node ({type(exc).__name__})") from None
        if got and got[0]:
            self._leader_conn = conn
            return True
        conn.close()
        return False

    def resign(self) -> None:
        if self._leader_conn is not None:
            try:
                self._leader_conn.close()  # the session lock goes with the session
            finally:
                self._leader_conn = None

    def write_anchor(self, *, force: bool = False) -> Anchor | None:
        """The leader anchors the published heads (only when one moved since the last anchor,
        unless `force`); None when nothing new."""
        if not self.leading:
            raise AnchorUnavailable("only the elected node writes anchors")
        now = self.clock()
        with self._db.transaction("write an anchor in") as conn:
            heads = {n: (int(s), h) for n, s, h in conn.execute("SELECT node, seq, hash FROM audit_heads")}
            last = conn.execute("SELECT heads, hash FROM audit_anchors ORDER BY id DESC LIMIT 1").fetchone()
            prev = last[1] if last else GENESIS
            if last is not None and not force and _heads(last[0]) == heads:
                return None
            if not heads:
                return None
            digest = anchor_hash(now, self.node, heads, prev)
            row = conn.execute("INSERT INTO audit_anchors (created, leader, heads, prev_hash, hash) "
                               "VALUES (%s, %s, %s, %s, %s) RETURNING id",
                               (now, self.node, _heads_json(heads), prev, digest)).fetchone()
        return Anchor(int(row[0]) if row else 0, now, self.node, heads, prev, digest)

    def prune(self, retention: float = RETENTION) -> int:
        """Delete anchors older than `retention` seconds (the newest is always kept)."""
        with self._db.transaction("prune the anchors in") as conn:
            cur = conn.execute("DELETE FROM audit_anchors WHERE created < %s AND id < "
                               "(SELECT max(id) FROM audit_anchors)", (self.clock() - retention,))
            return cur.rowcount

    def anchors(self) -> list[Anchor]:
        with self._db.transaction("read the anchors in") as conn:
            rows = conn.execute("SELECT id, created, leader, heads, prev_hash, hash FROM audit_anchors "
                                "ORDER BY id").fetchall()
        return [Anchor(int(i), float(c), ld, _heads(hs), p, h) for i, c, ld, hs, p, h in rows]


def _heads_json(heads: Mapping[str, tuple[int, str]]) -> str:
    return json.dumps({n: [s, h] for n, (s, h) in sorted(heads.items())}, sort_keys=True, separators=(",", ":"))


def _heads(text: str) -> dict[str, tuple[int, str]]:
    return {n: (int(v[0]), str(v[1])) for n, v in json.loads(text).items()}


# -- the verifier ------------------------------------------------------------------------------

@dataclass
class AnchorReport:
    """Every chain and every anchor checked together; `problems` say node, seq and why."""

    ok: bool = True
    anchors: int = 0
    records: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def fail(self, problem: str) -> None:
        self.ok = False
        self.problems.append(problem)

    def __str__(self) -> str:
        if self.ok:
            counts = ", ".join(f"{n}: {c}" for n, c in sorted(self.records.items()))
            return f"audit trails and {self.anchors} anchor(s) agree ({counts})"
        return "audit anchors: " + "; ".join(self.problems)


def verify_trails(trails: Mapping[str, AuditTrail], anchors: list[Anchor], *,
                  require_all: bool = True) -> AnchorReport:
    """Check each node's chain (`AuditTrail.verify`), the anchors' own chain, and every anchored
    ``(node, seq, hash)`` against the node's trail. A node named by an anchor whose trail is not
    given is a problem (the verification would be partial), unless not `require_all`."""
    report = AnchorReport(anchors=len(anchors))
    hashes: dict[str, dict[int, str]] = {}
    for node, trail in sorted(trails.items()):
        chain = trail.verify()
        report.records[node] = chain.records
        if not chain.ok:
            report.fail(f"node {node}: {chain}")
        hashes[node] = {}
        for rec in trail.records():
            seq = rec.get("seq")
            if isinstance(seq, int) and seq not in hashes[node]:
                hashes[node][seq] = str(rec.get("hash"))
    prev: str | None = None
    for anchor in anchors:
        if anchor_hash(anchor.created, anchor.leader, anchor.heads, anchor.prev_hash) != anchor.hash:
            report.fail(f"anchor {anchor.id} modified (hash mismatch)")
        if prev is not None and anchor.prev_hash != prev:
            report.fail(f"anchor {anchor.id} does not follow the previous anchor (one deleted or replaced)")
        prev = anchor.hash
        for node, (seq, digest) in sorted(anchor.heads.items()):
            if node not in hashes:
                if not require_all:
                    continue
                report.fail(f"node {node}: no trail given (anchored up to seq {seq})")
                continue
            found = hashes[node].get(seq)
            if found is None:
                last = max(hashes[node], default=0)
                report.fail(f"node {node}: trail truncated or records deleted: anchor {anchor.id} names seq {seq}, "
                            f"the trail ends at seq {last}")
            elif found != digest:
                report.fail(f"node {node}: record at anchored seq {seq} differs from anchor {anchor.id} "
                            "(edited, deleted or reordered before it)")
    # one problem per node and anchor is enough to read; keep the list short
    report.problems = list(dict.fromkeys(report.problems))[:50]
    return report


# -- the running gateway -------------------------------------------------------------------------

class AnchorService:
    """A thread of the running gateway: publish this node's head every `interval`; when elected,
    write an anchor and prune old ones. Faults are logged and retried at the next turn (anchoring
    never stops mail: the trail itself is written as before)."""

    def __init__(self, store: AnchorStore, trail: AuditTrail, *, interval: float = ANCHOR_INTERVAL,
                 retention: float = RETENTION) -> None:
        self.store, self.trail, self.interval, self.retention = store, trail, interval, retention
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-anchor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def turn(self) -> Anchor | None:
        """One period's work (also what the tests call)."""
        self.store.publish_head(self.trail)
        if not self.store.try_lead():
            return None
        anchor = self.store.write_anchor()
        self.store.prune(self.retention)
        return anchor

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                anchor = self.turn()
                if anchor is not None:
                    event(log, "audit-anchored", anchor=anchor.id, nodes=len(anchor.heads))
            except Exception as exc:  # noqa: BLE001 - logged, retried next period
                event(log, "audit-anchor-failed", logging.WARNING, reason=type(exc).__name__)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.store._timeout + 5)
        self.store.close()


__all__ = ["ANCHOR_INTERVAL", "RETENTION", "Anchor", "AnchorReport", "AnchorService", "AnchorStore",
           "AnchorUnavailable", "anchor_hash", "verify_trails"]
