"""`msgw payload plan`: what the gateway would do with a profile message, without sending; the
patient's mailbox masked; refusals with their rule; --out writes the unprotected copies."""

from __future__ import annotations

import email
import email.policy
import json
from pathlib import Path

from tests.cisis.samples import INS, PS_ADDRESS, Spec
from tests.e2e.harness import msgw

CONFIG = """
[gateway]
hostname = "msgw.test"

[listeners.relay]
kind = "relay"
address = "127.0.0.1"
port = 2525

[spool]
path = "spool"

[intake.cisis]
application_mailbox = "pfi@pfi-fictive.mssante.test"
nil = "TEST0001"

[intake.cisis.creators.sgl]
application = "SGLFICTIF"
facility = "LABOFICTIF"
folder = "zam"
"""


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG)
    return path


def _plan(tmp_path: Path, message: bytes, *args: str) -> tuple[int, str, str]:
    source = tmp_path / "message.hl7"
    source.write_bytes(message)
    out = msgw("payload", "plan", str(source), "--config", str(_config(tmp_path)), *args)
    return out.returncode, out.stdout.decode(), out.stderr.decode()


def test_plan_shows_copies_left_out_and_zams_without_the_ins(tmp_path: Path) -> None:
    message = Spec(flags={"DESTDMP": "Y"}).build()
    code, out, err = _plan(tmp_path, message, "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["matrix_row"] == "PS+PATIENT" and plan["action"] == "initial"
    assert [c["kind"] for c in plan["copies"]] == ["professional", "patient"]
    assert plan["copies"][0]["recipients"][0]["address"] == PS_ADDRESS
    assert "IHE_XDM.ZIP" in plan["copies"][0]["attachments"]
    headers = dict(plan["copies"][1]["headers"])
    # the invented CDA has no birthTime nor sex: not a qualified INS in the archive
    assert headers["X-MSS-NIL"] == "TEST0001" and headers["X-MSS-INS"] == "N"
    assert [z["event"] for z in plan["zams"]] == ["Z01", "Z02", "Z02", "Z03", "Z03"]
    assert INS not in out, "the patient's INS (their mailbox) is shown in clear"
    assert not (tmp_path / "spool").exists(), "planning queued something"


def test_plan_names_the_rule_of_a_refusal_and_sends_nothing(tmp_path: Path) -> None:
    code, out, _ = _plan(tmp_path, Spec(flags={"INVISIBLE_REP_LEGAUX": "Y"}).build())
    assert code == 1
    assert "refused (ACK AE, rule MATRIX)" in out and "nothing would be sent" in out
    code, out, _ = _plan(tmp_path, Spec(flags={"INVISIBLE_PATIENT": "Y", "DESTMSSANTEPAT": "N"}).build())
    assert code == 0
    assert "left out: PATIENT" in out and "INVISIBLE_PATIENT=Y" in out


def test_plan_out_writes_each_unprotected_copy_and_says_so(tmp_path: Path) -> None:
    code, _, err = _plan(tmp_path, Spec(nte_fin=True).build(), "--out", str(tmp_path / "eml"))
    assert code == 0
    assert "unprotected" in err and "health data in clear" in err
    files = sorted((tmp_path / "eml").iterdir())
    assert [f.name for f in files] == ["copy-1-professional.eml", "copy-2-patient.eml"]
    assert all(f.stat().st_mode & 0o077 == 0 for f in files)
    patient = email.message_from_bytes(files[1].read_bytes(), policy=email.policy.default)
    assert patient["To"] == f"{INS}@patient.mssante.fr" and patient["X-MSS-MES"] == "FIN"


def test_plan_of_something_else_points_to_inspect(tmp_path: Path) -> None:
    code, _, err = _plan(tmp_path, Spec(profile="").build())
    assert code == 2 and "msgw payload inspect" in err


def test_check_says_what_the_gestionnaire_speaks_as(tmp_path: Path) -> None:
    out = msgw("check", "--config", str(_config(tmp_path)))
    assert out.returncode == 0, out.stderr
    assert b"intake.cisis: application mailbox pfi@pfi-fictive.mssante.test, X-MSS-NIL TEST0001" in out.stdout
    assert b"sgl (SGLFICTIF/LABOFICTIF" in out.stdout
    assert b"no [intake.mllp] nor drop folder" in out.stderr
