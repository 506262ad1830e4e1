"""The queue runner with a real spool and a real aiosmtpd next hop: many recipients are
recorded in a few batched transactions (issue 11, item 9), and on a full disk a delivered
copy whose state cannot be written is not sent again (item 10)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.runner import QueueService as DeliveryManager
from gateway.spool import RecipientState, Spool
from tests.diskfull import fill
from tests.e2e.harness import Sink, SinkHandler, make_message, write_config


class _Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _commits(spool: Spool) -> list[str]:
    """Every COMMIT the spool's connection runs (each one is an fsync of the WAL)."""
    seen: list[str] = []
    spool.db.set_trace_callback(lambda sql: seen.append(sql) if sql.strip().upper() == "COMMIT" else None)
    return seen


def _reply(address: str) -> str:
    n = int(address.split("@")[0].removeprefix("dr"))
    if n % 10 == 1:
        return "451 4.2.1 mailbox busy"
    if n % 10 == 2:
        return "550 5.1.1 no such user"
    return "250 2.1.5 OK"


def test_ten_thousand_recipients_are_recorded_in_batches(tmp_path: Path) -> None:
    handler = SinkHandler(rcpt_reply=_reply)
    sink = Sink(handler=handler).start()
    try:
        setup = write_config(tmp_path / "gw", sink_port=sink.port)
        config = load_config(setup.config)
        spool = Spool(config.spool.path).open()
        rcpts = [f"dr{i}@cabinet.example" for i in range(10_000)]
        msg_id = spool.accept("lab@lab.example", rcpts, make_message("lab@lab.example", rcpts[0], "s", "many"),
                              lifetime=3600)
        audit: list[dict] = []
        manager = DeliveryManager(config, spool, audit=lambda **kw: audit.append(kw))
        commits = _commits(spool)
        started = time.perf_counter()
        asyncio.run(manager.run_once())
        elapsed = time.perf_counter() - started
        print(f"\n10,000 recipients: delivered, deferred and bounced in {elapsed:.2f} s, {len(commits)} commits")
        got = handler.snapshot()
        assert len(got) == 1 and len(got[0].recipients) == 8_000
        msg = spool.get(msg_id)
        assert msg is not None
        states = {r.address: r.state for r in msg.recipients}
        for i, address in enumerate(rcpts):
            expected = {1: RecipientState.DEFERRED, 2: RecipientState.BOUNCED}.get(i % 10, RecipientState.DELIVERED)
            assert states[address] is expected, address
        assert all(r.dsn_sent for r in msg.recipients if r.state is RecipientState.BOUNCED)
        # One DSN for the 1,000 bounces; outcomes written per set, not per recipient.
        dsns = [m for m in spool.list() if m.listener == "dsn"]
        assert len(dsns) == 1 and dsns[0].recipients[0].address == "lab@lab.example"
        assert len(commits) <= 10, f"{len(commits)} transactions for one delivery attempt"
        assert sorted(a["outcome"].split()[0] for a in audit).count("delivered") == 8_000
    finally:
        sink.stop()


def test_a_delivered_copy_is_not_sent_again_when_its_state_cannot_be_written(tmp_path: Path, tmpfs_factory) -> None:
    """Full disk and no reserve left: the sink got the copy, the spool cannot record it. The
    runner keeps the outcome in memory and holds the message instead of sending it again;
    when space returns the outcome is written and the message leaves the queue."""
    mount = tmpfs_factory("4m")
    sink = Sink().start()
    try:
        setup = write_config(tmp_path / "gw", sink_port=sink.port)
        config = load_config(setup.config)
        spool = Spool(mount / "spool", reserve=0).open()
        msg_id = spool.accept("lab@lab.example", ["dr@cabinet.example"],
                              make_message("lab@lab.example", "dr@cabinet.example", "s", "once"), lifetime=3600)
        clock = _Clock()
        manager = DeliveryManager(config, spool, clock=clock)
        fill(mount / "filler")
        asyncio.run(manager.run_once())
        assert len(sink.handler.snapshot()) == 1
        assert spool.get(msg_id).recipients[0].state is RecipientState.QUEUED  # could not be written
        for _ in range(3):  # the runner comes back after its hold: nothing is sent again
            clock.now += 5
            asyncio.run(manager.run_once())
        assert len(sink.handler.snapshot()) == 1
        (mount / "filler").unlink()
        clock.now += 5
        asyncio.run(manager.run_once())
        assert spool.get(msg_id) is None, "the delivered state was written and the message removed"
        assert len(sink.handler.snapshot()) == 1
    finally:
        sink.stop()


@pytest.fixture(autouse=True)
def _quiet_sink_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="mail.log")
