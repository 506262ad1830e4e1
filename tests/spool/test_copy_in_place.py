"""Prepared copy files are written in place in `copy/` (issue 15, fewer writes per message): no
temporary file and rename. A real kill -9 half-way through a copy file, and after it: the half
file is named by no row, recovery removes it, and the message is prepared again, whole."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from gateway.spool import NewCopy, RecipientState, Spool
from tests.conftest import ROOT

MESSAGE = b"From: lab@lab.example\r\nSubject: r\r\n\r\nbody\r\n"
SIGNED = b"From: lab@lab.example\r\nContent-Type: multipart/signed\r\n\r\n" + b"(pretend signed)\r\n" * 4000

_DIE_HALF_WAY = """
import os, signal, sys
from pathlib import Path
from gateway.spool import NewCopy, Spool
import gateway.spool.store as store

root, point = Path(sys.argv[1]), sys.argv[2]
spool = Spool(root).open()
msg_id = spool.accept("lab@lab.example", ["a@y.example", "b@y.example"], MESSAGE, lifetime=3600)
a, b = spool.get(msg_id).recipients
print(msg_id, flush=True)
real = store.write_synced

def half_then_die(path, data, **kw):
    if point == "mid-copy":
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    real(path, data, **kw)

store.write_synced = half_then_die
spool.prepare(msg_id, [NewCopy("smime", False, SIGNED, (a.id,)), NewCopy("smime", True, SIGNED + b"x", (b.id,))])
os.kill(os.getpid(), signal.SIGKILL)  # after the commit: the copies are whole, not fsynced
"""


def _crash(root: Path, point: str) -> str:
    script = f"MESSAGE = {MESSAGE!r}\nSIGNED = {SIGNED!r}\n" + _DIE_HALF_WAY
    out = subprocess.run([sys.executable, "-c", script, str(root), point], capture_output=True, cwd=ROOT,
                         timeout=60)
    assert out.returncode == -signal.SIGKILL, out.stderr.decode()[-800:]
    return out.stdout.decode().strip()


def test_a_kill_half_way_through_a_copy_file_prepares_again(tmp_path: Path) -> None:
    msg_id = _crash(tmp_path, "mid-copy")
    halves = list((tmp_path / "copy").iterdir())
    assert [f.stat().st_size for f in halves] == [len(SIGNED) // 2], "half a copy file, in copy/ itself"
    spool = Spool(tmp_path).open()
    assert not list(spool.copy_dir.iterdir()), "recovery removes the half file: no row names it"
    msg = spool.get(msg_id)
    assert msg is not None and msg.stage == "received" and msg.copies == ()
    assert [m.id for m in spool.due_received()] == [msg_id] and spool.due_prepared() == []
    a, b = msg.recipients
    assert spool.prepare(msg_id, [NewCopy("smime", False, SIGNED, (a.id, b.id))])
    msg = spool.get(msg_id)
    assert spool.copy_bytes(msg.copies[0]) == SIGNED
    assert {r.copy_id for r in msg.recipients} == {msg.copies[0].id}
    assert not list(spool.tmp_dir.iterdir()), "nothing goes through tmp/"


def test_a_kill_after_the_commit_keeps_whole_copies(tmp_path: Path) -> None:
    msg_id = _crash(tmp_path, "after-commit")
    spool = Spool(tmp_path).open()
    msg = spool.get(msg_id)
    assert msg is not None and msg.stage == "prepared" and spool.due_received() == []
    assert sorted(spool.copy_bytes(c) for c in msg.copies) == [SIGNED, SIGNED + b"x"]
    assert len(list(spool.copy_dir.iterdir())) == 2
    a, b = msg.recipients
    spool.mark_delivered([a.id, b.id], status="2.0.0")
    assert spool.finish_if_done(msg_id)
    assert not list(spool.copy_dir.iterdir()) and not list(spool.msg_dir.iterdir())
    assert spool.get(msg_id) is None and RecipientState.DELIVERED.final
