"""The audit writer under a steady trickle of records (issue 15, fewer durable writes).

A gateway under load queues two records per message a few milliseconds apart; each batch costs
three fsyncs and a head rename, so the writer takes at most one batch per `BATCH_INTERVAL`
instead of one per record or two. Nothing here measures speed: the counts are of batches and
fsyncs, and every record must still be written, in order, with a verifiable chain."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from gateway.audit import BATCH_INTERVAL, LINGER, AuditError, AuditTrail, AuditWriter


def _fields(i: int) -> dict:
    return {"message_id": f"q{i}", "sender": "lis@lab.test", "recipient": f"dr{i}@mssante.test",
            "decision": "smime" if i % 2 == 0 else "outcome"}


class _Batches:
    """Counts the writer's batches (each still written) and the real fsyncs."""

    def __init__(self, trail: AuditTrail, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sizes: list[int] = []
        self.fsyncs = 0
        real_append, real_fsync = trail._append_clean, os.fsync

        def append_many(records: list[dict]) -> list[dict]:
            self.sizes.append(len(records))
            return real_append(records)

        def fsync(fd: int) -> None:
            self.fsyncs += 1
            real_fsync(fd)

        monkeypatch.setattr(trail, "_append_clean", append_many)
        monkeypatch.setattr(os, "fsync", fsync)


def test_a_steady_trickle_is_written_in_few_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One record every ~2 ms for ~0.5 s (a worker's two records per message at ~250 msg/s): with
    a 2 ms linger alone that was about one batch per record (three fsyncs each); now at most one
    batch per BATCH_INTERVAL, and every record is there, in order, chained."""
    trail = AuditTrail(tmp_path / "audit.jsonl")
    batches = _Batches(trail, monkeypatch)
    failures: list[AuditError] = []
    writer = AuditWriter(trail, on_error=failures.append)
    n, gap = 250, LINGER
    start = time.monotonic()
    for i in range(n):
        writer(**_fields(i))
        time.sleep(gap)
    elapsed = time.monotonic() - start
    writer.close()
    assert failures == []
    report = trail.verify()
    assert report.ok and report.records == n, report
    assert [r["message_id"] for r in trail.records()] == [f"q{i}" for i in range(n)]
    assert sum(batches.sizes) == n
    # The sender's own pace is what the machine allows: the bound follows the time it took.
    most = elapsed / BATCH_INTERVAL + 3
    assert len(batches.sizes) <= most, (len(batches.sizes), elapsed)
    assert batches.fsyncs <= 3 * len(batches.sizes)


def test_a_lone_record_is_not_held_for_the_interval(tmp_path: Path) -> None:
    """An idle gateway's record is written after the short linger, not after BATCH_INTERVAL: the
    interval counts from the previous batch. (Generous bound: only that it is written at all
    without close(), soon.)"""
    trail = AuditTrail(tmp_path / "audit.jsonl")
    writer = AuditWriter(trail)
    try:
        time.sleep(2 * BATCH_INTERVAL)
        writer(**_fields(0))
        deadline = time.monotonic() + 10
        while not list(trail.records()) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert [r["message_id"] for r in trail.records()] == ["q0"]
    finally:
        writer.close()


def test_close_during_the_interval_writes_everything_at_once(tmp_path: Path) -> None:
    """close() from another thread while the writer waits out the interval: every record queued
    before it is written, none after it is silently dropped."""
    trail = AuditTrail(tmp_path / "audit.jsonl")
    failures: list[AuditError] = []
    writer = AuditWriter(trail, on_error=failures.append)
    writer(**_fields(0))
    time.sleep(0.05)  # the first batch is written; the next waits for the interval
    for i in range(1, 100):
        writer(**_fields(i))
    closer = threading.Thread(target=writer.close)
    closer.start()
    closer.join(timeout=30)
    assert not closer.is_alive()
    writer(**_fields(100))
    assert [r["message_id"] for r in trail.records()] == [f"q{i}" for i in range(100)]
    assert trail.verify().ok
    assert len(failures) == 1 and "closed" in str(failures[0])


_TRICKLE_AND_WAIT = """
import sys, time
from pathlib import Path
from gateway.audit import AuditTrail, AuditWriter

trail = AuditTrail(Path(sys.argv[1]))
writer = AuditWriter(trail, on_error=lambda exc: print("ERR", exc, flush=True))
print("go", flush=True)
for i in range(100000):
    writer(message_id=f"q{i}", sender="lis@lab.test", recipient=f"dr{i}@mssante.test", decision="outcome")
    time.sleep(0.0005)
"""


@pytest.mark.parametrize("seed", range(3))
def test_a_writer_killed_between_or_during_batches_leaves_a_verifiable_prefix(tmp_path: Path, seed: int) -> None:
    """kill -9 of a process whose writer is waiting out BATCH_INTERVAL or writing a batch: the
    trail, once the next append repaired a torn tail, verifies and holds q0, q1, … in order with
    no gap (what was written before the kill is all there; what was only queued is gone)."""
    import signal
    import subprocess
    import sys

    from tests.conftest import ROOT

    path = tmp_path / "audit.jsonl"
    child = subprocess.Popen([sys.executable, "-c", _TRICKLE_AND_WAIT, str(path)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline().strip() == b"go"
    time.sleep(0.3 + 0.07 * seed)  # not a multiple of the interval: the kill lands anywhere
    child.send_signal(signal.SIGKILL)
    out, err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL and b"ERR" not in out, err.decode()[-800:]
    trail = AuditTrail(path)
    after = trail.append(message_id="after")
    report = trail.verify()
    assert report.ok, str(report)
    ids = [r["message_id"] for r in trail.records()]
    assert ids[-1] == "after" and len(ids) > 1, "batches were written before the kill"
    assert ids[:-1] == [f"q{i}" for i in range(len(ids) - 1)]
    assert after["seq"] == len(ids)
