"""The runner and delivery (`QueueService`) on both queue backends (issue 18): a plain relay
prepares and delivers over real SMTP to a sink, removes what is done, and on PostgreSQL leaves no
claim behind; a deferral releases the claim (any node takes the message when it is due again)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from gateway.config import load_config
from gateway.runner import QueueService
from gateway.spool import RecipientState
from tests.e2e.harness import Sink, SinkHandler, write_config

BODY = b"From: lab@lab.example\r\nSubject: s\r\n\r\nresult\r\n"


def _released_for_any_node(node1: Any, node2: Any, msg_id: str) -> None:
    """PostgreSQL: node 1 holds no claim on the deferred message; due again (an operator's
    retry), node 2 takes it with no lease to wait for, and that is no takeover."""
    assert node1.leases() == [] and node1.in_hand() == frozenset()
    node1.retry(msg_id)
    assert [m.id for m in node2.due_prepared()] == [msg_id]
    assert node2.counts()["takeovers"] == 0, "a released claim is not a takeover"


def test_messages_are_prepared_delivered_and_removed(queue_store, tmp_path: Path) -> None:
    sink = Sink().start()
    try:
        config = load_config(write_config(tmp_path / "gw", sink_port=sink.port).config)
        store = queue_store("node-1")
        ids = [store.accept("lab@lab.example", ["dr@y.example", "ide@y.example"], BODY + bytes([65 + i]),
                            lifetime=3600) for i in range(3)]
        queue = QueueService(config, store)
        asyncio.run(queue.run_once())
        got = sink.wait_for(3)
        assert sorted(r.data[-3:] for r in got) == [b"A\r\n", b"B\r\n", b"C\r\n"]
        assert all(sorted(r.recipients) == ["dr@y.example", "ide@y.example"] for r in got)
        assert store.list() == [] and all(store.get(i) is None for i in ids)
        if queue_store.backend == "postgresql":
            assert store.leases() == [] and store.in_hand() == frozenset(), "nothing left claimed"
    finally:
        sink.stop()


def test_a_deferral_releases_the_claim(queue_store, tmp_path: Path) -> None:
    sink = Sink(handler=SinkHandler(data_reply="451 4.3.0 try later")).start()
    try:
        config = load_config(write_config(tmp_path / "gw", sink_port=sink.port, retry='["1h"]').config)
        node1, node2 = queue_store("node-1"), queue_store("node-2", recover=False)
        msg_id = node1.accept("lab@lab.example", ["dr@y.example"], BODY, lifetime=86400)
        asyncio.run(QueueService(config, node1).run_once())
        msg = node1.get(msg_id)
        assert msg.recipients[0].state is RecipientState.DEFERRED and msg.recipients[0].next_attempt > time.time()
        if queue_store.backend == "postgresql":
            _released_for_any_node(node1, node2, msg_id)
    finally:
        sink.stop()


def test_a_deferral_of_an_attempt_sent_first_keeps_the_copy_and_releases_the_claim(queue_store,
                                                                                    tmp_path: Path) -> None:
    """The running service sends a fresh preparation before recording it (`send_first`): the
    deferral records the copy with it and, on PostgreSQL, releases the claim as any deferral
    does, so the retry on another node is no takeover."""
    sink = Sink(handler=SinkHandler(data_reply="451 4.3.0 try later")).start()
    try:
        config = load_config(write_config(tmp_path / "gw", sink_port=sink.port, retry='["1h"]').config)
        node1, node2 = queue_store("node-1"), queue_store("node-2", recover=False)
        msg_id = node1.accept("lab@lab.example", ["dr@y.example"], BODY, lifetime=86400)
        service = QueueService(config, node1)

        async def attempt() -> None:
            service.start()
            service.accepted(msg_id)
            deadline = time.monotonic() + 20
            while (m := node1.get(msg_id)) is None or m.recipients[0].state is not RecipientState.DEFERRED \
                    or msg_id in service.delivery.busy():
                assert time.monotonic() < deadline, "no deferral"
                await asyncio.sleep(0.02)
            await service.stop(5)

        asyncio.run(attempt())
        msg = node1.get(msg_id)
        assert msg is not None and msg.recipients[0].prepared, "the deferred recipient keeps its copy"
        assert node1.copy_bytes(msg.copy(msg.recipients[0].copy_id)) == BODY
        if queue_store.backend == "postgresql":
            _released_for_any_node(node1, node2, msg_id)
    finally:
        sink.stop()
