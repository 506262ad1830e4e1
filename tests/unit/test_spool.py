"""The spool's durability contract: what accept() returned survives a crash; what it did not
return is never delivered; a full disk raises SpoolError (452), never a silent success."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.errors import SpoolError
from gateway.spool import RecipientState, Spool
from tests.conftest import ROOT
from tests.diskfull import fill, free_bytes


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


# --------------------------------------------------------------------------------------------
# A full disk (issue 11, item 10): a real tmpfs filled to the last byte, a real kill -9.
# --------------------------------------------------------------------------------------------

_CRASH_ON_FULL_DISK = """
import os, signal, sys
from pathlib import Path
from gateway.spool import Spool
from tests.diskfull import fill

root = Path(sys.argv[1])
spool = Spool(root / "spool").open()
ids = [spool.accept("lab@x.example", [f"dr{i}@y.example"], b"m" * 60_000, lifetime=3600) for i in range(6)]
done = spool.get(ids[0]).recipients[0]
spool.mark_delivered([done.id], status="2.0.0")   # delivered; the crash comes before finish_if_done
fill(root / "filler")
print(" ".join(ids), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _crash_with_a_full_disk(root: Path) -> list[str]:
    """A process fills the spool's filesystem and dies by SIGKILL (WAL and -shm left behind)."""
    out = subprocess.run([sys.executable, "-c", _CRASH_ON_FULL_DISK, str(root)], capture_output=True, cwd=ROOT,
                         timeout=60)
    assert out.returncode == -signal.SIGKILL, out.stderr.decode()
    return out.stdout.decode().split()


def test_restart_after_a_disk_full_crash(tmpfs_factory) -> None:
    root = tmpfs_factory("4m")
    finished, *queued = _crash_with_a_full_disk(root)
    assert free_bytes(root) == 0
    spool = Spool(root / "spool").open()  # recovery needs no free space: it must not fail
    assert {m.id for m in spool.due()} == set(queued)
    # New mail is refused (452) while the disk is full (recovery freed the finished message: refill)...
    fill(root / "filler")
    with pytest.raises(SpoolError) as err:
        spool.accept("a@x.example", ["b@y.example"], b"new", lifetime=60)
    assert err.value.status == "4.3.1" and "disk space" in str(err.value)
    # ...but what was accepted drains: outcomes are recorded, finished messages free their space.
    assert spool.get(finished) is None or spool.finish_if_done(finished)
    for msg_id in queued:
        spool.mark_delivered([r.id for r in spool.get(msg_id).recipients], status="2.0.0")
        assert spool.finish_if_done(msg_id)
    assert spool.list() == [] and not list(spool.msg_dir.iterdir())
    assert free_bytes(root) >= 5 * 60_000


def test_delete_frees_space_on_a_full_disk_without_a_reserve(tmpfs_factory) -> None:
    root = tmpfs_factory("4m")
    spool = Spool(root / "spool", reserve=0).open()
    keep = spool.accept("a@x.example", ["b@y.example"], b"k" * 10_000, lifetime=60)
    big = spool.accept("a@x.example", ["c@y.example"], b"x" * 500_000, lifetime=60)
    fill(root / "filler")
    with pytest.raises(SpoolError):  # the disk really is full for the queue state too
        spool.mark_deferred([spool.get(keep).recipients[0].id], next_attempt=time.time(), error="e", status="4.0.0")
    assert spool.delete(big)
    assert spool.get(big) is None and not (spool.msg_dir / big).exists()
    assert free_bytes(root) >= 400_000
    assert spool.message_bytes(keep) == b"k" * 10_000


def test_queue_delete_after_a_clean_stop_on_a_full_disk(tmpfs_factory) -> None:
    """A clean close removes the WAL and its index; reopening then needs space (the -shm file):
    the reserve the gateway keeps pays for it, so `msgw queue delete` works on a full disk."""
    root = tmpfs_factory("4m")
    spool = Spool(root / "spool").open()
    big = spool.accept("a@x.example", ["c@y.example"], b"x" * 500_000, lifetime=60)
    spool.close()
    fill(root / "filler")
    out = subprocess.run([sys.executable, "-c",
                          "import sys; from gateway.spool import Spool;"
                          "s = Spool(sys.argv[1]).open(recover=False); print(s.delete(sys.argv[2]))",
                          str(root / "spool"), big], capture_output=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr.decode()[-500:]
    assert out.stdout.strip() == b"True"
    assert not (root / "spool" / "msg" / big).exists()
    assert free_bytes(root) >= 500_000


def test_new_mail_waits_until_the_reserve_is_back(tmpfs_factory) -> None:
    """The reserve pays for queue state on a full disk; new mail never eats it: once it was used,
    accept() answers 452 until there is room for the reserve again."""
    root = tmpfs_factory("4m")
    spool = Spool(root / "spool").open()
    assert (spool.path / "reserve").stat().st_size == spool.reserve_size > 0
    msg_id = spool.accept("a@x.example", ["b@y.example", "c@y.example"], b"m" * 1000, lifetime=60)
    fill(root / "filler")
    first, second = spool.get(msg_id).recipients
    spool.mark_delivered([first.id], status="2.0.0")  # needs the reserve
    assert not (spool.path / "reserve").exists()
    assert free_bytes(root) > 100_000  # room for a small message, yet it is refused
    with pytest.raises(SpoolError):
        spool.accept("a@x.example", ["b@y.example"], b"small", lifetime=60)
    (root / "filler").unlink()
    assert spool.accept("a@x.example", ["b@y.example"], b"small", lifetime=60)
    assert (spool.path / "reserve").stat().st_size == spool.reserve_size
    assert spool.get(msg_id).recipients[1].state is RecipientState.QUEUED and second.id
