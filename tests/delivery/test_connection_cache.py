"""The SMTP connection cache (issue 15, item 4), with real sockets: an aiosmtpd next hop that
counts its connections, RSETs and QUITs; the delivery manager as the gateway runs it. Messages
to one destination share a session (RSET between them); an idle session is closed in time; a
server that closed it, or answers RSET with an error, costs a new connection, never a deferral;
and a copy that demands mutual TLS never rides on a session opened without our certificate."""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from gateway.config import load_config
from gateway.delivery import transports
from gateway.pipeline import Outgoing, Pipeline, WorkItem
from gateway.runner import QueueService
from gateway.spool import RecipientState, Spool
from tests.conftest import free_port
from tests.e2e.harness import SinkHandler, make_message, write_config
from tests.e2e.tlspki import TestCA


class CountingHandler(SinkHandler):
    """A sink that counts what the cache changes: connections, RSETs, QUITs; and can answer
    the next RSETs with an error, or drop every open session (with a 421 first, or a bare EOF)."""

    def __init__(self) -> None:
        super().__init__()
        self.connections = 0
        self.rsets = 0
        self.quits = 0
        self.closed = 0
        self.rset_replies: list[str] = []
        self.open: list[SMTP] = []
        self.loop: asyncio.AbstractEventLoop | None = None

    async def handle_RSET(self, server, session, envelope):
        with self.lock:
            self.rsets += 1
            return self.rset_replies.pop(0) if self.rset_replies else "250 OK"

    async def handle_QUIT(self, server, session, envelope):
        with self.lock:
            self.quits += 1
        return "221 Bye"

    def drop_all(self, farewell: str | None) -> None:
        """What a server's idle timeout does: close every session (from the sink's own loop)."""
        done = threading.Event()

        def drop() -> None:
            for server in list(self.open):
                if server.transport is not None:
                    if farewell:
                        server.transport.write(farewell.encode() + b"\r\n")
                    server.transport.close()
            done.set()

        assert self.loop is not None
        self.loop.call_soon_threadsafe(drop)
        assert done.wait(5)

    def counts(self) -> tuple[int, int, int]:
        with self.lock:
            return self.connections, self.rsets, self.quits


class _CountingSMTP(SMTP):
    def connection_made(self, transport) -> None:
        handler: CountingHandler = self.event_handler
        with handler.lock:
            if self not in handler.open:  # STARTTLS calls it again for the same connection
                handler.connections += 1
                handler.open.append(self)
            handler.loop = self.loop
        super().connection_made(transport)

    def connection_lost(self, error) -> None:
        handler: CountingHandler = self.event_handler
        with handler.lock:
            handler.closed += 1
            if self in handler.open:
                handler.open.remove(self)
        super().connection_lost(error)


class CountingController(Controller):
    def factory(self):
        return _CountingSMTP(self.handler, **self.SMTP_kwargs)


def _sink(handler: CountingHandler, tls_context: ssl.SSLContext | None = None) -> Controller:
    kwargs = {"tls_context": tls_context, "require_starttls": True} if tls_context else {}
    controller = CountingController(handler, hostname="127.0.0.1", port=free_port(), **kwargs)
    controller.start()
    # Controller.start() connects once itself to see the server up: not ours to count.
    deadline = time.monotonic() + 5
    while handler.open and time.monotonic() < deadline:
        time.sleep(0.01)
    with handler.lock:
        handler.connections = handler.closed = 0
    return controller


def _setup(tmp_path: Path, sink_port: int, extra: str = "") -> tuple[Spool, object]:
    delivery = f'smarthost = "127.0.0.1:{sink_port}"\ntls = "none"\nper_destination = 1\n{extra}'
    config = load_config(write_config(tmp_path / "gw", delivery=delivery).config)
    return Spool(config.spool.path).open(), config


def _accept(spool: Spool, n: int, rcpt: str = "dr@cabinet.example", sender: str = "lab@lab.example") -> list[str]:
    return [spool.accept(sender, [rcpt], make_message(sender, rcpt, "s", f"result {i}"), lifetime=3600)
            for i in range(n)]


