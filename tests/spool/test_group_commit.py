"""Group commit (issue 15, item 3): concurrent writes share one transaction and one fsync, each
caller still returns only once its own work is durable, one caller's failure stays its own, and
a kill -9 while a batch commits loses nothing that was acknowledged and half-records nothing.
Real files, real SQLite, a real SIGKILL."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import gateway.spool.store as store
from gateway.errors import SpoolError
from gateway.spool import RecipientState, Spool
from tests.conftest import ROOT

BODY = b"From: lab@lab.example\r\nSubject: r\r\n\r\nbody\r\n"


def _hold_the_committer(spool: Spool) -> tuple[threading.Thread, threading.Event]:
    """A first write that blocks inside its transaction: whatever is written meanwhile queues up
    and becomes the next batch."""
    inside, release = threading.Event(), threading.Event()

    def slow(db: sqlite3.Connection) -> None:
        inside.set()
        release.wait(30)

    holder = threading.Thread(target=spool._write, args=("hold", slow))
    holder.start()
    assert inside.wait(10)
    return holder, release


def _wait_queued(spool: Spool, n: int) -> None:
    deadline = time.monotonic() + 10
    while len(spool._pending) < n:
        assert time.monotonic() < deadline, "the writes did not queue behind the committer"
        time.sleep(0.005)


def test_concurrent_accepts_share_one_commit_and_one_directory_fsync(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path).open()
    synced: list[str] = []
    real = store.fsync_dir
    monkeypatch.setattr(store, "fsync_dir", lambda path: (synced.append(str(path)), real(path))[1])
    holder, release = _hold_the_committer(spool)
    ids: list[str] = []
    threads = [threading.Thread(target=lambda i=i: ids.append(
        spool.accept("lab@lab.example", [f"dr{i}@y.example"], BODY, lifetime=3600))) for i in range(6)]
    for t in threads:
        t.start()
    _wait_queued(spool, 6)
    assert ids == [], "no accept returns before its batch is committed"
    release.set()
    for t in [holder, *threads]:
        t.join(30)
    assert len(ids) == 6 and spool.batches == 1 and spool.batched_works == 6
    assert synced == [str(spool.msg_dir)], "one directory fsync for the six renames"
    spool.close()
    with Spool(tmp_path).open() as again:
        assert sorted(m.id for m in again.list()) == sorted(ids)
        assert all(again.message_bytes(i) == BODY for i in ids)


def test_a_failing_work_does_not_poison_its_batch(tmp_path: Path) -> None:
    spool = Spool(tmp_path).open()
    first = spool.accept("lab@lab.example", ["a@y.example"], BODY, lifetime=3600)
    rid = spool.get(first).recipients[0].id
    holder, release = _hold_the_committer(spool)
    results: dict[str, object] = {}

    def broken(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO messages (id) VALUES ('X')")  # NOT NULL columns: refused

    def call(name: str, fn, *args, **kwargs) -> None:
        try:
            results[name] = fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - what each caller got
            results[name] = exc

    threads = [threading.Thread(target=call, args=("broken", spool._write, "do something broken", broken)),
               threading.Thread(target=call, args=("accept", spool.accept, "lab@lab.example", ["b@y.example"], BODY),
                                kwargs={"lifetime": 3600}),
               threading.Thread(target=call, args=("delivered", spool.mark_delivered, [rid]),
                                kwargs={"status": "2.0.0"})]
    for t in threads:
        t.start()
    _wait_queued(spool, 3)
    release.set()
    for t in [holder, *threads]:
        t.join(30)
    assert isinstance(results["broken"], SpoolError) and results["broken"].status == "4.3.1"
    assert "do something broken" in str(results["broken"])
    assert isinstance(results["accept"], str) and spool.get(results["accept"]) is not None
    assert spool.get(first).recipients[0].state is RecipientState.DELIVERED
    assert spool.batches == 1 and spool.batched_works == 2, "the two good works committed together"


# A process accepting from 6 threads that prints each queue id once accept() returned; it dies by
# SIGKILL either at random (the parent kills it) or, with "at-commit", as a batch of several
# works is about to commit (files renamed, rows written, transaction not committed).
_ACCEPT_AND_DIE = """
import os, signal, sys, threading
from pathlib import Path
from gateway.spool import Spool

root, point = Path(sys.argv[1]), sys.argv[2]
spool = Spool(root).open()
out = threading.Lock()

works = []

def die_at(sql):
    # Count the works of the open transaction (one SAVEPOINT each); die at the commit of a batch
    # of several, once a few batches have gone through.
    if sql == "BEGIN IMMEDIATE":
        works.clear()
    elif sql.startswith("SAVEPOINT"):
        works.append(sql)
    elif point == "at-commit" and sql == "COMMIT" and len(works) >= 2 and spool.batches >= 2:
        os.kill(os.getpid(), signal.SIGKILL)

def feed(n):
    for i in range(10000):
        msg_id = spool.accept("lab@lab.example", [f"t{n}-{i}@y.example", "x@y.example"], BODY % i,
                              lifetime=3600)
        with out:
            print(msg_id, i, flush=True)

spool.db.set_trace_callback(die_at)
threads = [threading.Thread(target=feed, args=(n,)) for n in range(6)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


def _accept_until_killed(root: Path, point: str) -> dict[str, int]:
    script = f"BODY = {BODY + b'%d'!r}\n" + _ACCEPT_AND_DIE
    proc = subprocess.Popen([sys.executable, "-c", script, str(root), point], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    acked: dict[str, int] = {}
    assert proc.stdout is not None
    if point == "random":
        for line in proc.stdout:
            msg_id, i = line.decode().split()
            acked[msg_id] = int(i)
            if len(acked) >= 150:
                proc.kill()
                break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-800:]
    for line in out.decode().splitlines():
        # The kill may cut the last line anywhere, also just after the space ("ID "): a line
        # counts only whole (both fields).
        if len(parts := line.split()) == 2:
            msg_id, i = parts
            acked[msg_id] = int(i)
    return acked


@pytest.mark.parametrize("point", ["at-commit", "random"])
def test_a_kill_while_a_batch_commits_loses_nothing_acknowledged(tmp_path: Path, point: str) -> None:
    acked = _accept_until_killed(tmp_path, point)
    assert acked, "some accepts returned before the kill"
    with Spool(tmp_path).open() as spool:
        queued = {m.id: m for m in spool.list()}
        assert set(acked) <= set(queued), "every message whose accept() returned is there"
        for msg_id, msg in queued.items():  # none half-recorded: a row has its file and both recipients
            assert len(msg.recipients) == 2
            assert spool.message_bytes(msg_id).startswith(BODY) and len(spool.message_bytes(msg_id)) == msg.size
        assert {f.name for f in spool.msg_dir.iterdir()} == set(queued)
        orphans = {f.name for f in spool.orphan_dir.iterdir()}
        assert not orphans & set(acked)
        if point == "at-commit":
            assert len(orphans) >= 2, "the killed batch held several renamed, unrecorded files"
