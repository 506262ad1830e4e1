"""Key store of the Apicrypt v1 key files the bridge holds (per year: master, own and senders' keys).

Why so strict: these files are the whole secret of a weak scheme (XOR key material). A file
readable by group or others is refused (0600 required) rather than used, user names are
validated before they become file names (they come from untrusted message headers), files are
opened without following symlinks, and the encoder's key-stream offset (indexCurrent) is
advanced and persisted atomically (temp file + fsync + rename, under a lock) BEFORE the stream is
used, so a crash can only skip key material, never reuse it. The format itself (see
apicrypt1_format) is implemented from a public reverse-engineering description, not certified
against the vendor's software.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from gateway.filemodes import loose_mode
from gateway.fsutil import fsync_dir, locked, write_atomic, write_synced
from gateway.legacy.apicrypt1_format import (
    HEADER_SIZE,
    MASTER_NAME,
    YEAR_BASE,
    KeyHeader,
    key_file_name,
    keystream,
    valid_user,
)
from gateway.legacy.errors import KeyPermissionError, KeyStoreUnavailable, LegacyKeyError
from gateway.logs import event

log = logging.getLogger("gateway.legacy.keystore")
LOCK_NAME = ".apicrypt.lock"


@dataclass(frozen=True)
class KeyFile:
    """One loaded key file (header + key material). Never print `material`."""

    path: Path
    user: str
    year: int
    header: KeyHeader
    material: bytes = field(repr=False)

    def stream(self, start: int, length: int) -> bytes:
        return keystream(self.material, start, length)


@dataclass(frozen=True)
class Reservation:
    """Key stream reserved for one encryption; the file already points past it on disk."""

    user: str
    year: int
    sent_header: KeyHeader  # as read, nbCrypt incremented; indexCurrent = where the stream starts
    start: int
    length: int
    next_index: int
    wrapped: bool
    stream: bytes = field(repr=False)


class ApicryptKeyStore:
    """Key files `<user>.<YY>` and `Master.<YY>` in one folder; `identities` are the users we act for."""

    def __init__(self, folder: str | os.PathLike[str], *, identities: Sequence[str] = ()) -> None:
        self.folder = Path(folder)
        self.identities = tuple(identities)

    def path_for(self, user: str, year: int) -> Path:
        if user != MASTER_NAME and not valid_user(user):
            raise LegacyKeyError(f"invalid Apicrypt user name (length {len(user)}): refused as a key file name")
        if not YEAR_BASE < year < YEAR_BASE + 1000:
            raise LegacyKeyError(f"implausible key year {year}")
        return self.folder / key_file_name(user, year)

    def years(self) -> list[int]:
        """Years for which a master key file is present."""
        found = []
        try:
            names = os.listdir(self.folder)
        except OSError as exc:
            raise KeyStoreUnavailable(f"cannot list the key folder ({exc.strerror})") from None
        for name in names:
            match = re.fullmatch(re.escape(MASTER_NAME) + r"\.(\d{1,3})", name)
            if match:
                found.append(int(match.group(1)) + YEAR_BASE)
        return sorted(found)

    def master(self, year: int) -> KeyFile:
        return self.load(MASTER_NAME, year)

    def load(self, user: str, year: int) -> KeyFile:
        """Load and check one key file; missing -> permanent error naming user and year."""
        path = self.path_for(user, year)
        return _parse(path, user, year, _read_private(path, user, year))

    def reserve(self, user: str, year: int, length: int) -> Reservation:
        """Take `length` key bytes from the file's indexCurrent and persist the advanced index."""
        with self._lock():
            key = self.load(user, year)
            size = key.header.index_max
            if length > size:
                raise LegacyKeyError(f"message needs {length} key bytes but the key file of {user} for {year} "
                                     f"holds {size}: refused (it would reuse key material within one message)")
            start = key.header.index_current
            wrapped = start + length > size
            next_index = (start + length) % size
            count = key.header.nb_crypt + 1
            stored = key.header.replace(index_current=next_index, nb_crypt=count)
            _write_atomic(key.path, stored.raw + key.material)
        if wrapped:
            event(log, "legacy-key-wrapped", logging.WARNING, user=user, year=year, key_bytes=size)
        return Reservation(user=user, year=year, sent_header=key.header.replace(nb_crypt=count), start=start,
                           length=length, next_index=next_index, wrapped=wrapped,
                           stream=key.stream(start, length))

    def reserve_master(self, year: int, length: int) -> Reservation:
        return self.reserve(MASTER_NAME, year, length)

    @contextmanager
    def _lock(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(locked(self.folder / LOCK_NAME, exclusive=True))
            except OSError as exc:
                raise KeyStoreUnavailable(f"cannot lock the key folder ({exc.strerror})") from None
            yield


def _read_private(path: Path, user: str, year: int) -> bytes:
    """Read a key file refusing symlinks, non-regular files and any group/other permission bit."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise LegacyKeyError(f"no key file for user {user!r} and year {year} (expected {path.name} "
                             "in the key folder)") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EACCES, errno.EPERM):
            raise LegacyKeyError(f"key file {path.name} refused ({exc.strerror})") from None
        raise KeyStoreUnavailable(f"cannot read key file {path.name} ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise LegacyKeyError(f"key file {path.name} is not a regular file")
        loose = loose_mode(info.st_mode)
        if loose is not None:
            raise KeyPermissionError(f"key file {path.name} has permissions {loose}: "
                                     "group/other access refused, chmod 600 it")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise KeyStoreUnavailable(f"cannot read key file {path.name} ({exc.strerror})") from None
    finally:
        os.close(fd)


def _parse(path: Path, user: str, year: int, data: bytes) -> KeyFile:
    if len(data) < HEADER_SIZE:
        raise LegacyKeyError(f"key file {path.name}: {len(data)} bytes, shorter than its {HEADER_SIZE}-byte header")
    header = KeyHeader(data[:HEADER_SIZE])
    problems = header.problems()
    if header.year != year:
        problems.append(f"header year {header.year}, file name says {year}")
    if user != MASTER_NAME and header.user != user:
        problems.append("header user name differs from the file name")
    material = data[HEADER_SIZE:]
    if len(material) != header.index_max:
        problems.append(f"header says indexMax {header.index_max}, file holds {len(material)} key bytes")
    if problems:
        raise LegacyKeyError(f"key file {path.name} unusable: " + "; ".join(problems))
    return KeyFile(path=path, user=user, year=year, header=header, material=material)


def _write_atomic(path: Path, data: bytes) -> None:
    """The old or the new file, never half (`gateway.fsutil`); a failure is a temporary fault."""
    try:
        write_atomic(path, data)
    except OSError as exc:
        raise KeyStoreUnavailable(f"cannot update key file {path.name} ({exc.strerror})") from None


def make_key_file(path: str | os.PathLike[str], user: str, year: int, size: int) -> Path:
    """FOR TESTS AND PROVISIONING: create a new random key file `<user>.<YY>` in folder `path`.

    Key bytes come from os.urandom; the file is created 0600 and never overwritten. Use
    user "Master" for the network's master key of the year. Returns the file path.
    """
    if size <= 0 or size > 0xFFFFFFFF:
        raise ValueError("key size must be between 1 and 2**32-1 bytes")
    folder = Path(path)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = ApicryptKeyStore(folder).path_for(user, year)
    header = KeyHeader.build(user, year, size)
    try:
        write_synced(target, header.raw + os.urandom(size))  # exclusive: never over an existing file
    except FileExistsError:
        raise LegacyKeyError(f"key file {target.name} already exists: not overwritten") from None
    fsync_dir(folder)
    return target
