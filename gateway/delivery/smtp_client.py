"""Outbound SMTP for one hop: connect, STARTTLS per policy, MAIL, RCPT each, DATA.

`open_session` does the first part (up to and including the TLS checks) and returns an
`SmtpSession`, which `send`s one transaction at a time; the connection cache
(`gateway.delivery.sessions`) keeps a session for the next message to the same destination, with
an RSET (`SmtpSession.reset`) before it. `send_via_smtp` is the one-shot form.

aiosmtplib does the connection, EHLO, STARTTLS and RSET/QUIT; a transaction gets one reply
per recipient (rather than `sendmail`'s all-or-nothing), which is what per-recipient queue state
needs. When the server offers PIPELINING (RFC 2920) MAIL, every RCPT and DATA go in one write
and their replies are read in order (`_send_pipelined`: one round trip before the payload
instead of 2 + recipients); otherwise aiosmtplib's `mail`/`rcpt` one by one (`_send_stepwise`).
The outcomes are the same either way: a refused RCPT is that recipient's result and the others
still go; none accepted, no payload (a 354 the server gives anyway is ended with a lone dot);
a refused MAIL raises; a 421 at MAIL or a RCPT fails the session (temporary, closed), at DATA
it is the accepted recipients' result. aiosmtplib has no pipelining call, so the pipelined
commands are written here, built as its `execute_command` builds them (same address quoting,
same refusal of control characters), and their replies are read by `pipelining.ReplyReader`,
which holds the transport for that exchange only (aiosmtplib's protocol drops replies that come
in a row: see that module). The payload and its final reply go through aiosmtplib's protocol as
in `send_data`. Going below aiosmtplib for the whole cached session was measured and not done:
the pipelined path costs 0.06-0.13 ms of loop CPU per 1 KB message (`bench/delivery_client.py`,
half the stepwise path's), under 3 % of a message's CPU, most of it two socket writes. TLS policies:

* `required`: STARTTLS must be offered and the server certificate must verify against the
  route's CA file (or the system store) for the hop's host name; otherwise the hop fails
  temporarily and nothing is sent in clear.
* `opportunistic`: STARTTLS when offered, without authentication (RFC 7435); used only where
  the config allows it.
* `none`: plain SMTP (loopback test sinks only).

TLS 1.2 is the minimum in both directions; `required` offers the route's `tls_policy` preset
(Référentiel #2 by default), `opportunistic` the broad "compatible" one. A client certificate
is presented when the route configures one (mutual TLS between MSSanté operators).

A copy protected by trust-space TLS only (`require_client_cert`) travels only over mutual
TLS: required, verified, *and* our certificate sent in the handshake. OpenSSL sends it only
when the server asks for it, so the handshake is watched; a server that did not ask gets no
MAIL FROM: the hop fails temporarily (4.7.5, like a server without STARTTLS), because it is
the server's present configuration, not the message, that is wrong, and nothing is sent
meanwhile; the retry period ends it with a bounce if the server never asks.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from dataclasses import dataclass
from typing import Any

import aiosmtplib
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import COMMAND_INJECTION_REGEX, SMTPProtocol, normalize_message_line_endings

from gateway import tlspolicy
from gateway.config import TlsSettings
from gateway.delivery.pipelining import ReplyReader
from gateway.errors import DeliveryError


@dataclass(frozen=True)
class RecipientResult:
    code: int
    message: str

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def status(self) -> str:
        """The enhanced status from the reply text, or one derived from the code."""
        first = self.message.split(" ", 1)[0]
        parts = first.split(".")
        if len(parts) == 3 and all(p.isdigit() for p in parts) and first[0] in "245":
            return first
        return {2: "2.0.0", 4: "4.0.0", 5: "5.0.0"}.get(self.code // 100, "4.0.0")


def client_tls_context(settings: TlsSettings, *, verify: bool) -> ssl.SSLContext:
    """Verified TLS offers the route's preset (`tls_policy`, Référentiel #2 by default): a hop
    that has none of its suites fails the handshake, a temporary failure. Opportunistic TLS
    offers the broad "compatible" preset: better some strong suite than clear text."""
    if verify:
        ctx = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
        tlspolicy.apply(ctx, settings.preset)
    else:
        # Opportunistic TLS (RFC 7435): encrypt when offered, without authenticating the peer.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False  # noqa: S501 - opportunistic policy only, see module docstring
        ctx.verify_mode = ssl.CERT_NONE  # opportunistic only: "required" routes always verify (see above)
        tlspolicy.apply(ctx, tlspolicy.OPPORTUNISTIC)
    if settings.client_cert and settings.client_key:
        ctx.load_cert_chain(str(settings.client_cert), str(settings.client_key))
    return ctx


class CertificateWatch:
    """Whether this end sent a certificate in a TLS handshake made with `ctx`.

    Python's ssl module has no call for "did I authenticate?"; its handshake message callback
    (`SSLContext._msg_callback`, CPython 3.8+) sees our Certificate message go out. Where the
    callback does not exist, `sent` stays False: fail closed."""

    #: A Certificate message with an empty list is 7 (TLS 1.2) or 8 (TLS 1.3) bytes long.
    _EMPTY = 16

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.sent = False
        kind = getattr(ssl, "_TLSMessageType", None)
        self._certificate = getattr(kind, "CERTIFICATE", None)
        if self._certificate is not None and hasattr(ctx, "_msg_callback"):
            ctx._msg_callback = self._seen

    def _seen(self, _conn: object, direction: str, _version: object, _content_type: object, msg_type: object,
              data: bytes) -> None:
        if direction == "write" and msg_type == self._certificate and len(data) > self._EMPTY:
            self.sent = True


class SmtpSession:
    """One open SMTP session to one hop, past EHLO and whatever TLS its policy demanded (the
    certificate checked, ours seen going out when the copy needs mutual TLS): what
    `open_session` returns and the connection cache (`gateway.delivery.sessions`) keeps.

    It is only ever built by `open_session` after every check passed, so a session that failed
    verification or mutual TLS never exists to be cached."""

    def __init__(self, client: aiosmtplib.SMTP, host: str, remote: str, opened: float) -> None:
        self.client = client
        self.host = host
        self.remote = remote
        #: `time.monotonic()` when it was opened: the cache ends a session's reuse after a while.
        self.opened = opened
        #: Messages sent over it (MAIL transactions begun).
        self.uses = 0
        #: When it was last given back to the cache clean (every recipient of its last
        #: transaction accepted at DATA), by the cache's clock; None otherwise, and once taken
        #: again (`transports.FRESH_TIME`). An attribute, not a weak dictionary beside the
        #: session: a pop and a store per message there cost two weak references.
        self.clean_since: float | None = None

    @property
    def alive(self) -> bool:
        """Still connected as far as we know (a server's EOF closes the transport at once)."""
        return self.client.is_connected

    async def reset(self, timeout: float) -> bool:
        """RSET before a reused session's next message. False (and the session closed) when the
        server does not answer 250: it closed the idle session (421, EOF) or is in a bad state."""
        try:
            await self.client.rset(timeout=timeout)
            return True
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            self.client.close()
            return False
        except BaseException:  # cancelled: no half-used socket left behind
            self.client.close()
            raise

    async def send(self, sender: str, recipients: list[str], data: bytes) -> dict[str, RecipientResult]:
        """One transaction: MAIL, RCPT each, DATA (pipelined when the server offers PIPELINING).
        Returns a result per recipient; raises DeliveryError when MAIL is refused (the session is
        left open: the caller QUITs) or the session failed (then it is closed)."""
        client, remote, host = self.client, self.remote, self.host
        self.uses += 1
        try:
            if client.supports_extension("pipelining"):
                return await self._send_pipelined(sender, recipients, data)
            return await self._send_stepwise(sender, recipients, data)
        except DeliveryError:
            raise
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            client.close()
            raise DeliveryError(f"session with {remote} failed: {_short(exc)}", temporary=True, status="4.4.2",
                                remote=host) from None

    def _sender_refused(self, code: int, message: str) -> DeliveryError:
        return DeliveryError(f"{self.remote} refused the sender: {code} {message}", temporary=400 <= code < 500,
                             smtp_code=code, status=RecipientResult(code, message).status, remote=self.host)

    def _sender_unsendable(self, exc: ValueError) -> DeliveryError:
        return DeliveryError(f"the sender address cannot be sent to {self.remote}: {_short(exc)}",
                             temporary=False, status="5.1.7", remote=self.host)

    async def _send_pipelined(self, sender: str, recipients: list[str], data: bytes) -> dict[str, RecipientResult]:
        """With PIPELINING (RFC 2920): MAIL, every RCPT and DATA in one write, their replies read
        in order, then the payload: one round trip before the payload instead of 2 + recipients.
        The outcomes are `_send_stepwise`'s, reply for reply (see the module docstring)."""
        client = self.client
        mail, sendable, results = self._commands(sender, recipients, len(data))
        pieces: list[Piece] = []
        tail = b""
        if sendable:
            if len(data) > OFF_LOOP_BYTES:
                pieces, tail = await asyncio.to_thread(stuff_for_data, data)
            else:
                pieces, tail = stuff_for_data(data)
        protocol = client.protocol
        if protocol is None or protocol._command_lock is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        commands = [mail, *(line for _, line in sendable)] + ([b"DATA\r\n"] if sendable else [])
        async with protocol._command_lock:
            try:
                return await self._transaction(protocol, commands, sendable, results, pieces, tail)
            finally:
                protocol._response_pending = False  # as aiosmtplib leaves it between commands

    async def _transaction(self, protocol: SMTPProtocol, commands: list[bytes], sendable: list[tuple[str, bytes]],
                           results: dict[str, RecipientResult], pieces: list[Piece], tail: bytes
                           ) -> dict[str, RecipientResult]:
        """The pipelined exchange and what the replies mean, under aiosmtplib's command lock."""
        client, timeout = self.client, self.client.timeout
        async with ReplyReader(protocol) as reader:
            replies = await self._exchange(protocol, reader, commands, timeout)
        first = replies[0]
        if first.code == _CLOSING:
            client.close()
            raise self._sender_refused(first.code, first.message)
        rcpt_replies = replies[1:1 + len(sendable)]
        closing = next((reply for reply in rcpt_replies if reply.code == _CLOSING), None)
        if closing is not None:
            client.close()
            raise DeliveryError(f"session with {self.remote} failed: {closing.code} {closing.message}",
                                temporary=True, status="4.4.2", remote=self.host)
        start = replies[1 + len(sendable)] if len(replies) > 1 + len(sendable) else None
        if first.code != aiosmtplib.SMTPStatus.completed:
            await self._end_unwanted_data(protocol, start, timeout)
            raise self._sender_refused(first.code, first.message)
        accepted: list[str] = []
        for (rcpt, _), reply in zip(sendable, rcpt_replies, strict=True):
            results[rcpt] = RecipientResult(reply.code, reply.message)
            if reply.code in _RCPT_OK:
                accepted.append(rcpt)
        if not accepted:
            await self._end_unwanted_data(protocol, start, timeout)
            return results
        final = await self._data_phase(protocol, start, pieces, tail, timeout)
        for rcpt in accepted:
            results[rcpt] = RecipientResult(final.code, final.message)
        return results

    def _commands(self, sender: str, recipients: list[str], size: int
                  ) -> tuple[bytes, list[tuple[str, bytes]], dict[str, RecipientResult]]:
        """MAIL's line, (recipient, RCPT line) for each address that can be sent, and the results
        with a place for each recipient in order (553 already for one that cannot be sent)."""
        try:
            mail = _mail_head(sender)
        except ValueError as exc:  # a control character or non-ASCII: what aiosmtplib refuses to send
            raise self._sender_unsendable(exc) from None
        mail = mail + b" SIZE=%d\r\n" % size if self.client.supports_extension("size") else mail + b"\r\n"
        results: dict[str, RecipientResult] = {}
        sendable: list[tuple[str, bytes]] = []
        for rcpt in recipients:
            try:
                sendable.append((rcpt, _rcpt_line(rcpt)))
                results[rcpt] = _UNANSWERED  # a place in the recipients' order; the reply replaces it
            except ValueError as exc:  # as above: refused here, never a crash of the whole message
                results[rcpt] = RecipientResult(553, f"5.1.3 recipient address cannot be sent: {_short(exc)}")
        return mail, sendable, results

    async def _data_phase(self, protocol: SMTPProtocol, start: aiosmtplib.SMTPResponse | None,
                          pieces: list[Piece], tail: bytes, timeout: float | None) -> aiosmtplib.SMTPResponse:
        """After DATA's reply: the payload and the final reply on a 354, else that reply (the
        accepted recipients' result). A server answering before the end (552) closes the session,
        as in `send_data`; so does a 421."""
        if start is None:  # cannot be: MAIL and a RCPT accepted, so every group went and was answered
            raise aiosmtplib.SMTPServerDisconnected("no reply to DATA")
        final = start
        if start.code == aiosmtplib.SMTPStatus.start_input:
            protocol._response_pending = True
            whole = await _write_payload(protocol, pieces, tail, timeout)
            pieces.clear()
            final = await protocol.read_response(timeout=timeout)
            if not whole:
                self.client.close()
        if final.code == _CLOSING:
            self.client.close()
        return final

    async def _exchange(self, protocol: SMTPProtocol, reader: ReplyReader, commands: list[bytes],
                        timeout: float | None) -> list[aiosmtplib.SMTPResponse]:
        """Write the commands, `PIPELINE_GROUP` to a write (the whole transaction in one unless it
        has more recipients), and read their replies in order. Stops early after a 421 (the
        server is closing) and after a refused MAIL (no further group is sent; the rest of the
        written group is read, and a server that then closes or goes silent only closes the
        session: the refusal is the answer)."""
        replies: list[aiosmtplib.SMTPResponse] = []
        for begin in range(0, len(commands), PIPELINE_GROUP):
            group = commands[begin:begin + PIPELINE_GROUP]
            protocol.write(b"".join(group))
            for _ in group:
                try:
                    reply = await reader.next(timeout)
                except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
                    if replies and replies[0].code != aiosmtplib.SMTPStatus.completed:
                        self.client.close()
                        return replies
                    raise
                replies.append(reply)
                if reply.code == _CLOSING:
                    return replies
            if replies[0].code != aiosmtplib.SMTPStatus.completed:
                return replies
        return replies

    async def _end_unwanted_data(self, protocol: SMTPProtocol, start: aiosmtplib.SMTPResponse | None,
                                 timeout: float | None) -> None:
        """A 354 to a pipelined DATA after no recipient (or no sender) was accepted: RFC 2920
        has the client end it with an empty message (a lone dot), whose reply is discarded."""
        if start is None or start.code != aiosmtplib.SMTPStatus.start_input or not self.client.is_connected:
            return
        try:
            protocol._response_pending = True
            protocol.write(b".\r\n")
            await protocol.read_response(timeout=timeout)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
            self.client.close()  # the refusals already read are the answer; the session is done

    async def _send_stepwise(self, sender: str, recipients: list[str], data: bytes) -> dict[str, RecipientResult]:
        """Without PIPELINING: one command, one reply, through aiosmtplib's own calls."""
        client = self.client
        options = [f"SIZE={len(data)}"] if client.supports_extension("size") else []
        try:
            await client.mail(sender, options=options)
        except aiosmtplib.SMTPResponseException as exc:
            raise self._sender_refused(exc.code, exc.message) from None
        except ValueError as exc:  # a control character in the address: aiosmtplib will not send it
            raise self._sender_unsendable(exc) from None
        results: dict[str, RecipientResult] = {}
        accepted: list[str] = []
        for rcpt in recipients:
            try:
                resp = await client.rcpt(rcpt)
                results[rcpt] = RecipientResult(resp.code, resp.message)
                accepted.append(rcpt)
            except aiosmtplib.SMTPResponseException as exc:
                results[rcpt] = RecipientResult(exc.code, exc.message)
            except ValueError as exc:  # as above: refused here, never a crash of the whole message
                results[rcpt] = RecipientResult(553, f"5.1.3 recipient address cannot be sent: {_short(exc)}")
        if not accepted:
            return results
        try:
            resp = await send_data(client, data)
        except aiosmtplib.SMTPResponseException as exc:
            for rcpt in accepted:
                results[rcpt] = RecipientResult(exc.code, exc.message)
            return results
        for rcpt in accepted:
            results[rcpt] = RecipientResult(resp.code, resp.message)
        return results

    async def quit(self, timeout: float | None = None) -> None:
        """QUIT (closing the socket whatever the server does)."""
        await _quit(self.client, timeout)

    def close(self) -> None:
        self.client.close()


#: Commands per pipelined write: MAIL, up to 98 RCPTs and DATA go in one; a longer transaction
#: writes the next group once the previous one is answered, so what we send unread stays a few
#: kilobytes (RFC 2920 5: a client must not fill the server's window while it does not read).
PIPELINE_GROUP = 100
#: The reply of a server that is closing the session (RFC 5321 3.8).
_CLOSING = 421
#: RCPT accepted (aiosmtplib's `rcpt` accepts exactly these two).
_RCPT_OK = (aiosmtplib.SMTPStatus.completed, aiosmtplib.SMTPStatus.will_forward)
#: A recipient's place in the results until its RCPT is answered.
_UNANSWERED = RecipientResult(0, "")


@functools.lru_cache(maxsize=4096)
def _quoted(address: str) -> bytes:
    """`<address>` as aiosmtplib's `mail`/`rcpt` put it on the wire (its `quote_address`, then
    ASCII; a ValueError for what it refuses, which is not cached). Cached: `email.utils.parseaddr`
    under it costs ~18 us an address, a quarter of a pipelined transaction's CPU, and a gateway
    sends to the same few senders and recipients over and over."""
    return quote_address(address).encode("ascii")


@functools.lru_cache(maxsize=4096)
def _mail_head(sender: str) -> bytes:
    """`MAIL FROM:<sender>` without its parameters and CRLF, as `_command_line` checks it (a
    ValueError, not cached, for what aiosmtplib refuses). Cached with `_rcpt_line`: the same few
    senders and recipients come back, and the quoting, the per-argument control-character
    search and the join were rebuilt for every message (SIZE, an integer, never has one)."""
    return _command_line(b"MAIL", b"FROM:" + _quoted(sender))[:-2]


@functools.lru_cache(maxsize=4096)
def _rcpt_line(rcpt: str) -> bytes:
    """`RCPT TO:<rcpt>` and its CRLF, as `_command_line` builds it (see `_mail_head`)."""
    return _command_line(b"RCPT", b"TO:" + _quoted(rcpt))


def _command_line(*args: bytes) -> bytes:
    """One command as aiosmtplib's `execute_command` writes it, with the same refusal of control
    characters (a ValueError, as there)."""
    for arg in args:
        if COMMAND_INJECTION_REGEX.search(arg):
            raise ValueError("Command arg contains a prohibited control character")
    return b" ".join(args) + b"\r\n"


#: Above this size the stuffing (a scan of the whole message) is done in a worker thread, so that
#: the event loop never spends more than a few milliseconds on one message's bytes.
OFF_LOOP_BYTES = 64 * 1024
#: The DATA payload goes to the transport in slices of this size, each after the transport's
#: buffer drained below its high-water mark: the socket buffer never holds a second copy of a
#: large message.
WRITE_CHUNK = 256 * 1024


#: A payload up to this size is joined with its final dot and written at once (see `_write_payload`).
ONE_WRITE_BYTES = 64 * 1024

#: `stuff_for_data` reads the message in windows of about this size: no single C call over the
#: whole of a large message, which would hold the GIL (and so the event loop) for ~60 ms a scan.
STUFF_WINDOW = 1 << 20

Piece = bytes | memoryview


def stuff_for_data(data: bytes) -> tuple[list[Piece], bytes]:
    """The DATA payload as (pieces, tail): written in that order they are exactly what
    aiosmtplib's `execute_data_command` would send after `DATA` (line endings made CRLF, a dot
    doubled at the start of every line, `.\r\n` after), without its three whole-message copies.

    Our prepared copies are CRLF-canonical: the message is cut into windows that each end just
    after a LF, so each starts a line; a window is stuffed like a message (a dot first doubled,
    `\r\n.` replaced) and copied only when it has a line starting with a dot, else it goes out
    as a view of `data` (the usual case: base64 S/MIME has no dot). Anything not canonical
    takes aiosmtplib's own normalisation first, so the bytes on the wire never change. Pure."""
    if not _canonical(data):
        data = normalize_message_line_endings(data)
    pieces: list[Piece] = []
    view = memoryview(data)
    start, size = 0, len(data)
    while start < size:
        cut = data.find(b"\n", min(start + STUFF_WINDOW, size) - 1)
        end = size if cut < 0 else cut + 1
        if data.startswith(b".", start):
            pieces.append(b".")
        if data.find(b"\r\n.", start, end) >= 0:
            pieces.append(data[start:end].replace(b"\r\n.", b"\r\n.."))
        else:
            pieces.append(view[start:end])
        start = end
    tail = b".\r\n" if data.endswith(b"\r\n") else b"\r\n.\r\n"
    return pieces, tail


def _canonical(data: bytes) -> bool:
    """Every CR before a LF and every LF after a CR, counted window by window (a CRLF across two
    windows is counted in the first: its range reaches one byte further)."""
    cr = lf = crlf = 0
    for start in range(0, len(data), STUFF_WINDOW):
        end = start + STUFF_WINDOW
        cr += data.count(b"\r", start, end)
        lf += data.count(b"\n", start, end)
        crlf += data.count(b"\r\n", start, end + 1)
    return cr == lf == crlf


async def send_data(client: aiosmtplib.SMTP, data: bytes) -> aiosmtplib.SMTPResponse:
    """DATA with `data`, dot-stuffed by us and written in slices with flow control.

    aiosmtplib's `SMTP.data` runs two regex substitutions over the whole message on the event
    loop and hands the transport one buffer of it (four copies of a 50 MB message, seconds of
    stall); this sends the same bytes (`stuff_for_data`) through its protocol, under its
    command lock, with the same replies and errors (SMTPDataError for a refused DATA or
    message, SMTPServerDisconnected / SMTPTimeoutError closing the client).

    A server may answer before the end of the data (a 552 when the size passes its limit) and
    stop reading or close: that reply is the message's, as it was with aiosmtplib (which had
    handed the whole message to the transport before reading); the rest is not sent and the
    session, left mid-DATA, is closed (never reused by the cache)."""
    protocol = client.protocol
    if protocol is None or protocol._command_lock is None:
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    timeout = client.timeout
    if len(data) > OFF_LOOP_BYTES:
        pieces, tail = await asyncio.to_thread(stuff_for_data, data)
    else:
        pieces, tail = stuff_for_data(data)
    try:
        async with protocol._command_lock:
            protocol._response_pending = True
            protocol.write(b"DATA\r\n")
            start = await protocol.read_response(timeout=timeout)
            if start.code != aiosmtplib.SMTPStatus.start_input:
                raise aiosmtplib.SMTPDataError(start.code, start.message)
            protocol._response_pending = True
            whole = await _write_payload(protocol, pieces, tail, timeout)
            del pieces
            response = await protocol.read_response(timeout=timeout)
        if not whole:
            client.close()
        if response.code != aiosmtplib.SMTPStatus.completed:
            raise aiosmtplib.SMTPDataError(response.code, response.message)
        return response
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
        client.close()
        raise


async def _write_payload(protocol: SMTPProtocol, pieces: list[Piece], tail: bytes, timeout: float | None) -> bool:
    """Write the payload slice by slice; False when the server answered (or closed) before its
    end: then its reply is what `read_response` gives next. A payload of at most
    `ONE_WRITE_BYTES` goes in one write with its final dot (one small copy instead of a second
    send and TCP segment per message)."""
    try:
        if sum(map(len, pieces)) + len(tail) <= ONE_WRITE_BYTES:
            protocol.write(b"".join([*pieces, tail]))
            return True
        for piece in pieces:
            for offset in range(0, len(piece), WRITE_CHUNK):
                protocol.write(piece[offset:offset + WRITE_CHUNK])  # type: ignore[arg-type]
                if not await _drained(protocol, timeout):
                    return False
        protocol.write(tail)
        return True
    except aiosmtplib.SMTPServerDisconnected:
        if _replied(protocol):
            return False
        raise


def _replied(protocol: SMTPProtocol) -> bool:
    waiter = protocol._response_waiter
    return waiter is not None and waiter.done()


async def _drained(protocol: SMTPProtocol, timeout: float | None) -> bool:
    """Wait until the transport's buffer is below its high-water mark: True; False when a
    reply (or the connection's loss) came first. A server that neither reads nor answers for
    `timeout` seconds is a timeout, as a reply that does not come is."""
    if _replied(protocol):
        return False
    if not protocol._paused and not protocol._connection_lost:
        return True
    drain: asyncio.Future[Any] = asyncio.ensure_future(protocol._drain_helper())
    waiting: set[asyncio.Future[Any]] = {drain}
    if protocol._response_waiter is not None:
        waiting.add(protocol._response_waiter)
    try:
        done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not drain.done():
            drain.cancel()
    if drain in done and drain.exception() is None:
        return True
    if _replied(protocol):
        return False
    if drain in done:
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    raise aiosmtplib.SMTPTimeoutError("Timed out sending the message to the server")


async def open_session(*, host: str, address: str, port: int, tls: TlsSettings, helo_name: str,
                       connect_timeout: float = 30.0, command_timeout: float = 300.0,
                       require_client_cert: bool = False) -> SmtpSession:
    """Connect to one hop, EHLO, and STARTTLS as its policy demands. Raises DeliveryError when the
    hop cannot be used at all (connection, TLS, mutual TLS not given); nothing is sent then.

    `require_client_cert`: only a verified TLS session in which we presented our certificate."""
    remote = f"{host}[{address}]:{port}"
    problem = tls.mutual_tls_problem(remote) if require_client_cert else None
    if problem is not None:
        raise DeliveryError(problem, temporary=False, status="5.7.10", remote=host)
    client = aiosmtplib.SMTP(hostname=address, port=port, timeout=connect_timeout, start_tls=False,
                             local_hostname=helo_name)
    try:
        await client.connect()
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise DeliveryError(f"cannot connect to {remote}: {_short(exc)}", temporary=True, status="4.4.1",
                            remote=host) from None
    opened = time.monotonic()
    try:
        client.timeout = command_timeout
        await client.ehlo()
        if tls.policy != "none":
            await _starttls(client, host, remote, tls, require_client_cert)
            if client.is_ehlo_or_helo_needed:
                # RFC 3207 4.2: the extensions are learnt again over TLS. aiosmtplib would send
                # this EHLO before the first MAIL anyway; sent now, the first message already
                # knows SIZE and PIPELINING.
                await client.ehlo()
        return SmtpSession(client, host, remote, opened)
    except DeliveryError:
        await _quit(client)
        raise
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        client.close()
        raise DeliveryError(f"session with {remote} failed: {_short(exc)}", temporary=True, status="4.4.2",
                            remote=host) from None
    except BaseException:  # cancelled: no half-open socket left behind
        client.close()
        raise


async def _starttls(client: aiosmtplib.SMTP, host: str, remote: str, tls: TlsSettings,
                    require_client_cert: bool) -> None:
    offered = client.supports_extension("starttls")
    if not offered and tls.policy == "required":
        raise DeliveryError(f"{remote} does not offer STARTTLS and TLS is required", temporary=True,
                            status="4.7.5", remote=host)
    if not offered:
        return
    verify = tls.policy == "required"
    ctx = client_tls_context(tls, verify=verify)
    watch = CertificateWatch(ctx)
    try:
        await client.starttls(tls_context=ctx, server_hostname=host if verify else None, validate_certs=verify)
    except (aiosmtplib.SMTPException, ssl.SSLError, OSError) as exc:
        raise DeliveryError(f"TLS with {remote} failed: {_short(exc)}", temporary=True,
                            status="4.7.5", remote=host) from None
    if require_client_cert and not watch.sent:
        raise DeliveryError(f"{remote} did not ask for our client certificate: no mutual TLS for a copy "
                            "protected by transport security only", temporary=True, status="4.7.5",
                            remote=host)


async def send_via_smtp(*, host: str, address: str, port: int, sender: str, recipients: list[str], data: bytes,
                        tls: TlsSettings, helo_name: str, connect_timeout: float = 30.0,
                        command_timeout: float = 300.0, require_client_cert: bool = False
                        ) -> dict[str, RecipientResult]:
    """Send one copy to one hop over a session of its own (opened, used once, QUIT). Returns a
    result per recipient; raises DeliveryError when the hop could not be used at all
    (connection, TLS, or a MAIL/DATA refusal that covers all).

    `require_client_cert`: send only over verified TLS in which we presented our certificate."""
    session = await open_session(host=host, address=address, port=port, tls=tls, helo_name=helo_name,
                                 connect_timeout=connect_timeout, command_timeout=command_timeout,
                                 require_client_cert=require_client_cert)
    try:
        results = await session.send(sender, recipients, data)
    except DeliveryError:
        await session.quit()
        raise
    await session.quit()
    return results


async def _quit(client: aiosmtplib.SMTP, timeout: float | None = None) -> None:
    if not client.is_connected:
        client.close()
        return
    try:
        if timeout is None:
            await client.quit()
        else:
            await client.quit(timeout=timeout)
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        client.close()


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]
