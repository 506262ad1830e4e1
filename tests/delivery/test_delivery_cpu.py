"""The delivery side's CPU fast paths (issue 15, bench/delivery_manager.py), each against the
slow path it replaced, on varied and hostile inputs; no timing thresholds, only "never early"
and "done within a generous wait".

* `logs.event` makes the record itself (no `findCaller`) and `JsonFormatter` reuses one encoder
  and formats the UTC second once: the same lines as `logger.log(..., extra=...)` through the
  former formatter; nothing at all when the level is off, filters and `disabled` respected.
* `metrics.outcomes` remembers the metrics' children: the counters move exactly as with
  `.labels()` per counter, also after a `clear()` and past the bound of the memory.
* The connection cache has one idle timer: an idle session is closed at its deadline (never
  before, not missed), a session taken and given back gets a new one, a broken one is not
  reused, a cache outliving its event loop still expires sessions on the next one.
* `ReplyReader` has one timer per exchange for its per-reply deadlines: over a real socket, a
  server answering within the timeout each time (even when the whole exchange takes longer,
  or dripping a multi-line reply) is read as with an `asyncio.timeout` per wait, and one that
  stalls past it times out at the same reply.
* `DeliveryManager._send` awaits a lone destination group directly: one and two groups deliver
  and log the same `delivery` events.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from aiosmtpd.controller import Controller
from prometheus_client import CollectorRegistry, Counter, Histogram

from gateway import logs
from gateway.config import load_config
from gateway.delivery.manager import DeliveryManager
from gateway.delivery.nexthop import Destination
from gateway.delivery.pipelining import ReplyReader
from gateway.delivery.sessions import SessionCache, SessionKey
from gateway.ops import metrics
from gateway.spool import Outcome, PreparedCopy, QueuedMessage, QueuedRecipient, RecipientState
from tests.conftest import free_port
from tests.e2e.harness import SinkHandler, write_config

# -- logs ---------------------------------------------------------------------------------------------


class _OldJson(logging.Formatter):
    """`JsonFormatter` as it was (the oracle)."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "event": record.getMessage(),
        }
        data.update(getattr(record, "fields", {}) or {})
        if record.exc_info and record.exc_info[0] is not None:
            data["exc_type"] = record.exc_info[0].__name__
        return json.dumps(data, default=str, ensure_ascii=False)


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


FIELDS: list[dict[str, Any]] = [
    {},
    {"msg": "A1B2", "dest": "smarthost", "remote": "mx[127.0.0.1]:25", "size": 1024, "delivered": 1,
     "deferred": 0, "bounced": 0, "ms": 1.5},
    {"reason": "d\u00e9lai d\u00e9pass\u00e9 \u2014 \U0001f600", "status": "4.4.7", "none": None, "flag": True},
    {"path": Path("/srv/msgw/spool"), "raw": b"\xff\x00", "err": ValueError("bad \"quote\"\n"), "nan": float("nan"),
     "nested": {"a": [1, 2.5, None]}, "big": 10 ** 30},
    {"message_like": "{\"injected\": 1}\r\nfake line", "tab": "a\tb", "ctl": "\x00\x1b[31m"},
]


@pytest.fixture
def kept() -> Iterator[tuple[logging.Logger, _Keep]]:
    logger = logging.getLogger("gateway.test-delivery-cpu")
    handler = _Keep()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, handler
    logger.removeHandler(handler)
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


@pytest.mark.parametrize("fields", FIELDS)
@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR])
def test_an_event_formats_as_logger_log_did(kept: tuple[logging.Logger, _Keep], fields: dict[str, Any],
                                            level: int) -> None:
    logger, handler = kept
    logs.event(logger, "delivery", level, **fields)
    logger.log(level, "delivery", extra={"fields": fields})
    new, ref = handler.records
    for name in ("created", "msecs", "relativeCreated"):
        setattr(new, name, getattr(ref, name))
    assert (new.name, new.levelno, new.levelname, new.getMessage(), new.fields) == \
        (ref.name, ref.levelno, ref.levelname, ref.getMessage(), ref.fields)  # type: ignore[attr-defined]
    assert logs.JsonFormatter().format(new) == _OldJson().format(ref)
    assert logs.TextFormatter().format(new) == logs.TextFormatter().format(ref)


