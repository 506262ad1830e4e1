"""Several processes on one spool (issue 15, item 6): each message is taken by one owner only,
claims are freed by `release_claims`, and recovery never runs while another process has the
spool open (it would orphan a message between its rename and its commit). Real files, real
SQLite, real processes."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import threading
import time
from pathlib import Path

from gateway.spool import Outcome, RecipientState, Spool
from tests.conftest import ROOT

BODY = b"From: lab@lab.example\r\nSubject: r\r\n\r\nbody\r\n"


def _seed(root: Path, n: int) -> list[str]:
    """`n` messages accepted by a single process (no owner): unclaimed."""
    with Spool(root).open() as spool:
        return [spool.accept("lab@lab.example", [f"dr{i}@y.example"], BODY, lifetime=3600) for i in range(n)]


def _drain(spool: Spool, taken: list[str], step: str) -> None:
    """Take what is due in small bites until nothing is left for this owner (what is in hand is
    excluded, as the runner does)."""
    due = spool.due_received if step == "received" else spool.due_prepared
    idle = 0
    while idle < 3:
        got = due(limit=3, exclude=set(taken))
        taken += [m.id for m in got]
        idle = 0 if got else idle + 1


def test_two_owners_in_one_process_take_each_message_once(tmp_path: Path) -> None:
    seeded = set(_seed(tmp_path, 40))
    w0 = Spool(tmp_path, owner="w0").open()
    w1 = Spool(tmp_path, owner="w1").open()
    try:
        mine0 = w0.accept("lab@lab.example", ["a@y.example"], BODY, lifetime=3600)
        mine1 = w1.accept("lab@lab.example", ["b@y.example"], BODY, lifetime=3600)
        taken: dict[str, list[str]] = {"w0": [], "w1": []}
        threads = [threading.Thread(target=_drain, args=(s, taken[s.owner], "received")) for s in (w0, w1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        both = taken["w0"] + taken["w1"]
        assert sorted(both) == sorted(seeded | {mine0, mine1}), "every message taken exactly once"
        assert mine0 in taken["w0"] and mine1 in taken["w1"], "what a process accepted is its own"
        # Taken again by its owner (still claimed), never by the other.
        assert {m.id for m in w0.due_received(limit=100)} == set(taken["w0"])
        assert {m.id for m in w1.due_received(limit=100)} == set(taken["w1"])
        assert w1.next_due_time() is not None
        # A worker gone: its claims freed, the other one takes its messages.
        assert w0.release_claims("w0") == len(taken["w0"])
        assert {m.id for m in w1.due_received(limit=100)} == set(both)
        assert w0.due_received(limit=100) == [] and w0.next_due_time() is None
        # The master frees every claim; a restarted worker frees its own on open.
        assert w0.release_claims() == len(both)
        w1.due_received(limit=5)
        w1.close()
        w1 = Spool(tmp_path, owner="w1").open()
        assert len(w0.due_received(limit=100)) == len(both)
    finally:
        w0.close()
        w1.close()


def _worker(root: str, owner: str, accepts: int, out: multiprocessing.Queue) -> None:
    """One gateway process: accepts in two threads while its loop takes and finishes what is due."""
    spool = Spool(Path(root), owner=owner).open()
    accepted: list[str] = []
    taken: list[str] = []

    def accept() -> None:
        for i in range(accepts):
            accepted.append(spool.accept("lab@lab.example", [f"{owner}-{i}@y.example"], BODY, lifetime=3600))

    feeders = [threading.Thread(target=accept) for _ in range(2)]
    for t in feeders:
        t.start()
    idle = 0
    while idle < 5 or any(t.is_alive() for t in feeders):
        got = spool.due(limit=4)
        for msg in got:
            taken.append(msg.id)
            spool.record_outcomes([Outcome(r.id, RecipientState.DELIVERED, "2.0.0") for r in msg.pending])
            spool.finish_if_done(msg.id)
        idle = 0 if got else idle + 1
        if not got:
            time.sleep(0.01)
    spool.close()
    out.put((owner, accepted, taken))


def test_two_processes_accept_and_take_due_messages_concurrently(tmp_path: Path) -> None:
    seeded = set(_seed(tmp_path, 60))
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), f"w{n}", 20, out)) for n in range(2)]
    for p in procs:
        p.start()
    results = {owner: (accepted, taken) for owner, accepted, taken in (out.get(timeout=120) for _ in procs)}
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    taken = results["w0"][1] + results["w1"][1]
    accepted = set(results["w0"][0]) | set(results["w1"][0])
    assert len(accepted) == 80
    assert sorted(taken) == sorted(seeded | accepted), "every message taken exactly once, by one process"
    for owner, (mine, got) in results.items():
        assert set(mine) <= set(got), f"{owner} delivers what it accepted"
    with Spool(tmp_path).open() as spool:
        assert spool.list() == [] and not list(spool.msg_dir.iterdir())


# A process that stops inside accept(): its file is in msg/, its row not yet committed.
_PAUSED_ACCEPT = """
import sys, time
from pathlib import Path
from gateway.spool import Spool

