"""The one durable-file helper (`gateway.fsutil`): a replaced file is the old one or the new one,
whole, whatever happens on the way (a real full disk on a small tmpfs, a kill -9 mid-write), and
no temporary file is left behind."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.filemodes import GROUP_READABLE_FILE
from gateway.fsutil import write_atomic, write_synced
from tests.diskfull import fill

OLD = b'{"state": "pending", "token": "old"}'


def test_a_nearly_full_disk_never_publishes_part_of_a_file(tmpfs_factory) -> None:
    """os.write writes what fits (8 KiB here) and says so; a helper that trusts one call renames a
    truncated file into place. Here the write fails with ENOSPC and the old file stays whole."""
    disk = tmpfs_factory("256k")
    target = disk / "X.queued"
    target.write_bytes(OLD)
    (disk / "spare").write_bytes(b"\0" * 8192)
    fill(disk / "filler")
    (disk / "spare").unlink()  # 8 KiB free: part of the new content fits, not all of it
    with pytest.raises(OSError) as info:
        write_atomic(target, b"n" * 65536)
    assert info.value.errno == errno.ENOSPC
    assert target.read_bytes() == OLD
    assert sorted(p.name for p in disk.iterdir()) == ["X.queued", "filler"]


def test_a_kill_mid_write_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "head"
    target.write_bytes(OLD)
    child = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from gateway.fsutil import write_atomic\n"
        "def chunks():\n"
        "    yield b'n' * 4096\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
        "    yield b'never'\n"
        f"write_atomic({str(target)!r}, chunks())\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "writing"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    assert target.read_bytes() == OLD
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "head"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".head.") and leftovers[0].endswith(".tmp")


def test_modes_and_no_following_links(tmp_path: Path) -> None:
    private, shared = tmp_path / "key", tmp_path / "trail.head"
    write_atomic(private, [b"a", b"b"])
    write_atomic(shared, b"{}", mode=GROUP_READABLE_FILE)
    old_umask = os.umask(0o022)
    try:
        write_atomic(private, b"new")
    finally:
        os.umask(old_umask)
    assert private.read_bytes() == b"new"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(shared.stat().st_mode) == 0o640
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        write_synced(tmp_path / "link", b"x", exclusive=False)
    with pytest.raises(FileExistsError):
        write_synced(private, b"x")
    assert not (tmp_path / "elsewhere").exists() and private.read_bytes() == b"new"
