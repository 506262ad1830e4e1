"""`msgw send` says what it queued and refuses up front what the policy would bounce (issue 16,
item 5): exit 1 with the very reply the SMTP server gives at RCPT, over a real socket, to the same
recipient; nothing queued. Real config, real TEST PKI, real directory."""

from __future__ import annotations

import re
import smtplib
from pathlib import Path

import pytest

from gateway.smime.testpki import ORG_EMAIL, PERSON_EMAIL, TestPKI
from tests.e2e.harness import GatewayProcess, msgw, queue_json
from tests.e2e.test_intake_flow import UNROUTED, _oru, _setup
from tests.e2e.test_protection_flow import LAB_PASSWORD, _lab_message, _protected_setup, _tls
from tests.smime.support import shared_pki

NOBODY = "dr.nobody@nowhere.test"
QUEUE_ID = r"[0-9A-Za-z_-]+"


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return shared_pki().pki


def _refused_at_rcpt(setup, address: str) -> str:
    with smtplib.SMTP("127.0.0.1", setup.submission_port, timeout=20) as client:
        client.ehlo("lis.labo-tests.sante.test")
        client.starttls(context=_tls())
        client.ehlo("lis.labo-tests.sante.test")
        client.login(ORG_EMAIL, LAB_PASSWORD)
        client.mail(ORG_EMAIL)
        code, text = client.rcpt(address)
    assert code == 550
    return f"{code} {text.decode()}"


def test_a_message_the_policy_would_bounce_is_refused_with_the_rcpt_reply(pki: TestPKI, tmp_path: Path) -> None:
    setup = _protected_setup(tmp_path / "gw", pki, 9)
    eml = tmp_path / "m.eml"
    eml.write_bytes(_lab_message(PERSON_EMAIL))
    with GatewayProcess(setup):
        smtp_reply = _refused_at_rcpt(setup, NOBODY)
    assert "5.7.1" in smtp_reply
    out = msgw("send", "--config", str(setup.config), "--from", ORG_EMAIL, "--to", PERSON_EMAIL, "--to", NOBODY,
               str(eml))
    assert out.returncode == 1, out.stderr
    err = out.stderr.decode()
    assert f"msgw: {NOBODY}: {smtp_reply}\n" in err
    assert PERSON_EMAIL not in err  # only the refused recipient is named
    assert all(line.startswith("msgw: ") for line in err.splitlines()), err  # no stray log line
    assert out.stdout == b""
    assert queue_json(setup) == []  # nothing queued


def test_a_message_says_what_it_queued_and_to_whom(pki: TestPKI, tmp_path: Path) -> None:
    setup = _protected_setup(tmp_path / "gw", pki, 9)
    eml = tmp_path / "m.eml"
    eml.write_bytes(_lab_message(PERSON_EMAIL))
    out = msgw("send", "--config", str(setup.config), "--from", ORG_EMAIL, "--to", PERSON_EMAIL, str(eml))
    assert out.returncode == 0, out.stderr
    (line,) = out.stdout.decode().splitlines()
    match = re.fullmatch(rf"({QUEUE_ID})  the message, to {re.escape(PERSON_EMAIL)}", line)
    assert match, line
    assert [m["id"] for m in queue_json(setup)] == [match.group(1)]


def test_a_payload_names_the_document_and_the_routing_notice(pki: TestPKI, tmp_path: Path) -> None:
    """An unknown RPPS: the document goes to the unrouted mailbox and the sender gets a routing
    notice; each queued id says which it is."""
    setup, _drop, _port = _setup(tmp_path, pki, 9)
    hl7 = tmp_path / "r.hl7"
    hl7.write_bytes(_oru("8" + "19999999999", "CTRL-CLI-1"))
    out = msgw("send", "--config", str(setup.config), "--from", ORG_EMAIL, str(hl7))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.decode().splitlines()
    assert len(lines) == 2, lines
    assert re.fullmatch(rf"{QUEUE_ID}  the document \(hl7v2\), to {re.escape(UNROUTED)}", lines[0]), lines
    assert re.fullmatch(rf"{QUEUE_ID}  the routing notice to the sender, to {re.escape(ORG_EMAIL)}", lines[1]), lines
    queued = {m["id"] for m in queue_json(setup)}
    assert queued == {line.split()[0] for line in lines}


def test_a_payload_with_a_recipient_the_policy_refuses_queues_nothing(pki: TestPKI, tmp_path: Path) -> None:
    setup, _drop, _port = _setup(tmp_path, pki, 9)
    hl7 = tmp_path / "r.hl7"
    hl7.write_bytes(_oru("8" + "19999999999", "CTRL-CLI-2"))
    out = msgw("send", "--config", str(setup.config), "--from", ORG_EMAIL, "--to", NOBODY, str(hl7))
    assert out.returncode == 1, out.stderr
    assert re.search(rf"msgw: {re.escape(NOBODY)}: 550 5\.7\.1 ", out.stderr.decode()), out.stderr
    assert out.stdout == b""
    assert queue_json(setup) == []
