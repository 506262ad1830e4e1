"""The queue's behaviour, the same on both backends (issue 18, item 1): what `accept()` returned
survives a restart, per-recipient states, finishing, deletion, quarantine, the two states
(received → prepared), damaged copies, delay notices, claims between two owners.

Ported from tests/unit/test_spool.py (which stays as it is, SQLite only, with its checks of files
on disk) onto the `queue_store` fixture: real SQLite + files, and a real PostgreSQL server.
tests/spool/test_prepared.py runs its file-free tests on both backends itself."""

from __future__ import annotations

import time

import pytest

from gateway.errors import SpoolError
from gateway.spool import NewCopy, Outcome, QueueStore, RecipientState

MESSAGE = b"From: lab@lab.example\r\nSubject: r\r\n\r\nbody\r\n"
SIGNED = b"From: lab@lab.example\r\nContent-Type: multipart/signed\r\n\r\n(pretend signed)\r\n"


def test_accept_persists_and_survives_reopen(queue_store) -> None:
    spool = queue_store()
    msg_id = spool.accept("a@x.example", ["b@y.example", "c@y.example", "b@y.example"], b"data\r\n", lifetime=60)
    spool.close()  # no clean shutdown work: reopen must find everything
    spool = queue_store()
    assert isinstance(spool, QueueStore)
    msg = spool.get(msg_id)
    assert msg is not None
    assert [r.address for r in msg.recipients] == ["b@y.example", "c@y.example"]
    assert all(r.state is RecipientState.QUEUED for r in msg.recipients)
    assert spool.message_bytes(msg_id) == b"data\r\n"
    assert [m.id for m in spool.due()] == [msg_id]


def test_no_recipient_is_refused(queue_store) -> None:
    spool = queue_store()
    with pytest.raises(Exception, match="no recipients"):
        spool.accept("a@x.example", [], b"m", lifetime=60)
    assert spool.list() == []


def test_recovery_removes_messages_finished_just_before_a_crash(queue_store) -> None:
    spool = queue_store()
    msg_id = spool.accept("a@x.example", ["b@y.example"], b"m", lifetime=60)
    spool.mark_delivered([spool.get(msg_id).recipients[0].id], status="2.0.0")
    spool.close()  # "crash" before finish_if_done
    spool = queue_store()
    assert spool.get(msg_id) is None


def test_per_recipient_states_and_finish(queue_store) -> None:
    spool = queue_store()
    msg_id = spool.accept("a@x.example", ["ok@y.example", "later@y.example", "bad@y.example"], b"m", lifetime=60)
    ok, later, bad = spool.get(msg_id).recipients
    spool.mark_delivered([ok.id], status="2.0.0")
    spool.mark_deferred([later.id], next_attempt=time.time() + 3600, error="451 busy", status="4.0.0")
    spool.mark_bounced([bad.id], error="550 no", status="5.1.1")
    msg = spool.get(msg_id)
    assert [r.state for r in msg.recipients] == [RecipientState.DELIVERED, RecipientState.DEFERRED,
                                                 RecipientState.BOUNCED]
    assert [m.id for m in spool.due()] == [msg_id]  # the bounce's DSN is owed
    assert not spool.finish_if_done(msg_id)
    spool.mark_dsn_sent([bad.id])
    assert spool.due() == []  # deferred into the future
    assert spool.next_due_time() == pytest.approx(msg.recipients[1].next_attempt)
    assert spool.retry(msg_id) == 1
    assert [m.id for m in spool.due()] == [msg_id]
    spool.mark_delivered([later.id], status="2.0.0")
    assert spool.finish_if_done(msg_id)
    assert spool.get(msg_id) is None
    assert spool.next_due_time() is None
    with pytest.raises(SpoolError):
        spool.message_bytes(msg_id)


def test_delete_is_not_undone_by_a_late_result(queue_store) -> None:
    spool = queue_store()
    msg_id = spool.accept("a@x.example", ["b@y.example"], b"m", lifetime=60)
    rcpt = spool.get(msg_id).recipients[0]
    assert spool.delete(msg_id)
    spool.mark_delivered([rcpt.id], status="2.0.0")
    assert spool.get(msg_id) is None
    assert not spool.delete(msg_id)


def test_quarantine_after_repeated_crashes(queue_store) -> None:
    spool = queue_store()
    msg_id = spool.accept("a@x.example", ["b@y.example"], b"m", lifetime=60)
    assert not spool.record_crash(msg_id, limit=2)
    assert spool.record_crash(msg_id, limit=2)
    assert spool.due() == []
    assert spool.get(msg_id).quarantined
    spool.retry(msg_id)
    assert [m.id for m in spool.due()] == [msg_id]


def test_garbage_queue_id_is_refused(queue_store) -> None:
    spool = queue_store()
    with pytest.raises(SpoolError):
        spool.message_bytes("../../etc/passwd")


