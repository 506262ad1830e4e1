"""Audit trail: append-only, hash-chained, with a head file so a cut tail is detected."""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from gateway.audit import (
    ALLOWED_FIELDS,
    GENESIS,
    MAX_BATCH,
    AuditError,
    AuditTrail,
    AuditUnavailable,
    AuditWriter,
    audit_path,
    record_hash,
)
from tests.conftest import MSGW


def _fill(trail: AuditTrail, n: int = 5) -> list[dict]:
    return [trail.append(message_id=f"m{i}", sender="lis@lab.test", recipient=f"dr{i}@mssante.test",
                         decision="smime", signer_serial="0A1B", signer_identifiers=["810000000017"],
                         encryption_serials=["01", "02"], next_hop="mx.mssante.test", outcome="delivered 2.0.0")
            for i in range(n)]


def _lines(trail: AuditTrail) -> list[str]:
    return trail.path.read_text(encoding="utf-8").splitlines(keepends=True)


def test_append_chains_records(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path / "audit.jsonl")
    recs = _fill(trail, 3)
    assert [r["seq"] for r in recs] == [1, 2, 3]
    assert recs[0]["prev_hash"] == GENESIS
    assert recs[1]["prev_hash"] == recs[0]["hash"] and recs[2]["prev_hash"] == recs[1]["hash"]
    assert all(record_hash(r) == r["hash"] for r in recs)
    assert list(trail.records()) == recs
    assert trail.head() == (3, recs[2]["hash"])
    report = trail.verify()
    assert report.ok and report.records == 3 and report.head_seq == 3
    # a fresh object continues the chain (state comes from the file, not memory)
    assert AuditTrail(trail.path).append(message_id="m9", outcome="bounced")["seq"] == 4


def test_alias_is_stored_under_the_canonical_name(tmp_path: Path) -> None:
    rec = AuditTrail(tmp_path / "audit.jsonl").append(message_id="m1", signer_ids=["810000000017"])
    assert rec["signer_identifiers"] == ["810000000017"] and "signer_ids" not in rec


def test_empty_trail_verifies(tmp_path: Path) -> None:
    assert AuditTrail(tmp_path / "none.jsonl").verify().ok


def test_rejects_fields_outside_the_allowed_set(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path / "audit.jsonl")
    with pytest.raises(AuditError) as exc:
        trail.append(message_id="m1", subject="Résultats de biologie")
    assert "subject" in str(exc.value) and "biologie" not in str(exc.value)
    with pytest.raises(AuditError):
        trail.append(message_id="m1", body="x")
    with pytest.raises(AuditError):
        trail.append(message_id="line\nbreak")
    with pytest.raises(AuditError):
        trail.append(encryption_serials="01")
    with pytest.raises(AuditError):
        trail.append(recipient="x" * 10_000)
    assert not trail.path.exists() or trail.path.read_text() == ""
    assert {"message_id", "sender", "recipient", "decision", "signer_serial", "signer_identifiers",
            "encryption_serials", "codec", "next_hop", "outcome"} <= ALLOWED_FIELDS


def test_detects_modified_record(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path / "audit.jsonl")
    _fill(trail)
    lines = _lines(trail)
    lines[2] = lines[2].replace("delivered 2.0.0", "bounced 5.0.0")
    trail.path.write_text("".join(lines))
    report = trail.verify()
    assert not report.ok and report.first_bad_seq == 3 and "modified" in report.reason


def test_detects_modified_record_with_recomputed_hash(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path / "audit.jsonl")
    _fill(trail)
    lines = _lines(trail)
    rec = json.loads(lines[1])
    rec["recipient"] = "someone-else@mssante.test"
    rec["hash"] = record_hash(rec)
    lines[1] = json.dumps(rec) + "\n"
    trail.path.write_text("".join(lines))
    report = trail.verify()
    assert not report.ok and report.first_bad_seq == 3 and "chain broken" in report.reason


def test_detects_deleted_middle_record(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path / "audit.jsonl")
    _fill(trail)
    lines = _lines(trail)
    del lines[2]
    trail.path.write_text("".join(lines))
    report = trail.verify()
    assert not report.ok and report.first_bad_seq == 3 and "deleted" in report.reason


