"""A preparation without refusals is delivered before it is recorded (issue 15, `send_first` in
gateway/runner.py and gateway/delivery/manager.py): the usual message costs one transaction after
its accept (its outcomes, which also remove it), a deferred recipient gets its copy recorded with
the deferral so the retry re-sends what was prepared, the runner leaves a message alone while
its first attempt is under way, and an attempt cut short leaves the recipients received on disk.
Real spool, real queue service on a real loop, a real aiosmtpd next hop."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from gateway.config import load_config
from gateway.pipeline import Envelope, Pipeline, PipelineResult
from gateway.runner import QueueService
from gateway.spool import RecipientState, Spool
from tests.delivery.test_executor_trips import _Counting
from tests.diskfull import fill
from tests.e2e.harness import Sink, SinkHandler, make_message, write_config

LAB = "lab@lab.example"
FIRST, SECOND = "dr.a@cabinet.example", "dr.b@cabinet.example"


class _CountingPipeline(Pipeline):
    """The real (empty) pipeline, counting its runs: a retry must not prepare again."""

    def __init__(self) -> None:
        super().__init__()
        self.runs = 0

    async def run(self, envelope: Envelope, data: bytes) -> PipelineResult:
        self.runs += 1
        return await super().run(envelope, data)


class _SlowSink(SinkHandler):
    """Answers DATA after `delay` seconds."""

    delay = 1.0

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        await asyncio.sleep(self.delay)
        return await super().handle_DATA(server, session, envelope)


@contextlib.contextmanager
def _gateway(tmp_path: Path, handler: SinkHandler) -> Iterator[tuple[Spool, Sink, Callable[[], QueueService]]]:
    sink = Sink(handler=handler).start()
    try:
        config = load_config(write_config(tmp_path / "gw", sink_port=sink.port, retry='["1s", "1s"]').config)
        spool = Spool(config.spool.path).open()
        try:
            yield spool, sink, lambda: QueueService(config, spool, pipeline=_CountingPipeline())
        finally:
            spool.close()
    finally:
        sink.stop()


async def _until(done: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not done():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def _attempt(service: QueueService, msg_id: str | None, done: Callable[[], bool], *, grace: float = 5.0) -> None:
    """Start the service, hand it `msg_id` (as the SMTP server does), wait for `done`, stop."""
    async def main() -> None:
        service.start()
        if msg_id is not None:
            service.accepted(msg_id)
        await _until(done)
        await service.stop(grace)

    asyncio.run(main())


def _statements(spool: Spool) -> list[str]:
    """Every SQL statement the spool's connection runs from now on."""
    seen: list[str] = []
    spool.db.set_trace_callback(seen.append)
    return seen


def test_a_message_delivered_at_once_costs_one_trip_and_no_prepared_record(tmp_path: Path) -> None:
    with _gateway(tmp_path, SinkHandler()) as (spool, sink, make_service):
        service = make_service()
        data = make_message(LAB, FIRST, "s", "body")
        executor = _Counting()

        async def main() -> int:
            asyncio.get_running_loop().set_default_executor(executor)
            service.start()
            await asyncio.sleep(0.3)  # the first polls (nothing due)
            executor.trips = 0
            seen = _statements(spool)
            msg_id = spool.accept(LAB, [FIRST], data, lifetime=3600)
            seen.clear()
            service.accepted(msg_id)
            await _until(lambda: spool.get(msg_id) is None)
            trips = executor.trips
            await service.stop(5)
            assert not [s for s in seen if "copies" in s and s.lstrip().upper().startswith(("INSERT", "UPDATE"))], \
                "no prepared copy was recorded"
            assert not [s for s in seen if "SET prepared" in s]
            return trips

        assert asyncio.run(main()) == 1, "the outcomes and the removal: one trip after the accept"
        assert [(r.recipients, r.data) for r in sink.handler.snapshot()] == [([FIRST], data)]
        assert service.runner.pipeline.runs == 1  # type: ignore[attr-defined]
        assert not list(spool.msg_dir.iterdir())


def test_a_deferred_recipient_gets_the_prepared_copy_recorded_and_the_retry_resends_it(tmp_path: Path) -> None:
    later = {SECOND}
    handler = SinkHandler(rcpt_reply=lambda a: "451 4.3.0 try later" if a in later else "250 2.1.5 OK")
    with _gateway(tmp_path, handler) as (spool, sink, make_service):
        service = make_service()
        data = make_message(LAB, FIRST, "s", "body")
        msg_id = spool.accept(LAB, [FIRST, SECOND], data, lifetime=3600)

        _attempt(service, msg_id, lambda: len(sink.handler.snapshot()) == 1 and msg_id not in service.delivery.busy())
        msg = spool.get(msg_id)
        assert msg is not None
        states = {r.address: r for r in msg.recipients}
        assert states[FIRST].state is RecipientState.DELIVERED and states[FIRST].copy_id is None
        deferred = states[SECOND]
        assert deferred.state is RecipientState.DEFERRED and deferred.copy_id is not None, \
            "the deferred recipient's copy is recorded with its deferral"
        assert spool.copy_bytes(msg.copy(deferred.copy_id)) == data
        assert deferred.last_status == "4.3.0"

        later.clear()
        retry = make_service()

        time.sleep(1.1)  # the backoff
        _attempt(retry, None, lambda: spool.get(msg_id) is None)
        assert [r.recipients for r in sink.handler.snapshot()] == [[FIRST], [SECOND]]
        assert sink.handler.snapshot()[1].data == data, "the prepared copy, re-sent"
        assert retry.runner.pipeline.runs == 0, "the retry prepared nothing again"  # type: ignore[attr-defined]


