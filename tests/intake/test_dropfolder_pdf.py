"""Drop folders: a PDF goes with the payload or JSON sidecar of the same name, exactly once."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import json
import os
import time
from pathlib import Path

import pytest

from gateway.intake.dropfolder import JOURNAL_SUFFIX, PARTS_SUFFIX, DropFolderWatcher, companions_of
from tests.intake import samples as s
from tests.intake.test_dropfolder import _settings, _write

PDF2 = s.PDF.replace(b"1.4", b"1.7")
SIDECAR = json.dumps({"recipients": [{"rpps": s.RPPS_SMIME}], "document_id": "LABX-PDF-7"}).encode()


@pytest.fixture
def make_watcher(tmp_path, spool, directory, dedup, routing):
    def make(rule: str = "rename", pdf_wait: float = 120.0) -> DropFolderWatcher:
        settings = dataclasses.replace(_settings(tmp_path, rule), pdf_wait=pdf_wait)
        w = DropFolderWatcher(settings, spool, directory, dedup, None, 3600.0, routing=routing)
        w.prepare()
        return w
    return make


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _attachments(spool, msg_id: str) -> dict[str, bytes]:
    msg = email.message_from_bytes(spool.message_bytes(msg_id), policy=email.policy.default)
    return {p.get_filename(): p.get_payload(decode=True) for p in msg.iter_attachments()}


def test_companions_of() -> None:
    names = ["A.pdf", "A.PDF", "A.hpr", "A.pdf.json", "B.pdf", "AB.pdf"]
    assert companions_of("A.hpr", names) == ["A.PDF", "A.pdf"]
    assert companions_of("A.pdf.json", names) == ["A.pdf"]
    assert companions_of("A.pdf", names) == []


def test_hprim_and_its_pdf_go_together(make_watcher, spool) -> None:
    w = make_watcher()
    drop = w.settings.path
    _write(drop, "PATIENTFICTIF.pdf", s.PDF)
    assert w.poll_sync() == [] and _tree(drop) == ["PATIENTFICTIF.pdf"]  # waits for its payload
    _write(drop, "PATIENTFICTIF.hpr", s.hprim_medecin())
    ids = w.poll_sync()
    assert len(ids) == 1 and len(spool.list()) == 1
    assert [r.address for r in spool.get(ids[0]).recipients] == [s.ADDR_LABCODE]
    assert _attachments(spool, ids[0]) == {"resultat.hpr": s.hprim_medecin(), "document.pdf": s.PDF}
    assert _tree(drop) == ["done/PATIENTFICTIF.hpr", "done/PATIENTFICTIF.pdf"]
    assert w.poll_sync() == []


def test_pdf_with_a_json_sidecar(make_watcher, spool) -> None:
    w = make_watcher()
    drop = w.settings.path
    _write(drop, "CR123.pdf", s.PDF)
    _write(drop, "CR123.pdf.json", SIDECAR)
    ids = w.poll_sync()
    assert len(ids) == 1 and [r.address for r in spool.get(ids[0]).recipients] == [s.ADDR_SMIME]
    assert _attachments(spool, ids[0]) == {"document.pdf": s.PDF}
    assert _tree(drop) == ["done/CR123.pdf", "done/CR123.pdf.json"]


def test_a_pdf_alone_goes_after_the_wait(make_watcher, spool) -> None:
    w = make_watcher(pdf_wait=0.3)
    drop = w.settings.path
    _write(drop, "seul.pdf", s.PDF)
    old = time.time() - 86400  # copied with its timestamps kept (rsync -t, robocopy): looks a day old
    os.utime(drop / "seul.pdf", (old, old))
    assert w.poll_sync() == []  # the wait counts from when the gateway first saw it, not from mtime
    time.sleep(0.35)
    ids = w.poll_sync()
    assert [[r.address for r in spool.get(i).recipients] for i in ids] == [[s.UNROUTED], [s.LIS]]  # + notice
    assert _tree(drop) == ["done/seul.pdf"]


def test_ok_marker_trigger_waits_for_its_pdf_marker(make_watcher, spool) -> None:
    """A companion PDF is never taken half-written: the trigger waits for the PDF's own marker."""
    w = make_watcher("ok-marker", pdf_wait=60)
    drop = w.settings.path
    (drop / "R5.pdf").write_bytes(s.PDF[:10])  # still being written
    (drop / "R5.hpr").write_bytes(s.hprim_medecin())
    (drop / "R5.hpr.ok").write_bytes(b"")
    assert w.poll_sync() == [] and spool.list() == []
    (drop / "R5.pdf").write_bytes(s.PDF)
    (drop / "R5.pdf.ok").write_bytes(b"")
    ids = w.poll_sync()
    assert len(ids) == 1 and _attachments(spool, ids[0])["document.pdf"] == s.PDF
    assert _tree(drop) == ["done/R5.hpr", "done/R5.pdf"]