@pytest.mark.parametrize("created", [0.0, 0.0005, 0.9999, 1.0, 59.999, 1_000_000_000.9995, 1_764_806_399.999,
                                     1_764_806_400.0, 1_764_806_400.001, 4_102_444_800.5])
def test_the_json_timestamp_is_the_former_one_around_second_boundaries(created: float) -> None:
    record = logging.makeLogRecord({"name": "gateway.x", "levelno": logging.INFO, "levelname": "INFO",
                                    "msg": "delivery", "fields": {"a": 1}})
    record.created = created
    record.msecs = int((created - int(created)) * 1000) + 0.0
    for _ in range(2):  # the second time from the remembered second
        assert logs.JsonFormatter().format(record) == _OldJson().format(record)


def test_an_event_below_the_level_makes_no_record(kept: tuple[logging.Logger, _Keep],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    logger, handler = kept
    logger.setLevel(logging.WARNING)

    def no_record(*_args: object, **_kwargs: object) -> logging.LogRecord:
        raise AssertionError("a record was made for a level that is off")

    monkeypatch.setattr(logger, "makeRecord", no_record)
    logs.event(logger, "delivery", msg="x")
    assert handler.records == []


def test_an_event_respects_filters_and_a_disabled_logger(kept: tuple[logging.Logger, _Keep]) -> None:
    logger, handler = kept
    drop = logging.Filter("elsewhere")
    logger.addFilter(drop)
    logs.event(logger, "delivery", msg="x")
    logger.removeFilter(drop)
    logger.disabled = True
    logs.event(logger, "delivery", msg="x")
    logger.disabled = False
    assert handler.records == []
    logs.event(logger, "delivery", msg="x")
    assert [r.fields for r in handler.records] == [{"msg": "x"}]  # type: ignore[attr-defined]


def test_an_event_reaches_the_root_handlers_as_before(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Through `setup_logging`'s handler (JSON lines to a file), propagated from a child logger."""
    out = tmp_path / "gw.log"
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        logs.setup_logging("json", "INFO", out)
        child = logging.getLogger("gateway.delivery.test-cpu")
        logs.event(child, "delivery", msg="Q1", size=3)
        logs.event(child, "hidden", logging.DEBUG, msg="Q2")
        for handler in root.handlers:
            handler.flush()
        lines = [json.loads(line) for line in out.read_text().splitlines()]
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
    assert [(d["event"], d["logger"], d["level"], d["msg"]) for d in lines] == \
        [("delivery", "gateway.delivery.test-cpu", "info", "Q1")]


# -- metrics ------------------------------------------------------------------------------------------

def _reference_metrics() -> tuple[CollectorRegistry, Counter, Histogram, Counter]:
    reg = CollectorRegistry()
    return (reg,
            Counter("ref_recipients", "r", ["listener", "domain", "form", "outcome"], registry=reg),
            Histogram("ref_latency_seconds", "l", ["form"], registry=reg, buckets=metrics.LATENCY._upper_bounds),
            Counter("ref_queue_status", "q", ["outcome", "status"], registry=reg))


def _reference_outcomes(recipients: Counter, latency: Histogram, status: Counter, msg: Any, written: list[Any],
                        now: float) -> None:
    """`metrics.outcomes` as it was: `.labels()` per counter."""
    forms = {c.id: c.form for c in getattr(msg, "copies", ())}
    rcpts = {r.id: r.copy_id for r in getattr(msg, "recipients", ())}
    listener = metrics.name_label(msg.listener)
    for o in written:
        state = {"delivered": "delivered", "deferred": "deferred", "bounced": "bounced"}.get(
            getattr(o.state, "value", str(o.state)))
        if state is None:
            continue
        copy_id = rcpts.get(o.rcpt_id)
        form = metrics.name_label(forms.get(copy_id)) if copy_id is not None else metrics.NONE
        recipients.labels(listener, metrics.domain_label(o.address), form, state).inc()
        if state == "delivered":
            latency.labels(form).observe(max(0.0, now - msg.received))
        else:
            status.labels(state, metrics.status_label(o.status)).inc()


def _samples(registries: list[Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for reg in registries:
        for family in reg.collect():
            for s in family.samples:
                name = s.name.replace("ref_recipients", "msgw_recipients").replace(
                    "ref_latency_seconds", "msgw_delivery_latency_seconds").replace(
                    "ref_queue_status", "msgw_queue_outcome_status")
                out[(name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _message(i: int, listener: str = "relay") -> tuple[QueuedMessage, list[Outcome]]:
    now = time.time()
    copies = (PreparedCopy(1, f"m{i}", "smime", False, 10, "f"),
              PreparedCopy(2, f"m{i}", "Trust-Space TLS!", True, 10, "f"))
    addresses = [f"a{i}@Cabinet.Example", f"b{i}@other.example", "c@[127.0.0.1]", "no-domain",
                 f"d{i}@x{i % 7}.example", "e@UPPER.EXAMPLE.", '"x y"@bad domain']
    rcpts = tuple(QueuedRecipient(n, f"m{i}", a, RecipientState.QUEUED, 0, 0.0, None, None, None, now, False,
                                  copy_id=(1, 2, None)[n % 3]) for n, a in enumerate(addresses))
    msg = QueuedMessage(f"m{i}", "s@lab.example", 10, now - 3.5 * i, now + 3600, listener, "127.0.0.1", None, False, 0,
                        False, rcpts, copies)
    states = [RecipientState.DELIVERED, RecipientState.DEFERRED, RecipientState.BOUNCED, RecipientState.DELETED,
              RecipientState.QUEUED]
    statuses = ["2.0.0", "4.4.1", "550 5.7.1 no", "garbage", None, "421-4.3.2 x"]
    outcomes = [Outcome(r.id, states[(n + i) % len(states)], statuses[(n * i) % len(statuses)], None, None,
                        address=r.address) for n, r in enumerate(rcpts)]
    return msg, outcomes


def _delta(before: dict[Any, float], after: dict[Any, float]) -> dict[Any, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


def test_outcome_counters_move_as_with_labels_per_counter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_domains", set())
    monkeypatch.setattr(metrics, "DOMAIN_LIMIT", 4)  # some domains past the bound: "other"
    ref_reg, ref_rcpts, ref_latency, ref_status = _reference_metrics()
    before = _samples([metrics._OWN])
    now = time.time()
    for i in range(40):
        msg, outcomes = _message(i, listener=("relay", "Sub Mission", "")[i % 3])
        metrics.outcomes(msg, outcomes, now)
        _reference_outcomes(ref_rcpts, ref_latency, ref_status, msg, outcomes, now)
    got = _delta(before, _samples([metrics._OWN]))
    want = {k: v for k, v in _samples([ref_reg]).items() if v}
    assert {k: v for k, v in got.items() if k[0] in {n for n, _ in want}} == want


def test_counts_still_land_after_a_clear_and_past_the_memory_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_CHILDREN_LIMIT", 3)
    msg, outcomes = _message(1)
    now = time.time()
    metrics.outcomes(msg, outcomes, now)
    metrics.RECIPIENTS.clear()
    metrics.QUEUE_STATUS.clear()
    ref_reg, ref_rcpts, ref_latency, ref_status = _reference_metrics()
    before = _samples([metrics._OWN])
    for i in range(5):
        msg, outcomes = _message(i)
        metrics.outcomes(msg, outcomes, now)
        _reference_outcomes(ref_rcpts, ref_latency, ref_status, msg, outcomes, now)
        assert len(metrics._children) <= 3
    got = _delta(before, _samples([metrics._OWN]))
    want = {k: v for k, v in _samples([ref_reg]).items() if v}
    assert {k: v for k, v in got.items() if k[0] in {n for n, _ in want}} == want


# -- the connection cache's one timer ---------------------------------------------------------------------

class _FakeSession:
    """What the cache uses of an `SmtpSession`; records when it was ended (the loop's time)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.alive = True
        self.uses = 0
        self.opened = time.monotonic()
        self.ended: float | None = None
        self.closed = False

    async def quit(self, timeout: float | None = None) -> None:
        self.ended = asyncio.get_running_loop().time()
        self.alive = False

    def close(self) -> None:
        self.closed = True
        self.alive = False
        if self.ended is None:
            self.ended = asyncio.get_running_loop().time()


def _key(name: str, concurrency: int = 5) -> SessionKey:
    return SessionKey(Destination(key=f"route:{name}", domain=name, host="127.0.0.1", concurrency=concurrency),
                      False, "gw.test")


async def _until(predicate: Any, limit: float = 10.0) -> None:
    end = time.monotonic() + limit
    while not predicate() and time.monotonic() < end:
        await asyncio.sleep(0.01)


async def test_idle_sessions_close_at_their_own_deadline_never_before() -> None:
    idle = 0.3
    cache = SessionCache(idle, 100)
    loop = asyncio.get_running_loop()
    a, b, c = _FakeSession("a"), _FakeSession("b"), _FakeSession("c")
    given: dict[str, float] = {}
    cache.give_back(_key("one"), a)  # type: ignore[arg-type]
    given["a"] = loop.time()
    await asyncio.sleep(0.1)
    cache.give_back(_key("two"), b)  # type: ignore[arg-type]
    given["b"] = loop.time()
    await asyncio.sleep(0.1)
    assert cache.take(_key("one")) is a  # taken before its deadline, given back: a new deadline
    cache.give_back(_key("one"), a)  # type: ignore[arg-type]
    given["a"] = loop.time()
    cache.give_back(_key("one"), c)  # type: ignore[arg-type]
    given["c"] = loop.time()
    await _until(lambda: all(s.ended is not None for s in (a, b, c)))
    for s in (a, b, c):
        assert s.ended is not None, f"{s.name} never closed"
        assert s.ended >= given[s.name] + idle, f"{s.name} closed before its idle time"
    assert cache.idle_count() == 0 and cache._sweeper is None
    await cache.close()


async def test_one_timer_for_many_uses_and_close_cancels_it(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = SessionCache(30.0, 10_000)
    armed: list[float] = []
    arm = cache._arm
    monkeypatch.setattr(cache, "_arm", lambda loop, when: (armed.append(when), arm(loop, when)))
    sessions = [_FakeSession(f"s{i}") for i in range(3)]
    for s in sessions:
        cache.give_back(_key("busy"), s)  # type: ignore[arg-type]
    for _ in range(500):
        s = cache.take(_key("busy"))
        assert s is not None
        cache.give_back(_key("busy"), s)
    assert len(armed) == 1
    timer = cache._sweeper
    assert timer is not None
    await cache.close()
    assert timer.cancelled() and cache._sweeper is None
    assert all(s.ended is not None for s in sessions)


async def test_a_broken_session_is_not_reused_and_the_bounds_hold() -> None:
    cache = SessionCache(30.0, 100)
    dead, live = _FakeSession("dead"), _FakeSession("live")
    cache.give_back(_key("k"), live)  # type: ignore[arg-type]
    cache.give_back(_key("k"), dead)  # type: ignore[arg-type]
    dead.alive = False  # the server closed it while idle
    assert cache.take(_key("k")) is live
    assert dead.closed and cache.stale == 1
    assert cache.take(_key("k")) is None
    many = [_FakeSession(f"m{i}") for i in range(4)]
    for s in many:
        cache.give_back(_key("small", concurrency=2), s)  # type: ignore[arg-type]
    await _until(lambda: many[1].ended is not None)
    assert [s.ended is not None for s in many] == [True, True, False, False]  # the oldest released go
    worn = _FakeSession("worn")
    worn.uses = 100
    cache.give_back(_key("k"), worn)  # type: ignore[arg-type]
    await _until(lambda: worn.ended is not None)
    assert worn.ended is not None and cache.take(_key("k")) is None
    await cache.close()


def test_a_cache_that_outlived_its_event_loop_still_expires_sessions() -> None:
    cache = SessionCache(0.2, 100)
    first, second = _FakeSession("first"), _FakeSession("second")

    async def give(session: _FakeSession) -> None:
        cache.give_back(_key("k"), session)  # type: ignore[arg-type]

    asyncio.run(give(first))  # that loop ends with the session idle and its timer pending

    async def later() -> None:
        assert cache.take(_key("k")) is first
        cache.give_back(_key("k"), second)  # type: ignore[arg-type]
        await _until(lambda: second.ended is not None)

    asyncio.run(later())
    assert second.ended is not None


# -- ReplyReader's one timer per exchange, over a real socket ------------------------------------------------

class _OldReader(ReplyReader):
    """`ReplyReader.next` as it was: an `asyncio.timeout` per wait (the oracle)."""

    async def next(self, timeout: float | None) -> aiosmtplib.SMTPResponse:
        while not self.replies:
            if self.error is not None:
                raise self.error
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self.waiter
            except TimeoutError as exc:
                raise aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response") from exc
            finally:
                self.waiter = None
        return self.replies.popleft()


TIMEOUT = 0.6
#: (pause before, bytes) the server writes after "GO"; and how many replies the client reads.
SCRIPTS: dict[str, tuple[list[tuple[float, bytes]], int]] = {
    "prompt": ([(0.0, b"250 a\r\n250 b\r\n354 c\r\n")], 3),
    "each-in-time-longer-in-all": ([(0.25, b"250 a\r\n"), (0.25, b"250 b\r\n"), (0.25, b"354 c\r\n")], 3),
    "multiline-dripped-in-time": ([(0.2, b"250-one\r\n"), (0.2, b"250-two\r\n"), (0.2, b"250-thr"),
                                   (0.2, b"ee\r\n"), (0.2, b"250 four\r\n"), (0.0, b"250 next\r\n")], 2),
    "stall-at-the-second": ([(0.0, b"250 a\r\n"), (1.5, b"250 b\r\n")], 2),
    "stall-inside-a-multiline-reply": ([(0.0, b"250-one\r\n"), (1.5, b"250 two\r\n")], 1),
    "stall-at-once": ([(1.5, b"250 a\r\n")], 1),
    "closed-midway": ([(0.1, b"250 a\r\n"), (0.1, b"")], 2),
}


async def _serve(script: list[tuple[float, bytes]]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 drip ESMTP\r\n")
        await reader.readline()  # GO
        for pause, chunk in script:
            await asyncio.sleep(pause)
            if not chunk:
                writer.close()
                return
            writer.write(chunk)
        await reader.read()  # until the client closes
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def _read_with(kind: type[ReplyReader], script: list[tuple[float, bytes]], count: int) -> list[Any]:
    server = await _serve(script)
    port = server.sockets[0].getsockname()[1]
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=5, start_tls=False)
    await client.connect()
    out: list[Any] = []
    try:
        assert client.protocol is not None
        async with kind(client.protocol) as reader:
            client.protocol.write(b"GO\r\n")
            for _ in range(count):
                try:
                    reply = await reader.next(TIMEOUT)
                except (aiosmtplib.SMTPReadTimeoutError, aiosmtplib.SMTPServerDisconnected) as exc:
                    out.append(type(exc).__name__)
                    break
                out.append((reply.code, reply.message))
            if kind is ReplyReader:
                assert reader._timer is not None or reader.deadline is None
        if kind is ReplyReader:
            assert reader._timer is None  # the exchange's timer ends with it
    finally:
        client.close()
        server.close()
    return out


@pytest.mark.parametrize("name", list(SCRIPTS))
async def test_the_reader_times_out_exactly_where_a_timeout_per_reply_did(name: str) -> None:
    script, count = SCRIPTS[name]
    new, old = await asyncio.gather(_read_with(ReplyReader, script, count), _read_with(_OldReader, script, count))
    assert new == old
    expected = {
        "prompt": [(250, "a"), (250, "b"), (354, "c")],
        "each-in-time-longer-in-all": [(250, "a"), (250, "b"), (354, "c")],
        "multiline-dripped-in-time": [(250, "one\ntwo\nthree\nfour"), (250, "next")],
        "stall-at-the-second": [(250, "a"), "SMTPReadTimeoutError"],
        "stall-inside-a-multiline-reply": ["SMTPReadTimeoutError"],
        "stall-at-once": ["SMTPReadTimeoutError"],
        "closed-midway": [(250, "a"), "SMTPServerDisconnected"],
    }[name]
    assert new == expected


# -- the manager's lone group ------------------------------------------------------------------------------

class _Unrecorded(DeliveryManager):
    """Reports outcomes without a spool (as bench/delivery_manager.py)."""

    async def _write(self, msg: QueuedMessage, outcomes: list[Outcome]) -> None:
        self.written.extend(outcomes)
        self._report(msg, outcomes)


@pytest.mark.parametrize("domains", [["dest.test"], ["dest.test", "other.test"], ["dest.test", "dest.test"]])
async def test_one_or_several_groups_deliver_and_log_alike(tmp_path: Path, domains: list[str],
                                                           caplog: pytest.LogCaptureFixture) -> None:
    handler = SinkHandler()
    port = free_port()
    sink = Controller(handler, hostname="127.0.0.1", port=port)
    sink.start()
    try:
        setup = write_config(tmp_path, sink_port=port, extra=f'\n[delivery.routes."other.test"]\nhost = "127.0.0.1"\n'
                                                                f'port = {port}\ntls = "none"\n')
        manager = _Unrecorded(load_config(setup.config), spool=None)  # type: ignore[arg-type]
        manager.written = []  # type: ignore[attr-defined]
        now = time.time()
        rcpts = [QueuedRecipient(n, "M1", f"r{n}@{d}", RecipientState.QUEUED, 0, 0.0, None, None, None, now, False,
                                 copy_id=1) for n, d in enumerate(domains)]
        copy = PreparedCopy(1, "M1", "smime", False, 20, "f")
        msg = QueuedMessage("M1", "s@lab.example", 20, now, now + 3600, "relay", "127.0.0.1", None, False, 0, False,
                            tuple(rcpts), (copy,))
        with caplog.at_level(logging.INFO, logger="gateway.delivery"):
            await manager._send(msg, [(copy, b"Subject: t\r\n\r\nbody\r\n", rcpts)])
        await manager._close_sessions()
    finally:
        sink.stop()
    assert sorted(o.address for o in manager.written) == sorted(r.address for r in rcpts)  # type: ignore[attr-defined]
    assert all(o.state is RecipientState.DELIVERED for o in manager.written)  # type: ignore[attr-defined]
    events = [r for r in caplog.records if r.getMessage() == "delivery"]
    groups = {("smarthost" if d == "dest.test" else "route:other.test") for d in domains}
    assert sorted(r.fields["dest"] for r in events) == sorted(groups)  # type: ignore[attr-defined]
    for r in events:
        fields = r.fields  # type: ignore[attr-defined]
        assert list(fields) == ["msg", "dest", "remote", "size", "delivered", "deferred", "bounced", "ms"]
        assert (fields["msg"], fields["size"], fields["deferred"], fields["bounced"]) == ("M1", 20, 0, 0)
        assert fields["delivered"] == sum(1 for d in domains if (d == "dest.test") == (fields["dest"] == "smarthost"))


# -- destinations remembered, hashes computed once --------------------------------------------------------

ROUTES = """
[delivery.routes."partner.test"]
host = "127.0.0.1"
port = 2626
tls = "none"

[delivery.routes.".sub.test"]
host = "127.0.0.1"
port = 2727
tls = "none"
transport = "lmtp"
"""
DOMAINS = ["partner.test", "PARTNER.test", "a.sub.test", "sub.test", "msgw.test", "MSGW.TEST", "elsewhere.test",
           "x.partner.test", "", "[127.0.0.1]", "d\u00e9j\u00e0.test"]


def test_remembered_destinations_are_the_computed_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    from gateway.delivery import nexthop

    config = load_config(write_config(tmp_path, sink_port=2525, extra=ROUTES).config)
    remembering = nexthop.NextHopResolver(config)
    monkeypatch.setattr(nexthop, "DESTINATIONS_KEPT", 3)  # forgotten now and then
    for _ in range(3):
        for domain in DOMAINS:
            fresh = nexthop.NextHopResolver(config)._destination(domain)
            got = remembering.destination(domain)
            assert got == fresh and hash(got) == hash(fresh) and repr(got) == repr(fresh)
            address = f"someone@{domain}"
            assert remembering.destination_for(address) == nexthop.NextHopResolver(config).destination_for(address)
        assert len(remembering._destinations) <= 3
    # another configuration (a resolver's config replaced): nothing remembered from the first
    assert remembering.destination("partner.test").key == "route:partner.test"
    other = replace(config, delivery=replace(config.delivery, routes=()))
    remembering.config = other
    assert remembering.destination("partner.test") == nexthop.NextHopResolver(other)._destination("partner.test")
    assert remembering.destination("partner.test").key != "route:partner.test"


def test_hash_once_keys_behave_as_dataclass_keys() -> None:
    import pickle
    from dataclasses import astuple, replace

    from gateway.config import TlsSettings

    made = [Destination(key="smarthost", domain="*", host="h", port=25),
            Destination(key="smarthost", domain="*", host="h", port=25),
            Destination(key="smarthost", domain="*", host="h", port=26),
            Destination(key="mx:a", domain="a", tls=TlsSettings(policy="required", ca_file=Path("/ca.pem")))]
    keys = [SessionKey(d, flag, "gw.test") for d in made for flag in (False, True)]
    table: dict[object, int] = {}
    for i, k in enumerate(made + keys):
        table.setdefault(k, i)
    assert len(table) == 3 + 6  # equal values share a slot, as with the generated hash
    for k in made + keys:
        again = pickle.loads(pickle.dumps(k))  # noqa: S301 - our own bytes
        assert "_hash" not in again.__dict__  # computed again in this process
        assert hash(k) == hash(k) and table[k] == table[again]
        assert hash(replace(k)) == hash(k) and astuple(replace(k)) == astuple(k)
    assert made[0] == made[1] and made[0] != made[2] and hash(made[0]) == hash(made[1])


# -- transports built once per hop -----------------------------------------------------------------------

def test_a_transport_is_built_once_per_hop_and_again_when_what_it_was_built_from_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    from gateway.delivery import manager as manager_module
    from gateway.delivery import transports
    from gateway.delivery.nexthop import NextHopResolver

    config = load_config(write_config(tmp_path, sink_port=2525, extra=ROUTES).config)
    manager = DeliveryManager(config, spool=None)  # type: ignore[arg-type]
    smart = manager.resolver.destination_for("a@dest.test")
    route = manager.resolver.destination_for("a@partner.test")
    first = manager._transport(smart, False)
    assert isinstance(first, transports.SmtpTransport)
    assert first.key == SessionKey(smart, False, config.hostname)
    hop = first.hop
    assert (hop.destination, hop.require_client_cert, hop.sessions, hop.config) == \
        (smart, False, manager.sessions, config)
    assert manager._transport(smart, False) is first
    assert manager._transport(replace(smart), False) is first  # an equal destination
    mutual = manager._transport(smart, True)
    assert mutual is not first and mutual.hop.require_client_cert and mutual.key.require_client_cert  # type: ignore
    assert manager._transport(route, False).hop.destination == route  # type: ignore[attr-defined]
    manager.config = replace(config, hostname="other.test")
    assert manager._transport(smart, False).key.helo_name == "other.test"  # type: ignore[attr-defined]
    manager.resolver = NextHopResolver(config)
    rebuilt = manager._transport(smart, False)
    assert rebuilt is not first and rebuilt.hop.resolver is manager.resolver  # type: ignore[attr-defined]
    manager.sessions = None
    assert manager._transport(smart, False).hop.sessions is None  # type: ignore[attr-defined]
    monkeypatch.setitem(transports.TRANSPORTS, "smtp", transports.LmtpTransport)  # the registry changed
    assert isinstance(manager._transport(smart, False), transports.LmtpTransport)
    monkeypatch.setattr(manager_module, "TRANSPORTS_KEPT", 2)
    for port in range(5):
        manager._transport(replace(smart, port=port), False)
        assert len(manager._transports) <= 2
    with pytest.raises(Exception, match="no transport named"):
        manager._transport(replace(smart, transport="pigeon"), False)