async def _until(check, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def _deliver(service: QueueService, spool: Spool, handler: CountingHandler, n: int) -> None:
    """Accept n messages and hand them over as the server does; wait until the sink has them."""
    before = len(handler.snapshot())
    for msg_id in _accept(spool, n):
        service.accepted(msg_id)
    await _until(lambda: len(handler.snapshot()) >= before + n)


def _outcomes(audit: list[dict]) -> list[str]:
    return [a["outcome"].split()[0] for a in audit if a.get("decision") == "outcome"]


def _failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Delivery's log events that a deferral or a failed hop leaves (none may come from the cache)."""
    return [r.getMessage() for r in caplog.records if r.name == "gateway.delivery"
            and r.getMessage() in ("delivery-failed", "deferred", "processing-deferred")]


def test_messages_to_one_destination_share_one_connection(tmp_path: Path) -> None:
    handler = CountingHandler()
    sink = _sink(handler)
    try:
        spool, config = _setup(tmp_path, sink.port)
        ids = _accept(spool, 5)
        asyncio.run(QueueService(config, spool).run_once())
        assert len(handler.snapshot()) == 5
        assert all(spool.get(i) is None for i in ids)
        # one connection, no RSET (each message follows a clean one within FRESH_TIME), QUIT at
        # the end of the run (before issue 15's hot-path item: an RSET before each following one)
        assert handler.counts() == (1, 0, 1)
    finally:
        sink.stop()


def test_reuse_count_is_bounded(tmp_path: Path) -> None:
    handler = CountingHandler()
    sink = _sink(handler)
    try:
        spool, config = _setup(tmp_path, sink.port, "connection_reuse_limit = 2\n")
        _accept(spool, 5)
        asyncio.run(QueueService(config, spool).run_once())
        assert len(handler.snapshot()) == 5
        assert handler.counts() == (3, 0, 3)  # 2 + 2 + 1 messages, no RSET on fresh sessions
    finally:
        sink.stop()


def test_cache_time_zero_turns_the_cache_off(tmp_path: Path) -> None:
    handler = CountingHandler()
    sink = _sink(handler)
    try:
        spool, config = _setup(tmp_path, sink.port, 'connection_cache_time = "0s"\n')
        _accept(spool, 3)
        asyncio.run(QueueService(config, spool).run_once())
        assert len(handler.snapshot()) == 3
        assert handler.counts() == (3, 0, 3)
    finally:
        sink.stop()


def test_idle_session_is_closed_after_the_cache_time(tmp_path: Path) -> None:
    handler = CountingHandler()
    sink = _sink(handler)

    async def scenario() -> None:
        spool, config = _setup(tmp_path, sink.port, 'connection_cache_time = "300ms"\n')
        service = QueueService(config, spool)
        service.start()
        try:
            await _deliver(service, spool, handler, 2)
            assert handler.counts()[:2] == (1, 0)  # the second message reused the session (fresh: no RSET)
            await _until(lambda: handler.counts()[2] == 1, timeout=10)  # idle: QUIT by us, not the server
            assert service.delivery.sessions is not None and service.delivery.sessions.idle_count() == 0
            await _deliver(service, spool, handler, 1)
            assert handler.counts()[:2] == (2, 0)  # a new connection, no RSET on the closed one
        finally:
            await service.stop()
        assert handler.counts() == (2, 0, 2)  # the last idle session QUIT at stop

    try:
        asyncio.run(scenario())
    finally:
        sink.stop()


@pytest.mark.parametrize("farewell", [None, "421 4.4.2 idle timeout, closing"])
def test_server_that_closed_the_idle_session_costs_a_connection_not_a_deferral(
        tmp_path: Path, farewell: str | None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.delivery")
    handler = CountingHandler()
    sink = _sink(handler)
    audit: list[dict] = []

    async def scenario() -> None:
        spool, config = _setup(tmp_path, sink.port, 'connection_cache_time = "60s"\n')
        service = QueueService(config, spool, audit=lambda **kw: audit.append(kw))
        service.start()
        try:
            await _deliver(service, spool, handler, 1)
            await _until(lambda: service.delivery.sessions is not None and service.delivery.sessions.idle_count() == 1)
            handler.drop_all(farewell)
            await _until(lambda: not handler.open)
            await _deliver(service, spool, handler, 1)
            await _until(lambda: len(_outcomes(audit)) == 2)
        finally:
            await service.stop()

    try:
        asyncio.run(scenario())
        assert _outcomes(audit) == ["delivered", "delivered"]
        assert _failures(caplog) == []
        assert handler.connections == 2
    finally:
        sink.stop()


@pytest.mark.parametrize("reply", ["421 4.3.2 service shutting down", "451 4.3.0 try later", "554 5.5.1 no"])
def test_an_error_on_rset_opens_a_new_connection(tmp_path: Path, reply: str, caplog: pytest.LogCaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transports, "FRESH_TIME", 0.0)  # every reuse RSETs, as before FRESH_TIME
    caplog.set_level(logging.INFO, logger="gateway.delivery")
    handler = CountingHandler()
    handler.rset_replies.append(reply)
    sink = _sink(handler)
    audit: list[dict] = []
    try:
        spool, config = _setup(tmp_path, sink.port)
        _accept(spool, 3)
        asyncio.run(QueueService(config, spool, audit=lambda **kw: audit.append(kw)).run_once())
        assert len(handler.snapshot()) == 3
        assert _outcomes(audit) == ["delivered"] * 3
        assert _failures(caplog) == []
        # message 2: RSET refused → that session dropped, a new one; message 3 reuses the new one
        assert handler.counts()[:2] == (2, 2)
    finally:
        sink.stop()


# -- trust: one session per TLS demand -----------------------------------------------------------

async def _trust_space_tls_only(item: WorkItem) -> WorkItem:
    """The wrap stage's result for a trust-space domain: a copy that relies on mutual TLS (here
    for a sender named "mss-...")."""
    protected = item.envelope.sender.startswith("mss-")
    copy = Outgoing(item.envelope.recipients, item.data, form="trust-space-tls" if protected else "as-is",
                    require_tls=protected)
    return replace(item, outgoing=(copy,))


def _tls_context(ca: TestCA, *, ask_client_cert: bool) -> ssl.SSLContext:
    pair = ca.issue("localhost")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pair.cert), str(pair.key))
    if ask_client_cert:
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.load_verify_locations(cafile=str(ca.ca_file))
    return ctx


