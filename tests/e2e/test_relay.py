"""The relay core over real sockets: submission with STARTTLS+AUTH, relay policy, delivery to
an aiosmtpd sink and to Postfix's smtp-sink, outage, bounce with DSN, no health data in logs."""

from __future__ import annotations

import asyncio
import email
import smtplib
import ssl
import subprocess
import time
from email import policy
from pathlib import Path

import aiosmtplib
import pytest

from tests.conftest import free_port, require_tool
from tests.e2e.harness import (
    PASSWORD,
    USER,
    GatewayProcess,
    Sink,
    SinkHandler,
    log_events,
    make_message,
    msgw,
    queue_json,
    write_config,
)

MARKER = "PATIENT-MARKER-7f3c1e"  # stands for health content: must never reach a log


def _tls_client_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the test gateway uses a throw-away self-signed certificate
    return ctx


def _submit(port: int, rcpts: list[str], body: str = "hello", sender: str = USER) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.test")
        client.starttls(context=_tls_client_context())
        client.ehlo("client.test")
        client.login(USER, PASSWORD)
        msg = make_message(sender, rcpts[0], "Résultats", body)
        client.sendmail(sender, rcpts, msg)
        return "ok"


@pytest.fixture
def sink():
    s = Sink().start()
    yield s
    s.stop()


