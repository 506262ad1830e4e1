"""Our DATA sender (`gateway.delivery.smtp_client.send_data`, issue 15: the 50 MB target), over
real sockets: it dot-stuffs the message itself and writes it in slices with flow control,
instead of aiosmtplib's `SMTP.data` (two whole-message regex substitutions on the event loop and
one more copy for the final dot).

The oracle is aiosmtplib itself: for the same message, the bytes on the wire after `DATA` are
the same as what `SMTP.data` sends (a raw socket sink records them), and an aiosmtpd sink gets
the message back byte for byte. Lines starting with a dot at the start, after CRLF, on both
sides of a slice boundary, a message of exactly `.`, no final CRLF, bare LF/CR (normalised as
aiosmtplib does), and a large message whose peak memory in the sender stays near one copy."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator

import aiosmtplib
import pytest

from gateway.config.delivery import TlsSettings
from gateway.delivery import smtp_client
from gateway.delivery.smtp_client import WRITE_CHUNK, open_session, stuff_for_data
from tests.e2e.harness import Sink

C = WRITE_CHUNK


def _boundary_message() -> bytes:
    """Dot lines whose `\\r\\n.` straddles the slice boundaries: the CRLF ending one slice, the
    dot starting the next, and every offset around them (before stuffing, and after: the
    stuffed body shifts by one byte per doubled dot)."""
    parts: list[bytes] = []
    size = 0
    for target in (C - 3, 2 * C - 2, 3 * C - 1, 4 * C, 5 * C + 1):
        filler = target - size - 2
        line = b"x" * 70 + b"\r\n"
        while filler > len(line):
            parts.append(line)
            size += len(line)
            filler -= len(line)
        parts.append(b"y" * filler + b"\r\n")
        size += filler + 2
        parts.append(b".dot at %d\r\n" % size)
        size += len(parts[-1])
    return b"".join(parts) + b".\r\n..\r\nend\r\n"


CASES: dict[str, bytes] = {
    "exactly-dot": b".",
    "empty": b"",
    "dot-line-alone": b".\r\n",
    "dot-first": b".starts with a dot\r\nsecond\r\n",
    "dots-after-crlf": b"Subject: x\r\n\r\n.one\r\n..two\r\n.\r\n...\r\nlast\r\n",
    "no-final-crlf": b"Subject: x\r\n\r\nbody\r\n.last",
    "bare-lf": b"Subject: x\n\n.dot\nline\n",
    "bare-cr": b"Subject: x\r\rbody\r.dot\r\n",
    "crlf-then-bare": b"a\r\n.b\nc\r.d",
    "chunk-boundaries": _boundary_message(),
}


class _RawSink:
    """A minimal SMTP server on a real socket that records the raw bytes a client sends after
    `354` up to and including the final `.\\r\\n` (what dot-stuffing is about)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.payloads: list[bytes] = []
        self.keep = True
        #: Answer 552 once this many DATA bytes came, then read slowly and discard to the end
        #: (or stop reading for a while).
        self.refuse_after: int | None = None
        self.read_after_refusal = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self._session(conn)

    def _session(self, conn: socket.socket) -> None:
        buf = b""

        def line() -> bytes:
            nonlocal buf
            while b"\r\n" not in buf:
                got = conn.recv(65536)
                if not got:
                    raise EOFError
                buf += got
            first, buf = buf.split(b"\r\n", 1)
            return first

        conn.sendall(b"220 raw sink\r\n")
        try:
            while True:
                cmd = line().upper()
                if cmd.startswith(b"EHLO"):
                    conn.sendall(b"250-raw\r\n250 SIZE 200000000\r\n")
                elif cmd == b"DATA":
                    conn.sendall(b"354 go\r\n")
                    payload = bytearray(buf)
                    received = len(buf)
                    while not payload.endswith(b"\r\n.\r\n") and payload != b".\r\n":
                        got = conn.recv(1 << 20)
                        if not got:
                            raise EOFError
                        received += len(got)
                        if self.refuse_after is not None and received >= self.refuse_after:
                            conn.sendall(b"552 5.3.4 message too big for this server\r\n")
                            if not self.read_after_refusal:
                                time.sleep(1.5)  # neither reading nor closing for a while
                                return
                            conn.shutdown(socket.SHUT_WR)
                            while conn.recv(65536):  # (a close with unread data would reset the 552 away)
                                time.sleep(0.01)
                            return
                        if self.keep:
                            payload += got
                        else:  # large message: keep only the tail (memory of the sender is measured)
                            payload = bytearray(payload[-8:] + got)
                    buf = b""
                    self.payloads.append(bytes(payload) if self.keep else b"")
                    conn.sendall(b"250 2.0.0 kept\r\n")
                elif cmd == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 ok\r\n")
        except (EOFError, OSError):
            return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw_sink() -> Iterator[_RawSink]:
    sink = _RawSink()
    yield sink
    sink.close()


