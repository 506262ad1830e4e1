"""`msgw zam list`: the CI-SIS ledger's expired ZAMs and ignored returns, for an operator, on a real
ledger file beside a real config's spool; identifiers only, never the ZAM's HL7 content."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from gateway.cisis.ledger import ZamLedger
from gateway.cisis.returns import Return, parse_returns
from tests.cisis.reports import mdn
from tests.cisis.zamdata import ORIGINAL
from tests.conftest import MSGW
from tests.e2e.harness import write_config

DOCTOR = "adam.hoda@test-ci-sis.mssante.fr"
PATIENT = "2770763220829106@patient.mssante.fr"


def _zam(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MSGW, "zam", "list", "--config", str(config), *args], capture_output=True, text=True,
                          timeout=60)


def _ledger(spool: Path) -> tuple[int, str]:
    """One Z02 that expired after five failed sends, one pending, two ignored returns."""
    spool.mkdir(parents=True, exist_ok=True)
    store = ZamLedger.beside(spool, retry_schedule=(10.0, 60.0), lifetime=1000.0, clock=lambda: 100.0)
    try:
        store.record(ORIGINAL, "labo", {"ACK_RECEPTION": True, "ACK_LECTURE_MSS": True},
                     [("Q1", "<copy-1@pfi.test>", DOCTOR, "801234567897", "professional"),
                      ("Q2", "<copy-2@pfi.test>", PATIENT, "277076322082910", "patient")])
        store.on_outcome("Q1", DOCTOR, True, "2.0.0", None, now=100.0)
        [entry] = store.due(100.0)["labo"]
        for t in (100.0, 200.0, 400.0, 700.0, 1100.0):
            store.failed(entry.id, now=t)
        store.on_outcome("Q2", PATIENT, True, "2.0.0", None, now=2000.0)
        assert store.on_return(parse_returns(mdn(recipient="intrus@ailleurs.mssante.fr"))[0]) == []
        assert store.on_return(Return("mdn", "never-sent@pfi.test", DOCTOR, True)) == []
        [gone] = store.expired()
        return gone.id, gone.control_id
    finally:
        store.close()


def test_zam_list_shows_expired_zams_and_ignored_returns(tmp_path: Path) -> None:
    setup = write_config(tmp_path / "gw", sink_port=9)
    entry_id, control = _ledger(setup.spool)
    out = _zam(setup.config)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "expired ZAMs (never acknowledged by their CRÉATEUR): 1; still pending: 1"
    assert lines[1].split() == [f"#{entry_id}", "ZAM^Z02^ZAM_Z01", "control", control, "to", "labo", "5", "attempt(s)",
                                "queued", "1970-01-01T00:01:40+00:00"]
    assert lines[2:] == ["ignored returns (DSN/MDN matching no copy and recipient): 2",
                         "  recipient-not-on-copy: 1", "  unknown-message: 1"]
    assert DOCTOR not in out.stdout and PATIENT not in out.stdout  # the ZAM's content stays in the ledger

    only = _zam(setup.config, "--ignored")
    assert only.stdout.splitlines() == lines[2:]
    assert _zam(setup.config, "--expired").stdout.splitlines() == lines[:2]
    data = json.loads(_zam(setup.config, "--json").stdout)
    assert data["pending"] == 1 and data["ignored"] == {"recipient-not-on-copy": 1, "unknown-message": 1}
    assert [(e["id"], e["type"], e["attempts"]) for e in data["expired"]] == [(entry_id, "ZAM^Z02^ZAM_Z01", 5)]


def test_zam_list_without_a_ledger_says_so_and_creates_nothing(tmp_path: Path) -> None:
    setup = write_config(tmp_path / "gw", sink_port=9)
    out = _zam(setup.config)
    assert out.returncode == 0, out.stderr
    assert "no CI-SIS ledger" in out.stderr
    assert not (setup.spool / "cisis.sqlite").exists()
