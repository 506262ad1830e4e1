"""The ZAM ledger on a real SQLite file: outcomes and returns → queued ZAMs, forged receipts
ignored, the outbox's order, backoff and expiry."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from gateway.cisis.ledger import ZamLedger
from gateway.cisis.model import ZamEvent
from gateway.cisis.returns import Return, parse_returns
from gateway.cisis.zam import build_zam, parse_zam
from tests.cisis.reports import dsn, mdn
from tests.cisis.zamdata import NOW, ORIGINAL

DOCTOR = "adam.hoda@test-ci-sis.mssante.fr"
PATIENT = "2770763220829106@patient.mssante.fr"
BOTH = {"ACK_RECEPTION": True, "ACK_LECTURE_MSS": True}


@pytest.fixture
def ledger(tmp_path: Path) -> ZamLedger:
    store = ZamLedger.beside(tmp_path, retry_schedule=(10.0, 60.0), lifetime=1000.0, clock=lambda: 100.0)
    store.record(ORIGINAL, "labo", BOTH, [("Q1", "<copy-1@pfi.test>", DOCTOR, "801234567897", "professional"),
                                          ("Q2", "<copy-2@pfi.test>", PATIENT, "277076322082910", "patient")])
    return store


def _pending(store: ZamLedger) -> list[dict[str, str]]:
    return [parse_zam(e.data) for e in store.due(10**9).get("labo", [])]


def test_file_is_private_and_beside_the_spool(ledger: ZamLedger, tmp_path: Path) -> None:
    assert ledger.path == tmp_path / "cisis.sqlite"
    assert stat.S_IMODE(os.stat(ledger.path).st_mode) == 0o600
    assert sqlite3.connect(ledger.path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_next_hop_acceptance_gives_one_z02_yes(ledger: ZamLedger) -> None:
    [data] = ledger.on_outcome("Q1", DOCTOR.upper(), True, "2.0.0", "250 ok")
    fields = parse_zam(data)
    assert fields["MSH-9"] == "ZAM^Z02^ZAM_Z01"
    assert fields["OBX[1]-4"] == "015" and fields["OBX[1]-5"] == "Y^^HL70136"
    assert fields["OBX[2]-4"] == "801234567897" and fields["OBX[2]-5"] == f"^^X.400^{DOCTOR}"
    assert ledger.on_outcome("Q1", DOCTOR, True, "2.0.0", "250 ok") == []  # once per copy
    assert [f["MSH-10"] for f in _pending(ledger)] == [fields["MSH-10"]]


def test_bounce_gives_z02_no_with_the_smtp_code(ledger: ZamLedger) -> None:
    [data] = ledger.on_outcome("Q2", PATIENT, False, "5.1.1", "550 5.1.1 <x> unknown user")
    fields = parse_zam(data)
    assert fields["OBX[1]-5"] == "N^^HL70136"
    assert fields["ERR[1]-5"] == "550^5.1.1 <x> unknown user^SMTPERRORCODE"


def test_no_z02_when_not_asked(tmp_path: Path) -> None:
    store = ZamLedger(tmp_path / "l.sqlite")
    store.record(ORIGINAL, "labo", {"ACK_RECEPTION": False}, [("Q1", "<m@x>", DOCTOR, "", "professional")])
    assert store.on_outcome("Q1", DOCTOR, True, "2.0.0", None) == []
    assert store.on_return(parse_returns(mdn(message_id="<m@x>"))[0]) == []


def test_failed_dsn_after_acceptance_corrects_with_z02_no(ledger: ZamLedger) -> None:
    ledger.on_outcome("Q1", DOCTOR, True, "2.0.0", "250 ok")
    [ret] = parse_returns(dsn())
    [data] = ledger.on_return(ret)
    assert parse_zam(data)["ERR[1]-5"] == "550^5.1.1 user unknown^SMTPERRORCODE"
    assert ledger.on_return(ret) == []


def test_read_mdn_gives_z03_yes_for_the_reader(ledger: ZamLedger) -> None:
    [data] = ledger.on_return(parse_returns(mdn())[0])
    fields = parse_zam(data)
    assert fields["MSH-9"] == "ZAM^Z03^ZAM_Z01"
    assert fields["OBX[1]-3"] == "ACK_LECTURE_MSS^Accusé de lecture^AckMetierZAM"
    assert fields["OBX[2]-3"].startswith("LECTEUR_MSS^")
    assert fields["OBX[2]-5"] == f"^^X.400^{DOCTOR}"
    assert ledger.on_return(parse_returns(mdn())[0]) == []  # one Z03 per copy and reader


def test_error_mdn_gives_z03_no_with_the_application_error(ledger: ZamLedger) -> None:
    ret = parse_returns(mdn("automatic-action/MDN-sent-automatically; processed/Error: 904^INS différent"))[0]
    [data] = ledger.on_return(ret)
    fields = parse_zam(data)
    assert fields["OBX[1]-5"] == "N^^HL70136"
    assert fields["ERR[1]-5"] == "904^INS différent^applicationErrorCondition"


def test_forged_mdn_for_a_recipient_not_on_the_copy_is_ignored(ledger: ZamLedger) -> None:
    forged = parse_returns(mdn(recipient="intrus@ailleurs.mssante.fr"))[0]
    assert ledger.on_return(forged) == []
    assert ledger.on_return(Return("mdn", "never-sent@pfi.test", DOCTOR, True)) == []
    assert ledger.ignored() == {"recipient-not-on-copy": 1, "unknown-message": 1}
    assert _pending(ledger) == []


def test_record_queues_owed_zams_in_the_same_transaction(tmp_path: Path) -> None:
    store = ZamLedger(tmp_path / "l.sqlite", clock=lambda: 5.0)
    z01 = build_zam(ZamEvent.DMP_RECEPTION, ORIGINAL, ok=False, control_id="C1", now=NOW,
                    error=("DMPClosed", "DMP fermé", "DMPERRORCODE"))
    store.record(ORIGINAL, "labo", {}, [], [z01])
    [entry] = store.due(5.0)["labo"]
    assert (entry.control_id, entry.data) == ("C1", z01)
    reopened = ZamLedger(tmp_path / "l.sqlite")
    assert reopened.pending_count() == 1


def test_outbox_keeps_order_per_creator_and_backs_off(ledger: ZamLedger) -> None:
    first = ledger.on_outcome("Q1", DOCTOR, True, "2.0.0", None, now=100.0)
    second = ledger.on_return(parse_returns(mdn())[0], now=101.0)
    entries = ledger.due(200.0)["labo"]
    assert [e.data for e in entries] == first + second
    ledger.failed(entries[0].id, now=200.0)
    assert ledger.due(205.0) == {}  # the Z02 is not due yet, so the Z03 waits behind it
    assert [e.id for e in ledger.due(210.0)["labo"]] == [entries[0].id, entries[1].id]
    ledger.sent(entries[0].id)
    assert [e.id for e in ledger.due(210.0)["labo"]] == [entries[1].id]


def test_entry_expires_after_the_lifetime_and_is_reported(ledger: ZamLedger) -> None:
    ledger.on_outcome("Q1", DOCTOR, True, "2.0.0", None, now=100.0)
    [entry] = ledger.due(100.0)["labo"]
    for t in (100.0, 200.0, 400.0, 700.0, 1100.0):
        ledger.failed(entry.id, now=t)
    assert ledger.due(10**9) == {}
    [gone] = ledger.expired()
    assert gone.id == entry.id and gone.state == "expired"