root = Path(sys.argv[1])
spool = Spool(root, owner="w1").open()

def pause(sql):
    if sql.startswith("INSERT INTO messages"):
        (root / "paused").touch()
        while not (root / "go").exists():
            time.sleep(0.01)

spool.db.set_trace_callback(pause)
print(spool.accept("lab@lab.example", ["a@y.example"], b"From: x\\r\\n\\r\\nbody\\r\\n", lifetime=3600), flush=True)
"""


def test_recovery_never_runs_while_another_process_has_the_spool_open(tmp_path: Path) -> None:
    _seed(tmp_path, 1)
    child = subprocess.Popen([sys.executable, "-c", _PAUSED_ACCEPT, str(tmp_path)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "paused").exists():
            assert child.poll() is None and time.monotonic() < deadline, child.stderr.read().decode()[-800:]
            time.sleep(0.01)
        assert len(list((tmp_path / "msg").iterdir())) == 2, "the second file is in msg/ without its row"
        spool = Spool(tmp_path).open()  # another gateway starting: must not recover now
        assert spool.recover()["skipped"] == 1
        assert not list(spool.orphan_dir.iterdir()), "no message orphaned under another process's feet"
        (tmp_path / "go").touch()
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err.decode()[-800:]
        msg_id = out.decode().strip()
        assert spool.get(msg_id) is not None and spool.message_bytes(msg_id).endswith(b"body\r\n")
        spool.close()
        # Once alone, recovery runs again, and finds nothing to orphan.
        with Spool(tmp_path).open() as alone:
            assert alone.recover().get("skipped") is None
            assert not list(alone.orphan_dir.iterdir()) and alone.get(msg_id) is not None
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_a_write_waits_for_another_process_s_transaction_instead_of_failing(tmp_path: Path) -> None:
    """Another process's commit in progress (here a second connection holding the write lock)
    makes accepts and outcomes wait (busy timeout), never fail with "database is locked"."""
    import sqlite3

    spool = Spool(tmp_path, owner="w0").open()
    other = sqlite3.connect(tmp_path / "queue.sqlite", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    results: list[object] = []

    def accept(i: int) -> None:
        try:
            results.append(spool.accept("lab@lab.example", [f"dr{i}@y.example"], BODY, lifetime=3600))
        except Exception as exc:  # noqa: BLE001 - what the caller got
            results.append(exc)

    threads = [threading.Thread(target=accept, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    assert results == [], "the writes wait for the other transaction"
    other.execute("COMMIT")
    other.close()
    for t in threads:
        t.join(30)
    assert len(results) == 4 and all(isinstance(r, str) for r in results), results
    assert sorted(m.id for m in spool.due(limit=10)) == sorted(results)  # type: ignore[type-var]
    spool.close()


class _Outrun(Spool):
    """An owner whose rival claims every free candidate first, once — the race two workers run
    for real between `_due`'s SELECT and its claim, made to happen on purpose."""

    def __init__(self, root: Path, owner: str, rival: Spool) -> None:
        super().__init__(root, owner=owner)
        self.rival, self.races = rival, 1

    def _claim(self, ids: list[str]) -> set[str]:
        if self.races and ids:
            self.races -= 1
            self.rival._claim(ids)
        return super()._claim(ids)


def test_a_lost_race_for_free_messages_still_returns_this_owners_own_work(tmp_path: Path) -> None:
    """Free messages due earlier than one this owner accepted itself are all taken by the other
    owner between the SELECT and the claim: `due_received` must still return the owner's own
    message, not an empty list (the drain loops of the runner and of the tests stop on empty)."""
    _seed(tmp_path, 3)
    w1 = Spool(tmp_path, owner="w1").open()
    w0 = _Outrun(tmp_path, "w0", w1).open()
    try:
        mine = w0.accept("lab@lab.example", ["a@y.example"], BODY, lifetime=3600)
        got = [m.id for m in w0.due_received(limit=3)]
        assert got == [mine]
        assert len(w1.due_received(limit=10)) == 3  # the rival has the three it took
    finally:
        w0.close()
        w1.close()