async def _wire_ours(port: int, data: bytes) -> None:
    session = await open_session(host="sink", address="127.0.0.1", port=port, tls=TlsSettings(policy="none"),
                                 helo_name="gw.test")
    results = await session.send("a@gw.test", ["b@sink.test"], data)
    assert [r.code for r in results.values()] == [250]
    await session.quit()


async def _wire_aiosmtplib(port: int, data: bytes) -> None:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, local_hostname="gw.test")
    await client.connect()
    await client.mail("a@gw.test")
    await client.rcpt("b@sink.test")
    await client.data(data)
    await client.quit()


@pytest.mark.parametrize("name", list(CASES))
def test_wire_bytes_are_aiosmtplibs(raw_sink: _RawSink, name: str) -> None:
    data = CASES[name]
    asyncio.run(_wire_aiosmtplib(raw_sink.port, data))
    asyncio.run(_wire_ours(raw_sink.port, data))
    theirs, ours = raw_sink.payloads
    assert ours == theirs


@pytest.mark.parametrize("name", list(CASES))
def test_aiosmtpd_sink_gets_the_message_back(name: str) -> None:
    data = CASES[name]
    sink = Sink().start()
    try:
        asyncio.run(_wire_ours(sink.port, data))
        (got,) = sink.wait_for(1)
    finally:
        sink.stop()
    canonical = aiosmtplib.protocol.normalize_message_line_endings(data)
    assert got.data == canonical


def test_stuffing_does_not_copy_a_message_without_dot_lines() -> None:
    data = b"MIME-Version: 1.0\r\n\r\n" + (b"QUJD" * 19 + b"\r\n") * 40_000
    pieces, tail = stuff_for_data(data)
    assert len(pieces) > 1 and all(isinstance(p, memoryview) and p.obj is data for p in pieces)
    assert b"".join(pieces) == data and tail == b".\r\n"


@pytest.mark.parametrize("name", list(CASES))
def test_small_windows_stuff_the_same(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Windows of a few bytes (every line its own window, CRLFs across the counting windows):
    the same payload as one window."""
    whole_pieces, whole_tail = stuff_for_data(CASES[name])
    monkeypatch.setattr(smtp_client, "STUFF_WINDOW", 3)
    pieces, tail = stuff_for_data(CASES[name])
    assert b"".join(pieces) + tail == b"".join(whole_pieces) + whole_tail


def test_large_message_sent_with_about_one_copy(raw_sink: _RawSink) -> None:
    """8 MB with dot lines (so the stuffing has to copy once): the sender's peak stays well
    under the three extra copies aiosmtplib's `SMTP.data` made (a bound on memory, not time)."""
    raw_sink.keep = False
    line = b"A" * 74 + b"\r\n"
    data = (line * 1000 + b".dot\r\n") * 110
    assert len(data) > 8_000_000
    tracemalloc.start()
    try:
        asyncio.run(_wire_ours(raw_sink.port, data))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert raw_sink.payloads == [b""]
    assert peak < 1.6 * len(data), f"peak {peak / len(data):.2f}x the message"


@pytest.mark.parametrize("reads", [True, False], ids=["then-discards", "then-stops-reading"])
def test_a_reply_before_the_end_of_data_is_the_message_s(raw_sink: _RawSink, reads: bool) -> None:
    """A server that answers 552 in the middle of a large message and reads the rest slowly to
    throw it away, or stops reading:
    the 552 is the recipients' reply (a bounce, as when aiosmtplib had written the whole message
    before reading), not a lost session retried for ever; the half-sent session is closed."""
    raw_sink.refuse_after = 1 << 19
    raw_sink.read_after_refusal = reads
    raw_sink.keep = False
    data = (b"A" * 74 + b"\r\n") * 100_000

    async def send() -> tuple[dict, bool]:
        session = await open_session(host="sink", address="127.0.0.1", port=raw_sink.port,
                                     tls=TlsSettings(policy="none"), helo_name="gw.test", command_timeout=20)
        results = await session.send("a@gw.test", ["b@sink.test"], data)
        return results, session.alive

    results, alive = asyncio.run(send())
    assert [(r.code, r.status) for r in results.values()] == [(552, "5.3.4")]
    assert not alive
