"""Drop folders: complete-file rules, done/error, temporary failures and restarts (exactly once)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
from pathlib import Path

import pytest

from gateway.intake.dropfolder import JOURNAL_SUFFIX, DropFolderWatcher
from gateway.intake.process import intake_bytes
from gateway.intake.settings import DropSettings
from tests.intake import samples as s

NAME = "PATIENTFICTIF_Clemence.hpr"  # LIS file names often carry the patient's name


def _settings(tmp_path: Path, rule: str = "rename", poll: float = 5.0) -> DropSettings:
    folder = tmp_path / "drop"
    return DropSettings(name="lab1", path=folder, sender=s.LIS, done=folder / "done", error=folder / "error",
                        complete=rule, poll_interval=poll)  # type: ignore[arg-type]


@pytest.fixture
def make_watcher(tmp_path, spool, directory, dedup, routing):
    def make(rule: str = "rename", poll: float = 5.0) -> DropFolderWatcher:
        w = DropFolderWatcher(_settings(tmp_path, rule, poll), spool, directory, dedup, None, 3600.0,
                              routing=routing)
        w.prepare()
        return w
    return make


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file())


def _write(folder: Path, name: str, data: bytes) -> None:
    tmp = folder / f".{name}.tmp"
    tmp.write_bytes(data)
    os.rename(tmp, folder / name)


def test_rename_rule_takes_complete_files_only(make_watcher, spool) -> None:
    w = make_watcher()
    drop = w.settings.path
    _write(drop, NAME, s.hprim_medecin())
    for partial in (".hidden.hpr", "writing.tmp", "writing.PART"):
        (drop / partial).write_bytes(b"partial")
    ids = w.poll_sync()
    assert len(ids) == 1 and [m.id for m in spool.list()] == ids
    assert [r.address for r in spool.get(ids[0]).recipients] == [s.ADDR_LABCODE]
    assert _files(w.settings.done) == [NAME] and (w.settings.done / NAME).read_bytes() == s.hprim_medecin()
    assert _files(drop) == [".hidden.hpr", "writing.PART", "writing.tmp"]
    assert _files(w.settings.processing) == [] and _files(w.settings.error) == []
    assert w.poll_sync() == []  # processed once


def test_ok_marker_rule(make_watcher, spool) -> None:
    w = make_watcher("ok-marker")
    drop = w.settings.path
    (drop / NAME).write_bytes(s.hprim_medecin())
    assert w.poll_sync() == [] and _files(drop) == [NAME]
    (drop / (NAME + ".ok")).write_bytes(b"")
    assert len(w.poll_sync()) == 1
    assert _files(drop) == [] and _files(w.settings.done) == [NAME]
    (drop / "stale.hpr.ok").write_bytes(b"")  # marker whose file is gone: removed, never matched later
    w.poll_sync()
    assert _files(drop) == [] and len(spool.list()) == 1


def test_malformed_goes_to_error_with_a_reason(make_watcher, spool) -> None:
    w = make_watcher()
    truncated = s.hprim_medecin().replace(b"****FINFICHIER****\r\n", b"")
    _write(w.settings.path, NAME, truncated)
    _write(w.settings.path, "nothing.bin", b"\x00\x01 not a payload")
    assert w.poll_sync() == []
    assert _files(w.settings.error) == sorted([NAME, NAME + ".reason.txt", "nothing.bin", "nothing.bin.reason.txt"])
    reason = (w.settings.error / (NAME + ".reason.txt")).read_text("utf-8")
    assert "payload-hprim" in reason and "FINFICHIER" in reason and "line" in reason
    for marker in (s.PATIENT_FAMILY, s.PATIENT_GIVEN, "2991299123456", "D0001"):
        assert marker not in reason
    assert (w.settings.error / NAME).read_bytes() == truncated
    assert spool.list() == [] and _files(w.settings.processing) == []


def test_spool_failure_leaves_the_file_for_the_next_poll(make_watcher, spool) -> None:
    w = make_watcher()
    _write(w.settings.path, NAME, s.hprim_medecin())
    spool.close()
    assert w.poll_sync() == []
    assert _files(w.settings.processing) == [NAME, NAME + JOURNAL_SUFFIX] and _files(w.settings.done) == []
    spool.open()
    ids = w.poll_sync()
    assert len(ids) == 1 and len(spool.list()) == 1 and _files(w.settings.done) == [NAME]
    assert _files(w.settings.processing) == []


def test_restart_with_a_claimed_file_and_no_journal(make_watcher, spool) -> None:
    w = make_watcher()
    (w.settings.processing / NAME).write_bytes(s.hprim_medecin())  # crash right after the claim
    _write(w.settings.path, "second.hpr", s.hprim_medecin(request="REQ43"))
    assert len(w.poll_sync()) == 2
    assert len(spool.list()) == 2 and _files(w.settings.done) == sorted([NAME, "second.hpr"])


def test_restart_after_queueing_before_the_journal_said_so(make_watcher, spool, directory, dedup, routing) -> None:
    """Crash between spool.accept and the 'queued' journal: found by its token, not queued again."""
    w = make_watcher()
    data = s.hprim_medecin("DRNOBODY")  # unresolved: the main message (#0) and the sender's notice (#1)
    path = w.settings.processing / NAME
    path.write_bytes(data)
    token = "drop:lab1:0123456789abcdef"
    (w.settings.processing / (NAME + JOURNAL_SUFFIX)).write_text(json.dumps({"state": "pending", "token": token}))
    now = dt.datetime.now(dt.UTC)
    result = intake_bytes(data, NAME, sender=s.LIS, directory=directory, dedup=None, settings=routing, now=now)
    assert len(result) == 2
    spool.accept(result.outgoing[0].envelope_sender, result.outgoing[0].recipients, result.outgoing[0].message,
                 lifetime=60, client=f"{token}#0")  # only the first message made it before the crash
    ids = w.poll_sync()
    assert len(ids) == 1  # only the notice
    queued = spool.list()
    assert sorted(tuple(r.address for r in m.recipients) for m in queued) == [(s.LIS,), (s.UNROUTED,)]
    assert _files(w.settings.done) == [NAME] and _files(w.settings.processing) == []
    assert w.poll_sync() == [] and len(spool.list()) == 2


def test_restart_after_the_queued_journal(make_watcher, spool) -> None:
    w = make_watcher()
    (w.settings.processing / NAME).write_bytes(s.hprim_medecin())
    (w.settings.processing / (NAME + JOURNAL_SUFFIX)).write_text(
        json.dumps({"state": "queued", "token": "drop:lab1:x", "ids": ["ID1"]}))
    (w.settings.processing / ("gone.hpr" + JOURNAL_SUFFIX)).write_text(json.dumps({"state": "queued"}))
    assert w.poll_sync() == []
    assert spool.list() == [] and _files(w.settings.done) == [NAME] and _files(w.settings.processing) == []


def test_same_file_dropped_twice_is_sent_once(make_watcher, spool) -> None:
    w = make_watcher()
    _write(w.settings.path, NAME, s.hprim_medecin())
    assert len(w.poll_sync()) == 1
    _write(w.settings.path, NAME, s.hprim_medecin())  # the LIS resends its batch
    assert w.poll_sync() == []
    assert len(spool.list()) == 1 and _files(w.settings.done) == [NAME, NAME + ".1"]


async def test_watcher_task_picks_files_up(make_watcher, spool) -> None:
    accepted: list[str] = []
    w = make_watcher(poll=0.05)
    w.on_accept = accepted.append
    await w.start()
    try:
        _write(w.settings.path, NAME, s.hprim_medecin())
        for _ in range(200):
            if accepted:
                break
            await asyncio.sleep(0.02)
        assert len(accepted) == 1 and [m.id for m in spool.list()] == accepted
    finally:
        await w.stop()


def test_hostile_payload_is_rejected_and_the_rest_of_the_batch_goes_on(make_watcher, spool) -> None:
    w = make_watcher()
    evil = s.cda().replace(b'<?xml version="1.0" encoding="UTF-8"?>',
                           b'<?xml version="1.0" encoding="UTF-8"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>')
    _write(w.settings.path, "a-evil.xml", evil)
    _write(w.settings.path, "b-good.xml", s.cda())
    assert len(w.poll_sync()) == 1
    assert _files(w.settings.error) == ["a-evil.xml", "a-evil.xml.reason.txt"]
    assert "payload-" in (w.settings.error / "a-evil.xml.reason.txt").read_text()
    assert _files(w.settings.done) == ["b-good.xml"]
    (queued,) = spool.list()
    assert [r.address for r in queued.recipients] == [s.ADDR_SMIME]
