"""The receiving side's per-message savings (issue 15, fourth round) keep every answer as it was:
the replies to pipelined commands are written together (RFC 2920, Postfix's rule: flush when the
input is empty) in the order and with the text of one-by-one answers, never held while the
server waits for the client; the Received field's date is `formatdate`'s; the trusted-network
answer remembered per client address stays bounded and right."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

import pytest
from aiosmtpd.smtp import Session

from gateway.config import load_config
from gateway.server import smtp as smtp_module
from gateway.server.smtp import GatewayHandler, received_date
from gateway.spool import Spool
from tests.e2e.harness import write_config
from tests.resilience.support import RawSMTP
from tests.server.test_data_read import RCPT, SENDER, gateway

#: A transaction with a refusal in the middle (a malformed recipient), a nested MAIL, an RSET.
GROUP = [f"MAIL FROM:<{SENDER}> SIZE=100".encode(), f"RCPT TO:<{RCPT}>".encode(), b"RCPT TO:<a@b..c>",
         b"MAIL FROM:<x@y.example>", b"RSET", f"MAIL FROM:<{SENDER}>".encode(),
         f"RCPT TO:<{RCPT}>".encode(), f"RCPT TO:<{RCPT.upper()}>".encode(), b"DATA"]


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """Every `StreamWriter.write` of the listener (the test's loop is asyncio's: its writer is Python)."""
    seen: list[bytes] = []
    original = asyncio.StreamWriter.write

    def write(self: asyncio.StreamWriter, data: bytes) -> None:
        seen.append(bytes(data))
        original(self, data)

    monkeypatch.setattr(asyncio.StreamWriter, "write", write)
    yield seen


def _client(port: int) -> RawSMTP:
    c = RawSMTP(port)
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    assert c.cmd(b"EHLO lis.partner.example")[0] == 250
    return c


def _one_by_one(c: RawSMTP) -> list[tuple[int, str]]:
    return [c.cmd(line) for line in GROUP]


def _pipelined(c: RawSMTP) -> list[tuple[int, str]]:
    c.send(b"".join(line + b"\r\n" for line in GROUP))  # one write: one segment on loopback
    return [c.reply() for _ in GROUP]


def _finish(c: RawSMTP) -> tuple[int, str]:
    c.send(b"Subject: t\r\n\r\nbody\r\n.\r\n")
    return c.reply()


def test_pipelined_replies_are_written_together_and_say_what_one_by_one_replies_say(
        tmp_path: Path, writes: list[bytes]) -> None:
    with gateway(tmp_path) as gw:
        with _client(gw.port) as c:
            stepwise = _one_by_one(c)
            assert _finish(c)[0] == 250
        with _client(gw.port) as c:
            del writes[:]
            grouped = _pipelined(c)
            replies_written = list(writes)
            assert _finish(c)[0] == 250
    assert [code for code, _ in stepwise] == [250, 250, 553, 503, 250, 250, 250, 250, 354]
    assert grouped == stepwise
    # nine replies, one write (the 354 took the eight before it along)
    assert len(replies_written) == 1, replies_written
    assert replies_written[0].count(b"\r\n") == len(GROUP) and replies_written[0].startswith(b"250 ")


def test_a_reply_is_never_held_while_the_server_waits_for_the_client(tmp_path: Path) -> None:
    """MAIL with the next command only begun (no line end yet) is answered at once; so is each
    command of a client that waits for every reply."""
    with gateway(tmp_path) as gw, _client(gw.port) as c:
        c.sock.settimeout(5)
        c.send(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<".encode())
        assert c.reply()[0] == 250                      # not held behind the half-sent RCPT
        c.send(f"{RCPT}>\r\n".encode())
        assert c.reply()[0] == 250
        c.send(b"RSET\r\n")
        assert c.reply()[0] == 250
        c.send(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RCPT}>\r\n".encode())  # the group's last waits for nothing
        assert c.reply()[0] == 250 and c.reply()[0] == 250
        assert c.cmd(b"NOOP")[0] == 250


def test_the_received_date_is_formatdates_for_every_second() -> None:
    start = int(time.time())
    for offset in (0.0, 0.2, 0.999999, 1.0, 1.5, 59.99, 60.0, 3600.0, -1.0, -0.5, 86400.0 * 400, 0.0):
        now = start + offset
        assert received_date(now) == formatdate(now, localtime=False), offset
    assert received_date() in (formatdate(localtime=False), formatdate(time.time() - 1, localtime=False))


def test_the_received_field_is_written_as_before(tmp_path: Path) -> None:
    with gateway(tmp_path) as gw, _client(gw.port) as c:
        assert c.cmd(f"MAIL FROM:<{SENDER}>".encode())[0] == 250
        assert c.cmd(f"RCPT TO:<{RCPT}>".encode())[0] == 250
        assert c.cmd(b"DATA")[0] == 354
        code, text = _finish(c)
        stored = gw.spool.message_bytes(text.rsplit(" ", 1)[1])
    assert re.match(rb"Received: from lis\.partner\.example \(\[127\.0\.0\.1\]\)\r\n\tby msgw\.test \(msgw\) with "
                    rb"ESMTP\r\n\tfor <" + RCPT.encode() + rb">; [A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} "
                    rb"\d\d:\d\d:\d\d -0000\r\nSubject: t\r\n", stored), stored[:200]


def test_the_trusted_network_answer_is_remembered_per_address_and_bounded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smtp_module, "NETWORK_MEMO_SIZE", 8)
    setup = write_config(tmp_path, sink_port=9, relay_networks='["192.0.2.0/28"]')
    config = load_config(setup.config)
    relay = next(li for li in config.listeners if li.name == "relay")
    handler = GatewayHandler(config, relay, Spool(setup.spool))

    async def answers() -> list[tuple[bool, bool]]:
        out = []
        for round_ in range(3):
            for host in range(1, 40):
                session = Session(asyncio.get_running_loop())
                session.peer = (f"192.0.2.{host}", 1000 + round_)
                out.append((handler.in_allowed_network(session), handler.relay_allowed(session)))
                assert len(handler._in_network) <= 8
        for peer in ("not an address", "2001:db8::1", "::ffff:192.0.2.1"):
            session = Session(asyncio.get_running_loop())
            session.peer = (peer, 1)
            out.append((handler.in_allowed_network(session), handler.relay_allowed(session)))
        return out

    got = asyncio.run(answers())
    expected = [(h < 16, h < 16) for _ in range(3) for h in range(1, 40)] + [(False, False)] * 3
    assert got == expected


def test_a_client_that_sends_its_message_without_waiting_for_the_354_gets_every_reply(tmp_path: Path) -> None:
    """A client pipelining past DATA (RFC 2920 forbids it; some do it) is answered as before:
    the 354 writes what was held, the message is read from the buffer, then its 250."""
    with gateway(tmp_path) as gw, _client(gw.port) as c:
        c.sock.settimeout(5)
        c.send(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RCPT}>\r\nDATA\r\nSubject: t\r\n\r\nbody\r\n.\r\nNOOP\r\n".encode())
        replies = [c.reply() for _ in range(5)]
        assert [code for code, _ in replies] == [250, 250, 354, 250, 250]
        assert gw.body(replies[3][1]) == b"Subject: t\r\n\r\nbody\r\n"
