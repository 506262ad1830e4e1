"""Hostile SMTP input over a real socket: smuggling variants, CR/LF injected into MAIL FROM and
RCPT TO, over-long lines, 8-bit headers, 1,000-level MIME nesting through the protection
pipeline. Each is refused cleanly (or handled), and never does a second, smuggled message get
through: the next hop receives at most the legitimate messages."""

from __future__ import annotations

import smtplib
import ssl
import time
from pathlib import Path

import pytest

from gateway.delivery.smtp_client import TlsSettings, send_via_smtp
from gateway.errors import DeliveryError
from gateway.smime.testpki import ORG_EMAIL, PERSON_EMAIL, TestPKI
from tests.e2e.harness import GatewayProcess, Sink, log_events, queue_json, write_config
from tests.e2e.test_protection_flow import LAB_PASSWORD, _protected_setup
from tests.resilience.conftest import ResilienceReport
from tests.resilience.support import RCPT, SENDER, RawSMTP, counts, seq_of, tagged, wait_until
from tests.smime.support import shared_pki

SMUGGLED = (b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@far.example>\r\nDATA\r\n"
            b"From: <evil@attacker.example>\r\nX-Seq: smug-00000\r\n\r\nsmuggled\r\n")
ENDINGS = {
    "bare LF": b"\n.\n",
    "LF.CRLF": b"\n.\r\n",
    "CR.LF": b"\r.\n",
    "CRLF.LF": b"\r\n.\n",
    "CR.CRLF": b"\r.\r\n",
    "CRLF.CR": b"\r\n.\r",
    "LF.LF no dot": b"\n\n",
}


def _envelope(c: RawSMTP, rcpt: str = RCPT) -> None:
    assert c.cmd(b"EHLO lis.partner.example")[0] == 250
    assert c.cmd(f"MAIL FROM:<{SENDER}>".encode())[0] == 250
    assert c.cmd(f"RCPT TO:<{rcpt}>".encode())[0] == 250
    assert c.cmd(b"DATA")[0] == 354