def test_preparation_links_copies_and_records_refusals(queue_store) -> None:
    spool = queue_store()
    msg_id = spool.accept("lab@lab.example", ["a@y.example", "b@y.example", "c@y.example"], MESSAGE,
                          lifetime=3600)
    a, b, c = spool.get(msg_id).recipients
    assert [m.id for m in spool.due_received()] == [msg_id] and spool.due_prepared() == []
    assert spool.prepare(msg_id, [NewCopy("smime", False, SIGNED, (a.id, b.id)),
                                  NewCopy("as-is", False, MESSAGE, (), same_as_message=True)],
                         [Outcome(c.id, RecipientState.BOUNCED, "5.7.1", "no protection possible", address=c.address)])
    msg = spool.get(msg_id)
    assert msg.stage == "prepared"
    smime = next(c for c in msg.copies if c.form == "smime")
    as_is = next(c for c in msg.copies if c.form == "as-is")
    assert spool.copy_bytes(smime) == SIGNED
    assert as_is.file == f"msg/{msg_id}" and spool.copy_bytes(as_is) == MESSAGE
    a, b, c = msg.recipients
    assert a.copy_id == b.copy_id == smime.id
    assert c.state is RecipientState.BOUNCED and c.copy_id is None and c.last_status == "5.7.1"
    assert spool.due_received() == [], "a prepared message is never prepared again"
    assert [m.id for m in spool.due_prepared()] == [msg_id]
    # A preparation of a message deleted meanwhile records nothing.
    gone = spool.accept("lab@lab.example", ["d@y.example"], MESSAGE, lifetime=3600)
    (d,) = spool.get(gone).recipients
    assert spool.delete(gone)
    assert not spool.prepare(gone, [NewCopy("smime", False, SIGNED, (d.id,))])
    # Delivered and DSN sent: the message and its copies go.
    spool.mark_delivered([a.id, b.id], status="2.0.0")
    spool.mark_dsn_sent([c.id])
    assert spool.finish_if_done(msg_id)
    assert spool.get(msg_id) is None and spool.list() == []


def test_a_damaged_copy_is_forgotten_and_prepared_again(queue_store) -> None:
    spool = queue_store()
    msg_id = spool.accept("lab@lab.example", ["a@y.example"], MESSAGE, lifetime=3600)
    (a,) = spool.get(msg_id).recipients
    assert spool.prepare(msg_id, [NewCopy("smime", False, SIGNED, (a.id,))])
    (copy,) = spool.get(msg_id).copies
    spool.unprepare(msg_id, copy.id)
    msg = spool.get(msg_id)
    assert msg.stage == "received" and msg.copies == () and msg.recipients[0].copy_id is None
    assert [m.id for m in spool.due_received()] == [msg_id]


def test_a_delay_notice_owed_is_delivery_work(queue_store) -> None:
    spool = queue_store()
    msg_id = spool.accept("lab@lab.example", ["a@y.example"], MESSAGE, lifetime=3600, now=time.time() - 100)
    (a,) = spool.get(msg_id).recipients
    spool.mark_deferred([a.id], next_attempt=time.time() + 3600, error="451 busy", status="4.0.0")
    assert spool.due_prepared() == []
    assert [m.id for m in spool.due_prepared(delay_notice_before=time.time() - 50)] == [msg_id]
    spool.mark_delay_notified(msg_id)
    assert spool.due_prepared(delay_notice_before=time.time() - 50) == []


def test_two_owners_take_each_message_once_and_a_release_frees_them(queue_store) -> None:
    seed = queue_store("seed")
    seeded = {seed.accept("lab@lab.example", [f"dr{i}@y.example"], MESSAGE, lifetime=3600) for i in range(20)}
    assert seed.release_claims("seed") == 20
    w0, w1 = queue_store("w0", recover=False), queue_store("w1", recover=False)
    mine0 = w0.accept("lab@lab.example", ["a@y.example"], MESSAGE, lifetime=3600)
    got0 = {m.id for m in w0.due_received(limit=12)}
    got1 = {m.id for m in w1.due_received(limit=100)}
    assert not got0 & got1, "never both"
    assert mine0 not in got1, "what a process accepted is its own"
    got0 |= {m.id for m in w0.due_received(limit=100)}
    assert mine0 in got0 and not got0 & got1
    assert got0 | got1 == seeded | {mine0}
    assert w0.release_claims("w0") >= len(got0)
    assert {m.id for m in w1.due_received(limit=100)} == seeded | {mine0}


def test_counts_by_state(queue_store) -> None:
    spool = queue_store()
    msg_id = spool.accept("lab@lab.example", ["a@y.example", "b@y.example"], MESSAGE, lifetime=3600)
    a, _ = spool.get(msg_id).recipients
    spool.mark_delivered([a.id], status="2.0.0")
    counts = spool.counts()
    assert counts["queued"] == 1 and counts["delivered"] == 1