def test_detects_deleted_last_record(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path / "audit.jsonl")
    _fill(trail)
    lines = _lines(trail)
    trail.path.write_text("".join(lines[:-1]))
    report = trail.verify()
    assert not report.ok and report.first_bad_seq == 5 and "truncated" in report.reason
    trail.path.write_text("")
    assert not trail.verify().ok


def test_detects_reordered_records(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path / "audit.jsonl")
    _fill(trail)
    lines = _lines(trail)
    lines[1], lines[2] = lines[2], lines[1]
    trail.path.write_text("".join(lines))
    report = trail.verify()
    assert not report.ok and report.first_bad_seq == 2


def test_detects_missing_head(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path / "audit.jsonl")
    _fill(trail, 2)
    trail.head_path.unlink()
    assert not trail.verify().ok


def test_head_lagging_by_one_after_crash_is_accepted(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path / "audit.jsonl")
    _fill(trail, 3)
    head = trail.head_path.read_text()
    trail.append(message_id="m3")
    trail.head_path.write_text(head)  # as if we crashed between the record and the head
    assert trail.verify().ok
    trail.append(message_id="m4")
    assert trail.verify().ok and trail.head()[0] == 5


def test_torn_last_line_is_dropped_if_never_acknowledged(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path / "audit.jsonl")
    _fill(trail, 2)
    with open(trail.path, "a") as fh:
        fh.write('{"seq":3,"time":')  # crash in the middle of a write
    assert not trail.verify().ok
    rec = trail.append(message_id="m2")
    assert rec["seq"] == 3 and trail.verify().ok


def test_thread_safe_appends(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path / "audit.jsonl", fsync=False)

    def work(k: int) -> None:
        for i in range(25):
            trail.append(message_id=f"t{k}-{i}", outcome="delivered")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = trail.verify()
    assert report.ok and report.records == 100


def test_audit_path_from_config(tmp_path: Path) -> None:
    from gateway.config import load_config
    from tests.e2e.harness import write_config

    setup = write_config(tmp_path / "a", sink_port=2525)
    assert audit_path(load_config(setup.config)) == setup.spool.parent / "audit.jsonl"
    setup = write_config(tmp_path / "b", sink_port=2525, extra='[audit]\npath = "trail/audit.jsonl"\n')
    assert audit_path(load_config(setup.config)) == tmp_path / "b" / "trail" / "audit.jsonl"


