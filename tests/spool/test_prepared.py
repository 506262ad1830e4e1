"""The spool's two states (issue 12, "prepare once"): a message is *received* until its
preparation commits, then *prepared*. Real files, real SQLite, a real kill -9 at the step
between the copy files and the commit. The tests that look at no file run on both queue
backends (`queue_store`: SQLite and PostgreSQL, issue 18)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from gateway.spool import NewCopy, Outcome, RecipientState, Spool
from tests.conftest import ROOT

MESSAGE = b"From: lab@lab.example\r\nSubject: r\r\n\r\nbody\r\n"
SIGNED = b"From: lab@lab.example\r\nContent-Type: multipart/signed\r\n\r\n(pretend signed)\r\n"

# Accept one message for three recipients, then prepare it: a signed copy for two, a refusal
# for the third. `point` says where this process dies by SIGKILL.
_PREPARE_AND_DIE = """
import os, signal, sys
from pathlib import Path
from gateway.spool import NewCopy, Outcome, RecipientState, Spool

root, point = Path(sys.argv[1]), sys.argv[2]
spool = Spool(root).open()
msg_id = spool.accept("lab@lab.example", ["a@y.example", "b@y.example", "c@y.example"], MESSAGE, lifetime=3600)
a, b, c = spool.get(msg_id).recipients
print(msg_id, flush=True)

def die_at(sql):
    # Called as SQLite starts each statement: the copy files are written and fsynced, the
    # transaction that would record them is open and not committed.
    if point == "before-commit" and sql.startswith("INSERT INTO copies"):
        os.kill(os.getpid(), signal.SIGKILL)

spool.db.set_trace_callback(die_at)
spool.prepare(msg_id, [NewCopy("smime", False, SIGNED, (a.id, b.id)),
                       NewCopy("as-is", False, MESSAGE, (), same_as_message=True)],
              [Outcome(c.id, RecipientState.BOUNCED, "5.7.1", "no protection possible", address=c.address)])
os.kill(os.getpid(), signal.SIGKILL)  # after the commit
"""


def _crash(root: Path, point: str) -> str:
    script = f"MESSAGE = {MESSAGE!r}\nSIGNED = {SIGNED!r}\n" + _PREPARE_AND_DIE
    out = subprocess.run([sys.executable, "-c", script, str(root), point], capture_output=True, cwd=ROOT,
                         timeout=60)
    assert out.returncode == -signal.SIGKILL, out.stderr.decode()[-800:]
    return out.stdout.decode().strip()


def test_a_crash_between_the_copy_files_and_the_commit_prepares_again(tmp_path: Path) -> None:
    msg_id = _crash(tmp_path, "before-commit")
    assert list((tmp_path / "copy").iterdir()), "the copy file was written before the kill"
    spool = Spool(tmp_path).open()
    assert not list(spool.copy_dir.iterdir()), "recovery removes copy files no row names"
    msg = spool.get(msg_id)
    assert msg is not None and msg.stage == "received" and msg.copies == ()
    assert [(r.address, r.state, r.copy_id) for r in msg.recipients] == [
        (a, RecipientState.QUEUED, None) for a in ("a@y.example", "b@y.example", "c@y.example")]
    assert [m.id for m in spool.due_received()] == [msg_id]
    assert spool.due_prepared() == []
    # Preparation runs again, and this time commits: nothing was lost, nothing doubled.
    a, b, c = msg.recipients
    assert spool.prepare(msg_id, [NewCopy("smime", False, SIGNED, (a.id, b.id))],
                         [Outcome(c.id, RecipientState.BOUNCED, "5.7.1", "refused", address=c.address)])
    msg = spool.get(msg_id)
    assert msg.stage == "prepared" and len(msg.copies) == 1
    assert spool.copy_bytes(msg.copies[0]) == SIGNED
    assert {r.address: r.copy_id for r in msg.recipients if r.state is RecipientState.QUEUED} == {
        "a@y.example": msg.copies[0].id, "b@y.example": msg.copies[0].id}
    assert spool.due_received() == [] and [m.id for m in spool.due_prepared()] == [msg_id]


def test_a_crash_after_the_commit_never_prepares_again(tmp_path: Path) -> None:
    msg_id = _crash(tmp_path, "after-commit")
    spool = Spool(tmp_path).open()
    msg = spool.get(msg_id)
    assert msg is not None and msg.stage == "prepared"
    assert spool.due_received() == [], "a prepared message is never prepared again"
    assert [m.id for m in spool.due_prepared()] == [msg_id]
    smime = next(c for c in msg.copies if c.form == "smime")
    assert spool.copy_bytes(smime) == SIGNED
    a, b, c = msg.recipients
    assert a.copy_id == b.copy_id == smime.id
    assert c.state is RecipientState.BOUNCED and c.copy_id is None and c.last_status == "5.7.1"
    # The as-is copy had no recipient left to link; it shares the message file (no second file).
    as_is = next(c for c in msg.copies if c.form == "as-is")
    assert as_is.file == f"msg/{msg_id}" and spool.copy_bytes(as_is) == MESSAGE
    assert len(list(spool.copy_dir.iterdir())) == 1
    # Delivered and DSN sent: the message, its copy file and its rows go.
    spool.mark_delivered([a.id, b.id], status="2.0.0")
    spool.mark_dsn_sent([c.id])
    assert spool.finish_if_done(msg_id)
    assert not list(spool.copy_dir.iterdir()) and not list(spool.msg_dir.iterdir())


def test_a_spool_of_the_old_schema_keeps_its_mail_as_received(tmp_path: Path) -> None:
    """An operator upgrading with mail in the queue: the old rows gain the new columns on open,
    and their messages are simply received (prepared by the runner like new mail)."""
    (tmp_path / "msg").mkdir()
    (tmp_path / "msg" / "0000OLDMSG01").write_bytes(MESSAGE)
    db = sqlite3.connect(tmp_path / "queue.sqlite")
    db.executescript("""
