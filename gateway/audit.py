"""Audit trail: one append-only, hash-chained record per message and recipient.

Storage: a JSON-lines file (one record per line) plus a small *head* file.
Why JSON lines rather than an SQLite table: appending is the only operation the trail needs,
`O_APPEND` + fsync makes each record durable on its own, the file is readable with standard
tools and can be shipped as is to write-once storage or a log collector; SQLite would add an
engine that happily supports in-place UPDATE/DELETE, which we would then have to detect anyway.

Chain: each record holds `seq` (1, 2, …), `prev_hash` (the previous record's `hash`, 64 zeros
for the first) and `hash` = SHA-256 over the canonical JSON (sorted keys, no spaces, UTF-8) of
every other field. Editing a record breaks its hash; deleting or reordering records breaks the
seq/prev_hash sequence. Deleting the *last* record(s) leaves a valid shorter chain, so after
every append we also write `<file>.head` (seq and hash of the last record, written to a
temporary file, fsynced, renamed): `verify()` reports a trail shorter than its head as
truncated. An attacker able to rewrite both file and head can still forge a consistent
history: anchoring the head elsewhere (syslog, a remote store, an HMAC key) is the next step,
not done here.

Several processes (issue 15: one per core) append to the one trail: each batch is written under
`flock(LOCK_EX)` on the trail, and a process reads the tail back (repairing a torn one) whenever
the file changed since it last wrote (inode, size, mtime), so the chain always continues from the
true last record; while the file is as it left it, the next batch chains on without a read.

Batches: the running gateway writes what is queued in batches of up to `MAX_BATCH` records, one
fsync of the trail and one head write per batch (a 10,000-recipient message would otherwise cost
~30,000 fsyncs), and at most one batch per `BATCH_INTERVAL` (20 ms; under a steady load a batch
per message or two was ~0.3 ms of CPU each). A batch that fails (full disk) is cut off again, so the trail never keeps
part of an unacknowledged batch. A crash between a batch and its head leaves the head lagging by
at most one batch, which `verify()` accepts (the next append brings the head forward); a crash
in the middle of a batch leaves a torn last line, dropped with the rest of that batch on the
next append, but only when the head names the record before the batch.

No health content: only the fields in `ALLOWED_FIELDS` are accepted, as short strings or lists
of strings (identifiers, serials, decisions), never a subject or body.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import PermanentError
from gateway.filemodes import GROUP_READABLE_FILE
from gateway.fsutil import fsync_dir, write_atomic

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

GENESIS = "0" * 64
#: Fields a caller may give (the trail adds seq, time, prev_hash, hash).
ALLOWED_FIELDS = frozenset({
    "message_id", "queue_id", "direction", "sender", "recipient", "decision", "reason",
    "signer_serial", "signer_identifiers", "encryption_serials", "codec", "next_hop", "outcome",
    "client", "identity", "listener",
})
_LIST_FIELDS = frozenset({"signer_identifiers", "encryption_serials"})
_MAX_LEN = 512
_TAIL_READ = 65536
#: How long the writer waits for more records to join a batch (seconds).
LINGER = 0.002
#: The least time between the starts of two batches of the writer (seconds): under a steady load
#: (two records per message, a few ms apart) a 2 ms linger alone wrote ~1.5 records per batch,
#: each batch paying three fsyncs and a head rename (~0.3 ms of CPU); one batch per 20 ms at most
#: bounds that to 50 a second whatever the load. The price: a kill -9 loses the records of up to
#: the last 20 ms instead of 2 ms (none of them was ever acknowledged to anyone: the writer is
#: fire-and-forget, see `AuditWriter`); an idle gateway still writes a lone record after LINGER.
BATCH_INTERVAL = 0.020
#: Records per batch: one fsync of the trail and one head write each; the most the head may lag.
MAX_BATCH = 256
#: How far back a torn batch is looked for (MAX_BATCH records of a few hundred bytes fit easily).
_REPAIR_WINDOW = 8 * 1024 * 1024


class AuditError(PermanentError):
    """A record was refused (unknown field, too long) or the trail cannot be written."""

    code = "audit"
    status = "5.3.0"


class AuditUnavailable(AuditError):
    """The trail cannot be written now (disk): the caller must not report the action done."""

    code = "audit-unavailable"
    temporary = True
    status = "4.3.0"


@dataclass(frozen=True)
class AuditReport:
    ok: bool
    records: int
    first_bad_seq: int | None = None
    reason: str = ""
    head_seq: int | None = None

    def __str__(self) -> str:
        if self.ok:
            return f"audit trail intact: {self.records} record(s)"
        where = f" at seq {self.first_bad_seq}" if self.first_bad_seq is not None else ""
        return f"audit trail broken{where}: {self.reason}"


def canonical(record: dict[str, Any]) -> bytes:
    """The bytes that are hashed: every field but `hash`, sorted keys, compact, UTF-8."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def record_hash(record: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(record)).hexdigest()


