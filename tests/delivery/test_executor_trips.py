"""Delivery's trips to the executor per message (issue 15, third round): each trip wakes a thread
and then the loop again, so a delivered message's read of the spool and its removal share one
trip, and since the removal is in the outcomes' own transaction (`record_outcomes(finish=…)`), so are
the outcomes. Real spool, real aiosmtpd next hop, a counting executor on a real loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gateway.config import load_config
from gateway.runner import QueueService
from gateway.spool import RecipientState, Spool
from tests.e2e.harness import Sink, SinkHandler, make_message, write_config


class _Counting(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(max_workers=4)
        self.trips = 0

    def submit(self, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        self.trips += 1
        return super().submit(*args, **kwargs)


@contextlib.contextmanager
def _one_accepted(tmp_path: Path) -> Iterator[tuple[Spool, str, QueueService, Sink]]:
    """A spool with one accepted message for dr@cabinet.example, its queue service and the sink."""
    sink = Sink(handler=SinkHandler()).start()
    try:
        setup = write_config(tmp_path / "gw", sink_port=sink.port)
        config = load_config(setup.config)
        spool = Spool(config.spool.path).open()
        try:
            msg_id = spool.accept("lab@lab.example", ["dr@cabinet.example"],
                                  make_message("lab@lab.example", "dr@cabinet.example", "s", "body"), lifetime=3600)
            yield spool, msg_id, QueueService(config, spool), sink
        finally:
            spool.close()
    finally:
        sink.stop()


def _prepare_then_deliver(service: QueueService) -> tuple[int, int]:
    """Prepare (not counted), then deliver: (messages delivered, executor trips of the delivery)."""
    executor = _Counting()

    async def main() -> int:
        asyncio.get_running_loop().set_default_executor(executor)
        assert await service.runner.run_once() == 1
        executor.trips = 0
        return await service.delivery.run_once()

    return asyncio.run(main()), executor.trips


def test_a_delivered_message_costs_two_trips_and_is_removed(tmp_path: Path) -> None:
    """Copy bytes, then the outcomes and the removal together: two trips (was three, then four)."""
    with _one_accepted(tmp_path) as (spool, msg_id, service, sink):
        delivered, trips = _prepare_then_deliver(service)
        assert delivered == 1
        assert trips == 2, trips
        assert spool.get(msg_id) is None, "delivered and removed"
        assert not list(spool.msg_dir.iterdir()) and not spool.take_finished(msg_id), "files gone, news taken"
        assert [r.recipients for r in sink.handler.snapshot()] == [["dr@cabinet.example"]]


def test_an_outcome_listener_still_finds_the_message_then_it_is_removed(tmp_path: Path) -> None:
    """With a listener (the LPS reporter reads the message and its copy), the removal waits for
    `_after` as before: the listener sees the message; three trips."""
    with _one_accepted(tmp_path) as (spool, msg_id, service, _sink):
        heard: list[tuple[str, str, bool]] = []
        service.add_outcome_listener(lambda qid, rcpt, state, status, reply:
                                     heard.append((rcpt, state, spool.get(qid) is not None)))
        delivered, trips = _prepare_then_deliver(service)
        assert delivered == 1
        assert heard == [("dr@cabinet.example", "delivered", True)], "the listener saw the message in the spool"
        assert trips == 3, trips
        assert spool.get(msg_id) is None and not spool.take_finished(msg_id)
        assert not list(spool.msg_dir.iterdir())


def test_the_runner_reads_a_message_no_longer_in_memory_in_one_trip(tmp_path: Path) -> None:
    """A message the spool no longer keeps in memory, handed to the runner (`prepare_now`'s
    work): its row and its bytes in one trip, then the preparation's record: two trips (were
    three); the same result as the poll's preparation of the same bytes."""
    setup = write_config(tmp_path / "gw", sink_port=9)
    config = load_config(setup.config)
    spool = Spool(config.spool.path).open()
    data = make_message("lab@lab.example", "dr@cabinet.example", "s", "body")
    polled, handed = (spool.accept("lab@lab.example", ["dr@cabinet.example"], data, lifetime=3600) for _ in range(2))
    for msg_id in (polled, handed):
        assert spool.take_accepted(msg_id) is not None  # forgotten: read back from the store
    service = QueueService(config, spool)
    executor = _Counting()

    async def main() -> int:
        asyncio.get_running_loop().set_default_executor(executor)
        await service.runner._fetch_and_prepare(handed)
        trips = executor.trips
        assert await service.runner.run_once() == 1  # the other one, by the poll
        return trips

    assert asyncio.run(main()) == 2
    views = []
    for msg_id in (polled, handed):
        msg = spool.get(msg_id)
        assert msg is not None and msg.stage == "prepared"
        views.append(([(c.form, c.size, c.digest) for c in msg.copies], [spool.copy_bytes(c) for c in msg.copies],
                      [(r.state, r.attempts) for r in msg.recipients]))
    assert views[0] == views[1] and views[1][1] == [data]
    spool.close()


