"""Delivery's trips to the executor per message (issue 15, third round): each trip wakes a thread
and then the loop again, so a delivered message's read of the spool and its removal share one
trip, and since the removal is in the outcomes' own transaction (`record_outcomes(finish=…)`), so are
the outcomes. Real spool, real aiosmtpd next hop, a counting executor on a real loop."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gateway.config import load_config
from gateway.runner import QueueService
from gateway.spool import Spool
from tests.e2e.harness import Sink, SinkHandler, make_message, write_config


class _Counting(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(max_workers=4)
        self.trips = 0

    def submit(self, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        self.trips += 1
        return super().submit(*args, **kwargs)


def test_a_delivered_message_costs_two_trips_and_is_removed(tmp_path: Path) -> None:
    """Copy bytes, then the outcomes and the removal together: two trips (was three, then four)."""
    sink = Sink(handler=SinkHandler()).start()
    try:
        setup = write_config(tmp_path / "gw", sink_port=sink.port)
        config = load_config(setup.config)
        spool = Spool(config.spool.path).open()
        msg_id = spool.accept("lab@lab.example", ["dr@cabinet.example"],
                              make_message("lab@lab.example", "dr@cabinet.example", "s", "body"), lifetime=3600)
        service = QueueService(config, spool)
        executor = _Counting()

        async def main() -> int:
            asyncio.get_running_loop().set_default_executor(executor)
            assert await service.runner.run_once() == 1
            executor.trips = 0
            return await service.delivery.run_once()

        assert asyncio.run(main()) == 1
        assert executor.trips == 2, executor.trips
        assert spool.get(msg_id) is None, "delivered and removed"
        assert not list(spool.msg_dir.iterdir()) and not spool.take_finished(msg_id), "files gone, news taken"
        assert [r.recipients for r in sink.handler.snapshot()] == [["dr@cabinet.example"]]
        spool.close()
    finally:
        sink.stop()


def test_an_outcome_listener_still_finds_the_message_then_it_is_removed(tmp_path: Path) -> None:
    """With a listener (the LPS reporter reads the message and its copy), the removal waits for
    `_after` as before: the listener sees the message; three trips."""
    sink = Sink(handler=SinkHandler()).start()
    try:
        setup = write_config(tmp_path / "gw", sink_port=sink.port)
        config = load_config(setup.config)
        spool = Spool(config.spool.path).open()
        msg_id = spool.accept("lab@lab.example", ["dr@cabinet.example"],
                              make_message("lab@lab.example", "dr@cabinet.example", "s", "body"), lifetime=3600)
        service = QueueService(config, spool)
        heard: list[tuple[str, str, bool]] = []
        service.add_outcome_listener(lambda qid, rcpt, state, status, reply:
                                     heard.append((rcpt, state, spool.get(qid) is not None)))
        executor = _Counting()

        async def main() -> int:
            asyncio.get_running_loop().set_default_executor(executor)
            assert await service.runner.run_once() == 1
            executor.trips = 0
            return await service.delivery.run_once()

        assert asyncio.run(main()) == 1
        assert heard == [("dr@cabinet.example", "delivered", True)], "the listener saw the message in the spool"
        assert executor.trips == 3, executor.trips
        assert spool.get(msg_id) is None and not spool.take_finished(msg_id)
        assert not list(spool.msg_dir.iterdir())
        spool.close()
    finally:
        sink.stop()