#: Accepted spellings stored under their canonical name (the inbound stage says `signer_ids`).
_ALIASES = {"signer_ids": "signer_identifiers"}
#: Mon espace santé mailboxes are ``<INS>@patient.mssante.fr``: the address *is* the patient's
#: national identifier, which the trail must not hold in clear.
PATIENT_MAIL_DOMAIN = "patient.mssante.fr"
_ADDRESS_FIELDS = ("sender", "recipient", "identity")


def pseudonymous_address(address: str) -> str:
    """A patient mailbox as ``ins-<16 hex of SHA-256>@patient.mssante.fr`` (the same patient gives
    the same value, so an operator can follow one patient's copies without seeing the INS);
    every other address unchanged."""
    local, at, domain = address.rpartition("@")
    if not at or domain.strip().lower() != PATIENT_MAIL_DOMAIN or local.startswith("ins-"):
        return address
    return "ins-" + hashlib.sha256(local.strip().lower().encode("utf-8")).hexdigest()[:16] + "@" + PATIENT_MAIL_DOMAIN


def _clean(fields: dict[str, Any]) -> dict[str, Any]:
    fields = {_ALIASES.get(k, k): v for k, v in fields.items()}
    unknown = sorted(set(fields) - ALLOWED_FIELDS)
    if unknown:
        raise AuditError(f"audit field(s) not allowed: {', '.join(unknown)}")
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if value is None:
            continue
        if key in _LIST_FIELDS:
            if isinstance(value, (str, bytes)) or not all(isinstance(v, (str, int)) for v in value):
                raise AuditError(f"audit field {key} must be a list of strings")
            items = [str(v) for v in value]
            if any(len(v) > _MAX_LEN for v in items):
                raise AuditError(f"audit field {key} has an item that is too long")
            out[key] = items
        else:
            if not isinstance(value, (str, int)) or isinstance(value, bool):
                raise AuditError(f"audit field {key} must be a string")
            text = pseudonymous_address(str(value)) if key in _ADDRESS_FIELDS else str(value)
            if len(text) > _MAX_LEN or "\n" in text or "\r" in text:
                raise AuditError(f"audit field {key} is too long or has a line break")
            out[key] = text
    return out


