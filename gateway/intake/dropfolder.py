"""Drop folders: a LIS/HIS writes result files into a folder; the gateway queues each one once.

Complete files only:
- ``rename``: the writer creates the file under a temporary name and renames it; names starting
  with ``.`` or ending ``.tmp``/``.part`` are never touched;
- ``ok-marker``: file ``X`` is taken only once ``X.ok`` exists (written after ``X``); a marker
  whose file is gone is stale (the writer always writes ``X`` first) and is removed, so that
  a later file of the same name is not taken half-written.

Why this order (never processed twice, never lost, across crashes):
1. **claim**: ``rename(X, processing/X)`` — atomic; the writer's folder no longer shows ``X``;
   directories fsynced. A crash now leaves ``processing/X``: handled again at the next poll.
2. **journal ``processing/X.queued``** = ``pending`` with a random *token*, written atomically
   (tmp, fsync, rename, fsync dir) *before* anything is queued.
3. **queue**: each message built from ``X`` goes to ``spool.accept`` with
   ``client = "<token>#<index>"``. A crash in the middle leaves a pending journal: the next
   attempt lists the spool for messages carrying the token and queues only the missing ones.
4. **journal = ``queued``** with the queue ids, then the duplicate store is updated.
5. **done**: ``X`` is hard-linked into ``done/`` (never overwriting: ``X.1``, ``X.2``…), the
   folder fsynced, ``processing/X`` and the journal removed. A crash here finds a ``queued``
   journal: only step 5 is redone.
The one window left is a crash between ``spool.accept`` committing and the next poll, *if*
delivery also finished and removed that message from the spool in between: the message would be
queued again. It needs a crash inside a millisecond window plus a full delivery before intake
restarts (intake starts with the gateway, before delivery has a chance to empty the queue).

Malformed payloads go to ``error/`` with ``X.reason.txt`` (what and where, never content).
A temporary failure (spool full, store busy) leaves ``X`` in ``processing/`` for the next poll.
Logs name files by a short digest of their name: LIS file names often carry the patient's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import hashlib
import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.errors import GatewayError
from gateway.intake.dedup import DedupStore
from gateway.intake.process import accept_all, intake_bytes
from gateway.intake.resolve import Directory
from gateway.intake.settings import DropSettings, RoutingSettings
from gateway.logs import event
from gateway.routing.payload import MAX_PAYLOAD_BYTES, PayloadError

log = logging.getLogger(__name__)

JOURNAL_SUFFIX = ".queued"
MAX_CRASHES = 5
_IGNORED_SUFFIXES = (".tmp", ".part")


def file_ref(name: str) -> str:
    """How logs name a dropped file: a digest of its name (the name may carry a patient's name)."""
    return hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _ignored(name: str) -> bool:
    return name.startswith(".") or name.lower().endswith(_IGNORED_SUFFIXES)


def _place(src: Path, folder: Path, name: str) -> Path:
    """Link ``src`` into ``folder`` under ``name`` (or ``name.N``), never overwriting; fsync the folder."""
    for n in range(10000):
        target = folder / (name if n == 0 else f"{name}.{n}")
        if target.exists():
            with contextlib.suppress(OSError):
                if os.path.samefile(target, src):  # linked before a crash: already placed
                    return target
            continue
        try:
            os.link(src, target)
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP):
                raise
            tmp = folder / f".{name}.{secrets.token_hex(4)}.tmp"
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            if target.exists():
                tmp.unlink()
                continue
            os.replace(tmp, target)
        fsync_dir(folder)
        return target
    raise OSError(errno.EEXIST, "too many files of the same name")


