"""Filling a real (small tmpfs) filesystem for the full-disk tests, and measuring its free space."""

from __future__ import annotations

import errno
import os
from pathlib import Path


def fill(path: Path) -> int:
    """Write zeros to `path` until the filesystem says ENOSPC; return the bytes written."""
    written = 0
    chunk = b"\0" * 65536
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            try:
                written += os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
    finally:
        os.close(fd)
    return written


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer could still use on the filesystem holding `path`."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