def test_crash_while_moving_a_rejected_pair_to_error(make_watcher, spool) -> None:
    """Found in review: the PDF reached error/, the payload had not; the next poll must finish the
    move, not send the payload alone."""
    w = make_watcher()
    drop, processing, error = w.settings.path, w.settings.processing, w.settings.error
    (processing / "R6.hpr").write_bytes(s.hprim_medecin())
    (error / "R6.pdf").write_bytes(s.PDF[:-7])
    (processing / ("R6.hpr" + JOURNAL_SUFFIX)).write_text(json.dumps(
        {"state": "rejected", "token": "t", "attempts": 1, "code": "payload-malformed",
         "what": "truncated PDF document", "where": "PDF 1: byte 40", "target": "R6.hpr"}))
    assert w.poll_sync() == [] and spool.list() == []
    assert _tree(drop) == ["error/R6.hpr", "error/R6.hpr.reason.txt", "error/R6.pdf"]
    assert "truncated PDF" in (error / "R6.hpr.reason.txt").read_text("utf-8")


def test_a_pdf_whose_payload_is_still_there_is_not_taken_alone(make_watcher, spool) -> None:
    w = make_watcher("ok-marker", pdf_wait=0)
    drop = w.settings.path
    (drop / "R1.pdf").write_bytes(s.PDF)
    (drop / "R1.pdf.ok").write_bytes(b"")
    (drop / "R1.hpr").write_bytes(s.hprim_medecin())  # written, not marked complete yet
    assert w.poll_sync() == [] and len(_tree(drop)) == 3
    (drop / "R1.hpr.ok").write_bytes(b"")
    ids = w.poll_sync()
    assert len(ids) == 1 and _attachments(spool, ids[0])["document.pdf"] == s.PDF
    assert _tree(drop) == ["done/R1.hpr", "done/R1.pdf"]


def test_crash_between_the_pdf_and_its_payload_claim(make_watcher, spool) -> None:
    """The PDF is in processing/<trigger>.parts/, the trigger still in the drop folder."""
    w = make_watcher()
    drop = w.settings.path
    parts = w.settings.processing / ("R2.hpr" + PARTS_SUFFIX)
    parts.mkdir()
    (parts / "R2.pdf").write_bytes(s.PDF)
    _write(drop, "R2.hpr", s.hprim_medecin())
    ids = w.poll_sync()
    assert len(ids) == 1 and _attachments(spool, ids[0])["document.pdf"] == s.PDF
    assert _tree(drop) == ["done/R2.hpr", "done/R2.pdf"] and not parts.exists()


def test_crash_after_the_claim_then_restart(make_watcher, spool) -> None:
    w = make_watcher()
    processing = w.settings.processing
    parts = processing / ("R3.json" + PARTS_SUFFIX)
    parts.mkdir()
    (parts / "R3.pdf").write_bytes(s.PDF)
    (parts / "R3-annexe.pdf").write_bytes(PDF2)
    (processing / "R3.json").write_bytes(SIDECAR)
    ids = w.poll_sync()
    assert len(ids) == 1
    assert _attachments(spool, ids[0]) == {"document.pdf": PDF2, "document-2.pdf": s.PDF}  # sorted by name
    assert _tree(w.settings.path) == ["done/R3-annexe.pdf", "done/R3.json", "done/R3.pdf"]
    assert w.poll_sync() == [] and len(spool.list()) == 1


def test_a_broken_sidecar_sends_nothing_and_keeps_its_pdf_beside_it(make_watcher, spool) -> None:
    w = make_watcher()
    drop = w.settings.path
    _write(drop, "R4.pdf", s.PDF)
    _write(drop, "R4.json", b'{"recipients": [{"rpps": "123"}]}')
    assert w.poll_sync() == [] and spool.list() == []
    assert _tree(drop) == ["error/R4.json", "error/R4.json.reason.txt", "error/R4.pdf"]
    reason = (w.settings.error / "R4.json.reason.txt").read_text("utf-8")
    assert "payload-sidecar" in reason and "$.recipients[0].rpps" in reason and "11 digits" in reason
