"""The spool's durability contract: what accept() returned survives a crash; what it did not
return is never delivered; a full disk raises SpoolError (452), never a silent success."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.errors import SpoolError
from gateway.spool import RecipientState, Spool


def test_accept_persists_and_survives_reopen(tmp_path: Path) -> None:
    spool = Spool(tmp_path).open()
    msg_id = spool.accept("a@x.example", ["b@y.example", "c@y.example", "b@y.example"], b"data\r\n", lifetime=60)
    spool.close()  # no clean shutdown work: reopen must find everything
    spool = Spool(tmp_path).open()
    msg = spool.get(msg_id)
    assert msg is not None
    assert [r.address for r in msg.recipients] == ["b@y.example", "c@y.example"]
    assert all(r.state is RecipientState.QUEUED for r in msg.recipients)
    assert spool.message_bytes(msg_id) == b"data\r\n"
    assert [m.id for m in spool.due()] == [msg_id]


def test_recovery_removes_messages_finished_just_before_a_crash(tmp_path: Path) -> None:
    spool = Spool(tmp_path).open()
    msg_id = spool.accept("a@x.example", ["b@y.example"], b"m", lifetime=60)
    spool.mark_delivered([spool.get(msg_id).recipients[0].id], status="2.0.0")
    spool.close()  # "crash" before finish_if_done
    spool = Spool(tmp_path).open()
    assert spool.get(msg_id) is None
    assert not (spool.msg_dir / msg_id).exists()


def test_recovery_moves_unacknowledged_files_aside(tmp_path: Path) -> None:
    spool = Spool(tmp_path).open()
    (spool.tmp_dir / "HALFWRITTEN").write_bytes(b"partial")
    (spool.msg_dir / "NOROW0000001").write_bytes(b"renamed but never recorded")
    spool.close()
    spool = Spool(tmp_path).open()
    assert not (spool.tmp_dir / "HALFWRITTEN").exists()
    assert (spool.orphan_dir / "NOROW0000001").exists()
    assert spool.due() == []


def test_per_recipient_states_and_finish(tmp_path: Path) -> None:
    spool = Spool(tmp_path).open()
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
    assert spool.retry(msg_id) == 1
    assert [m.id for m in spool.due()] == [msg_id]
    spool.mark_delivered([later.id], status="2.0.0")
    assert spool.finish_if_done(msg_id)
    assert spool.get(msg_id) is None
    assert not (spool.msg_dir / msg_id).exists()


def test_delete_is_not_undone_by_a_late_result(tmp_path: Path) -> None:
    spool = Spool(tmp_path).open()
    msg_id = spool.accept("a@x.example", ["b@y.example"], b"m", lifetime=60)
    rcpt = spool.get(msg_id).recipients[0]
    assert spool.delete(msg_id)
    spool.mark_delivered([rcpt.id], status="2.0.0")
    assert spool.get(msg_id) is None


def test_quarantine_after_repeated_crashes(tmp_path: Path) -> None:
    spool = Spool(tmp_path).open()
    msg_id = spool.accept("a@x.example", ["b@y.example"], b"m", lifetime=60)
    assert not spool.record_crash(msg_id, limit=2)
    assert spool.record_crash(msg_id, limit=2)
    assert spool.due() == []
    assert (spool.quarantine_dir / msg_id).exists()
    assert spool.get(msg_id).quarantined
    spool.retry(msg_id)
    assert [m.id for m in spool.due()] == [msg_id]


def test_garbage_queue_id_is_refused(tmp_path: Path) -> None:
    spool = Spool(tmp_path).open()
    with pytest.raises(SpoolError):
        spool.message_bytes("../../etc/passwd")


def test_full_disk_raises_spool_error_and_keeps_accepted(tmpfs_factory) -> None:
    spool = Spool(tmpfs_factory("2m") / "spool").open()
    first = spool.accept("a@x.example", ["b@y.example"], b"x" * 100_000, lifetime=60)
    with pytest.raises(SpoolError) as err:
        for _ in range(100):
            spool.accept("a@x.example", ["b@y.example"], b"y" * 200_000, lifetime=60)
    assert err.value.temporary and err.value.status == "4.3.1"
    assert "disk space" in str(err.value)
    assert spool.message_bytes(first) == b"x" * 100_000
    assert not list(spool.tmp_dir.iterdir())
    # Space comes back: service resumes.
    for msg in spool.list()[1:]:
        spool.delete(msg.id)
    assert spool.accept("a@x.example", ["b@y.example"], b"z" * 1000, lifetime=60)