class AuditTrail:
    """Append and verify. Thread-safe (a lock) and safe between processes (flock on the file)."""

    def __init__(self, path: str | Path, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.head_path = self.path.with_name(self.path.name + ".head")
        self.fsync = fsync
        self._lock = threading.Lock()
        #: The trail as this process last left it — (inode, size, mtime) — and its last record:
        #: while the file is unchanged under the flock, no other process wrote (nor tore) it, so
        #: the next batch chains on without reading the tail back.
        self._known: tuple[int, int, int] | None = None
        self._known_last: dict[str, Any] | None = None

    # -- writing -----------------------------------------------------------------------------

    def append(self, **fields: Any) -> dict[str, Any]:
        """Append one record and return it (with seq, time, prev_hash, hash). Durable on return."""
        return self.append_many([fields])[0]

    def append_many(self, records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Append records in order, as one chain, and return them. Durable on return.

        The lock and the flock are taken once; each `MAX_BATCH` records cost one fsync of the
        trail and one head write. A refused record (field not allowed) refuses them all before
        anything is written; a write that fails cuts that batch off again (earlier batches of the
        same call, already named by the head, stay: the writer never passes more than one)."""
        return self._append_clean([_clean(fields) for fields in records])

    def _append_clean(self, clean: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`append_many` of records `_clean` already checked (the writer checks each one alone,
        so that a refused record is refused alone, and need not check them twice)."""
        if not clean:
            return []
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            except OSError as exc:
                raise AuditUnavailable(f"cannot open the audit trail ({exc.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if _identity(os.fstat(fd)) == self._known:
                    last = self._known_last
                else:  # another process wrote (or a crash tore) the trail: find its true head
                    self._known = None
                    self._repair_torn_tail(fd)
                    last = self._last_record()
                out: list[dict[str, Any]] = []
                for at in range(0, len(clean), MAX_BATCH):
                    batch, lines = self._chain(clean[at:at + MAX_BATCH], last)
                    self._known = None
                    self._write_batch(fd, batch, lines)
                    out += batch
                    last = batch[-1]
                self._known, self._known_last = _identity(os.fstat(fd)), last
                return out
            except OSError as exc:
                raise AuditUnavailable(f"cannot write the audit trail ({exc.strerror})") from None
            finally:
                os.close(fd)  # also releases the flock

    @staticmethod
    def _chain(clean: list[dict[str, Any]], last: dict[str, Any] | None) -> tuple[list[dict[str, Any]], bytes]:
        """Records linked after `last` (seq, time, prev_hash and hash added to each), and their
        lines. A line is the canonical JSON that was hashed with `"hash"` appended as its last
        key: one serialisation per record instead of two (readers parse it as JSON, and
        `verify` recomputes the canonical form from the parsed record, key order aside)."""
        seq, prev = (last["seq"], last["hash"]) if last else (0, GENESIS)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        out = []
        lines = []
        for fields in clean:
            seq += 1
            record: dict[str, Any] = {"seq": seq, "time": now, **fields, "prev_hash": prev}
            body = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
            record["hash"] = prev = hashlib.sha256(body).hexdigest()
            lines.append(body[:-1] + b',"hash":"' + prev.encode("ascii") + b'"}\n')
            out.append(record)
        return out, b"".join(lines)

    def _write_batch(self, fd: int, batch: list[dict[str, Any]], data: bytes) -> None:
        """Write, fsync, then name the last record in the head; on a failure before the head is in
        place, cut the trail back (the batch was never acknowledged) and re-raise."""
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if self.fsync:
                os.fsync(fd)
            self._write_head_file(batch[-1]["seq"], batch[-1]["hash"])
        except OSError:
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass  # left for _repair_torn_tail / verify to see
            raise
        self._sync_folder()

    def _repair_torn_tail(self, fd: int) -> None:
        """Drop a half-written batch left by a crash (its torn last line and the complete records
        before it), but only if it was never acknowledged: the head names the record just before
        it. Anything else is left for `verify` to report."""
        size = os.fstat(fd).st_size
        if size == 0:
            return
        with open(self.path, "rb") as fh:
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return
            start = max(0, size - _REPAIR_WINDOW)
            fh.seek(start)
            window = fh.read(size - start)
        keep = self._end_of_acknowledged(window, start)
        if keep is not None:
            os.ftruncate(fd, keep)
            if self.fsync:
                os.fsync(fd)

    def _end_of_acknowledged(self, window: bytes, start: int) -> int | None:
        """Offset just after the record the head names, when only a torn batch follows it."""
        head = self.head()
        if head is not None and head[0] < 0:
            return None
        complete = window[:window.rfind(b"\n") + 1]
        lines: list[tuple[bytes, int]] = []  # (line, file offset just after it)
        offset = start
        for line in complete.split(b"\n")[:-1]:
            offset += len(line) + 1
            lines.append((line, offset))
        if start > 0:
            lines = lines[1:]  # the window may begin inside a line
        for back, (line, end) in enumerate(reversed(lines)):
            if back > MAX_BATCH:
                return None
            try:
                record = json.loads(line.decode("utf-8"))
            except ValueError:
                return None
            if head is not None and record.get("seq") == head[0]:
                return end if record.get("hash") == head[1] else None
        if start == 0 and head is None and len(lines) <= MAX_BATCH:
            return 0  # the very first batch was torn: nothing was ever acknowledged
        return None

    def _write_head_file(self, seq: int, digest: str) -> None:
        # The folder is synced by _sync_folder, whose failure must not cut an acknowledged batch.
        write_atomic(self.head_path, json.dumps({"seq": seq, "hash": digest}).encode(), mode=GROUP_READABLE_FILE,
                     sync=self.fsync, sync_dir=False)

    def _sync_folder(self) -> None:
        """Make the head's rename durable (a failure here loses no record: the head may lag)."""
        if not self.fsync:
            return
        with contextlib.suppress(OSError):
            fsync_dir(self.path.parent)

    def _last_record(self) -> dict[str, Any] | None:
        """The last complete record, read from the end of the file (cheap, and sees other writers)."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                if size == 0:
                    return None
                start = max(0, size - _TAIL_READ)
                while True:
                    fh.seek(start)
                    chunk = fh.read(size - start)
                    body = chunk.rstrip(b"\n")
                    cut = body.rfind(b"\n")
                    if cut >= 0 or start == 0:
                        if not chunk.endswith(b"\n"):
                            raise AuditError("the audit trail ends with an incomplete record: run msgw audit verify")
                        return json.loads(body[cut + 1:].decode("utf-8"))
                    start = max(0, start - _TAIL_READ)
        except FileNotFoundError:
            return None
        except (ValueError, KeyError):
            raise AuditError("the last audit record is unreadable: run msgw audit verify") from None

    # -- reading -----------------------------------------------------------------------------

    def records(self) -> Iterator[dict[str, Any]]:
        """Every record in file order (unverified; use verify() to check them)."""
        try:
            fh = open(self.path, encoding="utf-8")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return
        with fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)

    def head(self) -> tuple[int, str] | None:
        try:
            data = json.loads(self.head_path.read_text(encoding="utf-8"))
            return int(data["seq"]), str(data["hash"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            return (-1, "")

    def verify(self) -> AuditReport:
        """Walk the chain; the first problem found is reported (seq and a reason, no content)."""
        expected_seq, prev = 1, GENESIS
        count = 0
        hashes_by_seq: dict[int, str] = {}
        head = self.head()
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            if head is not None and head[0] > 0:
                return AuditReport(False, 0, 1, "audit file missing but its head names records", head[0])
            return AuditReport(True, 0, head_seq=None)
        with fh:
            for number, raw in enumerate(fh, start=1):
                if not raw.endswith(b"\n"):
                    return AuditReport(False, count, expected_seq, f"line {number} is an incomplete record",
                                       head and head[0])
                try:
                    rec = json.loads(raw.decode("utf-8"))
                    seq, stored = rec["seq"], rec["hash"]
                except (ValueError, KeyError, TypeError):
                    return AuditReport(False, count, expected_seq, f"line {number} is not a valid record",
                                       head and head[0])
                if not isinstance(seq, int):
                    return AuditReport(False, count, expected_seq, f"line {number} has no valid seq", head and head[0])
                if record_hash(rec) != stored:
                    return AuditReport(False, count, seq, "record modified (hash mismatch)", head and head[0])
                if seq != expected_seq:
                    why = (f"record(s) deleted before seq {seq} (expected {expected_seq})" if seq > expected_seq
                           else f"records reordered or duplicated (seq {seq} after {expected_seq - 1})")
                    return AuditReport(False, count, expected_seq, why, head and head[0])
                if rec.get("prev_hash") != prev:
                    return AuditReport(False, count, seq, "chain broken (prev_hash does not match the previous "
                                       "record: a record was deleted or replaced)", head and head[0])
                prev, expected_seq = stored, expected_seq + 1
                count += 1
                if head is not None and seq == head[0]:
                    hashes_by_seq[seq] = stored
        last_seq = expected_seq - 1
        if head is None:
            if count:
                return AuditReport(False, count, None, "head file missing: cannot tell whether the tail was cut")
            return AuditReport(True, 0)
        head_seq, head_hash = head
        if head_seq < 0:
            return AuditReport(False, count, None, "head file unreadable", None)
        if last_seq < head_seq:
            return AuditReport(False, count, last_seq + 1,
                               f"trail truncated: last record is seq {last_seq}, head says {head_seq}", head_seq)
        if head_seq > 0 and hashes_by_seq.get(head_seq) != head_hash:
            return AuditReport(False, count, head_seq, "record at the head differs from the head file", head_seq)
        if last_seq > head_seq + MAX_BATCH:
            return AuditReport(False, count, head_seq + 1,
                               f"head file lags by {last_seq - head_seq} records (head file replaced?)", head_seq)
        return AuditReport(True, count, head_seq=head_seq)


def _identity(st: os.stat_result) -> tuple[int, int, int]:
    """What changes when anyone writes, truncates or replaces the trail."""
    return st.st_ino, st.st_size, st.st_mtime_ns


def _log_failure(exc: AuditError) -> None:
    from gateway.logs import event

    event(logging.getLogger("gateway.audit"), "audit-failed", logging.ERROR, reason=str(exc)[:200])


class AuditWriter:
    """The running gateway's audit sink: records are queued and written by one thread, because
    the trail fsyncs and that must not stall the event loop; one writer keeps them in order.
    What is queued when the thread wakes is written as one batch (`AuditTrail.append_many`).

    Cheap for the caller (the event loop, twice per message): a record is appended to a deque
    as given, and the thread is woken only when it is asleep (at most once per batch, never
    while records keep coming: it then drains every BATCH_INTERVAL on its own); it flattens and checks
    the records itself. (A `queue.SimpleQueue` read with a
    timeout woke the thread, which then took the GIL from the loop, for every record.)

    No record is dropped silently: each one is written or reported through `on_error` (a refused
    record alone; a batch the trail cannot take, with its count). `close()` waits until the
    queue is written, however long that takes (or until each batch has failed and been reported)."""

    def __init__(self, trail: AuditTrail, on_error: Callable[[AuditError], None] | None = None) -> None:
        self.trail = trail
        self.on_error = on_error or _log_failure
        self._pending: collections.deque[dict[str, Any]] = collections.deque()
        self._wake = threading.Event()  # set: records (or the stop) are waiting for the thread
        self._closed = False
        self._state = threading.Lock()  # a record is never queued behind the stop
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def __call__(self, **fields: Any) -> None:
        """Queue one record; empty fields are dropped, strings flattened to one short line (by
        the writer thread, in `_flatten`)."""
        with self._state:
            if not self._closed:
                self._pending.append(fields)
                if not self._wake.is_set():
                    self._wake.set()
                return
        self.on_error(AuditError("audit writer closed: 1 record(s) not written"))

    def _run(self) -> None:
        last = -BATCH_INTERVAL  # when the last batch was taken (monotonic)
        while True:
            self._wake.wait()
            while True:
                # Group commit: records arriving within LINGER, and at most one batch per
                # BATCH_INTERVAL, share one fsync. Under load a message's decision (written when
                # it is prepared) and its outcome (when it is delivered) would otherwise each pay
                # a write, an fsync and a head-file update. While records keep coming the thread
                # keeps draining with the event left set, so callers do not even set it; it
                # sleeps on the event (cleared under the lock) only once a round found nothing.
                # Once closed, the thread no longer sleeps between batches.
                if not self._closed:
                    time.sleep(max(LINGER, last + BATCH_INTERVAL - time.monotonic()))
                with self._state:
                    stop = self._closed
                    if not self._pending and not stop:
                        self._wake.clear()
                        break
                last = time.monotonic()
                # What is queued now, in batches of MAX_BATCH; what arrives while they are
                # written waits for the next round (else it would be a batch of its own at once).
                # When stopping, everything: nothing can be queued behind the stop.
                taken = len(self._pending)
                while taken > 0 or (stop and self._pending):
                    batch: list[dict[str, Any]] = []
                    while self._pending and len(batch) < MAX_BATCH:
                        batch.append(self._pending.popleft())
                    taken -= len(batch)
                    self._write(batch)
                if stop:
                    return

    def _write(self, batch: list[dict[str, Any]]) -> None:
        good: list[dict[str, Any]] = []
        for fields in batch:
            try:
                good.append(_clean(_flatten(fields)))
            except AuditError as exc:
                self.on_error(exc)
        if not good:
            return
        try:
            self.trail._append_clean(good)
        except AuditError as exc:
            self.on_error(type(exc)(f"{exc}: {len(good)} record(s) not written"))
        except Exception as exc:  # noqa: BLE001 - the writer must outlive a fault, or close() loses records
            self.on_error(AuditError(f"audit writer fault ({type(exc).__name__}): {len(good)} record(s) not written"))

    def close(self) -> None:
        """Write everything queued, then stop the thread (no time limit: records are not dropped)."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            self._wake.set()
        self._thread.join()


def _flatten(fields: dict[str, Any]) -> dict[str, Any]:
    """Empty fields dropped, strings flattened to one short line (what a caller's record becomes)."""
    clean: dict[str, Any] = {}
    for k, v in fields.items():
        if v in (None, [], ()):
            continue
        clean[k] = " ".join(v.split())[:500] if isinstance(v, str) else v
    return clean


def audit_path(config: GatewayConfig) -> Path:
    """The trail of a configuration (`[audit] path`, validated by `gateway.config`; default
    `audit.jsonl` beside the spool folder). `AuditTrail` itself takes a path."""
    return config.audit.path


__all__ = ["ALLOWED_FIELDS", "GENESIS", "MAX_BATCH", "AuditError", "AuditUnavailable", "AuditReport", "AuditTrail",
           "AuditWriter", "audit_path", "canonical", "record_hash"]
