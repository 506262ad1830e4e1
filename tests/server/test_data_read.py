"""The bulk DATA read (issue 15, item 5: `gateway.server.dataread`) over real sockets: a gateway
listener in this process (its real spool), raw bytes from a client socket. The edge cases of the
CRLF.CRLF scan (a terminator split across two TCP writes at every byte, dot unstuffing, the empty
message, the size limit to the byte, a command pipelined after the final dot), and a generated
comparison with aiosmtpd's own DATA loop (replies and bytes), which the bulk read replaces."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import load_config
from gateway.server.smtp import SmtpServer
from gateway.spool import Spool
from tests.e2e.harness import write_config
from tests.resilience.support import RawSMTP

T = TypeVar("T")
SENDER = "lab@partner.example"
RCPT = "dr@cabinet.example"
LIMIT = 4000
_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")  # independent of the gateway's own check


class LoopThread:
    """An event loop in a thread: the listeners run there, the test talks to them with sockets."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Gateway:
    def __init__(self, loops: LoopThread, server: SmtpServer, spool: Spool) -> None:
        self.loops, self.server, self.spool = loops, server, spool
        self.port = server.bound["relay"][1]

    def body(self, reply: str) -> bytes:
        """The message the spool recorded for a 250 reply, without the Received field we add."""
        msg_id = reply.rsplit(" ", 1)[1]
        stored = self.spool.message_bytes(msg_id)
        assert stored.startswith(b"Received: ")
        end = stored.index(b"\r\n")
        while stored[end + 2:end + 3] == b"\t":  # the folded Received field
            end = stored.index(b"\r\n", end + 2)
        return stored[end + 2:]


@contextmanager
def gateway(tmp_path: Path, limit: int = LIMIT, *, reuse_port: bool = False) -> Iterator[Gateway]:
    setup = write_config(tmp_path, sink_port=9, relay_networks='["127.0.0.0/8"]')
    text = setup.config.read_text()
    setup.config.write_text(text.replace('allowed_networks = ["127.0.0.0/8"]',
                                         f'allowed_networks = ["127.0.0.0/8"]\nmax_message_size = {limit}', 1))
    config = load_config(setup.config)
    assert next(li for li in config.listeners if li.name == "relay").max_message_size == limit
    spool = Spool(setup.spool).open()
    server = SmtpServer(config, spool, reuse_port=reuse_port)
    loops = LoopThread()
    loops.run(server.start())
    try:
        yield Gateway(loops, server, spool)
    finally:
        loops.run(server.stop())
        loops.close()
        spool.close()


def _client(port: int) -> RawSMTP:
    c = RawSMTP(port)
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    assert c.cmd(b"EHLO lis.partner.example")[0] == 250
    return c


def _transaction(c: RawSMTP) -> None:
    assert c.cmd(b"RSET")[0] == 250
    assert c.cmd(f"MAIL FROM:<{SENDER}>".encode())[0] == 250
    assert c.cmd(f"RCPT TO:<{RCPT}>".encode())[0] == 250
    assert c.cmd(b"DATA")[0] == 354


MESSAGE = b"Subject: split\r\n\r\n..dot first\r\nline two\r\n.\r\n"  # the body and its final dot
UNSTUFFED = b"Subject: split\r\n\r\n.dot first\r\nline two\r\n"


def test_terminator_split_at_every_byte_position_across_two_tcp_writes(tmp_path: Path) -> None:
    with gateway(tmp_path) as gw, _client(gw.port) as c:
        for cut in range(1, len(MESSAGE)):
            _transaction(c)
            c.send(MESSAGE[:cut])
            time.sleep(0.01)  # two segments, two reads on the server side
            c.send(MESSAGE[cut:])
            code, text = c.reply()
            assert code == 250, (cut, text)
            assert gw.body(text) == UNSTUFFED, cut
        assert c.cmd(b"NOOP")[0] == 250  # nothing left over in the session


