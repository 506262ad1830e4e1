"""The pipeline runner with a real spool: a poison message is quarantined after CRASH_LIMIT
crashes of its preparation (and never reaches delivery), and a recipient whose preparation keeps
being deferred still earns its sender a delay notice."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

from gateway.config import load_config
from gateway.pipeline import Pipeline, Refusal, WorkItem
from gateway.runner import CRASH_LIMIT, QueueService
from gateway.spool import RecipientState, Spool
from tests.e2e.harness import write_config


class _Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_a_preparation_that_keeps_crashing_is_quarantined(tmp_path: Path) -> None:
    runs: list[str] = []

    async def poison(item: WorkItem) -> WorkItem:
        runs.append(item.envelope.queue_id)
        raise RuntimeError("a stage bug")

    config = load_config(write_config(tmp_path / "gw", sink_port=9).config)
    spool = Spool(config.spool.path).open()
    msg_id = spool.accept("lab@lab.example", ["dr@y.example"], b"Subject: s\r\n\r\nb\r\n", lifetime=3600)
    clock = _Clock()
    queue = QueueService(config, spool, Pipeline((poison,)), clock=clock)
    for _ in range(CRASH_LIMIT + 2):
        asyncio.run(queue.run_once())
        clock.now += 60
    msg = spool.get(msg_id)
    assert msg.quarantined and msg.crashes == CRASH_LIMIT
    assert len(runs) == CRASH_LIMIT, "not prepared again once quarantined"
    assert msg.recipients[0].state is not RecipientState.BOUNCED and msg.recipients[0].copy_id is None
    assert (spool.quarantine_dir / msg_id).exists()
    assert spool.due_received(clock.now) == [] and spool.due_prepared(clock.now) == []


def test_a_recipient_deferred_at_preparation_earns_a_delay_notice(tmp_path: Path) -> None:
    async def key_away(item: WorkItem) -> WorkItem:
        return replace(item, refusals=tuple(Refusal(r, "key labo-sign unavailable", status="4.7.0", temporary=True)
                                            for r in item.envelope.recipients))

    config = load_config(write_config(tmp_path / "gw", sink_port=9, delay_warning="10m", retry='["1m"]').config)
    spool = Spool(config.spool.path).open()
    msg_id = spool.accept("lab@lab.example", ["dr@y.example"], b"Subject: s\r\n\r\nb\r\n", lifetime=86400)
    clock = _Clock()
    queue = QueueService(config, spool, Pipeline((key_away,)), clock=clock)
    asyncio.run(queue.run_once())
    assert [m.id for m in spool.list()] == [msg_id], "deferred: no notice before delay_warning"
    clock.now += 11 * 60
    asyncio.run(queue.run_once())
    notices = [m for m in spool.list() if m.listener == "dsn"]
    assert len(notices) == 1 and notices[0].recipients[0].address == "lab@lab.example"
    assert b"delayed" in spool.message_bytes(notices[0].id)
    assert spool.get(msg_id).delay_notified and spool.get(msg_id).stage == "received"
    clock.now += 11 * 60
    asyncio.run(queue.run_once())
    assert len([m for m in spool.list() if m.listener == "dsn"]) == 1, "one notice, not one per attempt"
