"""A DSN is queued as a prepared copy of itself and delivered without meeting the pipeline
(issue 12): the `listener == "dsn"` special case of the outbound stage has nothing left to do.
A real spool and a real aiosmtpd sink; the pipeline is a stage that refuses every recipient
and remembers what it was given."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.pipeline import Envelope, Pipeline, Refusal, WorkItem
from gateway.runner import QueueService
from gateway.spool import RecipientState, Spool
from tests.e2e.harness import Sink, make_message, write_config


def test_a_dsn_reaches_the_sender_without_the_pipeline(tmp_path: Path) -> None:
    seen: list[Envelope] = []

    async def refuse_everyone(item: WorkItem) -> WorkItem:
        seen.append(item.envelope)
        refusals = tuple(Refusal(r, "no protection possible for this recipient") for r in item.envelope.recipients)
        return replace(item, refusals=refusals)

    sink = Sink().start()
    try:
        config = load_config(write_config(tmp_path / "gw", sink_port=sink.port).config)
        spool = Spool(config.spool.path).open()
        msg_id = spool.accept("lab@lab.example", ["dr@cabinet.example"],
                              make_message("lab@lab.example", "dr@cabinet.example", "s", "refused"), lifetime=3600)
        queue = QueueService(config, spool, Pipeline((refuse_everyone,)))
        asyncio.run(queue.run_once())  # prepared: refused → bounced, and the DSN queued
        assert spool.get(msg_id) is None, "bounced, its DSN queued: the original left the queue"
        (dsn,) = spool.list()
        assert dsn.listener == "dsn" and dsn.sender == "" and dsn.stage == "prepared"
        assert [c.form for c in dsn.copies] == ["dsn"]
        asyncio.run(queue.run_once())  # the DSN is delivered as it is
        (got,) = sink.handler.snapshot()
        assert got.sender == "" and got.recipients == ["lab@lab.example"]
        assert b"multipart/report" in got.data and b"dr@cabinet.example" in got.data
        assert spool.list() == []
        assert [e.queue_id for e in seen] == [msg_id], "the pipeline saw the original only, never the DSN"
    finally:
        sink.stop()


def test_a_refusal_at_preparation_is_bounced_once_with_its_reason(tmp_path: Path) -> None:
    """The runner records a permanent refusal as a bounce (with the stage's reason) and a
    temporary one as a received recipient waiting for its next preparation."""
    async def split(item: WorkItem) -> WorkItem:
        bad, later = item.envelope.recipients
        return replace(item, refusals=(Refusal(bad, "policy refuses this destination"),
                                       Refusal(later, "directory unavailable", status="4.4.3", temporary=True)))

    config = load_config(write_config(tmp_path / "gw", sink_port=9).config)
    spool = Spool(config.spool.path).open()
    msg_id = spool.accept("", ["bad@x.example", "later@x.example"], b"Subject: s\r\n\r\nb\r\n", lifetime=3600)
    asyncio.run(QueueService(config, spool, Pipeline((split,))).run_once())
    bad, later = spool.get(msg_id).recipients
    assert bad.state is RecipientState.BOUNCED and bad.last_status == "5.7.1"
    assert bad.last_error == "policy refuses this destination"
    assert later.state is RecipientState.DEFERRED and later.copy_id is None and later.last_status == "4.4.3"
    assert [m.id for m in spool.due_received(later.next_attempt)] == [msg_id]


@pytest.fixture(autouse=True)
def _quiet_sink_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="mail.log")