def test_the_runner_leaves_a_message_alone_while_its_first_attempt_is_under_way(tmp_path: Path) -> None:
    """The attempt takes longer than several polls of the runner (200 ms): the recipients are
    received on disk all along, yet the message is neither prepared nor sent twice."""
    with _gateway(tmp_path, _SlowSink()) as (spool, sink, make_service):
        service = make_service()
        msg_id = spool.accept(LAB, [FIRST], make_message(LAB, FIRST, "s", "body"), lifetime=3600)

        async def main() -> None:
            service.start()
            service.accepted(msg_id)
            await _until(lambda: msg_id in service.delivery.busy())
            on_disk = spool.get(msg_id)
            assert on_disk is not None and [r.state for r in on_disk.recipients] == [RecipientState.QUEUED]
            assert not on_disk.recipients[0].prepared
            for _ in range(3):
                service.runner.wake()
                await asyncio.sleep(0.25)
            await _until(lambda: spool.get(msg_id) is None)
            await service.stop(5)

        asyncio.run(main())
        assert len(sink.handler.snapshot()) == 1
        assert service.runner.pipeline.runs == 1  # type: ignore[attr-defined]


def test_an_attempt_cut_short_at_stop_leaves_the_recipients_received(tmp_path: Path) -> None:
    """Stopped with no grace while the next hop has not answered: nothing is recorded, the
    recipient is still received on disk, and the next start prepares and delivers it."""
    handler = _SlowSink()
    with _gateway(tmp_path, handler) as (spool, sink, make_service):
        service = make_service()
        msg_id = spool.accept(LAB, [FIRST], make_message(LAB, FIRST, "s", "body"), lifetime=3600)

        _attempt(service, msg_id, lambda: msg_id in service.delivery.busy(), grace=0)
        msg = spool.get(msg_id)
        assert msg is not None and [(r.state, r.prepared) for r in msg.recipients] == [(RecipientState.QUEUED, False)]
        handler.delay = 0.0
        again = make_service()

        _attempt(again, None, lambda: spool.get(msg_id) is None)
        assert again.runner.pipeline.runs == 1  # type: ignore[attr-defined]
        assert [r.recipients for r in sink.handler.snapshot()][-1] == [FIRST]


def test_with_an_outcome_listener_the_copy_is_recorded_first(tmp_path: Path) -> None:
    """A listener may read the delivered copy from the spool (the LPS reporter does): then the
    preparation is recorded before the attempt, as it always was."""
    with _gateway(tmp_path, SinkHandler()) as (spool, _sink, make_service):
        service = make_service()
        heard: list[tuple[str, int]] = []

        def listener(qid: str, rcpt: str, state: str, status: str, reply: str | None) -> None:
            msg = spool.get(qid)
            heard.append((state, len(msg.copies) if msg is not None else -1))

        service.add_outcome_listener(listener)
        msg_id = spool.accept(LAB, [FIRST], make_message(LAB, FIRST, "s", "body"), lifetime=3600)
        _attempt(service, msg_id, lambda: spool.get(msg_id) is None)
        assert heard == [("delivered", 1)]


def test_on_a_full_disk_the_delivered_outcome_is_written_with_the_reserve(tmpfs_factory) -> None:
    """A real full disk (tmpfs filled to the last byte) while one recipient of the group is
    delivered and the other deferred: the delivered outcome is written as any outcome (the
    reserve pays for it), so a restart never sends that copy again; the deferral follows."""
    root = tmpfs_factory("4m")
    handler = SinkHandler(rcpt_reply=lambda a: "451 4.3.0 try later" if a == SECOND else "250 2.1.5 OK")
    sink = Sink(handler=handler).start()
    try:
        config = load_config(write_config(root / "gw", sink_port=sink.port, retry='["1h"]').config)
        spool = Spool(config.spool.path).open()
        try:
            msg_id = spool.accept(LAB, [FIRST, SECOND], make_message(LAB, FIRST, "s", "body"), lifetime=86400)
            fill(root / "filler")
            service = QueueService(config, spool, pipeline=_CountingPipeline())
            _attempt(service, msg_id,
                     lambda: len(sink.handler.snapshot()) == 1 and msg_id not in service.delivery.busy())
            msg = spool.get(msg_id)
            assert msg is not None
            states = {r.address: r.state for r in msg.recipients}
            assert states[FIRST] is RecipientState.DELIVERED, "the delivered outcome is on disk"
            assert states[SECOND] in (RecipientState.DEFERRED, RecipientState.QUEUED)
        finally:
            spool.close()
    finally:
        sink.stop()
