"""Durable files, written one way everywhere (spool, Maildir, drop folders, key files, audit head).

Why one helper: a file that must survive a crash is written under a temporary name, every byte
written (``os.write`` may write less than asked: on a nearly full disk it does), fsynced, renamed
over its final name, and the directory fsynced so the rename itself is on disk (the Maildir and
Postfix way). A reader then sees the old file or the new one, never half of one. Each step left
out once somewhere (a single ``os.write``, no directory fsync, a temporary file left behind on
failure); here they are done once. Blocking: async callers run these in an executor.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path

from gateway.filemodes import PRIVATE_FILE

_EXCLUSIVE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
_TRUNCATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the names in a directory durable (a rename or a new file in it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, chunks: bytes | Iterable[bytes]) -> None:
    """Write every byte of ``chunks`` (one ``bytes`` or several) to ``fd``."""
    for chunk in (chunks,) if isinstance(chunks, (bytes, bytearray, memoryview)) else chunks:
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]


def write_synced(path: str | os.PathLike[str], chunks: bytes | Iterable[bytes], *, mode: int = PRIVATE_FILE,
                 exclusive: bool = True, sync: bool = True) -> None:
    """Create ``path`` (never through a symlink; with ``exclusive``, never over an existing file),
    write everything and fsync it. Its name is not durable until its directory is fsynced."""
    fd = os.open(path, _EXCLUSIVE if exclusive else _TRUNCATE, mode)
    try:
        write_all(fd, chunks)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: str | os.PathLike[str], final: str | os.PathLike[str], *, sync_dir: bool = True) -> None:
    """Rename a written, fsynced file over ``final`` (atomic) and make the rename durable."""
    os.replace(tmp, final)
    if sync_dir:
        fsync_dir(Path(final).parent)


def write_atomic(path: str | os.PathLike[str], chunks: bytes | Iterable[bytes], *, mode: int = PRIVATE_FILE,
                 sync: bool = True, sync_dir: bool = True, tmp_dir: str | os.PathLike[str] | None = None) -> None:
    """Replace ``path`` durably: the old content or the new, never part of it, and no temporary
    file left behind on failure (full disk, I/O error: the OSError propagates).

    The temporary file goes beside ``path`` (or in ``tmp_dir``, which must be on the same
    filesystem); ``sync=False`` skips both fsyncs (tests and the audit trail's no-fsync mode),
    ``sync_dir=False`` leaves the directory fsync to the caller."""
    final = Path(path)
    tmp = Path(tmp_dir or final.parent) / f".{final.name}.{secrets.token_hex(4)}.tmp"
    try:
        write_synced(tmp, chunks, mode=mode, sync=sync)
        publish(tmp, final, sync_dir=sync and sync_dir)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


__all__ = ["fsync_dir", "publish", "write_all", "write_atomic", "write_synced"]


@contextlib.contextmanager
def locked(path: str | os.PathLike[str], *, exclusive: bool) -> Iterator[None]:
    """Hold an advisory `flock` on `path` (created private if absent; never through a symlink)
    for the block. Raises OSError when the lock file cannot be opened: the caller says what
    could not be locked, in its own error type."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)
