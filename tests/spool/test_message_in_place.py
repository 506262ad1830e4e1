"""A message file is written in place in `msg/` (issue 15: no `tmp/` and rename per accept). A
real kill -9 half-way through it: the half file has no row, recovery moves it to `orphans/` (never
acknowledged) and everything acknowledged before is whole; a write that fails leaves nothing."""

from __future__ import annotations

import errno
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import gateway.fsutil
from gateway.errors import SpoolError
from gateway.spool import Spool
from tests.conftest import ROOT

MESSAGE = b"From: lab@lab.example\r\nSubject: r\r\n\r\n" + b"body line\r\n" * 5000

_DIE_HALF_WAY = """
import os, signal, sys
from pathlib import Path
from gateway.spool import Spool
import gateway.spool.store as store

root = Path(sys.argv[1])
spool = Spool(root).open()
print(spool.accept("lab@lab.example", ["a@y.example"], MESSAGE, lifetime=3600), flush=True)

def half_then_die(path, data, **kw):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, data[: len(data) // 2])
    os.kill(os.getpid(), signal.SIGKILL)

store.write_synced = half_then_die
spool.accept("lab@lab.example", ["b@y.example"], MESSAGE, lifetime=3600)
"""


def test_a_kill_half_way_through_a_message_file_leaves_an_orphan_only(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", f"MESSAGE = {MESSAGE!r}\n" + _DIE_HALF_WAY, str(tmp_path)],
                         capture_output=True, cwd=ROOT, timeout=60, check=False)
    assert out.returncode == -signal.SIGKILL, out.stderr.decode()[-800:]
    acked = out.stdout.decode().split()
    assert len(acked) == 1
    sizes = sorted(f.stat().st_size for f in (tmp_path / "msg").iterdir())
    assert sizes == [len(MESSAGE) // 2, len(MESSAGE)], "the half file is in msg/ itself"
    with Spool(tmp_path).open() as spool:
        assert [m.id for m in spool.list()] == acked
        assert spool.message_bytes(acked[0]) == MESSAGE
        assert [f.name for f in spool.msg_dir.iterdir()] == acked
        assert [f.stat().st_size for f in spool.orphan_dir.iterdir()] == [len(MESSAGE) // 2]
        assert not list(spool.tmp_dir.iterdir()), "nothing goes through tmp/"


def test_a_message_file_that_cannot_be_written_is_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Spool(tmp_path).open() as spool:
        first = spool.accept("lab@lab.example", ["a@y.example"], MESSAGE, lifetime=3600)
        real = gateway.fsutil.write_all

        def half_then_full(fd: int, chunks: bytes) -> None:
            real(fd, chunks[: len(chunks) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(gateway.fsutil, "write_all", half_then_full)
        with pytest.raises(SpoolError) as err:
            spool.accept("lab@lab.example", ["b@y.example"], MESSAGE, lifetime=3600)
        assert err.value.status == "4.3.1" and "disk space" in str(err.value)
        monkeypatch.undo()
        assert [f.name for f in spool.msg_dir.iterdir()] == [first]
        assert [m.id for m in spool.list()] == [first]
        assert not list(spool.tmp_dir.iterdir())
