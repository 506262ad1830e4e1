"""`record_outcomes(outcomes, finish=msg_id)` (issue 15): the outcomes and the removal of a message
they finish in one transaction, learnt by `take_finished` without a read. Checked against the
reference path (`record_outcomes` then `finish_if_done`) on the same steps, on both backends; and,
on SQLite, a kill between the commit and the unlink of the files (the tombstone's purpose)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.errors import SpoolError
from gateway.spool import NewCopy, Outcome, QueuedMessage, QueueStore, RecipientState, Spool

ROOT = Path(__file__).resolve().parents[2]
MESSAGE = b"From: lab@lab.example\r\nSubject: r\r\n\r\nbody\r\n"
SIGNED = b"From: lab@lab.example\r\nContent-Type: multipart/signed\r\n\r\n(pretend signed)\r\n"
D, F, B, X = RecipientState.DELIVERED, RecipientState.DEFERRED, RecipientState.BOUNCED, RecipientState.DELETED

#: Steps on a message of three recipients: a list of attempts, each (recipient index, state) pairs;
#: "dsn" marks the bounces' DSNs queued, "del" deletes the message's pending recipients (operator),
#: "prep": the third recipient gets a copy of its own (two copies, one a file of its own).
SCENARIOS: dict[str, list] = {
    "all delivered at once": [[(0, D), (1, D), (2, D)]],
    "delivered in two groups": [[(0, D)], [(1, D), (2, D)]],
    "one deferred": [[(0, D), (1, F), (2, D)]],
    "deferred then delivered": [[(0, D), (1, F), (2, D)], [(1, D)]],
    "a bounce owes a DSN": [[(0, D), (1, B), (2, D)]],
    "a bounce whose DSN is queued": [[(0, D), (1, B), (2, D)], "dsn", [(0, D)]],
    "deleted by the operator, late result": ["del", [(0, D)]],
    "a recipient left unprepared": ["unprep", [(0, D), (1, D)]],
    "two copies": ["prep", [(0, D), (1, D)], [(2, D)]],
    "a result for a recipient already final": [[(0, D), (1, D), (2, D)], [(0, B)]],
}


def _message(store: QueueStore, scenario: list) -> str:
    """A prepared message of three recipients (one unprepared, or on a copy of its own, as asked)."""
    msg_id = store.accept("lab@lab.example", ["a@y.example", "b@y.example", "c@z.example"], MESSAGE, lifetime=600)
    ids = [r.id for r in _get(store, msg_id).recipients]
    if "unprep" in scenario:
        store.prepare(msg_id, [NewCopy("relay", False, MESSAGE, tuple(ids[:2]), same_as_message=True)])
    elif "prep" in scenario:
        store.prepare(msg_id, [NewCopy("relay", False, MESSAGE, tuple(ids[:2]), same_as_message=True),
                               NewCopy("signed", False, SIGNED, (ids[2],))])
    else:
        store.prepare(msg_id, [NewCopy("relay", False, MESSAGE, tuple(ids), same_as_message=True)])
    return msg_id


def _get(store: QueueStore, msg_id: str) -> QueuedMessage:
    msg = store.get(msg_id)
    assert msg is not None
    return msg


def _run(store: QueueStore, scenario: list, *, fast: bool) -> tuple[str, list[object]]:
    """Play the scenario; after each attempt, what the caller learns (finished or not) and the
    message as the store then has it (None once removed)."""
    msg_id = _message(store, scenario)
    ids = [r.id for r in _get(store, msg_id).recipients]
    seen: list[object] = []
    for step in scenario:
        if step in ("prep", "unprep"):
            continue
        if step == "dsn":
            store.mark_dsn_sent([r.id for r in _get(store, msg_id).recipients if r.state is B])
            continue
        if step == "del":
            store.delete(msg_id)  # nothing final: the message stays (deleted recipients are final)
            continue
        outcomes = [Outcome(ids[i], state, "4.0.0" if state is F else "2.0.0", "reply", "mx.y.example",
                            next_attempt=time.time() + 600 if state is F else None) for i, state in step]
        if fast:
            store.record_outcomes(outcomes, finish=msg_id)
            finished = store.take_finished(msg_id)
            assert not store.take_finished(msg_id), "taken once"
        else:
            store.record_outcomes(outcomes)
            finished = store.get(msg_id) is not None and store.finish_if_done(msg_id)
        msg = store.get(msg_id)
        seen.append((finished, None if msg is None else [(r.address, r.state, r.dsn_sent, r.copy_id is not None)
                                                          for r in msg.recipients]))
    return msg_id, seen


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_finish_with_the_outcomes_matches_record_then_finish(queue_store, name: str) -> None:
    store = queue_store()
    _, reference = _run(store, SCENARIOS[name], fast=False)
    msg_id, fast = _run(store, SCENARIOS[name], fast=True)
    assert fast == reference
    if getattr(queue_store, "backend", "") == "sqlite" and fast[-1][0]:
        assert isinstance(store, Spool)
        assert not (store.msg_dir / msg_id).exists()
        assert not any(f.name.startswith(msg_id) for f in store.copy_dir.iterdir())


def test_take_finished_is_false_for_what_it_did_not_finish(queue_store) -> None:
    store = queue_store()
    msg_id = store.accept("lab@lab.example", ["a@y.example"], MESSAGE, lifetime=600)
    rid = _get(store, msg_id).recipients[0].id
    assert not store.take_finished(msg_id)
    store.record_outcomes([Outcome(rid, D, "2.0.0")])  # no finish asked: the message stays
    assert not store.take_finished(msg_id) and store.get(msg_id) is not None
    store.record_outcomes([Outcome(rid, D, "2.0.0")], finish=msg_id)  # already final: finished now
    assert store.take_finished(msg_id) and store.get(msg_id) is None
    with pytest.raises(SpoolError):
        store.record_outcomes([Outcome(rid, D, "2.0.0")], finish="../x")
    store.record_outcomes([], finish=msg_id)  # nothing to write: nothing done
    assert not store.take_finished(msg_id)


def test_the_finish_commits_with_other_writes_of_its_batch(tmp_path: Path) -> None:
    """A finishing work in a group commit with accepts: each its own result, tombstones cleared by
    the next finishing transaction once the files are gone."""
    store = Spool(tmp_path).open()
    try:
        ids = []
        for _ in range(3):
            msg_id = store.accept("lab@lab.example", ["a@y.example"], MESSAGE, lifetime=600)
            store.record_outcomes([Outcome(_get(store, msg_id).recipients[0].id, D, "2.0.0")], finish=msg_id)
            ids.append(msg_id)
        assert all(store.take_finished(i) for i in ids)
        assert not list(store.msg_dir.iterdir())
        tombs = {r[0] for r in store.db.execute("SELECT id FROM finished")}
        assert tombs == {ids[-1]}, "each finish deletes the tombstones of the ones before"
    finally:
        store.close()


# Accepts a message, kills itself (SIGKILL) right after the transaction that finished it
# committed, before its files are unlinked: what a crash between the two leaves.
_FINISH_AND_DIE = """
import os, signal, sys
from pathlib import Path
from gateway.spool import NewCopy, Outcome, RecipientState, Spool

