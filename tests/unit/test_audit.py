"""Audit trail: append-only, hash-chained, with a head file so a cut tail is detected."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import pytest

from gateway.audit import ALLOWED_FIELDS, GENESIS, AuditError, AuditTrail, audit_path, record_hash
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
