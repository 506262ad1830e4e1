"""Reading the replies to a pipelined group of SMTP commands (RFC 2920) on an aiosmtplib session.

Why hand-written: aiosmtplib (the client the gateway uses for connect, EHLO, STARTTLS, RSET,
QUIT and the non-pipelined path) has no pipelining, and its protocol cannot read several
replies in a row: it parses one reply per arrival of bytes into a single waiter and **drops**
whatever arrives while that waiter holds a reply not yet picked up. Its `read_response` wakes
the caller two event-loop turns after the reply (through `wait_for`), so a server that answers
MAIL, RCPT and DATA in separate segments (aiosmtpd does) loses a reply now and then and the
session hangs until the command timeout. No maintained asyncio SMTP client library pipelines
either (smtplib is blocking and does not pipeline).

So for the length of one pipelined exchange `ReplyReader` takes the transport's protocol slot
(`transport.set_protocol`, which asyncio's, uvloop's and both SSL transports support) and gives
it back afterwards: every byte is kept, every complete reply is parsed and queued as it comes,
in order. It parses as aiosmtplib does (same `SMTPResponse`: the code, the lines' texts joined
by newlines, UTF-8 with surrogateescape; the same limits and the same error for a malformed
line). Flow control and the loss of the connection are passed on to aiosmtplib's protocol, so
its client closes exactly as it would have. Pure parsing plus an asyncio protocol: no other I/O.
"""

from __future__ import annotations

import asyncio
from collections import deque

import aiosmtplib
from aiosmtplib.protocol import MAX_LINE_LENGTH, MAX_RESPONSE_LENGTH, SMTPProtocol


class ReplyReader(asyncio.Protocol):
    """The transport's protocol while a pipelined group's replies are read (see the module
    docstring): `async with ReplyReader(protocol) as reader: ... await reader.next(timeout)`."""

    def __init__(self, inner: SMTPProtocol) -> None:
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.replies: deque[aiosmtplib.SMTPResponse] = deque()
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        #: When the reply now awaited is late (the loop's time; None: no wait or no timeout), and
        #: the one timer of this exchange, set for the first such deadline (see `next`).
        self.deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    async def __aenter__(self) -> ReplyReader:
        transport = self.inner.transport
        if transport is None or transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        self.transport = transport  # type: ignore[assignment]
        transport.set_protocol(self)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        transport, self.transport = self.transport, None
        if transport is not None and transport.get_protocol() is self:
            transport.set_protocol(self.inner)

    async def next(self, timeout: float | None) -> aiosmtplib.SMTPResponse:
        """The next reply in order; SMTPServerDisconnected when the connection ended first,
        SMTPReadTimeoutError after `timeout` seconds without it (as aiosmtplib's own read).

        Each wait has its own deadline, `timeout` after it began, as with one `asyncio.timeout`
        per reply; but they share one timer per exchange (`_late`): it is set for the first
        deadline and, when the reply it was for has come, set again for the wait then under
        way. A pipelined group's replies come within milliseconds, so an exchange costs one
        timer instead of a timeout context (a timer, a cancel) per reply."""
        while not self.replies:
            if self.error is not None:
                raise self.error
            loop = asyncio.get_running_loop()
            self.waiter = loop.create_future()
            if timeout is not None:
                self.deadline = loop.time() + timeout
                if self._timer is None or self.deadline < self._timer_at:
                    self._arm(loop, self.deadline)
            try:
                await self.waiter
            finally:
                self.waiter = self.deadline = None
        return self.replies.popleft()

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = loop.call_at(when, self._late, loop)

    def _late(self, loop: asyncio.AbstractEventLoop) -> None:
        """The exchange's timer: the reply awaited now is late (a timeout), or it is not due
        yet (the timer was set for an earlier wait): set again for its deadline."""
        self._timer = None
        waiter, deadline = self.waiter, self.deadline
        if waiter is None or waiter.done() or deadline is None:
            return  # nobody waits: the next wait sets the timer
        if loop.time() >= deadline:
            waiter.set_exception(aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response"))
        else:
            self._arm(loop, deadline)

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    # -- asyncio.Protocol --------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.error is not None:
            return
        self.buffer += data
        try:
            while (reply := _parse(self.buffer)) is not None:
                self.replies.append(reply)
        except aiosmtplib.SMTPResponseException as exc:
            self.error = exc
        if self.error is None and len(self.buffer) > MAX_RESPONSE_LENGTH:
            self.error = aiosmtplib.SMTPResponseException(aiosmtplib.SMTPStatus.invalid_response.value,
                                                          "Response too long")
        self._wake()

    def eof_received(self) -> bool:
        if self.error is None:
            self.error = aiosmtplib.SMTPServerDisconnected("Unexpected EOF received")
        self._wake()
        return False  # the transport closes; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if self.error is None:
            self.error = aiosmtplib.SMTPServerDisconnected("Connection lost")
        self._wake()
        self.inner.connection_lost(exc)  # aiosmtplib's protocol and client learn it as they would have

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


def _parse(buffer: bytearray) -> aiosmtplib.SMTPResponse | None:
    """The first complete reply in `buffer`, removed from it; None while it is incomplete. As
    aiosmtplib's `SMTPProtocol._read_response_from_buffer` (same result, same errors)."""
    offset = 0
    message = bytearray()
    while (end := buffer.find(b"\n", offset)) >= 0:
        line = bytes(buffer[offset:end + 1])
        if len(line) > MAX_LINE_LENGTH:
            raise aiosmtplib.SMTPResponseException(aiosmtplib.SMTPStatus.invalid_response.value, "Response too long")
        try:
            code = int(line[:3])
        except ValueError:
            raise aiosmtplib.SMTPResponseException(
                aiosmtplib.SMTPStatus.invalid_response.value,
                f"Malformed SMTP response line: {line.decode('utf-8', errors='ignore')}") from None
        offset = end + 1
        if message:
            message += b"\n"
        message += line[4:].strip(b" \t\r\n")
        if line[3:4] != b"-":
            del buffer[:offset]
            return aiosmtplib.SMTPResponse(code, bytes(message).decode("utf-8", "surrogateescape"))
    if offset == 0 and len(buffer) > MAX_LINE_LENGTH:
        raise aiosmtplib.SMTPResponseException(aiosmtplib.SMTPStatus.invalid_response.value, "Response too long")
    return None