def test_terminator_split_after_the_size_limit_is_still_found(tmp_path: Path) -> None:
    """Past the limit the read keeps only the last bytes: a final dot split across writes at
    every byte still ends DATA (552), and the session goes on."""
    big = b"x" * 70 + b"\r\n"
    payload = big * (LIMIT * 3 // len(big)) + b"\r\n.\r\n"
    with gateway(tmp_path) as gw, _client(gw.port) as c:
        for back in range(1, 8):
            _transaction(c)
            c.send(payload[:-back])
            time.sleep(0.01)
            c.send(payload[-back:])
            assert c.reply()[0] == 552, back
        assert c.cmd(b"NOOP")[0] == 250


def test_dot_unstuffing_at_the_start_and_after_every_crlf(tmp_path: Path) -> None:
    sent = b"..first\r\nmid . dot\r\n..\r\n...three\r\n.not stuffed\r\nend..\r\n.\r\n"
    # RFC 5321 4.5.2 (and aiosmtpd): the first dot of every line goes, a dot elsewhere stays
    with gateway(tmp_path) as gw, _client(gw.port) as c:
        _transaction(c)
        c.send(sent)
        code, text = c.reply()
        assert code == 250, text
        assert gw.body(text) == b".first\r\nmid . dot\r\n.\r\n..three\r\nnot stuffed\r\nend..\r\n"


def test_empty_message_is_just_the_final_dot(tmp_path: Path) -> None:
    with gateway(tmp_path) as gw, _client(gw.port) as c:
        _transaction(c)
        c.send(b".\r\n")
        code, text = c.reply()
        assert code == 250, text
        assert gw.body(text) == b""
        _transaction(c)  # a lone dot on the second line ends a one-line message
        c.send(b"\r\n.\r\n")
        code, text = c.reply()
        assert code == 250, text
        assert gw.body(text) == b"\r\n"


def _sized(size: int) -> bytes:
    """A message of exactly `size` bytes as sent (its stuffed dot counted), final dot not counted."""
    body = bytearray(b"Subject: size\r\n\r\n..stuffed\r\n")
    while len(body) + 100 <= size:
        body += b"y" * 98 + b"\r\n"
    rest = size - len(body)
    if rest == 1:
        body[-2:-2] = b"y"
    elif rest >= 2:
        body += b"z" * (rest - 2) + b"\r\n"
    assert len(body) == size
    return bytes(body) + b".\r\n"


def test_message_exactly_at_the_size_limit_and_one_byte_over(tmp_path: Path) -> None:
    with gateway(tmp_path) as gw, _client(gw.port) as c:
        _transaction(c)
        c.send(_sized(LIMIT))
        code, text = c.reply()
        assert code == 250, text
        assert gw.body(text) == _sized(LIMIT)[:-3].replace(b"\r\n..", b"\r\n.")
        _transaction(c)
        c.send(_sized(LIMIT + 1))
        assert c.reply() == (552, "552 Error: Too much mail data")
        _transaction(c)  # far over: read to the end without keeping it, then the session goes on
        c.send(_sized(LIMIT * 500))
        assert c.reply()[0] == 552
        assert c.cmd(b"NOOP")[0] == 250


def test_line_length_limit_is_aiosmtpds(tmp_path: Path) -> None:
    """999 bytes and CRLF pass; 1,000 and CRLF is aiosmtpd's "500 Line too long"."""
    with gateway(tmp_path, limit=10_000) as gw, _client(gw.port) as c:
        _transaction(c)
        c.send(b"Subject: long\r\n\r\n" + b"a" * 999 + b"\r\n.\r\n")
        assert c.reply()[0] == 250
        _transaction(c)
        c.send(b"Subject: long\r\n\r\n" + b"a" * 1000 + b"\r\n.\r\n")
        assert c.reply() == (500, "500 Line too long (see RFC5321 4.5.3.1.6)")
        _transaction(c)  # bare LF line ends past the size limit: still refused as bare LF
        c.send(b"Subject: lf\n\n" + b"unix line\n" * 3000 + b"\r\n.\r\n")
        code, text = c.reply()
        assert code == 550 and "bare LF" in text, text
        assert c.cmd(b"NOOP")[0] == 250


def test_a_command_pipelined_after_the_final_dot_stays_for_the_next_command(tmp_path: Path) -> None:
    with gateway(tmp_path) as gw, _client(gw.port) as c:
        _transaction(c)
        c.send(MESSAGE + b"NOOP\r\nMAIL FROM:<" + SENDER.encode() + b">\r\n")  # one segment
        code, text = c.reply()
        assert code == 250, text
        assert gw.body(text) == UNSTUFFED
        assert c.reply()[0] == 250  # NOOP
        assert c.reply()[0] == 250  # MAIL: a new transaction began
        assert c.cmd(f"RCPT TO:<{RCPT}>".encode())[0] == 250
        assert c.cmd(b"DATA")[0] == 354
        # after a refusal too (552, bare LF), in the same segment as the data
        c.send(_sized(LIMIT * 2) + b"RSET\r\n")
        assert c.reply()[0] == 552
        assert c.reply()[0] == 250
        _transaction(c)
        c.send(b"a\nb\r\n.\r\nNOOP\r\n")
        assert c.reply()[0] == 550
        assert c.reply()[0] == 250


def test_listeners_can_share_their_ports_for_worker_processes(tmp_path: Path) -> None:
    """`reuse_port=True`: a second server binds the same listener ports (SO_REUSEPORT)."""
    with gateway(tmp_path, reuse_port=True) as first:
        second = SmtpServer(first.server.config, first.spool, reuse_port=True)
        first.loops.run(second.start())
        try:
            assert second.bound["relay"] == first.server.bound["relay"]
            with _client(second.bound["relay"][1]) as c:
                _transaction(c)
                c.send(MESSAGE)
                assert c.reply()[0] == 250
        finally:
            first.loops.run(second.stop())


# -- the same bytes to aiosmtpd's own DATA loop and to ours -----------------------------------------

class _Recorder:
    def __init__(self) -> None:
        self.content: bytes | None = None

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        self.content = envelope.original_content
        return "250 OK"


FRAGMENTS = [b"a", b"Subject: x", b"y" * 150, b"z" * 990, b"\r\n", b"\r", b"\n", b".", b"..", b"\r\n.",
             b"\r\n..", b"\x00", b"\xe9"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_generated_data_gets_aiosmtpds_reply_and_bytes(tmp_path: Path) -> None:
    """Generated DATA, the same bytes to an unmodified aiosmtpd (the old loop) and to the gateway:
    the same reply (except that we refuse a bare CR/LF, 550 instead of accepting it or "500 Line
    too long") and the same message bytes, whatever the size and line layout."""
    limit = 3000
    with gateway(tmp_path, limit=limit) as gw:
        recorder = _Recorder()
        reference = gw.loops.run(_reference_server(gw.loops.loop, recorder, limit))
        ref_port = reference.sockets[0].getsockname()[1]
        try:
            @settings(max_examples=150, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(parts=st.lists(st.sampled_from(FRAGMENTS), max_size=40), repeat=st.integers(1, 4))
            def compare(parts: list[bytes], repeat: int) -> None:
                body = b"".join(parts) * repeat
                payload = body + (b".\r\n" if body.endswith(b"\r\n") or not body else b"\r\n.\r\n")
                stream = b"\r\n" + payload
                sent = stream[2:stream.find(b"\r\n.\r\n") + 2]  # what DATA holds up to the first CRLF.CRLF
                recorder.content = None
                with _client(ref_port) as ref, _client(gw.port) as ours:
                    for c in (ref, ours):
                        _transaction(c)
                        c.send(payload)
                    ref_code, _ = ref.reply()
                    code, text = ours.reply()
                bare = _BARE.search(sent) is not None
                if ref_code == 552:
                    assert code == 552, text
                elif bare:
                    assert code == 550 and "bare LF" in text, (ref_code, text)
                else:
                    assert code == ref_code, text
                    if code == 250:
                        assert gw.body(text) == recorder.content

            compare()
        finally:
            gw.loops.run(_close(reference))  # on the server's own loop: asyncio is not thread-safe


async def _close(server: asyncio.Server) -> None:
    server.close()
    await server.wait_closed()


async def _reference_server(loop: asyncio.AbstractEventLoop, handler: _Recorder, limit: int) -> asyncio.Server:
    return await loop.create_server(lambda: SMTP(handler, data_size_limit=limit, hostname="reference.test"),
                                    host="127.0.0.1", port=0)
