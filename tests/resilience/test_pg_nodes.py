"""Several gateway nodes on one real PostgreSQL (issue 18, "Done when"): kill a node mid-burst,
stop PostgreSQL under load. Real `msgw serve` processes on real sockets, the real server of
`tests/pgcluster.py`, a recording aiosmtpd sink as the next hop; every message carries an
``X-Seq`` tag, so what got a 250 is compared with what the sink received.

Sizes: ``MSGW_PG_NODES_COUNT`` (default 2,000 messages for the kill), ``MSGW_PG_OUTAGE_SECONDS``
(default 10 s of PostgreSQL down, to keep `.ci/run` within its budget; issue 18 measured 30 s:
``MSGW_PG_OUTAGE_SECONDS=30``),
``MSGW_PG_NODES_WORKERS`` (worker processes per node, default 1). The figures are recorded in
the resilience summary table."""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from pathlib import Path

import pytest

from tests.e2e.harness import Sink
from tests.resilience.conftest import ResilienceReport
from tests.resilience.pgnodes_support import (
    POLL_SECONDS,
    Attempt,
    Node,
    ReplyTimer,
    held_by,
    longest_gap,
    node_config,
    queue_rows,
    still_held,
    takeovers,
)
from tests.resilience.support import counts

pytestmark = [pytest.mark.postgresql, pytest.mark.slow]

COUNT = int(os.environ.get("MSGW_PG_NODES_COUNT", "2000") or "2000")
OUTAGE = float(os.environ.get("MSGW_PG_OUTAGE_SECONDS", "10") or "10")
#: Worker processes per node (1: simpler to kill; the kill takes the node's whole process group).
WORKERS = int(os.environ.get("MSGW_PG_NODES_WORKERS", "1") or "1")
LEASE = 5.0
CLIENTS_PER_NODE = 4