def test_swaks_auth_relays_to_sink_and_queue_is_empty(tmp_path: Path, sink: Sink) -> None:
    swaks = require_tool("swaks")
    setup = write_config(tmp_path, sink_port=sink.port)
    with GatewayProcess(setup):
        out = subprocess.run([swaks, "--server", f"127.0.0.1:{setup.submission_port}", "--tls",
                              "--auth", "PLAIN", "--auth-user", USER, "--auth-password", PASSWORD,
                              "--from", USER, "--to", "dr.martin@cabinet.example", "--helo", "lis.lab.example",
                              "--header", "Subject: CR biologie", "--body", f"Glycemie {MARKER}"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "queued as" in out.stdout
        got = sink.wait_for(1)
        assert got[0].recipients == ["dr.martin@cabinet.example"]
        assert got[0].sender == USER
        assert MARKER.encode() in got[0].data
        assert got[0].data.startswith(b"Received: from lis.lab.example")
        deadline = time.monotonic() + 10
        while queue_json(setup) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert queue_json(setup) == []
    events = log_events(setup)
    assert any(e["event"] == "accepted" for e in events)
    assert any(e["event"] == "delivery" and e.get("delivered") == 1 for e in events)
    everything = setup.log_file.read_text() + (tmp_path / "stderr.log").read_text()
    assert MARKER not in everything
    assert "CR biologie" not in everything


def test_smtplib_and_aiosmtplib_submissions(tmp_path: Path, sink: Sink) -> None:
    setup = write_config(tmp_path, sink_port=sink.port)
    with GatewayProcess(setup):
        _submit(setup.submission_port, ["a@one.example", "b@two.example"], body=MARKER)

        async def with_aiosmtplib() -> None:
            msg = make_message(USER, "c@three.example", "x", "via aiosmtplib")
            await aiosmtplib.send(msg, sender=USER, recipients=["c@three.example"], hostname="127.0.0.1",
                                  port=setup.submission_port, start_tls=True, validate_certs=False,
                                  username=USER, password=PASSWORD, local_hostname="client.test")
        asyncio.run(with_aiosmtplib())
        got = sink.wait_for(2)
        rcpts = sorted(r for m in got for r in m.recipients)
        assert rcpts == ["a@one.example", "b@two.example", "c@three.example"]


def test_local_domain_delivered_to_maildir_via_relay_listener(tmp_path: Path, sink: Sink) -> None:
    setup = write_config(tmp_path, sink_port=sink.port)
    with GatewayProcess(setup):
        with smtplib.SMTP("127.0.0.1", setup.relay_port, timeout=10) as client:
            client.ehlo("mx.partner.example")
            client.sendmail("lab@partner.example", ["dr.durand@msgw.test"],
                            make_message("lab@partner.example", "dr.durand@msgw.test", "r", MARKER))
        new = setup.maildir / "dr.durand@msgw.test" / "new"
        deadline = time.monotonic() + 15
        while not (new.exists() and list(new.iterdir())) and time.monotonic() < deadline:
            time.sleep(0.1)
        files = list(new.iterdir())
        assert len(files) == 1
        content = files[0].read_bytes()
        assert MARKER.encode() in content
        assert b"Return-Path: <lab@partner.example>" in content
    assert sink.handler.snapshot() == []


def test_policy_refusals(tmp_path: Path, sink: Sink) -> None:
    setup = write_config(tmp_path, sink_port=sink.port)
    with GatewayProcess(setup):
        # Open relay attempt on the relay listener: a stranger to a non-local domain.
        with smtplib.SMTP("127.0.0.1", setup.relay_port, timeout=10) as client:
            client.ehlo("stranger.example")
            code, _ = client.mail("spam@stranger.example")
            assert code == 250
            code, text = client.rcpt("victim@elsewhere.example")
            assert code == 550 and b"5.7.1" in text
        # Open relay attempt with STARTTLS but no auth on submission.
        with smtplib.SMTP("127.0.0.1", setup.submission_port, timeout=10) as client:
            client.ehlo("client.test")
            # AUTH before STARTTLS: refused, and not even offered.
            assert not client.has_extn("auth")
            code, text = client.docmd("AUTH", "PLAIN AGxpc0BsYWIuZXhhbXBsZQB4")
            assert code == 530, text
            code, _ = client.mail(USER)
            assert code == 530
            client.starttls(context=_tls_client_context())
            client.ehlo("client.test")
            code, text = client.mail(USER)
            assert code == 530 and b"Authentication required" in text
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.login(USER, "wrong password")
        # Bare LF in DATA (SMTP smuggling) is refused.
        with smtplib.SMTP("127.0.0.1", setup.relay_port, timeout=10) as client:
            client.ehlo("mx.partner.example")
            client.mail("lab@partner.example")
            client.rcpt("dr.durand@msgw.test")
            client.putcmd("DATA")
            code, _ = client.getreply()
            assert code == 354
            client.send(b"Subject: x\r\n\r\nline one\nMAIL FROM:<evil@x>\r\n.\r\n")
            code, text = client.getreply()
            assert code == 550 and b"bare LF" in text
        # EHLO sanity.
        with smtplib.SMTP("127.0.0.1", setup.relay_port, timeout=10) as client:
            code, _ = client.ehlo("not a hostname!")
            assert code == 501
        # Oversize message refused at MAIL with SIZE.
        with smtplib.SMTP("127.0.0.1", setup.relay_port, timeout=10) as client:
            client.ehlo("mx.partner.example")
            code, text = client.mail("lab@partner.example", ["SIZE=60000000"])
            assert code == 552
    time.sleep(0.5)
    assert sink.handler.snapshot() == []
    assert any(e["event"] == "relay-denied" for e in log_events(setup))


def test_postfix_smtp_sink_as_next_hop(tmp_path: Path) -> None:
    smtp_sink = require_tool("smtp-sink")
    port = free_port()
    dump = tmp_path / "dump"
    dump.mkdir()
    proc = subprocess.Popen([smtp_sink, "-u", "root", "-d", str(dump) + "/%M.", f"127.0.0.1:{port}", "50"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        setup = write_config(tmp_path / "gw", sink_port=port)
        with GatewayProcess(setup):
            for i in range(5):
                _submit(setup.submission_port, [f"dr{i}@cabinet.example"], body=f"result {i}")
            def bodies() -> bytes:
                return b"".join(f.read_bytes() for f in dump.iterdir())

            deadline = time.monotonic() + 20
            # smtp-sink writes each file (LF line ends) as the data arrives: wait for complete contents.
            while not all(f"result {i}\n".encode() in bodies() for i in range(5)) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert len(list(dump.iterdir())) == 5
            for i in range(5):
                assert f"result {i}\n".encode() in bodies()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_outage_then_recovery_queue_shows_deferred(tmp_path: Path) -> None:
    sink = Sink()  # not started: the next hop is down
    setup = write_config(tmp_path, sink_port=sink.port, retry='["1s", "2s"]')
    with GatewayProcess(setup):
        _submit(setup.submission_port, ["dr.petit@cabinet.example"], body=MARKER)
        deadline = time.monotonic() + 15
        queued: list[dict] = []
        while time.monotonic() < deadline:
            queued = queue_json(setup)
            if queued and queued[0]["recipients"][0]["state"] == "deferred":
                break
            time.sleep(0.2)
        rcpt = queued[0]["recipients"][0]
        assert rcpt["state"] == "deferred"
        assert "cannot connect" in rcpt["last_error"]
        assert rcpt["next_attempt"] > time.time() - 1
        time.sleep(2.5)  # a few retries against the dead hop
        sink.start()
        try:
            got = sink.wait_for(1, timeout=20)
            assert MARKER.encode() in got[0].data
            deadline = time.monotonic() + 10
            while queue_json(setup) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert queue_json(setup) == []
        finally:
            sink.stop()
    deferrals = [e for e in log_events(setup) if e["event"] == "deferred"]
    assert len(deferrals) >= 2
    assert MARKER not in setup.log_file.read_text()


def test_permanent_failure_bounces_with_wellformed_dsn(tmp_path: Path) -> None:
    handler = SinkHandler(rcpt_reply=lambda a: "550 5.1.1 No such user" if a.startswith("unknown") else
                          "250 2.1.5 OK")
    sink = Sink(handler=handler).start()
    try:
        setup = write_config(tmp_path, sink_port=sink.port)
        with GatewayProcess(setup):
            _submit(setup.submission_port, ["unknown@cabinet.example", "dr.roux@cabinet.example"], body=MARKER)
            got = sink.wait_for(2, timeout=20)
        delivered = [m for m in got if m.sender == USER]
        dsns = [m for m in got if m.sender == ""]
        assert len(delivered) == 1 and delivered[0].recipients == ["dr.roux@cabinet.example"]
        assert len(dsns) == 1 and dsns[0].recipients == [USER]
        dsn = email.message_from_bytes(dsns[0].data, policy=policy.default)
        assert dsn.get_content_type() == "multipart/report"
        assert dsn.get_param("report-type") == "delivery-status"
        parts = list(dsn.iter_parts())
        assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status",
                                                         "text/rfc822-headers"]
        status_blocks = parts[1].get_payload()
        per_rcpt = status_blocks[1]
        assert per_rcpt["Final-Recipient"] == "rfc822; unknown@cabinet.example"
        assert per_rcpt["Action"] == "failed"
        assert per_rcpt["Status"] == "5.1.1"
        assert "550" in per_rcpt["Diagnostic-Code"]
        assert MARKER not in dsns[0].data.decode("utf-8", "replace")
        assert dsn["Auto-Submitted"] == "auto-replied"
    finally:
        sink.stop()


def test_no_dsn_for_null_sender(tmp_path: Path) -> None:
    handler = SinkHandler(rcpt_reply=lambda a: "550 5.1.1 No such user")
    sink = Sink(handler=handler).start()
    try:
        setup = write_config(tmp_path, sink_port=sink.port, relay_networks='["127.0.0.0/8"]')
        with GatewayProcess(setup):
            with smtplib.SMTP("127.0.0.1", setup.relay_port, timeout=10) as client:
                client.ehlo("mx.partner.example")
                client.sendmail("", ["gone@cabinet.example"], make_message("", "gone@cabinet.example", "dsn", "x"))
            deadline = time.monotonic() + 15
            while queue_json(setup) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert queue_json(setup) == []
            time.sleep(1)
        assert sink.handler.snapshot() == []
        assert any(e["event"] == "dsn-suppressed" for e in log_events(setup))
    finally:
        sink.stop()


def test_msgw_check_reports_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[gateway]\nhostname = "bad host"\n[listeners.submission]\nport = 99999\n'
                   '[spool]\nretry_schedule = ["soon"]\n[delivery]\ntls = "maybe"\n')
    out = msgw("check", "--config", str(bad))
    assert out.returncode == 2
    err = out.stderr.decode()
    for key in ("gateway.hostname", "listeners.submission.port", "listeners.submission.tls_cert",
                "spool.retry_schedule[0]", "delivery.tls", "accounts"):
        assert f"{bad}: {key}:" in err, (key, err)
    good = write_config(tmp_path / "good", sink_port=2525)
    out = msgw("check", "--config", str(good.config))
    assert out.returncode == 0, out.stderr


def test_example_config_checks_after_init(tmp_path: Path) -> None:
    from tests.conftest import ROOT

    (tmp_path / "config").mkdir()
    example = tmp_path / "config" / "gateway.toml"
    example.write_text((ROOT / "config" / "gateway.toml").read_text())
    out = msgw("check", "--config", str(example))
    assert out.returncode == 2 and b"tls_cert: file not found" in out.stderr
    assert msgw("init", "--dir", str(tmp_path / "var" / "default")).returncode == 0
    out = msgw("check", "--config", str(example))
    assert out.returncode == 0, out.stderr
