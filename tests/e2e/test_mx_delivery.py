"""MX routing end to end: the gateway asks a real (loopback) DNS server for the recipient
domain's MX, falls back over preferences, and delivers to the sink it points at."""

from __future__ import annotations

import smtplib
import time
from pathlib import Path

from tests.dnsserver import DNSServer
from tests.e2e.harness import GatewayProcess, Sink, make_message, queue_json, write_config


def test_delivery_follows_mx_preferences_and_implicit_mx(tmp_path: Path) -> None:
    sink = Sink().start()
    zone = """
$ORIGIN cabinet.example.
@      MX 10 mx-dead
@      MX 20 mx-live
mx-dead A 127.0.0.2
mx-live A 127.0.0.1
$ORIGIN implicit.example.
@      A 127.0.0.1
$ORIGIN nullmx.example.
@      MX 0 .
$ORIGIN lab.example.
@      MX 10 mx-live.cabinet.example.
"""
    try:
        with DNSServer(zone) as dns_server:
            # mx_port sends every MX connection to the sink's port; 127.0.0.2 has nothing listening.
            delivery = (f'tls = "opportunistic"\ndns_nameservers = ["127.0.0.1"]\ndns_port = {dns_server.port}\n'
                        f"mx_port = {sink.port}\n")
            setup = write_config(tmp_path, delivery=delivery, relay_networks='["127.0.0.0/8"]')
            with GatewayProcess(setup):
                with smtplib.SMTP("127.0.0.1", setup.relay_port, timeout=10) as client:
                    client.ehlo("lis.lab.example")
                    for rcpt in ("dr.a@cabinet.example", "dr.b@implicit.example", "dr.c@nullmx.example"):
                        client.sendmail("lis@lab.example", [rcpt], make_message("lis@lab.example", rcpt, "r", "x"))
                got = sink.wait_for(3, timeout=30)  # two results + one DSN for the null MX domain
                deadline = time.monotonic() + 10
                while queue_json(setup) and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert queue_json(setup) == []
            asked = set(dns_server.queries)
        rcpts = sorted(r for m in got if m.sender for r in m.recipients)
        assert rcpts == ["dr.a@cabinet.example", "dr.b@implicit.example"]
        dsn = [m for m in got if m.sender == ""]
        assert len(dsn) == 1 and b"dr.c@nullmx.example" in dsn[0].data and b"Action: failed" in dsn[0].data
        assert ("cabinet.example.", "MX") in asked and ("mx-live.cabinet.example.", "A") in asked
        assert ("implicit.example.", "A") in asked
    finally:
        sink.stop()