def test_mutual_tls_copy_never_rides_on_a_session_opened_without_our_certificate(tmp_path: Path) -> None:
    """The attack: a hop (verified TLS, but it never asks for client certificates) got an
    ordinary copy, and its session is cached. A trust-space copy to the same route must not be
    sent on that session: it needs a fresh handshake in which our certificate goes out, which
    this hop never asks for, so the copy waits (4.7.5) and the hop receives nothing of it."""
    ca = TestCA(tmp_path / "pki")
    ours = ca.issue("msgw.test")
    handler = CountingHandler()
    sink = _sink(handler, _tls_context(ca, ask_client_cert=False))
    audit: list[dict] = []

    async def scenario() -> Spool:
        delivery = (f'tls = "none"\nsmarthost = "127.0.0.1:{free_port()}"\nconnection_cache_time = "60s"\n'
                    f'\n[delivery.routes."mss.example"]\nhost = "localhost"\nport = {sink.port}\ntls = "required"\n'
                    f'ca_file = "{ca.ca_file}"\nclient_cert = "{ours.cert}"\nclient_key = "{ours.key}"\n'
                    f'concurrency = 1\n')
        config = load_config(write_config(tmp_path / "gw", delivery=delivery).config)
        spool = Spool(config.spool.path).open()
        service = QueueService(config, spool, Pipeline((_trust_space_tls_only,)),
                               audit=lambda **kw: audit.append(kw))
        service.start()
        try:
            plain = spool.accept("lab@lab.example", ["dr@mss.example"],
                                 make_message("lab@lab.example", "dr@mss.example", "s", "ordinary"), lifetime=3600)
            service.accepted(plain)
            await _until(lambda: len(handler.snapshot()) == 1)
            sessions = service.delivery.sessions
            await _until(lambda: sessions is not None and sessions.idle_count() == 1)  # the bait is cached
            sender = "mss-lab@lab.example"
            protected = spool.accept(sender, ["other@mss.example"],
                                     make_message(sender, "other@mss.example", "s", "protected by TLS only"),
                                     lifetime=3600)
            service.accepted(protected)

            def state() -> RecipientState | None:
                msg = spool.get(protected)
                return None if msg is None else msg.recipients[0].state

            await _until(lambda: len(handler.snapshot()) == 2 or state() in (RecipientState.DEFERRED, None))
            assert [m.recipients for m in handler.snapshot()] == [["dr@mss.example"]], \
                "a trust-space copy went out on a session without our client certificate"
            assert sessions is not None and sessions.reused == 0
            assert sessions.idle_count() == 1, "the ordinary session stays for ordinary copies"
            rcpt = spool.get(protected).recipients[0]  # type: ignore[union-attr]
            assert rcpt.state is RecipientState.DEFERRED and rcpt.last_status == "4.7.5"
            assert "client certificate" in (rcpt.last_error or "")
        finally:
            await service.stop()
        return spool

    try:
        asyncio.run(scenario())
        assert [m.recipients for m in handler.snapshot()] == [["dr@mss.example"]], \
            "a trust-space copy went out on a session without our client certificate"
        assert _outcomes(audit) == ["delivered"]
        assert handler.connections == 2  # the protected copy had a handshake of its own
    finally:
        sink.stop()


