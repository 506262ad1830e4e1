"""The two hooks into the gateway: delivery outcomes reach the ledger (Z02), and the SMTP
listener hands reports for the application mailbox to the returns sink before its 250."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.cisis.ledger import ZamLedger
from gateway.cisis.zam import parse_zam
from gateway.config import load_config
from gateway.runner import QueueService
from gateway.spool import Spool
from tests.cisis.zamdata import ORIGINAL
from tests.e2e.harness import Sink, SinkHandler, make_message, write_config

GOOD = "dr.bon@cabinet.example"
BAD = "dr.inconnu@cabinet.example"


def test_delivery_outcomes_reach_the_listener_after_they_are_written(tmp_path: Path) -> None:
    handler = SinkHandler(rcpt_reply=lambda a: "550 5.1.1 no such user" if a == BAD else "250 2.1.5 OK")
    sink = Sink(handler=handler).start()
    try:
        config = load_config(write_config(tmp_path / "gw", sink_port=sink.port).config)
        spool = Spool(config.spool.path).open()
        msg_id = spool.accept("bal@pfi.example", [GOOD, BAD], make_message("bal@pfi.example", GOOD, "s", "b"),
                              lifetime=3600)
        ledger = ZamLedger.beside(config.spool.path)
        ledger.record(ORIGINAL, "labo", {"ACK_RECEPTION": True},
                      [(msg_id, "<m1@pfi.example>", GOOD, "8001", "professional"),
                       (msg_id, "<m1@pfi.example>", BAD, "8002", "professional")])
        seen: list[tuple] = []

        def listener(queue_id: str, rcpt: str, state: str, status: str, reply: str | None) -> None:
            msg = spool.get(queue_id)
            assert msg is not None and {r.address: r.state.value for r in msg.recipients}[rcpt] == state
            seen.append((queue_id, rcpt, state, status))
            ledger.on_outcome(queue_id, rcpt, state == "delivered", status, reply)
            raise RuntimeError("a listener fault must not break delivery")

        service = QueueService(config, spool)
        service.delivery.on_outcome = listener
        asyncio.run(service.run_once())
        assert sorted(s[:3] for s in seen) == [(msg_id, GOOD, "delivered"), (msg_id, BAD, "bounced")]
        zams = {parse_zam(e.data)["OBX[2]-5"]: parse_zam(e.data) for e in ledger.due(10**10)["labo"]}
        assert zams[f"^^X.400^{GOOD}"]["OBX[1]-5"] == "Y^^HL70136"
        assert zams[f"^^X.400^{BAD}"]["ERR[1]-5"].startswith("550^")
        assert len(handler.snapshot()) == 1
    finally:
        sink.stop()


# -- the application mailbox -----------------------------------------------------------------------

MAILBOX = "bal-applicative@pfi.mssante.test"
DOCTOR = "adam.hoda@test-ci-sis.mssante.fr"


def _send(port: int, data: bytes, rcpts: list[str]) -> tuple[int, bytes]:
    import smtplib

    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.ehlo("mx.operateur.test")
        client.mail("")
        for rcpt in rcpts:
            code, text = client.rcpt(rcpt)
            if code != 250:
                return code, text
        client.putcmd("data")
        code, text = client.getreply()
        assert code == 354
        client.send(smtplib.quotedata(data.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")
                    + b"\r\n.\r\n")
        return client.getreply()


def _serve(tmp_path: Path, sink, messages: list[tuple[bytes, list[str]]]) -> list[tuple[int, bytes]]:
    from gateway.server.smtp import SmtpServer

    extra = f'[intake.cisis]\napplication_mailbox = "{MAILBOX}"\nnil = "TEST0001"\n'
    setup = write_config(tmp_path / "gw", sink_port=1, extra=extra)
    config = load_config(setup.config)
    spool = Spool(config.spool.path).open()

    async def run() -> list[tuple[int, bytes]]:
        server = SmtpServer(config, spool)
        server.returns_sink = sink
        await server.start()
        try:
            port = server.bound["relay"][1]
            return [await asyncio.to_thread(_send, port, data, rcpts) for data, rcpts in messages]
        finally:
            await server.stop()

    replies = asyncio.run(run())
    assert spool.list() == []  # reports are applied, never queued
    return replies


def test_reports_to_the_application_mailbox_are_applied_before_the_250(tmp_path: Path) -> None:
    from tests.cisis.reports import dsn, mdn

    ledger = ZamLedger(tmp_path / "cisis.sqlite")
    ledger.record(ORIGINAL, "labo", {"ACK_RECEPTION": True, "ACK_LECTURE_MSS": True},
                  [("Q1", "<copy-1@pfi.test>", DOCTOR, "801234567897", "professional")])
    replies = _serve(tmp_path, ledger.apply_report, [
        (dsn(), [MAILBOX]),
        (mdn(recipient="intrus@ailleurs.mssante.fr"), [MAILBOX]),
        (mdn("automatic-action/MDN-sent-automatically; processed/Error: 904^INS différent"), [MAILBOX]),
        (b"From: x@y.test\r\nSubject: TEST Dupont\r\n\r\nTEST corps\r\n", [MAILBOX]),
    ])
    assert [r[0] for r in replies[:3]] == [250, 250, 250]
    assert replies[3] == (550, b"5.7.1 this mailbox only receives delivery and read notifications")
    zams = [parse_zam(e.data) for e in ledger.due(10**10)["labo"]]
    assert [z["MSH-9"] for z in zams] == ["ZAM^Z02^ZAM_Z01", "ZAM^Z03^ZAM_Z01"]
    assert zams[0]["ERR[1]-5"] == "550^5.1.1 user unknown^SMTPERRORCODE"
    assert zams[1]["ERR[1]-5"] == "904^INS différent^applicationErrorCondition"
    assert ledger.ignored() == {"recipient-not-on-copy": 1}


def test_a_local_fault_defers_the_report(tmp_path: Path) -> None:
    from gateway.cisis.ledger import LedgerError
    from tests.cisis.reports import dsn

    def broken(data: bytes) -> None:
        raise LedgerError("cannot apply a returned report in the CI-SIS ledger (OperationalError)")

    def crashing(data: bytes) -> None:
        raise RuntimeError("TEST internal detail")

    [deferred] = _serve(tmp_path / "a", broken, [(dsn(), [MAILBOX])])
    [crashed] = _serve(tmp_path / "b", crashing, [(dsn(), [MAILBOX])])
    assert deferred[0] == 451 and crashed[0] == 451
    assert b"TEST internal detail" not in crashed[1]
