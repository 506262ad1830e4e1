"""A prepared copy is a verified cache of the pipeline's result (issue 12): its file is not
fsynced, so after a power cut it may be missing or hold other bytes. Delivery checks its size
and SHA-256 before sending; a copy that does not match is never sent, its recipients become
*received* again and the runner prepares them anew (signed again, sent once). A real spool,
a real aiosmtpd sink, a pipeline stage that "signs" by stamping a counter."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.pipeline import Outgoing, Pipeline, WorkItem
from gateway.runner import QueueService
from gateway.spool import Spool
from tests.e2e.harness import Sink, make_message, write_config


@pytest.mark.parametrize("damage", ["other bytes", "truncated", "missing"])
def test_a_damaged_copy_is_never_sent_and_is_prepared_again(tmp_path: Path, damage: str) -> None:
    runs: list[str] = []

    async def stamp(item: WorkItem) -> WorkItem:
        runs.append(item.envelope.queue_id)
        data = f"X-Prepared: {len(runs)}\r\n".encode() + item.data
        return replace(item, outgoing=(Outgoing(item.envelope.recipients, data, form="smime"),))

    sink = Sink().start()
    try:
        config = load_config(write_config(tmp_path / "gw", sink_port=sink.port).config)
        spool = Spool(config.spool.path).open()
        msg_id = spool.accept("lab@lab.example", ["dr@cabinet.example"],
                              make_message("lab@lab.example", "dr@cabinet.example", "s", "result"), lifetime=3600)
        queue = QueueService(config, spool, Pipeline((stamp,)))
        asyncio.run(queue.runner.run_once())
        (copy,) = spool.get(msg_id).copies  # type: ignore[union-attr]
        assert copy.digest is not None
        path = spool.copy_dir / copy.file.partition("/")[2]
        good = path.read_bytes()
        if damage == "other bytes":  # what an unsynced file can hold after a power cut
            path.write_bytes(b"\0" * len(good))
        elif damage == "truncated":
            path.write_bytes(good[: len(good) // 2])
        else:
            path.unlink()
        asyncio.run(queue.delivery.run_once())
        assert sink.handler.snapshot() == [], "a copy that is not what was prepared is never sent"
        msg = spool.get(msg_id)
        assert msg is not None and msg.stage == "received" and msg.copies == ()
        assert not path.exists()
        asyncio.run(queue.run_once())  # prepared again (the "signature" made again), then sent once
        assert runs == [msg_id, msg_id]
        (got,) = sink.handler.snapshot()
        assert got.data.startswith(b"X-Prepared: 2\r\n")
        assert spool.list() == []
    finally:
        sink.stop()