def test_mutual_tls_copies_reuse_their_own_sessions(tmp_path: Path) -> None:
    """Where the hop does ask: the trust-space copies share a mutual-TLS session among
    themselves, never the ordinary copies' one."""
    ca = TestCA(tmp_path / "pki")
    ours = ca.issue("msgw.test")
    handler = CountingHandler()
    sink = _sink(handler, _tls_context(ca, ask_client_cert=True))
    try:
        delivery = (f'tls = "none"\nsmarthost = "127.0.0.1:{free_port()}"\n'
                    f'\n[delivery.routes."mss.example"]\nhost = "localhost"\nport = {sink.port}\ntls = "required"\n'
                    f'ca_file = "{ca.ca_file}"\nclient_cert = "{ours.cert}"\nclient_key = "{ours.key}"\n'
                    f'concurrency = 1\n')
        config = load_config(write_config(tmp_path / "gw", delivery=delivery).config)
        spool = Spool(config.spool.path).open()
        for sender in ("mss-a@lab.example", "lab@lab.example", "mss-b@lab.example", "lab2@lab.example"):
            spool.accept(sender, ["dr@mss.example"], make_message(sender, "dr@mss.example", "s", "x"), lifetime=3600)
        asyncio.run(QueueService(config, spool, Pipeline((_trust_space_tls_only,))).run_once())
        assert len(handler.snapshot()) == 4
        connections, rsets, _ = handler.counts()
        assert (connections, rsets) == (2, 0)  # one session per demand, each used twice (fresh: no RSET)
    finally:
        sink.stop()


# -- no RSET on a fresh session (issue 15, hot path) --------------------------------------------

class MailDroppingHandler(CountingHandler):
    """Drops the session at the n-th MAIL FROM: with a 421 reply, or a bare EOF (no reply)."""

    def __init__(self, drop_at: int, farewell: str | None) -> None:
        super().__init__()
        self.mails = 0
        self.drop_at = drop_at
        self.farewell = farewell

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        with self.lock:
            self.mails += 1
            drop = self.mails == self.drop_at
        if drop:
            if self.farewell is None:
                server.transport.close()  # EOF: the reply below goes nowhere
                return "250 OK"
            server.transport.write(self.farewell.encode() + b"\r\n")
            server.transport.close()
            return "421 closing"  # not sent: the transport is closed
        envelope.mail_from = address
        return "250 OK"


