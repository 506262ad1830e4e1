"""Local domains delivered over LMTP (to aiosmtpd's real LMTP server): per-recipient replies
after DATA become per-recipient queue states."""

from __future__ import annotations

import smtplib
import time
from pathlib import Path

from tests.conftest import free_port
from tests.e2e.harness import GatewayProcess, make_message, queue_json, write_config
from tests.unit.test_local_delivery import LMTPController, LMTPHandler


def test_local_delivery_over_lmtp(tmp_path: Path) -> None:
    handler = LMTPHandler()
    handler.refuse_rcpt = {"unknown@msgw.test": "550 5.1.1 no such user"}
    handler.after_data = {}
    lmtp = LMTPController(handler, hostname="127.0.0.1", port=free_port())
    lmtp.start()
    try:
        setup = write_config(tmp_path, sink_port=free_port())
        # unknown@ is a mailbox the gateway knows and the LMTP server refuses (a per-recipient 550)
        text = setup.config.read_text().replace('maildir = "maildir"',
                                                f'mode = "lmtp"\nlmtp_host = "127.0.0.1"\nlmtp_port = {lmtp.port}')
        text = text.replace('mailboxes = [', 'mailboxes = ["unknown@msgw.test", ')
        setup.config.write_text(text)
        with GatewayProcess(setup):
            with smtplib.SMTP("127.0.0.1", setup.relay_port, timeout=10) as client:
                client.ehlo("mx.partner.example")
                client.sendmail("lis@msgw.test", ["dr.a@msgw.test", "unknown@msgw.test"],
                                make_message("lis@msgw.test", "dr.a@msgw.test", "r", "lmtp body"))
            deadline = time.monotonic() + 15
            while (len(handler.received) < 2 or queue_json(setup)) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert queue_json(setup) == []
        first, dsn = handler.received
        assert first[1] == ["dr.a@msgw.test"] and b"lmtp body" in first[2]
        assert dsn[0] in ("", "<>") and dsn[1] == ["lis@msgw.test"]
        assert b"unknown@msgw.test" in dsn[2] and b"5.1.1" in dsn[2]
    finally:
        lmtp.stop()
