"""PIPELINING on delivery (RFC 2920, issue 15: the lean delivery client), over real sockets.

A raw socket server records every read it makes and answers each read's commands together in
one write (as a pipelining server may, and as the relay benchmark's sink does). It offers
PIPELINING or not. With it, `SmtpSession.send` writes MAIL, every RCPT and DATA in one write
and reads the replies in order; without it, one command per read as before. The outcomes are
the stepwise path's: a refused RCPT is that recipient's (permanent or temporary) result and the
payload goes to the others; all refused means no payload and a session that stays usable; a
421 mid-pipeline is a temporary failure and the session is dropped; a 354 after every
recipient was refused is ended with a lone dot; the payload's bytes are aiosmtplib's."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import aiosmtplib
import pytest
from aiosmtplib.protocol import PERIOD_REGEX, SMTPProtocol, normalize_message_line_endings

from gateway.config.delivery import TlsSettings
from gateway.delivery.pipelining import ReplyReader, _parse
from gateway.delivery.smtp_client import OFF_LOOP_BYTES, PIPELINE_GROUP, SmtpSession, open_session
from gateway.errors import DeliveryError
from tests.delivery import test_connection_cache as _cache
from tests.delivery.test_data_stuffing import CASES

SENDER = "lab@gw.test"


@dataclass
class Message:
    sender: str
    recipients: list[str]
    payload: bytes


@dataclass
class ScriptedServer:
    """A raw SMTP server in a thread. `replies` maps a command line (e.g. "RCPT TO:<a@x>") to
    its reply; `close_on` names a command answered with 421 and a close; `data_reply` is DATA's
    reply (354 by default, whatever the recipients were)."""

    pipelining: bool
    replies: dict[str, str] = field(default_factory=dict)
    close_on: str | None = None
    data_reply: str = "354 go ahead"
    #: Answer each command with a write of its own (as aiosmtpd does), not the read's at once.
    reply_per_write: bool = False
    #: Per connection, every read outside a DATA payload, as received.
    reads: list[list[bytes]] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            reads: list[bytes] = []
            with self.lock:
                self.reads.append(reads)
            conn.sendall(b"220 scripted ESMTP\r\n")
            try:
                self._session(conn, reads)
            except (EOFError, OSError):
                return

    def _session(self, conn: socket.socket, reads: list[bytes]) -> None:
        buf = b""
        sender, rcpts = "", []
        while True:
            got = conn.recv(65536)
            if not got:
                return
            reads.append(got)
            buf += got
            out: list[bytes] = []
            while b"\r\n" in buf:
                line, buf = buf.split(b"\r\n", 1)
                text = line.decode()
                with self.lock:
                    self.commands.append(text)
                verb = text[:4].upper()
                if self.close_on is not None and text == self.close_on:
                    conn.sendall(b"".join(out) + b"421 4.3.2 closing now\r\n")
                    return
                if verb == "EHLO":
                    out.append(b"250-scripted\r\n" + (b"250-PIPELINING\r\n" if self.pipelining else b"")
                               + b"250-SIZE 100000000\r\n250 8BITMIME\r\n")
                elif verb == "QUIT":
                    conn.sendall(b"".join(out) + b"221 bye\r\n")
                    return
                elif verb == "DATA":
                    reply = self.data_reply
                    out.append(reply.encode() + b"\r\n")
                    if reply.startswith("354"):
                        conn.sendall(b"".join(out))
                        out = []
                        payload, buf = self._payload(conn, buf)
                        with self.lock:
                            self.messages.append(Message(sender, rcpts, payload))
                        out.append(b"250 2.0.0 kept\r\n")
                    sender, rcpts = "", []
                else:
                    reply = self.replies.get(text, "250 2.1.0 ok")
                    if verb == "MAIL" and reply.startswith("250"):
                        sender, rcpts = text, []
                    elif verb == "RCPT" and reply.startswith("25"):
                        rcpts.append(text[len("RCPT TO:"):])
                    elif verb == "RSET":
                        sender, rcpts = "", []
                    out.append(reply.encode() + b"\r\n")
                if self.reply_per_write and out:
                    conn.sendall(b"".join(out))
                    out = []
            if out:
                conn.sendall(b"".join(out))

    @staticmethod
    def _payload(conn: socket.socket, buf: bytes) -> tuple[bytes, bytes]:
        """The DATA payload up to and including its final dot line, and what followed it."""
        data = b"\r\n" + buf
        while True:
            end = data.find(b"\r\n.\r\n")
            if end >= 0:
                return data[2:end + 5], data[end + 5:]
            got = conn.recv(1 << 20)
            if not got:
                raise EOFError
            data += got

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server_factory() -> Iterator[type[ScriptedServer]]:
    made: list[ScriptedServer] = []

    class Made(ScriptedServer):
        def __post_init__(self) -> None:
            super().__post_init__()
            made.append(self)

    yield Made
    for server in made:
        server.close()


async def _session(server: ScriptedServer) -> SmtpSession:
    return await open_session(host="scripted", address="127.0.0.1", port=server.port,
                              tls=TlsSettings(policy="none"), helo_name="gw.test", command_timeout=10)


def _envelope_reads(server: ScriptedServer) -> list[bytes]:
    """The reads of the first connection after EHLO that carried MAIL, RCPT or DATA."""
    return [r for r in server.reads[0] if r[:4].upper() in (b"MAIL", b"RCPT", b"DATA")]


def _wire(data: bytes) -> bytes:
    """What aiosmtplib's own `data()` writes after DATA: the oracle for the payload's bytes."""
    return PERIOD_REGEX.sub(b"..", normalize_message_line_endings(data)) + b".\r\n"


MESSAGE = b"Subject: TEST\r\n\r\n.a line starting with a dot\r\nbody\r\n"
RCPTS = ["a@dest.test", "b@dest.test", "c@dest.test"]


def test_mail_every_rcpt_and_data_go_in_one_write_when_pipelining_is_offered(server_factory) -> None:
    server = server_factory(pipelining=True)

    async def go() -> dict:
        session = await _session(server)
        results = await session.send(SENDER, RCPTS, MESSAGE)
        await session.quit()
        return results

    results = asyncio.run(go())
    assert [r.code for r in results.values()] == [250, 250, 250]
    envelope = _envelope_reads(server)
    assert envelope[0] == (b"MAIL FROM:<lab@gw.test> SIZE=%d\r\n" % len(MESSAGE)
                           + b"".join(b"RCPT TO:<%s>\r\n" % r.encode() for r in RCPTS) + b"DATA\r\n")
    assert server.messages == [Message(f"MAIL FROM:<{SENDER}> SIZE={len(MESSAGE)}", [f"<{r}>" for r in RCPTS],
                                       _wire(MESSAGE))]


def test_one_command_per_write_without_pipelining(server_factory) -> None:
    server = server_factory(pipelining=False)

    async def go() -> dict:
        session = await _session(server)
        results = await session.send(SENDER, RCPTS, MESSAGE)
        await session.quit()
        return results

    results = asyncio.run(go())
    assert [r.code for r in results.values()] == [250, 250, 250]
    envelope = _envelope_reads(server)
    assert [read.count(b"\r\n") for read in envelope] == [1, 1, 1, 1, 1]
    assert [read.split(b":")[0] for read in envelope] == [b"MAIL FROM", b"RCPT TO", b"RCPT TO", b"RCPT TO", b"DATA\r\n"]
    assert len(server.messages) == 1


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "stepwise"])
def test_mixed_rcpt_replies_give_each_recipient_its_own_outcome(server_factory, pipelining: bool) -> None:
    server = server_factory(pipelining=pipelining, replies={
        "RCPT TO:<a@dest.test>": "550 5.1.1 no such user", "RCPT TO:<b@dest.test>": "450 4.2.1 try later"})

    async def go() -> tuple[dict, bool]:
        session = await _session(server)
        results = await session.send(SENDER, RCPTS, MESSAGE)
        alive = session.alive
        await session.quit()
        return results, alive

    results, alive = asyncio.run(go())
    a, b, c = (results[r] for r in RCPTS)
    assert (a.code, a.temporary, a.status) == (550, False, "5.1.1")
    assert (b.code, b.temporary, b.status) == (450, True, "4.2.1")
    assert (c.code, c.ok) == (250, True)
    assert list(results) == RCPTS
    assert alive
    assert [m.recipients for m in server.messages] == [["<c@dest.test>"]]
    assert server.messages[0].payload == _wire(MESSAGE)


@pytest.mark.parametrize("data_reply", ["554 5.5.1 no valid recipients", "354 go ahead"],
                         ids=["data-refused", "data-354-anyway"])
def test_all_rcpts_refused_sends_no_payload_and_the_session_stays_usable(server_factory, data_reply: str) -> None:
    """A server may answer the pipelined DATA with 354 even though it refused every RCPT (RFC 2920
    3.1): the client then ends it with a lone dot, and nothing of the message goes."""
    server = server_factory(pipelining=True, data_reply=data_reply, replies={
        "RCPT TO:<a@dest.test>": "550 5.1.1 no such user", "RCPT TO:<b@dest.test>": "550 5.1.1 no such user"})

    async def go() -> tuple[dict, dict, bool]:
        session = await _session(server)
        refused = await session.send(SENDER, ["a@dest.test", "b@dest.test"], MESSAGE)
        server.data_reply = "354 go ahead"
        reset = await session.reset(5)  # what the transport does before a reused session's next message
        accepted = await session.send(SENDER, ["c@dest.test"], b"Subject: second\r\n\r\nsecond\r\n")
        await session.quit()
        return refused, accepted, reset

    refused, accepted, reset = asyncio.run(go())
    assert [(r.code, r.temporary) for r in refused.values()] == [(550, False), (550, False)]
    assert reset
    assert [r.code for r in accepted.values()] == [250]
    assert len(server.reads) == 1, "one connection for both messages"
    payloads = [m.payload for m in server.messages]
    if data_reply.startswith("354"):
        assert payloads == [b".\r\n", b"Subject: second\r\n\r\nsecond\r\n.\r\n"]
        assert server.messages[0].recipients == []
    else:
        assert payloads == [b"Subject: second\r\n\r\nsecond\r\n.\r\n"]
    assert all(b"TEST" not in p for p in payloads)


@pytest.mark.parametrize("close_on", ["RCPT TO:<b@dest.test>", f"MAIL FROM:<{SENDER}> SIZE={len(MESSAGE)}", "DATA"],
                         ids=["at-rcpt", "at-mail", "at-data"])
def test_a_421_mid_pipeline_is_a_temporary_failure_and_drops_the_session(server_factory, close_on: str) -> None:
    server = server_factory(pipelining=True, close_on=close_on)

    async def go() -> tuple[object, bool]:
        session = await _session(server)
        try:
            outcome: object = await session.send(SENDER, RCPTS, MESSAGE)
        except DeliveryError as exc:
            outcome = exc
        return outcome, session.alive

    outcome, alive = asyncio.run(go())
    assert not alive
    if close_on == "DATA":  # every RCPT was answered: their results stand, DATA's 421 is the accepted ones'
        assert isinstance(outcome, dict)
        assert [(r.code, r.temporary) for r in outcome.values()] == [(421, True)] * 3
    else:
        assert isinstance(outcome, DeliveryError)
        assert outcome.temporary
    assert server.messages == []


def test_a_refused_sender_is_the_transactions_answer(server_factory) -> None:
    server = server_factory(pipelining=True, replies={
        f"MAIL FROM:<{SENDER}> SIZE={len(MESSAGE)}": "553 5.7.1 sender not allowed",
        "RCPT TO:<a@dest.test>": "503 5.5.1 need MAIL first"}, data_reply="503 5.5.1 need RCPT first")

    async def go() -> tuple[DeliveryError, bool]:
        session = await _session(server)
        with pytest.raises(DeliveryError) as caught:
            await session.send(SENDER, ["a@dest.test"], MESSAGE)
        alive = session.alive
        await session.quit()
        return caught.value, alive

    error, alive = asyncio.run(go())
    assert (error.temporary, error.smtp_code, error.status) == (False, 553, "5.7.1")
    assert alive, "the session is in a known state: the caller QUITs it"
    assert server.messages == []


def test_a_sender_or_recipient_aiosmtplib_would_not_send_is_refused_here(server_factory) -> None:
    server = server_factory(pipelining=True)

    async def go() -> tuple[DeliveryError, dict]:
        session = await _session(server)
        with pytest.raises(DeliveryError) as caught:
            await session.send("bad\x01@gw.test", ["a@dest.test"], MESSAGE)
        results = await session.send(SENDER, ["x\x01@dest.test", "a@dest.test", "é@dest.test", "c d@dest.test"],
                                     MESSAGE)
        await session.quit()
        return caught.value, results

    error, results = asyncio.run(go())
    assert (error.temporary, error.status) == (False, "5.1.7")
    assert [r.code for r in results.values()] == [553, 250, 553, 553]
    assert [c for c in server.commands if c.startswith(("MAIL", "RCPT"))] == [
        f"MAIL FROM:<{SENDER}> SIZE={len(MESSAGE)}", "RCPT TO:<a@dest.test>"]
    assert [m.recipients for m in server.messages] == [["<a@dest.test>"]]


@pytest.mark.parametrize("name", list(CASES))
def test_pipelined_payload_bytes_are_aiosmtplibs(server_factory, name: str) -> None:
    server = server_factory(pipelining=True)
    data = CASES[name]

    async def go() -> None:
        session = await _session(server)
        await session.send(SENDER, ["a@dest.test"], data)
        await session.quit()

    asyncio.run(go())
    assert [m.payload for m in server.messages] == [_wire(data)]


def test_a_large_message_and_more_recipients_than_one_write_holds(server_factory) -> None:
    """Past `PIPELINE_GROUP` commands the transaction goes in several writes, replies read per
    write; a payload above `OFF_LOOP_BYTES` is stuffed off the loop: same bytes."""
    server = server_factory(pipelining=True, replies={"RCPT TO:<r7@dest.test>": "550 5.1.1 no"})
    recipients = [f"r{i}@dest.test" for i in range(PIPELINE_GROUP + 20)]
    data = (b"Subject: TEST\r\n\r\n" + b".dot\r\n" + b"x" * 70 + b"\r\n") * (OFF_LOOP_BYTES // 40)

    async def go() -> dict:
        session = await _session(server)
        results = await session.send(SENDER, recipients, data)
        await session.quit()
        return results

    results = asyncio.run(go())
    assert [r for r, res in results.items() if not res.ok] == ["r7@dest.test"]
    assert list(results) == recipients
    envelope = _envelope_reads(server)
    assert envelope[0].count(b"\r\n") == PIPELINE_GROUP
    assert len(server.messages) == 1
    assert len(server.messages[0].recipients) == len(recipients) - 1
    assert server.messages[0].payload == _wire(data)


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
def test_replies_written_one_by_one_are_never_lost(server_factory, event_loop: str) -> None:
    """A server that answers each pipelined command in a segment of its own (aiosmtpd does):
    replies come in a row, faster than a reader woken through `wait_for` picks them up. Read
    through aiosmtplib's protocol, one of them was now and then dropped and the session hung
    until the command timeout; 300 messages on one session must all go, promptly."""
    if event_loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
    server = server_factory(pipelining=True, reply_per_write=True)

    async def go() -> int:
        session = await open_session(host="scripted", address="127.0.0.1", port=server.port,
                                     tls=TlsSettings(policy="none"), helo_name="gw.test", command_timeout=5)
        sent = 0
        for i in range(300):
            results = await asyncio.wait_for(session.send(SENDER, RCPTS, b"Subject: %d\r\n\r\nx\r\n" % i), 10)
            sent += all(r.ok for r in results.values())
        await session.quit()
        return sent

    sent = uvloop.run(go()) if event_loop == "uvloop" else asyncio.run(go())
    assert sent == 300
    assert len(server.messages) == 300 and len(server.reads) == 1


class _PipeliningSink:
    """aiosmtpd hooks: PIPELINING offered (aiosmtpd reads pipelined commands but does not say
    so), every message counted."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # noqa: N802 - aiosmtpd's name
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
        self.sizes.append(len(envelope.original_content))
        return "250 2.0.0 kept"


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
def test_pipelined_over_starttls_from_the_first_message(tmp_path, monkeypatch: pytest.MonkeyPatch,
                                                        event_loop: str) -> None:
    """Verified STARTTLS to aiosmtpd, on both event loops the gateway runs: the extensions are
    learnt again right after the handshake, so even the first message is pipelined; the reader
    takes and gives back the TLS transport; payloads from one line to several write slices."""
    import ssl

    from aiosmtpd.controller import Controller

    from tests.conftest import free_port
    from tests.e2e.tlspki import TestCA

    ca = TestCA(tmp_path / "pki")
    pair = ca.issue("localhost")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pair.cert), str(pair.key))
    handler = _PipeliningSink()
    sink = Controller(handler, hostname="127.0.0.1", port=free_port(), tls_context=ctx, require_starttls=True)
    sink.start()
    pipelined: list[int] = []
    send_pipelined = SmtpSession._send_pipelined

    async def counted(self: SmtpSession, *args, **kwargs):
        pipelined.append(1)
        return await send_pipelined(self, *args, **kwargs)

    monkeypatch.setattr(SmtpSession, "_send_pipelined", counted)
    sizes = [20, 70_000, 600_000, 20]

    async def go() -> None:
        session = await open_session(host="localhost", address="127.0.0.1", port=sink.port,
                                     tls=TlsSettings(policy="required", ca_file=ca.ca_file), helo_name="gw.test",
                                     command_timeout=10)
        for size in sizes:
            results = await session.send(SENDER, ["a@dest.test", "b@dest.test"], b"Subject: TEST\r\n\r\n"
                                         + (b"x" * 70 + b"\r\n") * (size // 72 + 1))
            assert [r.code for r in results.values()] == [250, 250]
        await session.quit()

    try:
        if event_loop == "uvloop":
            pytest.importorskip("uvloop").run(go())
        else:
            asyncio.run(go())
    finally:
        sink.stop()
    assert len(pipelined) == len(sizes)
    assert len(handler.sizes) == len(sizes)


def test_the_reader_keeps_replies_that_arrive_in_a_row() -> None:
    """Two arrivals before the reader's owner runs again: both replies are kept, in order
    (aiosmtplib's protocol, fed the same way, keeps the first and drops the second)."""

    async def go() -> tuple[list[tuple[int, str]], list[int]]:
        loop = asyncio.get_running_loop()
        ours = SMTPProtocol(loop=loop)
        ours.transport = _FakeTransport()  # type: ignore[assignment]
        async with ReplyReader(ours) as reader:
            reader.data_received(b"250 2.1.0 sender ok\r\n")
            reader.data_received(b"250-2.1.5 first line\r\n250 2.1.5 second\r\n354 go")
            reader.data_received(b" ahead\r\n")
            got = [await reader.next(1) for _ in range(3)]
        theirs = SMTPProtocol(loop=loop)
        theirs.connection_made(_FakeTransport())  # type: ignore[arg-type]
        theirs._response_pending = True
        theirs.data_received(b"250 2.1.0 sender ok\r\n")
        theirs.data_received(b"250 2.1.5 recipient ok\r\n")
        first = await theirs.read_response(timeout=1)
        with pytest.raises(aiosmtplib.SMTPTimeoutError):
            await theirs.read_response(timeout=0.2)
        return [(r.code, r.message) for r in got], [first.code]

    got, theirs = asyncio.run(go())
    assert got == [(250, "2.1.0 sender ok"), (250, "2.1.5 first line\n2.1.5 second"), (354, "go ahead")]
    assert theirs == [250]


class _FakeTransport(asyncio.Transport):
    """Only what the reader and aiosmtplib's protocol ask of a transport here (no I/O)."""

    def __init__(self) -> None:
        super().__init__()
        self.protocol: asyncio.BaseProtocol | None = None

    def is_closing(self) -> bool:
        return False

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self.protocol is not None
        return self.protocol

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


REPLIES = [b"250 ok\r\n", b"250-a\r\n250-\r\n250 c\r\n", b"250-\r\n250 x\r\n", b"220\r\n", b"250 \xc3\xa9t\xe9\r\n",
           b"250 lf only\n", b"421 4.3.2 bye \t \r\n", b"25O bad\r\n", b"250-" + b"x" * 9000 + b"\r\n",
           b"250 partial", b"250-a\r\n250-b"]


@pytest.mark.parametrize("raw", REPLIES, ids=range(len(REPLIES)))
def test_the_readers_parse_is_aiosmtplibs(raw: bytes) -> None:
    def theirs() -> object:
        protocol = SMTPProtocol(loop=asyncio.new_event_loop())
        protocol._buffer = bytearray(raw)
        try:
            reply = protocol._read_response_from_buffer()
        except aiosmtplib.SMTPResponseException as exc:
            return ("error", exc.code, exc.message)
        return None if reply is None else (reply.code, reply.message, bytes(protocol._buffer))

    def ours() -> object:
        buffer = bytearray(raw)
        try:
            reply = _parse(buffer)
        except aiosmtplib.SMTPResponseException as exc:
            return ("error", exc.code, exc.message)
        return None if reply is None else (reply.code, reply.message, bytes(buffer))

    assert ours() == theirs()


# -- the connection cache's rules, with PIPELINING offered ----------------------------------------
# Every test of tests/delivery/test_connection_cache.py again, its aiosmtpd sink now offering
# PIPELINING (aiosmtpd reads pipelined commands but does not say so): reuse, bounds, a session
# closed while idle or at MAIL on a fresh session (a new connection, never a deferral), RSET
# after a refused recipient, one session per TLS demand (the first message after STARTTLS is
# pipelined too: EHLO again right after the handshake).

@pytest.fixture(autouse=True)
def _cache_sinks_offer_pipelining(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    if not request.node.name.startswith("test_cached_"):
        yield
        return
    pipelined: list[int] = []

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # noqa: N802 - aiosmtpd's hook name
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    send_pipelined = SmtpSession._send_pipelined

    async def counted(self: SmtpSession, *args, **kwargs):
        pipelined.append(1)
        return await send_pipelined(self, *args, **kwargs)

    monkeypatch.setattr(_cache.CountingHandler, "handle_EHLO", handle_EHLO, raising=False)
    monkeypatch.setattr(SmtpSession, "_send_pipelined", counted)
    yield
    assert pipelined, "no transaction was pipelined"


for _name in [name for name in dir(_cache) if name.startswith("test_")]:
    globals()["test_cached_" + _name[len("test_"):]] = getattr(_cache, _name)