def _drain(sink: Sink, pg_dsn: str, acked: set[str], timeout: float) -> None:
    """Wait until every acknowledged message reached the sink and the shared queue is empty."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if acked <= set(counts(sink.handler.snapshot())) and queue_rows(pg_dsn) == 0:
            return
        time.sleep(0.25)


def _accepting_since(attempts: list[Attempt], lock: threading.Lock, since: float, steady: float) -> bool:
    """A 250 came `steady` seconds ago or more, after `since`: acceptance has resumed."""
    with lock:
        first = min((a.ended for a in attempts if a.code == 250 and a.ended >= since), default=None)
    return first is not None and time.monotonic() - first >= steady


def test_kill_a_node_mid_burst_loses_nothing_acknowledged(pg_cluster, pg_dsn, tmp_path: Path,
                                                          resilience_report: ResilienceReport) -> None:
    """Two nodes, half the clients on each; SIGKILL of node A's whole process group once half the
    burst is acknowledged, A's clients then send to B. Nothing acknowledged is lost, B keeps
    answering 250s, A's claims are taken by B once their lease lapsed, duplicates ≤ takeovers."""
    started = time.monotonic()
    sink = Sink().start()
    names = [f"pgkill-{n:05d}" for n in range(COUNT)]
    pending = {"gw-a": deque(names[: COUNT // 2]), "gw-b": deque(names[COUNT // 2:])}
    acked: dict[str, str] = {}
    b_acks: list[float] = []
    tries = [0]
    lock = threading.Lock()
    killed = threading.Event()
    try:
        setups = {name: node_config(tmp_path / name, sink_port=sink.port, dsn=pg_dsn,
                                    password_file=pg_cluster.password_file, node=name, lease=f"{LEASE:g}s",
                                    workers=WORKERS)
                  for name in ("gw-a", "gw-b")}
        node_a, node_b = Node(setups["gw-a"]).start(), Node(setups["gw-b"]).start()
        try:
            def client(home: str) -> None:
                queue = pending[home]
                while True:
                    target = "gw-b" if killed.is_set() else home
                    try:
                        tag = queue.popleft()
                    except IndexError:
                        return
                    with lock:
                        tries[0] += 1
                    attempt = ReplyTimer(setups[target].relay_port).send(tag)
                    if attempt.code == 250:
                        with lock:
                            acked[tag] = target
                            if target == "gw-b":
                                b_acks.append(attempt.ended)
                    else:  # no 250, no promise: the client sends it again (to B once A is gone)
                        queue.append(tag)
                        time.sleep(0.05)

            threads = [threading.Thread(target=client, args=(home,), daemon=True)
                       for home in ("gw-a", "gw-b") for _ in range(CLIENTS_PER_NODE)]
            for t in threads:
                t.start()
            while len(acked) < COUNT // 2:
                time.sleep(0.002)
            node_a.kill()
            killed_at = time.monotonic()
            killed.set()
            in_flight, longest_lease = held_by(pg_dsn, "gw-a")  # A is dead: this set no longer changes
            acked_by_a = sum(1 for n in acked.values() if n == "gw-a")
            reclaimed_after = None
            while reclaimed_after is None and time.monotonic() - killed_at < 10 * LEASE:
                if still_held(pg_dsn, "gw-a", list(in_flight)) == 0:
                    reclaimed_after = time.monotonic() - killed_at
                else:
                    time.sleep(0.05)
            for t in threads:
                t.join(timeout=300)
            assert not any(t.is_alive() for t in threads), "the clients did not finish"
            _drain(sink, pg_dsn, set(acked), timeout=120)
            taken, left = takeovers(pg_dsn), queue_rows(pg_dsn)
        finally:
            node_b.stop()
            node_a.stop()
        seen = counts(sink.handler.snapshot())
        lost = sorted(set(acked) - set(seen))
        duplicated = {k: v for k, v in seen.items() if v > 1}
        extra_copies = sum(v - 1 for v in duplicated.values())
        gap = longest_gap(b_acks)  # from B's first 250 to its last, across the kill
        reclaimed = "never" if reclaimed_after is None else f"{reclaimed_after:.2f}"
        resilience_report.record(
            f"pg nodes: SIGKILL node A at 50 %, {COUNT} burst", sent=COUNT, acknowledged=len(acked),
            delivered=len(seen), lost=len(lost), duplicated=len(duplicated),
            note=f"A acked {acked_by_a}; A held {len(in_flight)} lease(s) at the kill (longest {longest_lease:.1f}s"
                 f" left), all re-claimed after {reclaimed}s; B's longest gap between 250s {gap:.2f}s;"
                 f" {taken} takeover(s), {extra_copies} extra copies;"
                 f" {tries[0]} SMTP tries; {time.monotonic() - started:.0f}s")
        print(f"pg nodes kill: {resilience_report.rows[-1].note}")
        assert len(acked) == COUNT, f"{COUNT - len(acked)} message(s) never acknowledged"
        assert not lost, f"{len(lost)} acknowledged message(s) lost: {lost[:5]}"
        assert set(seen) <= set(names)
        # What A delivered but had no time to remove is removed by B (no restart of A needed).
        assert left == 0, f"{left} message(s) left in the shared queue"
        # The issue: the other node keeps accepting, no gap over 2 s between two of its 250s.
        assert gap <= 2.0, f"node B stopped answering 250 for {gap:.2f}s"
        # A's in-flight work is taken once its lease lapsed, plus one poll of B's runner (the
        # watcher here polls every 50 ms: that is the margin, with the kill's own time).
        assert reclaimed_after is not None, f"{still_held(pg_dsn, 'gw-a', list(in_flight))} claim(s) never taken"
        assert reclaimed_after <= longest_lease + POLL_SECONDS + 0.5, (reclaimed_after, longest_lease)
        # At least once: a copy in flight at the failure may go twice, and only such copies.
        assert extra_copies <= taken, (duplicated, taken)
    finally:
        sink.stop()


def test_postgresql_stopped_under_load_gives_4xx_then_resumes_without_restart(
        pg_cluster, pg_dsn, tmp_path: Path, resilience_report: ResilienceReport) -> None:
    """A steady stream of messages into two nodes; PostgreSQL stopped (``immediate``: a crash) for
    ``MSGW_PG_OUTAGE_SECONDS``, then started again. While it is down no 250, every reply a 4xx
    within 5 s; within 10 s of its return the same processes accept again; nothing acknowledged
    is lost."""
    started = time.monotonic()
    sink = Sink().start()
    attempts: list[Attempt] = []
    lock = threading.Lock()
    stop = threading.Event()
    seq = iter(range(1_000_000))
    try:
        setups = [node_config(tmp_path / name, sink_port=sink.port, dsn=pg_dsn, password_file=pg_cluster.password_file,
                              node=name, connect_timeout="2s", workers=WORKERS)
                  for name in ("gw-a", "gw-b")]
        with Node(setups[0]), Node(setups[1]):
            def client(port: int) -> None:
                timer = ReplyTimer(port)
                while not stop.is_set():
                    with lock:
                        tag = f"pgdown-{next(seq):05d}"
                    attempt = timer.send(tag)
                    with lock:
                        attempts.append(attempt)
                    time.sleep(0.05 if attempt.code == 250 else 0.2)

            threads = [threading.Thread(target=client, args=(s.relay_port,), daemon=True)
                       for s in setups for _ in (0, 1)]
            for t in threads:
                t.start()
            time.sleep(3)  # steady state before the outage
            try:
                pg_cluster.stop("immediate")
                down_at = time.monotonic()
                time.sleep(OUTAGE)
            finally:
                up_begin = time.monotonic()
                pg_cluster.start()
            up_at = time.monotonic()
            # Long enough to see acceptance resume (the assertion below allows 10 s), then 2 s more.
            while time.monotonic() - up_at < 15 and not _accepting_since(attempts, lock, up_at, 2.0):
                time.sleep(0.5)
            stop.set()
            for t in threads:
                t.join(timeout=60)
            acked = {a.tag for a in attempts if a.code == 250}
            _drain(sink, pg_dsn, acked, timeout=120)
            left = queue_rows(pg_dsn)
        seen = counts(sink.handler.snapshot())
        during = [a for a in attempts if a.started >= down_at and a.ended <= up_begin]
        after = sorted((a for a in attempts if a.code == 250 and a.ended >= up_at), key=lambda a: a.ended)
        resumed_after = after[0].ended - up_at if after else None
        lost = sorted(acked - set(seen))
        duplicated = {k: v for k, v in seen.items() if v > 1}
        slowest = max((a.longest_reply for a in during), default=0.0)
        codes = sorted({a.code for a in during})
        resilience_report.record(
            f"pg down {OUTAGE:g}s under load, 2 nodes", sent=len(attempts), acknowledged=len(acked),
            delivered=len(seen), lost=len(lost), duplicated=len(duplicated),
            note=f"{len(during)} tries while down, codes {codes}, slowest reply {slowest:.2f}s; first 250"
                 f" {resumed_after if resumed_after is None else round(resumed_after, 2)}s after the return;"
                 f" {time.monotonic() - started:.0f}s")
        print(f"pg outage: {resilience_report.rows[-1].note}")
        assert during, "no message was tried while PostgreSQL was down"
        assert all(400 <= a.code < 500 for a in during), [(a.code, a.detail) for a in during if not 400 <= a.code < 500]
        assert slowest <= 5.0, f"a reply took {slowest:.2f}s while PostgreSQL was down"
        assert resumed_after is not None and resumed_after <= 10.0, resumed_after
        assert not lost, f"{len(lost)} acknowledged message(s) lost: {lost[:5]}"
        assert left == 0, f"{left} message(s) left in the shared queue"
    finally:
        sink.stop()
