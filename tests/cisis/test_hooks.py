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