spool = Spool(Path(sys.argv[1])).open()
msg_id = spool.accept("lab@lab.example", ["a@y.example", "b@y.example"], b"m\\r\\n", lifetime=600)
a, b = (r.id for r in spool.get(msg_id).recipients)
spool.prepare(msg_id, [NewCopy("relay", False, b"m\\r\\n", (a,), same_as_message=True),
                       NewCopy("signed", False, b"signed\\r\\n", (b,))])
print(msg_id, flush=True)
Spool._unlink_finished = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
spool.record_outcomes([Outcome(a, RecipientState.DELIVERED, "2.0.0"), Outcome(b, RecipientState.DELIVERED, "2.0.0")],
                      finish=msg_id)
"""


def test_a_kill_between_the_finish_and_the_unlink_leaves_nothing_after_recovery(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", _FINISH_AND_DIE, str(tmp_path)], cwd=ROOT, capture_output=True,
                          timeout=60, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-800:]
    msg_id = proc.stdout.decode().split()[0]
    assert (tmp_path / "msg" / msg_id).exists() and any((tmp_path / "copy").iterdir()), "the kill left the files"
    with Spool(tmp_path).open() as spool:  # recovery
        assert spool.get(msg_id) is None
        assert not list(spool.msg_dir.iterdir()), "removed, not kept"
        assert not list(spool.orphan_dir.iterdir()), "a finished message is not an orphan"
        assert not list(spool.copy_dir.iterdir())
        assert spool.db.execute("SELECT COUNT(*) FROM finished").fetchone()[0] == 0
    assert os.listdir(tmp_path / "msg") == []


def test_a_file_that_cannot_be_unlinked_keeps_its_tombstone(tmp_path: Path, monkeypatch) -> None:
    """The rows are gone with the commit; a file left (an unlink error) is removed at recovery."""
    store = Spool(tmp_path).open()
    msg_id = store.accept("lab@lab.example", ["a@y.example"], MESSAGE, lifetime=600)
    rid = _get(store, msg_id).recipients[0].id

    def refuse(self: Path, missing_ok: bool = False) -> None:
        raise PermissionError(13, "no")

    with monkeypatch.context() as m:
        m.setattr(Path, "unlink", refuse)
        store.record_outcomes([Outcome(rid, D, "2.0.0")], finish=msg_id)
    assert store.take_finished(msg_id) and store.get(msg_id) is None
    assert (store.msg_dir / msg_id).exists()
    other = store.accept("lab@lab.example", ["a@y.example"], MESSAGE, lifetime=600)
    store.record_outcomes([Outcome(_get(store, other).recipients[0].id, D, "2.0.0")], finish=other)
    assert {r[0] for r in store.db.execute("SELECT id FROM finished")} == {msg_id, other}
    store.close()
    with Spool(tmp_path).open() as spool:
        assert not list(spool.msg_dir.iterdir()) and not list(spool.orphan_dir.iterdir())
