"""Graceful shutdown: SIGTERM stops accepting, lets in-flight deliveries finish within the
grace period and leaves the others pending in the spool for the next start."""

from __future__ import annotations

import asyncio
import smtplib
import time
from pathlib import Path

from tests.e2e.harness import GatewayProcess, Sink, SinkHandler, log_events, make_message, queue_json, write_config


class SlowSink(SinkHandler):
    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.data_started = 0

    async def handle_DATA(self, server, session, envelope):
        self.data_started += 1
        await asyncio.sleep(self.delay)
        return await super().handle_DATA(server, session, envelope)


def _send(port: int, tag: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("lis.lab.example")
        client.sendmail("lis@lab.example", ["dr@cabinet.example"],
                        make_message("lis@lab.example", "dr@cabinet.example", tag, tag))


def _wait(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_sigterm_finishes_in_flight_delivery_within_grace(tmp_path: Path) -> None:
    handler = SlowSink(delay=1.5)
    sink = Sink(handler=handler).start()
    try:
        setup = write_config(tmp_path, sink_port=sink.port, relay_networks='["127.0.0.0/8"]')
        gw = GatewayProcess(setup).start()
        _send(setup.relay_port, "first")
        _wait(lambda: handler.data_started == 1)
        started = time.monotonic()
        assert gw.terminate() == 0
        assert time.monotonic() - started < 5
        assert len(handler.snapshot()) == 1
        assert queue_json(setup) == []
        assert any(e["event"] == "shutdown" and e["finished"] == 1 for e in log_events(setup))
    finally:
        sink.stop()


def test_sigterm_requeues_what_cannot_finish_and_restart_delivers(tmp_path: Path) -> None:
    handler = SlowSink(delay=8)
    sink = Sink(handler=handler).start()
    try:
        setup = write_config(tmp_path, sink_port=sink.port, relay_networks='["127.0.0.0/8"]')
        setup.config.write_text(setup.config.read_text().replace('shutdown_grace = "5s"', 'shutdown_grace = "1s"'))
        gw = GatewayProcess(setup).start()
        _send(setup.relay_port, "second")
        _wait(lambda: handler.data_started == 1)
        started = time.monotonic()
        assert gw.terminate() == 0
        assert time.monotonic() - started < 6
        pending = queue_json(setup)
        assert len(pending) == 1 and pending[0]["recipients"][0]["state"] in ("queued", "deferred")
        assert any(e["event"] == "shutdown" and e["requeued"] == 1 for e in log_events(setup))
        handler.delay = 0
        with GatewayProcess(setup):
            _wait(lambda: not queue_json(setup), timeout=20)
        assert len(handler.snapshot()) >= 1  # at least once (twice if the slow session completed too)
    finally:
        sink.stop()
