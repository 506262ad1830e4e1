"""`msgw payload inspect`: through register() directly and through the console script."""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import pytest

from gateway.commands import payload as cmd
from tests.conftest import MSGW

from . import fixtures as fx


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="msgw")
    cmd.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    rc = args.func(args)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def oru_file(tmp_path: Path) -> Path:
    path = tmp_path / "result.hl7"
    path.write_bytes(fx.oru())
    return path


def test_inspect_text_masks_patient(oru_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _run(["payload", "inspect", str(oru_file)], capsys)
    assert rc == 0 and err == ""
    assert "kind: hl7v2" in out
    assert "document type: ORU^R01" in out
    assert f"recipient: IDNAT {fx.IDNAT_DOC}" in out
    assert "author: IDNAT 8" + fx.RPPS_AUTHOR in out
    assert "document id: REQ42^LABX" in out
    assert "patient id: INS-NIR-TEST 2**************" in out
    assert "embedded document 1:" in out
    assert fx.INS not in out


def test_inspect_json_and_show_patient(oru_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _run(["payload", "inspect", str(oru_file), "--json"], capsys)
    data = json.loads(out)
    assert rc == 0 and data["kind"] == "hl7v2"
    assert data["patient_ids"][0]["value"] == "2" + "*" * 14
    assert data["recipients"][0]["rpps"] == fx.RPPS_DOC
    assert fx.INS not in out
    rc, out, err = _run(["payload", "inspect", str(oru_file), "--json", "--show-patient"], capsys)
    assert rc == 0 and json.loads(out)["patient_ids"][0]["value"] == fx.INS
    assert err.startswith("warning:") and err.count("\n") == 1


def test_inspect_malformed_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.hpr"
    bad.write_bytes(fx.hprim_medecin()[:-30])
    rc, out, err = _run(["payload", "inspect", str(bad)], capsys)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and "line" in err and "TESTNOM" not in err
    rc, out, err = _run(["payload", "inspect", str(tmp_path / "missing.hl7")], capsys)
    assert rc == 2 and "cannot read" in err


def test_console_script(tmp_path: Path) -> None:
    path = tmp_path / "lettre.xml"
    path.write_bytes(fx.cda(code="34133-9", label="Lettre de liaison", recipients=2))
    proc = subprocess.run([MSGW, "payload", "inspect", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "document type: 34133-9 Lettre de liaison (LOINC)" in proc.stdout
    assert fx.INS not in proc.stdout
    bad = tmp_path / "bad.hl7"
    bad.write_bytes(fx.oru().replace(b"MSH|^~\\&|", b"MSH|^^\\&|"))
    proc = subprocess.run([MSGW, "payload", "inspect", str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("at segment 1 MSH-2") and proc.stderr.count("\n") == 1


def test_inspect_a_pdf_sidecar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "cr.json"
    good.write_text('{"recipients": [{"rpps": "19900000033"}], "document_id": "LABX-1"}')
    code, out, _ = _run(["payload", "inspect", str(good), "--json"], capsys)
    assert code == 0
    d = json.loads(out)
    assert d["kind"] == "pdf" and d["document_id"] == "LABX-1" and "19900000033" in json.dumps(d["recipients"])
    bad = tmp_path / "bad.json"
    bad.write_text('{"recipients": [{"rpps": "19900000033"}], "recipent": []}')
    code, _, err = _run(["payload", "inspect", str(bad)], capsys)
    assert code == 2 and "unknown key 'recipent'" in err and "$.recipent" in err