def test_cli_verify_and_show(tmp_path: Path) -> None:
    from tests.e2e.harness import write_config

    setup = write_config(tmp_path / "gw", sink_port=2525)
    cfg = str(setup.config)

    def msgw(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([MSGW, "audit", *args, "--config", cfg], capture_output=True, text=True, timeout=60)

    trail = AuditTrail(setup.spool.parent / "audit.jsonl")
    _fill(trail)
    r = msgw("verify")
    assert r.returncode == 0 and "5 record(s)" in r.stdout, r.stderr
    r = msgw("show", "--msg", "m2", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["recipient"] == "dr2@mssante.test"
    r = msgw("show")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 5
    assert msgw("show", "--msg", "nope").returncode == 1
    original = trail.path.read_text()
    lines = original.splitlines(keepends=True)

    # modified
    trail.path.write_text("".join(lines).replace("dr3@", "dr9@"))
    r = msgw("verify")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "seq 4" in r.stderr and "modified" in r.stderr
    # deleted in the middle
    trail.path.write_text("".join(lines[:1] + lines[2:]))
    r = msgw("verify")
    assert r.returncode == 1 and "deleted" in r.stderr
    # deleted at the end
    trail.path.write_text("".join(lines[:-1]))
    r = msgw("verify", "--json")
    assert r.returncode == 1 and "truncated" in r.stderr
    assert json.loads(r.stdout)["first_bad_seq"] == 5
    trail.path.write_text(original)
    assert msgw("verify").returncode == 0


# -- batches (the running gateway's writer) ---------------------------------------------------------
def _fields(i: int) -> dict:
    return {"message_id": f"q{i}", "sender": "lis@lab.test", "recipient": f"dr{i}@mssante.test",
            "decision": "smime", "outcome": "delivered 2.0.0"}


class _FsyncCounter:
    """Counts the real fsyncs (each one still done): what a batch costs in disk flushes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = os.fsync

        def counting(fd: int) -> None:
            self.calls += 1
            real(fd)

        monkeypatch.setattr(os, "fsync", counting)


def test_append_many_is_one_chain_with_one_flush_per_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trail = AuditTrail(tmp_path / "audit.jsonl")
    first = trail.append(**_fields(0))
    fsyncs = _FsyncCounter(monkeypatch)
    recs = trail.append_many([_fields(i) for i in range(1, 101)])
    assert fsyncs.calls == 3  # the trail once, the head's file and its folder: per batch, not per record
    assert [r["seq"] for r in recs] == list(range(2, 102))
    assert recs[0]["prev_hash"] == first["hash"]
    assert all(b["prev_hash"] == a["hash"] for a, b in zip(recs, recs[1:], strict=False))
    assert list(trail.records()) == [first, *recs] and trail.head() == (101, recs[-1]["hash"])
    assert trail.verify().ok and trail.verify().records == 101
    assert trail.append(message_id="cli")["seq"] == 102 and trail.verify().ok  # the CLI's single append
    # a refused record refuses the batch: nothing of it is written
    with pytest.raises(AuditError):
        trail.append_many([_fields(200), {"message_id": "m", "subject": "Résultats"}])
    assert trail.verify().records == 102


def test_a_crash_between_a_batch_and_its_head_still_verifies(tmp_path: Path) -> None:
    """The head may lag by the batch that was being appended (not only by one record), no more."""
    trail = AuditTrail(tmp_path / "audit.jsonl", fsync=False)
    trail.append_many([_fields(i) for i in range(3)])
    head = trail.head_path.read_text()
    trail.append_many([_fields(i) for i in range(3, 3 + MAX_BATCH)])
    trail.head_path.write_text(head)  # as if we crashed between the batch and the head
    report = trail.verify()
    assert report.ok and report.records == 3 + MAX_BATCH, report
    trail.append(message_id="next")  # the next append brings the head forward
    assert trail.verify().ok and trail.head()[0] == 4 + MAX_BATCH
    head = trail.head_path.read_text()
    trail.append_many([_fields(i) for i in range(MAX_BATCH + 1)])
    trail.head_path.write_text(head)  # more than one batch behind: not a crash, a replaced head
    report = trail.verify()
    assert not report.ok and "lags" in report.reason


def test_a_batch_torn_by_a_crash_is_dropped_if_never_acknowledged(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path / "audit.jsonl")
    kept = trail.append_many([_fields(i) for i in range(3)])
    good = trail.path.read_bytes()
    head = trail.head_path.read_text()
    trail.append_many([_fields(i) for i in range(3, 8)])  # complete records of the batch ...
    trail.head_path.write_text(head)
    with open(trail.path, "ab") as fh:
        fh.write(b'{"seq":9,"time":')  # ... and the one the crash cut: none acknowledged
    assert not trail.verify().ok
    rec = trail.append(message_id="after")
    assert rec["seq"] == 4 and rec["prev_hash"] == kept[-1]["hash"]
    assert trail.path.read_bytes().startswith(good) and trail.verify().ok and trail.verify().records == 4


def test_a_full_disk_leaves_no_part_of_a_batch(tmp_path: Path, tmpfs_factory) -> None:
    disk = tmpfs_factory("64k")
    trail = AuditTrail(disk / "audit.jsonl")
    trail.append_many([_fields(i) for i in range(5)])
    before = trail.path.read_bytes()
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:  # fill the disk to its last byte
        while os.write(fd, b"x" * 512):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    with pytest.raises(AuditUnavailable):
        trail.append_many([_fields(i) for i in range(5, 5 + MAX_BATCH)])
    assert trail.path.read_bytes() == before and trail.verify().ok  # rolled back, not torn
    filler.unlink()
    assert trail.append(message_id="after")["seq"] == 6 and trail.verify().ok


def test_writer_writes_in_batches_and_close_writes_everything(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    n = 10_000
    # before: one append per record (what the writer did): three fsyncs and a tail read each
    single = AuditTrail(tmp_path / "single" / "audit.jsonl")
    fsyncs = _FsyncCounter(monkeypatch)
    start = time.perf_counter()
    for i in range(n):
        single.append(**_fields(i))
    single_s, single_fsyncs = time.perf_counter() - start, fsyncs.calls
    assert single.verify().records == n

    # after: the writer drains what is queued in batches
    trail = AuditTrail(tmp_path / "batched" / "audit.jsonl")
    trail.path.parent.mkdir()
    trail.path.touch()
    failures: list[AuditError] = []
    writer = AuditWriter(trail, on_error=failures.append)
    fsyncs.calls = 0
    start = time.perf_counter()
    with open(trail.path, "rb") as held:  # another process holds the trail: everything queues up
        fcntl.flock(held, fcntl.LOCK_EX)
        for i in range(n):
            writer(**_fields(i))
        fcntl.flock(held, fcntl.LOCK_UN)
    writer.close()  # returns once every queued record is written
    batched_s = time.perf_counter() - start
    report = trail.verify()
    assert failures == [] and report.ok and report.records == n, report
    assert [r["message_id"] for r in trail.records()] == [f"q{i}" for i in range(n)]
    assert fsyncs.calls <= 3 * (n // MAX_BATCH + 2)
    with capsys.disabled():
        print(f"\naudit, {n} records: one append each {single_s:.2f} s ({single_fsyncs} fsyncs); "
              f"AuditWriter batches {batched_s:.2f} s ({fsyncs.calls} fsyncs)")


def test_writer_reports_what_it_cannot_write_and_ends(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    failures: list[AuditError] = []
    writer = AuditWriter(AuditTrail(blocker / "audit.jsonl"), on_error=failures.append)
    for i in range(5):
        writer(**_fields(i))
    writer(message_id="m", subject="Résultats")  # refused on its own, the others still tried
    writer.close()
    assert failures and all(isinstance(f, AuditError) for f in failures)
    lost = sum(int(m.group(1)) for f in failures if (m := re.search(r"(\d+) record\(s\) not written", str(f))))
    assert lost == 5 and any("subject" in str(f) for f in failures)
    assert "Résultats" not in " ".join(str(f) for f in failures)
    writer(message_id="late")  # after close: reported, not silently dropped
    assert "closed" in str(failures[-1])


def test_writer_is_woken_once_per_batch_not_per_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller (the event loop) only appends a record; the writer thread is woken when it
    sleeps, not for every record (issue 15, hot path). Here another process holds the trail
    while 2,000 records arrive, so they all wait for one or a few batches: a handful of
    wake-ups, and every record written in order."""
    sets: list[int] = []

    class CountingEvent(threading.Event):
        def set(self) -> None:
            sets.append(id(self))
            super().set()

    monkeypatch.setattr(threading, "Event", CountingEvent)
    trail = AuditTrail(tmp_path / "audit.jsonl")
    trail.path.touch()
    failures: list[AuditError] = []
    writer = AuditWriter(trail, on_error=failures.append)
    monkeypatch.undo()
    n = 2000
    with open(trail.path, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        writer(**_fields(0))
        deadline = time.monotonic() + 10  # the writer took the first record and waits for the lock
        while writer._pending and time.monotonic() < deadline:
            time.sleep(0.001)
        for i in range(1, n):
            writer(**_fields(i), reason=f"  spread\n over   lines {i} ")
        fcntl.flock(held, fcntl.LOCK_UN)
    writer.close()
    assert failures == []
    records = list(trail.records())
    assert [r["message_id"] for r in records] == [f"q{i}" for i in range(n)]
    assert records[5]["reason"] == "spread over lines 5"  # flattened by the writer, as by the caller before
    wakes = [e for e in sets if e == id(writer._wake)]  # (Thread.start sets an Event of its own)
    assert 1 <= len(wakes) <= 3  # the first record, the records queued behind the held lock, close()


def test_patient_mailboxes_are_pseudonymised(tmp_path: Path) -> None:
    """``<INS>@patient.mssante.fr`` is the patient's national identifier: the trail keeps a stable
    pseudonym (one patient's copies can still be followed), never the INS."""
    trail = AuditTrail(tmp_path / "audit.jsonl", fsync=False)
    ins = "299129912345678"
    trail.append(message_id="Q1", recipient=f"{ins}@patient.mssante.fr", decision="cisis-patient")
    trail.append(message_id="Q2", recipient=f"{ins}@PATIENT.MSSANTE.FR", decision="outcome")
    trail.append(message_id="Q3", recipient="dr.x@cabinet.mssante.fr", decision="outcome")
    records = list(trail.records())
    assert ins not in (tmp_path / "audit.jsonl").read_text()
    first, second, doctor = (r["recipient"] for r in records)
    assert first.startswith("ins-") and first.endswith("@patient.mssante.fr") and len(first.split("@")[0]) == 20
    assert second == first
    assert doctor == "dr.x@cabinet.mssante.fr"
    assert trail.verify().ok


# Several writer processes on one trail (issue 15: a process per core). Each child appends
# batches of 1-17 records once `go` exists, and prints the seq and hash of its last record after
# each append_many returned (acknowledged). With `tear`, it then writes half a batch and dies by
# SIGKILL; without, the parent may kill it at any moment.
_APPENDER = """
import os, random, signal, sys, time
from pathlib import Path
from gateway.audit import AuditTrail

path, name, count, mode = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
trail = AuditTrail(path)
while not (path.parent / "go").exists():
    time.sleep(0.005)
done = 0
rng = random.Random(name)
while done < count:
    n = min(rng.randint(1, 17), count - done)
    recs = trail.append_many([{"message_id": f"{name}-{done + i}", "outcome": "delivered"} for i in range(n)])
    done += n
    print(recs[-1]["seq"], recs[-1]["hash"], recs[-1]["message_id"], flush=True)
if mode == "tear":
    real = os.write
    def torn(fd, data):
        real(fd, bytes(data)[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    os.write = torn
    trail.append_many([{"message_id": f"{name}-torn-{i}"} for i in range(5)])
"""


def _appender(path: Path, name: str, count: int, mode: str = "") -> subprocess.Popen:
    import sys

    from tests.conftest import ROOT

    return subprocess.Popen([sys.executable, "-c", _APPENDER, str(path), name, str(count), mode or "-"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _acknowledged(out: bytes) -> list[tuple[int, str, str]]:
    return [(int(s), h, m) for s, h, m in (line.split() for line in out.decode().splitlines()
                                            if line.count(" ") == 2)]


def test_two_processes_and_this_one_append_to_one_chain(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path / "audit.jsonl")
    trail.append(message_id="first")
    children = [_appender(trail.path, f"p{n}", 300) for n in range(2)]
    (tmp_path / "go").touch()
    for i in range(60):  # this process too, chaining on from what it last wrote when it can
        trail.append_many([{"message_id": f"me-{i}-{k}"} for k in range(i % 3 + 1)])
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err.decode()[-800:]
    report = trail.verify()
    assert report.ok, str(report)
    records = list(trail.records())
    assert report.records == len(records) == 1 + 600 + sum(i % 3 + 1 for i in range(60))
    for name in ("p0", "p1"):
        assert [r["message_id"] for r in records if r["message_id"].startswith(name + "-")] == [
            f"{name}-{i}" for i in range(300)], "each writer's records, all there, in its order"


def test_a_writer_killed_mid_batch_is_repaired_by_another_process(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path / "audit.jsonl")
    trail.append_many([{"message_id": f"a{i}"} for i in range(3)])  # this process knows the tail ...
    (tmp_path / "go").touch()
    child = _appender(trail.path, "b", 20, "tear")  # ... then another writes and dies mid-batch
    out, err = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL, err.decode()[-800:]
    acked = _acknowledged(out)
    assert acked[-1][0] == 23 and not trail.path.read_bytes().endswith(b"\n"), "a torn batch after seq 23"
    rec = trail.append(message_id="after")
    assert rec["seq"] == 24 and rec["prev_hash"] == acked[-1][1], "chained on the other process's last record"
    report = trail.verify()
    assert report.ok and report.records == 24


@pytest.mark.parametrize("seed", range(3))
def test_writers_killed_at_random_lose_nothing_acknowledged(tmp_path: Path, seed: int) -> None:
    trail = AuditTrail(tmp_path / "audit.jsonl")
    (tmp_path / "go").touch()
    children = [_appender(trail.path, f"k{n}", 100000) for n in range(2)]
    firsts = [child.stdout.readline() for child in children]  # both are writing now
    time.sleep(0.05 + 0.1 * seed)
    for child in children:
        child.send_signal(signal.SIGKILL)
    acked = []
    for child, first in zip(children, firsts, strict=True):
        out, _ = child.communicate(timeout=60)
        acked += _acknowledged(first + out)
    assert len(acked) >= 2, "batches were acknowledged before the kill"
    trail.append(message_id="after")  # repairs a torn tail, if the kill left one
    report = trail.verify()
    assert report.ok, str(report)
    by_seq = {r["seq"]: r for r in trail.records()}
    for seq, digest, msg_id in acked:
        assert by_seq[seq]["hash"] == digest and by_seq[seq]["message_id"] == msg_id