CREATE TABLE messages (id TEXT PRIMARY KEY, sender TEXT NOT NULL, size INTEGER NOT NULL, received REAL NOT NULL,
    expires REAL NOT NULL, listener TEXT NOT NULL DEFAULT '', client TEXT NOT NULL DEFAULT '', auth_user TEXT,
    delay_notified INTEGER NOT NULL DEFAULT 0, crashes INTEGER NOT NULL DEFAULT 0,
    quarantined INTEGER NOT NULL DEFAULT 0);
CREATE TABLE recipients (id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE, address TEXT NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt REAL NOT NULL, last_error TEXT,
    last_status TEXT, remote TEXT, updated REAL NOT NULL, dsn_sent INTEGER NOT NULL DEFAULT 0);
""")
    db.execute("INSERT INTO messages (id, sender, size, received, expires) VALUES ('0000OLDMSG01', 'a@x.example',"
               " ?, 1, 9999999999)", (len(MESSAGE),))
    db.execute("INSERT INTO recipients (message_id, address, state, attempts, next_attempt, last_error, updated)"
               " VALUES ('0000OLDMSG01', 'b@y.example', 'deferred', 2, 0, '451 busy', 1)")
    db.commit()
    db.close()
    spool = Spool(tmp_path).open()
    msg = spool.get("0000OLDMSG01")
    assert msg is not None and msg.stage == "received" and msg.copies == ()
    assert msg.recipients[0].state is RecipientState.DEFERRED and msg.recipients[0].attempts == 2
    assert [m.id for m in spool.due_received()] == ["0000OLDMSG01"]
    assert spool.prepare(msg.id, [NewCopy("as-is", False, MESSAGE, (msg.recipients[0].id,), same_as_message=True)])
    assert spool.get(msg.id).stage == "prepared"
    spool.close()
    assert Spool(tmp_path).open().get(msg.id).stage == "prepared"  # the migration is not run twice


def test_a_dsn_is_queued_prepared(queue_store) -> None:
    spool = queue_store()
    dsn_id = spool.accept_prepared("", ["lab@lab.example"], b"report", form="dsn", lifetime=60, listener="dsn")
    msg = spool.get(dsn_id)
    assert msg.stage == "prepared" and [c.form for c in msg.copies] == ["dsn"]
    assert msg.recipients[0].copy_id == msg.copies[0].id
    assert spool.due_received() == [] and [m.id for m in spool.due_prepared()] == [dsn_id]
    assert msg.to_json()["recipients"][0]["form"] == "dsn"


def test_a_just_accepted_message_is_taken_once_as_the_spool_recorded_it(queue_store, monkeypatch) -> None:
    """The runner prepares fresh mail from memory (no read back); what it gets is exactly the
    recorded state, once, and never a message deleted meanwhile; the memory is bounded."""
    spool = queue_store()
    msg_id = spool.accept("lab@lab.example", ["a@y.example", "b@y.example"], MESSAGE, lifetime=3600,
                          listener="relay", client="192.0.2.1", auth_user="network:relay")
    msg, data = spool.take_accepted(msg_id)  # type: ignore[misc]
    assert data == MESSAGE and msg == spool.get(msg_id)
    assert spool.take_accepted(msg_id) is None
    gone = spool.accept("lab@lab.example", ["a@y.example"], MESSAGE, lifetime=3600)
    assert spool.delete(gone)
    assert spool.take_accepted(gone) is None
    monkeypatch.setattr("gateway.spool.store.ACCEPTED_KEPT", 2)
    ids = [spool.accept("lab@lab.example", ["a@y.example"], MESSAGE, lifetime=3600) for _ in range(3)]
    assert spool.take_accepted(ids[0]) is None, "the oldest is dropped: read from disk instead"
    assert all(spool.take_accepted(i) is not None for i in ids[1:])
    prepared = spool.accept_prepared("", ["lab@lab.example"], MESSAGE, form="dsn", lifetime=3600)
    assert spool.take_accepted(prepared) is None, "nothing to prepare: not kept"


def test_a_plain_relay_records_each_message_prepared_at_accept(queue_store) -> None:
    """Without a protection policy the pipeline changes nothing: the message is recorded at
    accept as the one prepared copy of itself (what the runner would record), in one transaction."""
    spool = queue_store()
    spool.prepare_on_accept = "as-is"
    msg_id = spool.accept("lab@lab.example", ["a@y.example", "b@y.example"], MESSAGE, lifetime=3600)
    msg = spool.get(msg_id)
    assert msg is not None and msg.stage == "prepared"
    (copy,) = msg.copies
    assert (copy.form, copy.require_tls, copy.file) == ("as-is", False, f"msg/{msg_id}")
    assert {r.copy_id for r in msg.recipients} == {copy.id}
    assert spool.copy_bytes(copy) == MESSAGE
    kept, data = spool.take_accepted(msg_id)  # type: ignore[misc]
    assert kept == msg and data == MESSAGE
    assert spool.due_received() == [] and [m.id for m in spool.due_prepared()] == [msg_id]