def test_smuggling_injection_long_lines_and_8bit(tmp_path: Path, resilience_report: ResilienceReport) -> None:
    sink = Sink().start()
    try:
        setup = write_config(tmp_path, sink_port=sink.port, relay_networks='["127.0.0.0/8"]')
        legit: list[str] = []
        outcomes: dict[str, str] = {}
        with GatewayProcess(setup) as gw:
            for n, (name, ending) in enumerate(ENDINGS.items()):
                with RawSMTP(setup.relay_port) as c:
                    _envelope(c)
                    body = tagged(f"first-{n:05d}")
                    c.send(body + ending + SMUGGLED + b".\r\n")
                    code, text = c.reply()
                    outcomes[f"smuggle {name}"] = str(code)
                    assert code == 550 and "5.5.2" in text, (name, code, text)
                    # Nothing else is pending: the smuggled commands were never executed.
                    c.sock.settimeout(0.5)
                    with pytest.raises(TimeoutError):
                        c.reply()
                    c.sock.settimeout(15)
                    # The same connection still works for a legitimate message.
                    assert c.cmd(b"RSET")[0] == 250
                    assert c.cmd(f"MAIL FROM:<{SENDER}>".encode())[0] == 250
                    assert c.cmd(f"RCPT TO:<{RCPT}>".encode())[0] == 250
                    assert c.cmd(b"DATA")[0] == 354
                    tag = f"legit-{n:05d}"
                    c.send(tagged(tag) + b".\r\n")
                    assert c.reply()[0] == 250
                    legit.append(tag)
            # CR / LF inside MAIL FROM and RCPT TO: refused, never split into extra commands or headers.
            injections = [
                (b"MAIL FROM:<a@partner.example\rRCPT TO:<victim@far.example>>", None),
                (b"MAIL FROM:<a@partner.example\r>", None),
                (b"MAIL FROM:<a\x00@partner.example>", None),
                (f"MAIL FROM:<{SENDER}>".encode(), b"RCPT TO:<dr@cabinet.example\rX-Injected: yes>"),
                (f"MAIL FROM:<{SENDER}>".encode(), b"RCPT TO:<dr@cabinet.example\r\tX-Injected: yes>"),
                (f"MAIL FROM:<{SENDER}>".encode(), b"RCPT TO:<dr@cabinet.example\x0bX>"),
            ]
            for mail, rcpt in injections:
                with RawSMTP(setup.relay_port) as c:
                    c.cmd(b"EHLO lis.partner.example")
                    code, text = c.cmd(mail)
                    if code == 250:
                        code, text = c.cmd(rcpt or f"RCPT TO:<{RCPT}>".encode())
                    assert code == 501 and "5.5.4" in text, (mail, rcpt, code, text)
                    assert c.cmd(b"DATA")[0] == 503  # no valid envelope, no transaction
            outcomes["CR/LF/NUL in MAIL FROM, RCPT TO"] = f"{len(injections)} x 501"
            # Over-long lines: command (> 512) and text (> 1000) lines.
            with RawSMTP(setup.relay_port) as c:
                c.cmd(b"EHLO lis.partner.example")
                code, _ = c.cmd(b"MAIL FROM:<" + b"a" * 2000 + b"@partner.example>")
                assert code >= 500
                outcomes["2000-byte command line"] = str(code)
            with RawSMTP(setup.relay_port) as c:
                _envelope(c)
                c.send(tagged("long-00000", body="y" * 5000) + b".\r\n")
                code, text = c.reply()
                assert code >= 500, (code, text)
                outcomes["5000-byte text line"] = str(code)
            # 8-bit bytes in headers (UTF-8 and Latin-1): handled, never a crash or a mangled split.
            for n, subject in enumerate(("Résultat é".encode(), "R\xe9sultat".encode("latin-1"))):
                with RawSMTP(setup.relay_port) as c:
                    _envelope(c)
                    tag = f"eight-{n:05d}"
                    msg = tagged(tag).replace(f"Subject: {tag}".encode(), b"Subject: " + subject)
                    c.send(msg + b".\r\n")
                    code, text = c.reply()
                    assert code == 250 or 500 <= code < 600, (code, text)
                    outcomes[f"8-bit header #{n}"] = str(code)
                    if code == 250:
                        legit.append(tag)
            assert wait_until(lambda: set(legit) <= set(counts(sink.handler.snapshot())) and not queue_json(setup),
                              timeout=20)
            assert gw.proc is not None and gw.proc.poll() is None
        seen = counts(sink.handler.snapshot())
        assert set(seen) == set(legit), f"unexpected deliveries: {set(seen) - set(legit)}"
        assert all(v == 1 for v in seen.values())
        for m in sink.handler.snapshot():
            assert b"smuggled" not in m.data and b"X-Injected" not in m.data
            assert m.recipients == [RCPT], (seq_of(m.data), m.recipients)
            assert all(32 < ord(ch) < 127 for ch in m.sender + "".join(m.recipients)), (m.sender, m.recipients)
        events = log_events(setup)
        assert not any(e["event"] in ("processing-crashed", "spool-crashed") for e in events)
        print(f"hostile SMTP: {outcomes}")
        resilience_report.record("hostile SMTP: smuggling/injection/long/8bit", sent=len(legit) + len(ENDINGS) + 9,
                                 acknowledged=len(legit), delivered=len(seen), lost=0, duplicated=0,
                                 note=f"{len(ENDINGS)} smuggling variants 550, 0 smuggled through")
    finally:
        sink.stop()


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return shared_pki().pki