def test_the_runner_reads_no_bytes_for_a_message_that_waits_for_a_slot(tmp_path: Path) -> None:
    """Every preparation slot taken: the row alone is read (a waiting message holds no bytes, as
    before), the bytes once a slot is free; the same result."""
    setup = write_config(tmp_path / "gw", sink_port=9)
    config = load_config(setup.config)
    spool = Spool(config.spool.path).open()
    data = make_message("lab@lab.example", "dr@cabinet.example", "s", "body")
    msg_id = spool.accept("lab@lab.example", ["dr@cabinet.example"], data, lifetime=3600)
    assert spool.take_accepted(msg_id) is not None
    service = QueueService(config, spool)
    asked: list[bool] = []
    real = service.runner._read

    def read(i: str, with_bytes: bool = True) -> tuple[object, object]:
        asked.append(with_bytes)
        got = real(i, with_bytes)
        assert (got[1] is not None) is with_bytes
        return got

    service.runner._read = read  # type: ignore[method-assign, assignment]

    async def main() -> None:
        slots = service.runner._parallel
        taken = 0
        while not slots.locked():
            await slots.acquire()
            taken += 1
        task = asyncio.create_task(service.runner._fetch_and_prepare(msg_id))
        await asyncio.sleep(0.2)
        assert not task.done()
        for _ in range(taken):
            slots.release()
        await asyncio.wait_for(task, 30)

    asyncio.run(main())
    assert asked == [False]
    msg = spool.get(msg_id)
    assert msg is not None and msg.stage == "prepared"
    assert [spool.copy_bytes(c) for c in msg.copies] == [data]
    spool.close()


def _unreadable(tmp_path: Path, read_apart: bool) -> list[tuple[object, ...]]:
    setup = write_config(tmp_path / "gw", sink_port=9)
    config = load_config(setup.config)
    spool = Spool(config.spool.path).open()
    msg_id = spool.accept("lab@lab.example", ["dr@cabinet.example"], b"x\r\n", lifetime=3600)
    assert spool.take_accepted(msg_id) is not None
    (spool.msg_dir / msg_id).unlink()
    service = QueueService(config, spool)
    if read_apart:  # the reference: the row alone, the bytes read later by `_prepare`
        service.runner._read = lambda i, _with_bytes=True: (spool.get(i), None)  # type: ignore[method-assign]
    asyncio.run(service.runner._fetch_and_prepare(msg_id))
    msg = spool.get(msg_id)
    assert msg is not None
    spool.close()
    return [(r.state, r.attempts, r.last_status, r.copy_id, msg.crashes, msg.stage) for r in msg.recipients]


def test_the_runner_meets_an_unreadable_message_where_it_did(tmp_path: Path) -> None:
    """Bytes that cannot be read in the combined trip are read again under the guard: the same
    outcome as reading them apart (a deferral, the recipients still received)."""
    combined = _unreadable(tmp_path / "new", read_apart=False)
    assert combined == _unreadable(tmp_path / "ref", read_apart=True)
    assert combined[0][0] is RecipientState.DEFERRED and combined[0][2] == "4.3.1"
