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

**PDFs with a payload or a sidecar.** ``X.pdf`` goes with the file of the same stem that says
where it goes (``X.hpr``, ``X.hl7``, ``X.xml`` or the JSON sidecar ``X.json`` / ``X.pdf.json``):
the writer writes the PDF first, then that file (the *trigger*). A PDF waits ``pdf_wait``
seconds (counted from when the gateway first saw it, not from its mtime) for its trigger and
then goes alone (to the envelope of the folder's routing: the
unrouted mailbox). When the trigger is claimed, its PDFs are moved first into
``processing/<trigger>.parts/``, then the trigger itself; a ``.parts`` folder without its
trigger (a crash between the two) goes back to the drop folder at the next poll, so the pair
is claimed again together. Parts follow their trigger to ``done/`` or ``error/``, parts first.
With ``ok-marker``, a PDF is taken only with its own ``.ok`` (the trigger waits for it, at most
``pdf_wait``, then goes without the unmarked PDF).

Malformed payloads go to ``error/`` with ``X.reason.txt`` (what and where, never content); the
decision is journalled (``rejected``) before anything moves, so a crash half-way through the
move is finished at the next poll instead of processing the payload again without its PDFs.
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
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from gateway.errors import GatewayError
from gateway.fsutil import fsync_dir, write_atomic
from gateway.intake.bundle import SubmittedFile, bundle_files
from gateway.intake.dedup import DuplicateStore
from gateway.intake.door import IntakeDoor
from gateway.intake.resolve import Directory
from gateway.intake.settings import DropSettings, RoutingSettings
from gateway.logs import event
from gateway.routing.model import MAX_PAYLOAD_BYTES, PayloadError

log = logging.getLogger(__name__)

JOURNAL_SUFFIX = ".queued"
PARTS_SUFFIX = ".parts"
MAX_CRASHES = 5
_IGNORED_SUFFIXES = (".tmp", ".part")


def _is_pdf_name(name: str) -> bool:
    return name.lower().endswith(".pdf")


def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else name