def _nested(depth: int, sender: str, rcpt: str) -> bytes:
    head = (f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: nested\r\nMessage-ID: <{time.time_ns()}@x.example>\r\n"
            "MIME-Version: 1.0\r\n")
    parts_open, parts_close = [], []
    for i in range(depth):
        parts_open.append(f"Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n")
        parts_close.append(f"\r\n--b{i}--\r\n")
    inner = "Content-Type: text/plain\r\n\r\ndeep\r\n"
    return (head + "".join(parts_open) + inner + "".join(reversed(parts_close))).encode()


def test_deep_mime_nesting_through_the_pipeline(pki: TestPKI, tmp_path: Path,
                                                resilience_report: ResilienceReport) -> None:
    sink = Sink().start()
    try:
        setup = _protected_setup(tmp_path / "gw", pki, sink.port)
        with GatewayProcess(setup) as gw:
            # Inbound from outside to the lab's mailbox (classify/unwrap on a plain but deep message).
            with smtplib.SMTP("127.0.0.1", setup.relay_port, timeout=20) as client:
                client.ehlo("mx.outside.example")
                client.sendmail("someone@outside.example", [ORG_EMAIL],
                                _nested(1000, "someone@outside.example", ORG_EMAIL))
            # Outbound from the lab: sign and encrypt a deep message.
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # the test's self-signed listener certificate
            with smtplib.SMTP("127.0.0.1", setup.submission_port, timeout=30) as client:
                client.ehlo("lis.labo-tests.sante.test")
                client.starttls(context=ctx)
                client.ehlo("lis.labo-tests.sante.test")
                client.login(ORG_EMAIL, LAB_PASSWORD)
                client.sendmail(ORG_EMAIL, [PERSON_EMAIL], _nested(1000, ORG_EMAIL, PERSON_EMAIL))
            # Each is either delivered or refused with a reason (bounce): never stuck, never a crash.
            assert wait_until(lambda: not queue_json(setup), timeout=40), queue_json(setup)
            assert gw.proc is not None and gw.proc.poll() is None
        events = log_events(setup)
        crashed = [e for e in events if e["event"] in ("processing-crashed", "quarantined", "spool-crashed")]
        assert not crashed, crashed
        box = setup.maildir / ORG_EMAIL / "new"
        inbound = len(list(box.iterdir())) if box.exists() else 0
        outbound = len(sink.handler.snapshot())
        bounced = sum(1 for e in events if e["event"] == "bounced")
        print(f"deep MIME: inbound delivered {inbound}, outbound delivered {outbound}, bounced {bounced}")
        assert inbound + outbound + bounced >= 2
        resilience_report.record("hostile: 1000-level MIME via pipeline", sent=2, acknowledged=2,
                                 delivered=inbound + outbound, lost=0, duplicated=0,
                                 note=f"{bounced} refused with a DSN, 0 crashes")
    finally:
        sink.stop()


async def test_delivery_refuses_control_characters_instead_of_crashing() -> None:
    """Defence in depth for messages already in a spool from before the MAIL/RCPT check: a
    control character in an address becomes a permanent failure (bounce), not an exception that
    crashes every attempt until quarantine."""
    sink = Sink().start()
    try:
        tls = TlsSettings(policy="none")
        common = dict(host="127.0.0.1", address="127.0.0.1", port=sink.port, data=tagged("ctl-00000"), tls=tls,
                      helo_name="msgw.test", connect_timeout=5, command_timeout=10)
        with pytest.raises(DeliveryError) as err:
            await send_via_smtp(sender="a\x00@partner.example", recipients=[RCPT], **common)
        assert not err.value.temporary and err.value.status == "5.1.7"
        results = await send_via_smtp(sender=SENDER, recipients=["dr\x00@cabinet.example", RCPT], **common)
        assert results["dr\x00@cabinet.example"].code == 553 and results["dr\x00@cabinet.example"].status == "5.1.3"
        assert results[RCPT].ok
        assert [m.recipients for m in sink.handler.snapshot()] == [[RCPT]]
    finally:
        sink.stop()