@pytest.mark.parametrize("farewell", [None, "421 4.4.2 closing"])
def test_a_fresh_session_closed_at_mail_costs_a_connection_not_a_deferral(
        tmp_path: Path, farewell: str | None, caplog: pytest.LogCaptureFixture) -> None:
    """The session was given back a moment ago, so no RSET probes it; the server closes it at
    the next MAIL FROM (421 or EOF): that is a stale session as a failed RSET would have shown,
    a new connection in the same attempt, no deferral."""
    caplog.set_level(logging.INFO, logger="gateway.delivery")
    handler = MailDroppingHandler(drop_at=2, farewell=farewell)
    sink = _sink(handler)
    audit: list[dict] = []
    try:
        spool, config = _setup(tmp_path, sink.port)
        _accept(spool, 2)
        service = QueueService(config, spool, audit=lambda **kw: audit.append(kw))
        asyncio.run(service.run_once())
        assert len(handler.snapshot()) == 2
        assert _outcomes(audit) == ["delivered", "delivered"]
        assert _failures(caplog) == []
        assert handler.counts()[:2] == (2, 0)  # message 2: MAIL on the fresh session, then a new one
        assert service.delivery.sessions is not None and service.delivery.sessions.stale == 1
    finally:
        sink.stop()


def test_a_session_after_a_refused_recipient_gets_an_rset(tmp_path: Path) -> None:
    """A transaction that did not end with DATA's 2xx for everyone (here: every RCPT refused, so
    the MAIL transaction is still open on the server) leaves no known state: the next message
    RSETs first, or its MAIL FROM would be a nested MAIL (503) and bounce."""
    handler = CountingHandler()
    handler.rcpt_reply = lambda rcpt: "550 5.1.1 no such user" if rcpt.startswith("nobody") else "250 OK"
    sink = _sink(handler)
    audit: list[dict] = []

    async def scenario() -> None:
        spool, config = _setup(tmp_path, sink.port, 'connection_cache_time = "60s"\n')
        service = QueueService(config, spool, audit=lambda **kw: audit.append(kw))
        service.start()
        try:
            for msg_id in _accept(spool, 1, rcpt="nobody@cabinet.example"):
                service.accepted(msg_id)
            await _until(lambda: "bounced" in _outcomes(audit))
            await _until(lambda: service.delivery.sessions is not None and service.delivery.sessions.idle_count() == 1)
            for msg_id in _accept(spool, 1):
                service.accepted(msg_id)
            await _until(lambda: _outcome_of("dr@cabinet.example") is not None)
        finally:
            await service.stop()

    def _outcome_of(rcpt: str) -> str | None:
        found = [a["outcome"].split()[0] for a in audit
                 if a.get("decision") == "outcome" and a.get("recipient") == rcpt]
        return found[0] if found else None

    try:
        asyncio.run(scenario())
        assert _outcome_of("nobody@cabinet.example") == "bounced"
        assert _outcome_of("dr@cabinet.example") == "delivered"  # no nested MAIL, no bounce
        # one session; one RSET: for whichever transaction came next after the refused one (the
        # message, or the bounce notice to the sender), the one after that being fresh and clean
        assert handler.counts()[:2] == (1, 1)
    finally:
        sink.stop()


def test_a_session_idle_longer_than_fresh_time_gets_an_rset(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transports, "FRESH_TIME", 0.2)
    handler = CountingHandler()
    sink = _sink(handler)

    async def scenario() -> None:
        spool, config = _setup(tmp_path, sink.port, 'connection_cache_time = "60s"\n')
        service = QueueService(config, spool)
        service.start()
        try:
            def idle() -> bool:
                return service.delivery.sessions is not None and service.delivery.sessions.idle_count() == 1

            await _deliver(service, spool, handler, 1)
            await _until(idle)
            await _deliver(service, spool, handler, 1)
            assert handler.counts()[:2] == (1, 0)  # fresh: reused without an RSET
            await _until(idle)
            await asyncio.sleep(0.4)
            await _deliver(service, spool, handler, 1)
            assert handler.counts()[:2] == (1, 1)  # idle longer than FRESH_TIME: probed first
        finally:
            await service.stop()

    try:
        asyncio.run(scenario())
    finally:
        sink.stop()