class PdfIndex:
    """The PDFs of a folder listing by stem, so pairing a whole backlog is linear, not quadratic."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names: set[str] = set()
        self.by_stem: dict[str, list[str]] = {}
        for n in names:
            if _is_pdf_name(n):
                self.names.add(n)
                self.by_stem.setdefault(_stem(n), []).append(n)

    def companions(self, trigger: str) -> list[str]:
        """The PDFs that go with ``trigger`` (same stem, or the one a ``X.pdf.json`` names)."""
        if _is_pdf_name(trigger):
            return []
        stem = _stem(trigger)
        found = set(self.by_stem.get(stem, ()))
        if stem in self.names:
            found.add(stem)
        return sorted(found)


def companions_of(trigger: str, names: Iterable[str]) -> list[str]:
    """The PDFs among ``names`` that go with ``trigger`` (same stem, or named by a ``X.pdf.json``)."""
    return PdfIndex(names).companions(trigger)


def file_ref(name: str) -> str:
    """How logs name a dropped file: a digest of its name (the name may carry a patient's name)."""
    return hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def _ignored(name: str) -> bool:
    return name.startswith(".") or name.lower().endswith(_IGNORED_SUFFIXES)


def _chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(size):
            yield chunk


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
            if target.exists():
                continue
            write_atomic(target, _chunks(src), sync_dir=False)  # the folder is fsynced below
        fsync_dir(folder)
        return target
    raise OSError(errno.EEXIST, "too many files of the same name")


class DropFolderWatcher(IntakeDoor):
    """Polls one drop folder; ``poll_sync()`` does one pass (blocking), ``start``/``stop`` run it as a task."""

    def __init__(self, settings: DropSettings, spool: Any, directory: Directory, dedup: DuplicateStore | None,
                 on_accept: Callable[[str], None] | None, lifetime: float, *,
                 routing: RoutingSettings | None = None) -> None:
        super().__init__(spool, directory, dedup, on_accept, lifetime, routing=routing, sender=settings.sender,
                         auth_user=settings.sender, listener=f"drop:{settings.name}")
        self.settings = settings
        #: (name, inode) -> when this watcher first saw the file (monotonic). Waits are measured
        #: from here, not from mtime: copies that keep timestamps (rsync -t, robocopy, SMB) and
        #: skewed file-server clocks make a file that just arrived look old.
        self._first_seen: dict[tuple[str, int], float] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    # -- life cycle --------------------------------------------------------------------------
    def prepare(self) -> None:
        for folder in (self.settings.path, self.settings.processing, self.settings.done, self.settings.error):
            folder.mkdir(parents=True, exist_ok=True)

    async def start(self) -> None:
        await self.run_blocking(self.prepare)
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
        ids = await self.run_blocking(self.poll_sync)
        self.wake(ids)
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
        names, pdfs, present = self._listing()
        for name in names:
            claimed = self.claim(name, pdfs, present)
            if claimed is not None:
                ids += self.handle(claimed)
        return ids

    def _leftovers(self) -> list[Path]:
        processing = self.settings.processing
        for tmp in processing.glob(".*.tmp"):  # a journal write cut by a crash (never renamed into place)
            with contextlib.suppress(OSError):
                tmp.unlink()
        for parts in processing.glob("*" + PARTS_SUFFIX):
            if parts.is_dir() and not (processing / parts.name[: -len(PARTS_SUFFIX)]).is_file():
                self._return_parts(parts)
        names = sorted(p.name for p in processing.iterdir() if p.is_file() and not _ignored(p.name))
        files = [n for n in names if not n.endswith(JOURNAL_SUFFIX)]
        for n in names:  # a journal whose file is gone: the file reached done/ just before a crash
            if n.endswith(JOURNAL_SUFFIX) and n[: -len(JOURNAL_SUFFIX)] not in files:
                with contextlib.suppress(OSError):
                    (processing / n).unlink()
        return [processing / n for n in files]

    def _return_parts(self, parts: Path) -> None:
        """A trigger's PDFs without the trigger (crash while claiming): back to the drop folder."""
        for part in sorted(parts.iterdir()):
            if part.is_file():
                _place(part, self.settings.path, part.name)
                part.unlink()
        fsync_dir(parts)
        parts.rmdir()
        fsync_dir(parts.parent)
        event(log, "drop-parts-returned", drop=self.settings.name, file=file_ref(parts.name))

    def complete_files(self) -> list[str]:
        """Names in the drop folder that are complete per the configured rule, oldest first."""
        return self._listing()[0]

    def _listing(self) -> tuple[list[str], PdfIndex, set[str]]:
        """(complete names oldest first, the PDFs by stem, every name) from one scan of the folder."""
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

        now = time.monotonic()
        seen: dict[tuple[str, int], float] = {}

        def waited(name: str) -> float:
            key = (name, entries[name].inode())
            seen[key] = self._first_seen.get(key, now)
            return now - seen[key]

        # A PDF goes with its trigger (claimed with it) or, after pdf_wait, alone.
        pdfs = PdfIndex(entries)
        triggers = [t for t in entries if not _is_pdf_name(t) and not t.endswith(".ok")]
        taken = {c for t in triggers for c in pdfs.companions(t)}
        keep = []
        for n in names:
            if _is_pdf_name(n):
                if n in taken or waited(n) < self.settings.pdf_wait:
                    continue
            elif self.settings.complete == "ok-marker":
                # a companion PDF not marked complete yet: wait for its marker, at most pdf_wait
                unmarked = [c for c in pdfs.companions(n) if c + ".ok" not in entries]
                if unmarked and waited(n) < self.settings.pdf_wait:
                    continue
            keep.append(n)
        for n in entries:
            if _is_pdf_name(n):
                waited(n)  # start the clock of every PDF, even one not complete yet
        self._first_seen = seen
        return sorted(keep, key=age), pdfs, set(entries)

    def claim(self, name: str, pdfs: PdfIndex | None = None, present: set[str] | None = None) -> Path | None:
        """Step 1: move the file into processing/ (atomic rename), then drop its marker."""
        src = self.settings.path / name
        processing = self.settings.processing
        base = name + "_" if name.endswith(JOURNAL_SUFFIX) else name  # never mistaken for a journal
        target = processing / base
        n = 0
        while target.exists() or (processing / (target.name + JOURNAL_SUFFIX)).exists() \
                or (processing / (target.name + PARTS_SUFFIX)).exists():
            n += 1
            target = processing / f"{base}.{n}"
        if not src.is_file():
            return None
        if pdfs is None or present is None:  # not from poll_sync's scan: look now
            present = {e.name for e in os.scandir(self.settings.path)
                       if e.is_file(follow_symlinks=False) and not _ignored(e.name)}
            pdfs = PdfIndex(present)
        companions = pdfs.companions(name)
        if self.settings.complete == "ok-marker":  # never a PDF still being written
            companions = [c for c in companions if c + ".ok" in present]
        if companions:  # parts first: a crash now leaves parts without trigger, returned next poll
            parts = processing / (target.name + PARTS_SUFFIX)
            parts.mkdir(exist_ok=True)
            for companion in companions:
                with contextlib.suppress(FileNotFoundError):
                    os.rename(self.settings.path / companion, parts / companion)
            fsync_dir(parts)
            fsync_dir(processing)
        try:
            os.rename(src, target)
        except FileNotFoundError:
            return None
        fsync_dir(processing)
        fsync_dir(self.settings.path)
        if self.settings.complete == "ok-marker":
            for marked in (name, *companions):
                with contextlib.suppress(FileNotFoundError):
                    (self.settings.path / (marked + ".ok")).unlink()
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
        write_atomic(path.with_name(path.name + JOURNAL_SUFFIX), json.dumps(data).encode())

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
        if journal is not None and journal.get("state") == "rejected" and journal.get("target"):
            self._finish_reject(path, journal)  # a crash while moving to error/: finish, never re-process
            event(log, "drop-recovered", drop=self.settings.name, file=ref, rejected=journal.get("code", ""))
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
            files = [path, *self._parts(path)]
            for f in files:
                if f.stat().st_size > MAX_PAYLOAD_BYTES:
                    raise PayloadError(f"file larger than {MAX_PAYLOAD_BYTES} bytes", "byte 0")
            submitted = [SubmittedFile(f.read_bytes(), f.name) for f in files]
            data = submitted[0].data
            bundle = bundle_files(submitted)
            result, ids = self.submit(bundle.data, bundle.filename, client=str(journal["token"]), now=now,
                                      info=bundle.info, pdfs=bundle.pdfs, skip=skip)
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
        event(log, "drop-accepted", drop=self.settings.name, file=ref, size=len(data), pdfs=len(bundle.pdfs)
              + (bundle.info.kind == "pdf"),
              type=result.info.document_type.code, unresolved=len(result.resolution.unresolved),
              duplicates=len(result.suppressed), replaces=result.info.replaces, queued=",".join(ids))
        return ids

    @staticmethod
    def _parts(path: Path) -> list[Path]:
        parts = path.with_name(path.name + PARTS_SUFFIX)
        return sorted(p for p in parts.iterdir() if p.is_file()) if parts.is_dir() else []

    def _move_parts(self, path: Path, folder: Path) -> None:
        """The trigger's PDFs go where the trigger goes, before it (the trigger is what a crash resumes)."""
        parts = path.with_name(path.name + PARTS_SUFFIX)
        if not parts.is_dir():
            return
        for part in self._parts(path):
            _place(part, folder, part.name)
            part.unlink()
        fsync_dir(parts)
        parts.rmdir()
        fsync_dir(path.parent)

    def _finish(self, path: Path, folder: Path) -> Path:
        """Step 5: place the file in ``folder``, then forget it in processing/ (file, then journal)."""
        self._move_parts(path, folder)
        target = _place(path, folder, path.name)
        path.unlink()
        fsync_dir(path.parent)
        with contextlib.suppress(FileNotFoundError):
            path.with_name(path.name + JOURNAL_SUFFIX).unlink()
        fsync_dir(path.parent)
        return target

    def _reject(self, path: Path, code: str, what: str, where: str) -> None:
        """Move to error/ with a reason file (what and where only: the readers never put content there).

        The decision is journalled first (``state = rejected``): a crash while the file and its
        PDFs move must finish the move at the next poll, not process the payload again without
        the PDFs already in error/.
        """
        journal = self._journal(path) or {}
        if journal.get("state") != "rejected" or not journal.get("target"):
            folder = self.settings.error
            target_name = path.name
            n = 0
            while (folder / target_name).exists():
                n += 1
                target_name = f"{path.name}.{n}"
            journal = {**journal, "state": "rejected", "code": code, "what": what, "where": where,
                       "target": target_name}
            self._save_journal(path, journal)
        self._finish_reject(path, journal)

    def _finish_reject(self, path: Path, journal: dict[str, Any]) -> None:
        folder = self.settings.error
        target_name = str(journal["target"])
        where = str(journal.get("where", ""))
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        reason = (f"Fichier refusé par la passerelle / file rejected by the gateway\n"
                  f"drop folder: {self.settings.name}\ncode: {journal.get('code', '')}\n"
                  f"error: {journal.get('what', '')}\n" + (f"where: {where}\n" if where else "") + f"time: {stamp}\n")
        write_atomic(folder / f"{target_name}.reason.txt", reason.encode("utf-8"))
        self._move_parts(path, folder)
        placed = _place(path, folder, target_name)
        if placed.name != target_name:  # lost a race for the name: keep the reason beside the file
            os.replace(folder / f"{target_name}.reason.txt", folder / f"{placed.name}.reason.txt")
        path.unlink()
        with contextlib.suppress(FileNotFoundError):
            path.with_name(path.name + JOURNAL_SUFFIX).unlink()
        fsync_dir(path.parent)


__all__ = ["DropFolderWatcher", "JOURNAL_SUFFIX", "file_ref"]