class DropFolderWatcher:
    """Polls one drop folder; ``poll_sync()`` does one pass (blocking), ``start``/``stop`` run it as a task."""

    def __init__(self, settings: DropSettings, spool: Any, directory: Directory, dedup: DedupStore | None,
                 on_accept: Callable[[str], None] | None, lifetime: float, *,
                 routing: RoutingSettings | None = None) -> None:
        self.settings = settings
        self.spool = spool
        self.directory = directory
        self.dedup = dedup
        self.on_accept = on_accept
        self.lifetime = lifetime
        self.routing = routing or RoutingSettings()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    # -- life cycle --------------------------------------------------------------------------
    def prepare(self) -> None:
        for folder in (self.settings.path, self.settings.processing, self.settings.done, self.settings.error):
            folder.mkdir(parents=True, exist_ok=True)

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.prepare)
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"drop-{self.settings.name}")
        event(log, "drop-watching", drop=self.settings.name, rule=self.settings.complete)

    async def stop(self) -> None:
        """Let the file in hand finish (its state is on disk either way), then stop polling."""
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def poll(self) -> list[str]:
        ids = await asyncio.get_running_loop().run_in_executor(None, self.poll_sync)
        if self.on_accept is not None:
            for msg_id in ids:
                self.on_accept(msg_id)
        return ids

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.poll()
            except Exception as exc:  # noqa: BLE001 - a bad pass must not stop the watcher
                event(log, "drop-poll-failed", logging.ERROR, drop=self.settings.name, exc_type=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.poll_interval)

    # -- one pass ----------------------------------------------------------------------------
    def poll_sync(self) -> list[str]:
        """Finish what a crash or a temporary failure left in processing/, then take new complete files."""
        ids: list[str] = []
        for leftover in self._leftovers():
            ids += self.handle(leftover)
        for name in self.complete_files():
            claimed = self.claim(name)
            if claimed is not None:
                ids += self.handle(claimed)
        return ids

    def _leftovers(self) -> list[Path]:
        processing = self.settings.processing
        for tmp in processing.glob(".*.tmp"):  # a journal write cut by a crash (never renamed into place)
            with contextlib.suppress(OSError):
                tmp.unlink()
        names = sorted(p.name for p in processing.iterdir() if p.is_file() and not _ignored(p.name))
        files = [n for n in names if not n.endswith(JOURNAL_SUFFIX)]
        for n in names:  # a journal whose file is gone: the file reached done/ just before a crash
            if n.endswith(JOURNAL_SUFFIX) and n[: -len(JOURNAL_SUFFIX)] not in files:
                with contextlib.suppress(OSError):
                    (processing / n).unlink()
        return [processing / n for n in files]

    def complete_files(self) -> list[str]:
        """Names in the drop folder that are complete per the configured rule, oldest first."""
        folder = self.settings.path
        entries = {e.name: e for e in os.scandir(folder) if e.is_file(follow_symlinks=False) and not _ignored(e.name)}
        if self.settings.complete == "rename":
            names = list(entries)
        else:
            names = []
            for name in entries:
                if name.endswith(".ok"):
                    if name[:-3] not in entries:
                        with contextlib.suppress(OSError):
                            (folder / name).unlink()  # stale marker (see module docstring)
                    continue
                if name + ".ok" in entries:
                    names.append(name)

        def age(name: str) -> tuple[float, str]:
            try:
                return entries[name].stat().st_mtime, name
            except OSError:
                return 0.0, name
        return sorted(names, key=age)

    def claim(self, name: str) -> Path | None:
        """Step 1: move the file into processing/ (atomic rename), then drop its marker."""
        src = self.settings.path / name
        processing = self.settings.processing
        base = name + "_" if name.endswith(JOURNAL_SUFFIX) else name  # never mistaken for a journal
        target = processing / base
        n = 0
        while target.exists() or (processing / (target.name + JOURNAL_SUFFIX)).exists():
            n += 1
            target = processing / f"{base}.{n}"
        try:
            os.rename(src, target)
        except FileNotFoundError:
            return None
        fsync_dir(processing)
        fsync_dir(self.settings.path)
        if self.settings.complete == "ok-marker":
            with contextlib.suppress(FileNotFoundError):
                (self.settings.path / (name + ".ok")).unlink()
            fsync_dir(self.settings.path)
        return target

    def _journal(self, path: Path) -> dict[str, Any] | None:
        jpath = path.with_name(path.name + JOURNAL_SUFFIX)
        try:
            data = json.loads(jpath.read_text("utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"state": "pending", "token": "", "attempts": 0}
        return data if isinstance(data, dict) else {"state": "pending", "token": "", "attempts": 0}

    def _save_journal(self, path: Path, data: dict[str, Any]) -> None:
        _write_atomic(path.with_name(path.name + JOURNAL_SUFFIX), json.dumps(data).encode())

    def _queued_indexes(self, token: str) -> set[int]:
        """Indexes of this file's messages the spool already holds (after a crash mid-way)."""
        if not token:
            return set()
        found: set[int] = set()
        for msg in self.spool.list():
            head, sep, index = msg.client.rpartition("#")
            if sep and head == token and index.isdigit():
                found.add(int(index))
        return found

    def handle(self, path: Path) -> list[str]:
        """Steps 2-5 for one file in processing/; returns the new queue ids."""
        ref = file_ref(path.name)
        journal = self._journal(path)
        if not path.exists():  # removed by an operator meanwhile
            with contextlib.suppress(FileNotFoundError):
                path.with_name(path.name + JOURNAL_SUFFIX).unlink()
            return []
        if journal is not None and journal.get("state") == "queued":
            self._finish(path, self.settings.done)
            event(log, "drop-recovered", drop=self.settings.name, file=ref, queued=",".join(journal.get("ids", [])))
            return []
        if journal is None or not journal.get("token"):
            skip: set[int] = set()
            journal = {"state": "pending", "token": f"drop:{self.settings.name}:{secrets.token_hex(8)}",
                       "attempts": int(journal.get("attempts", 0)) if journal else 0}
        else:
            skip = self._queued_indexes(str(journal["token"]))
        journal["attempts"] = int(journal.get("attempts", 0)) + 1
        self._save_journal(path, journal)
        now = dt.datetime.now(dt.UTC)
        try:
            size = path.stat().st_size
            if size > MAX_PAYLOAD_BYTES:
                raise PayloadError(f"file larger than {MAX_PAYLOAD_BYTES} bytes", "byte 0")
            data = path.read_bytes()
            result = intake_bytes(data, path.name, sender=self.settings.sender, directory=self.directory,
                                  dedup=self.dedup, settings=self.routing, now=now)
            ids = accept_all(result, self.spool, lifetime=self.lifetime, listener=f"drop:{self.settings.name}",
                             client=str(journal["token"]), dedup=self.dedup, now=now, skip=skip)
        except GatewayError as exc:  # PayloadError included
            if exc.temporary:
                event(log, "drop-deferred", logging.WARNING, drop=self.settings.name, file=ref, code=exc.code)
                return []
            self._reject(path, exc.code, getattr(exc, "what", exc.reason), getattr(exc, "where", ""))
            event(log, "drop-rejected", logging.WARNING, drop=self.settings.name, file=ref, code=exc.code,
                  reason=getattr(exc, "what", exc.reason), where=getattr(exc, "where", ""))
            return []
        except Exception as exc:  # noqa: BLE001 - a bug must not loop forever on one file
            event(log, "drop-crashed", logging.ERROR, drop=self.settings.name, file=ref,
                  exc_type=type(exc).__name__, attempts=journal["attempts"])
            if journal["attempts"] >= MAX_CRASHES and not skip:
                self._reject(path, "internal", f"internal error ({type(exc).__name__}) after "
                             f"{journal['attempts']} attempts", "")
            return []
        journal.update(state="queued", ids=ids)
        self._save_journal(path, journal)
        self._finish(path, self.settings.done)
        event(log, "drop-accepted", drop=self.settings.name, file=ref, size=len(data),
              type=result.info.document_type.code, unresolved=len(result.resolution.unresolved),
              duplicates=len(result.suppressed), replaces=result.info.replaces, queued=",".join(ids))
        return ids

    def _finish(self, path: Path, folder: Path) -> Path:
        """Step 5: place the file in ``folder``, then forget it in processing/ (file, then journal)."""
        target = _place(path, folder, path.name)
        path.unlink()
        fsync_dir(path.parent)
        with contextlib.suppress(FileNotFoundError):
            path.with_name(path.name + JOURNAL_SUFFIX).unlink()
        fsync_dir(path.parent)
        return target

    def _reject(self, path: Path, code: str, what: str, where: str) -> None:
        """Move to error/ with a reason file (what and where only: the readers never put content there)."""
        folder = self.settings.error
        target_name = path.name
        n = 0
        while (folder / target_name).exists():
            n += 1
            target_name = f"{path.name}.{n}"
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        reason = (f"Fichier refusé par la passerelle / file rejected by the gateway\n"
                  f"drop folder: {self.settings.name}\ncode: {code}\nerror: {what}\n"
                  + (f"where: {where}\n" if where else "") + f"time: {stamp}\n")
        _write_atomic(folder / f"{target_name}.reason.txt", reason.encode("utf-8"))
        placed = _place(path, folder, target_name)
        if placed.name != target_name:  # lost a race for the name: keep the reason beside the file
            os.replace(folder / f"{target_name}.reason.txt", folder / f"{placed.name}.reason.txt")
        path.unlink()
        with contextlib.suppress(FileNotFoundError):
            path.with_name(path.name + JOURNAL_SUFFIX).unlink()
        fsync_dir(path.parent)


__all__ = ["DropFolderWatcher", "JOURNAL_SUFFIX", "file_ref"]
