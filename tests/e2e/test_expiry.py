"""A next hop that stays down: a "delayed" DSN after delay_warning, then a "failed" DSN
(4.4.7) when max_queue_lifetime is over; both reach the (local) sender, headers only."""

from __future__ import annotations

import email
import smtplib
import time
from email import policy
from pathlib import Path

from tests.conftest import free_port
from tests.e2e.harness import GatewayProcess, make_message, queue_json, write_config

MARKER = "PATIENT-MARKER-expiry"


def test_delayed_then_failed_dsn_after_lifetime(tmp_path: Path) -> None:
    dead_port = free_port()
    setup = write_config(tmp_path, sink_port=dead_port, retry='["500ms"]', lifetime="4s", delay_warning="1s",
                         relay_networks='["127.0.0.0/8"]')
    sender = "lis@msgw.test"
    with GatewayProcess(setup):
        with smtplib.SMTP("127.0.0.1", setup.relay_port, timeout=10) as client:
            client.ehlo("lis.lab.example")
            client.sendmail(sender, ["dr@down.example"], make_message(sender, "dr@down.example", "CR", MARKER))
        box = setup.maildir / sender / "new"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (box.exists() and len(list(box.iterdir())) >= 2):
            time.sleep(0.1)
        files = sorted(box.iterdir(), key=lambda p: p.stat().st_mtime)
        assert len(files) == 2, files
        deadline = time.monotonic() + 10
        while queue_json(setup) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert queue_json(setup) == []
    reports = []
    for f in files:
        raw = f.read_bytes()
        assert MARKER.encode() not in raw
        msg = email.message_from_bytes(raw, policy=policy.default)
        assert msg.get_content_type() == "multipart/report"
        per_rcpt = list(msg.iter_parts())[1].get_payload()[1]
        reports.append((per_rcpt["Action"], per_rcpt["Status"]))
    assert reports[0][0] == "delayed" and reports[0][1].startswith("4.")
    assert reports[1] == ("failed", "4.4.7")
