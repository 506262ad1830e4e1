"""The master listens, the workers serve: each accepted connection goes to the least busy worker.

Why: with ``SO_REUSEPORT`` each worker bound the SMTP ports and the kernel *hashed* connections over
them. A lab (or the bench) keeps its sessions open, so 10 sessions landed 5/5, 7/3 or 8/2, and at
8/2 one worker carried 80 % of the work while the other idled (598 msg/s at 7/3, 761 at 5/5, same
code). ``SO_REUSEPORT`` also let a second gateway share our ports silently. So, as Node's cluster
module and the classic pre-fork servers do, the **master** binds and listens (no ``SO_REUSEPORT``),
accepts, and passes each connected socket (``SCM_RIGHTS`` over a ``SOCK_SEQPACKET`` socketpair per
worker) to the worker with the fewest open sessions; the worker serves it with
``loop.connect_accepted_socket`` (the protocol, STARTTLS and every check are the worker's, as
before: the socket is the client's own connection, so its peer address and port are the client's).
The worker tells the master when a session ends (a 4-byte count); the master never reads a byte of
SMTP.

Two halves, no shared state but the socketpairs:

* `Dispatcher` (the master; stdlib only, no event loop, no thread: it runs in `Supervisor`'s
  ``selectors`` loop): the listening sockets, one `_Channel` per worker (open sessions, sockets
  waiting for a full channel), the choice. A worker that died loses the sockets queued to it (the
  kernel closes those in its receive queue, the master those it still held: the clients retry);
  new connections go to the live workers. Until every worker first said it is ready (or
  `STARTUP_WAIT` passed), nothing is accepted: the kernel queues the connections (backlog), so the
  first sessions of a load are spread too. With no worker ready (all restarting) the master stops
  accepting and the kernel queues: the ports never close while the master lives.
* `HandoffReceiver` (a worker, on its event loop): reads the channel, makes each socket a session
  of the listener it came from, counts the sessions that end.

Messages (one ``SOCK_SEQPACKET`` record each): master → worker ``!H`` listener index + one fd;
worker → master ``!I`` sessions ended since the last report.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
import selectors
import socket
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("gateway")

#: Environment of a worker started by a dispatching master: its channel's fd, and the listeners'
#: bound addresses as ``name=host|port`` pairs separated by spaces (for logs, status and tests).
HANDOFF_FD_ENV = "MSGW_HANDOFF_FD"
HANDOFF_LISTENERS_ENV = "MSGW_HANDOFF_LISTENERS"
#: At start, the master waits this long at most for every worker to be ready before it accepts
#: with the ready ones only (the kernel queues connections meanwhile).
STARTUP_WAIT = 30.0
#: Connections accepted per readable event of one listening socket (fairness between listeners).
ACCEPT_BATCH = 64
#: Sockets the master keeps for one worker whose channel is full; beyond, the master stops
#: accepting until it drains (the kernel's backlog holds the rest).
PENDING_LIMIT = 1024
#: An accept that failed (out of file descriptors or memory...): stop accepting this long, as
#: asyncio does, instead of spinning on a listening socket that stays readable.
ACCEPT_PAUSE = 1.0
#: Errors of one connection only (the client gave up, its network went away): the next accept.
_ONE_CONNECTION = (errno.ECONNABORTED, errno.EPROTO, errno.ENETDOWN, errno.ENETUNREACH, errno.EHOSTDOWN,
                   errno.EHOSTUNREACH, errno.ENOPROTOOPT, errno.EOPNOTSUPP)
_INDEX = struct.Struct("!H")
_ENDED = struct.Struct("!I")

Callback = Callable[[int], None]


@dataclass(frozen=True)
class Listening:
    """One listening socket of the master: which configured listener, and where it is bound."""

    index: int
    name: str
    sock: socket.socket

    @property
    def bound(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)


def bind_listeners(listeners: list[tuple[str, str, int]], backlog: int) -> list[Listening]:
    """Bind and listen on each ``(name, address, port)`` as one process's ``loop.create_server``
    does (every address the name resolves to, "" for all; SO_REUSEADDR for TIME_WAIT; IPV6_V6ONLY)
    but never SO_REUSEPORT: a second gateway gets EADDRINUSE. Raises the bind's OSError (nothing
    stays bound then)."""
    out: list[Listening] = []
    try:
        for index, (name, address, port) in enumerate(listeners):
            infos = socket.getaddrinfo(address or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0,
                                       socket.AI_PASSIVE)
            for family, kind, proto, _, where in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                out.append(Listening(index, name, sock))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(where)
                sock.listen(backlog)
                sock.setblocking(False)
    except OSError:
        for item in out:
            item.sock.close()
        raise
    return out


def listeners_env(listening: list[Listening]) -> str:
    """Each listener's first bound address (as `SmtpServer.bound` has it), for the workers."""
    first: dict[str, tuple[str, int]] = {}
    for item in listening:
        first.setdefault(item.name, item.bound)
    return " ".join(f"{name}={host}|{port}" for name, (host, port) in first.items())


def parse_listeners_env(text: str) -> dict[str, tuple[str, int]]:
    out = {}
    for pair in text.split():
        name, _, where = pair.partition("=")
        host, _, port = where.rpartition("|")
        out[name] = (host, int(port))
    return out


# -- the master ----------------------------------------------------------------------------------------

@dataclass
class _Channel:
    index: int
    sock: socket.socket
    ready: bool = False
    #: sessions handed over and not yet reported ended (pending ones included)
    open: int = 0
    pending: collections.deque[tuple[int, socket.socket]] = field(default_factory=collections.deque)
    writing: bool = False


class Dispatcher:
    """The master's half (see the module docstring). Every method runs on the master's one thread."""

    def __init__(self, listening: list[Listening], selector: selectors.BaseSelector, *,
                 startup_wait: float = STARTUP_WAIT, clock: Callable[[], float] = time.monotonic) -> None:
        self.listening = listening
        self.selector = selector
        self.channels: dict[int, _Channel] = {}
        self.clock = clock
        self._gate_deadline = clock() + startup_wait
        self._gate_open = False
        self._accepting = False
        self._paused_until = 0.0
        self._closed = False
        self._turn = 0

    # worker life
    def add_worker(self, index: int) -> int:
        """A channel for worker `index` (about to start): the fd its process gets (the caller closes
        it once the child has it)."""
        self.worker_gone(index)
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        mine.setblocking(False)
        channel = self.channels[index] = _Channel(index, mine)
        self.selector.register(mine, selectors.EVENT_READ, lambda mask: self._channel_event(channel, mask))
        return theirs.detach()

    def worker_ready(self, index: int) -> None:
        channel = self.channels.get(index)
        if channel is not None:
            channel.ready = True
        if not self._gate_open and self.channels and all(c.ready for c in self.channels.values()):
            self._gate_open = True
        self._update()

    def worker_gone(self, index: int) -> None:
        """The worker died (or is stopping): what was queued to it is closed, it gets no more."""
        channel = self.channels.pop(index, None)
        if channel is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(channel.sock)
        for _, conn in channel.pending:
            conn.close()
        channel.pending.clear()
        channel.sock.close()
        self._update()

    def tick(self) -> None:
        """Called about every 100 ms: opens the start-up gate when `startup_wait` passed, ends a
        pause after an accept ran out of resources."""
        if not self._gate_open and self.clock() >= self._gate_deadline:
            self._gate_open = True
        self._update()

    def close(self) -> None:
        """Stop: the listening sockets first (the kernel refuses from now on), then the channels."""
        self._set_accepting(False)
        self._closed = True
        for item in self.listening:
            item.sock.close()
        for index in list(self.channels):
            self.worker_gone(index)

    def sessions(self) -> dict[int, int]:
        """Open sessions per worker index, as the master counts them (tests, status)."""
        return {i: c.open for i, c in self.channels.items()}

    # accepting
    def _update(self) -> None:
        if self._closed:
            return
        live = [c for c in self.channels.values() if c.ready]
        backlog = sum(len(c.pending) for c in live)
        self._set_accepting(self._gate_open and bool(live) and backlog < PENDING_LIMIT
                            and self.clock() >= self._paused_until)

    def _set_accepting(self, on: bool) -> None:
        if on == self._accepting:
            return
        self._accepting = on
        for item in self.listening:
            if item.sock.fileno() < 0:
                continue
            if on:
                self.selector.register(item.sock, selectors.EVENT_READ,
                                       lambda _mask, item=item: self._accept(item))
            else:
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(item.sock)

    def _accept(self, item: Listening) -> None:
        for _ in range(ACCEPT_BATCH):
            if not self._accepting:
                return
            try:
                conn, _ = item.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _ONE_CONNECTION:
                    continue
                from gateway.logs import event

                event(log, "accept-failed", logging.ERROR, listener=item.name, reason=exc.strerror,
                      pause=ACCEPT_PAUSE)
                self._paused_until = self.clock() + ACCEPT_PAUSE  # a tick resumes after the pause
                self._set_accepting(False)
                return
            self.hand(item.index, conn)

    def choose(self) -> _Channel | None:
        """The ready worker with the fewest open sessions; ties go round (the one after the last
        chosen), so short sessions spread too."""
        live = sorted(c.index for c in self.channels.values() if c.ready)
        if not live:
            return None
        start = next((k for k, i in enumerate(live) if i >= self._turn), 0)
        order = live[start:] + live[:start]
        best = min(order, key=lambda i: self.channels[i].open)  # min keeps the first of equals
        self._turn = best + 1
        return self.channels[best]

    def hand(self, index: int, conn: socket.socket) -> None:
        """Give one accepted connection to the least busy worker (the master's copy is closed)."""
        while True:
            channel = self.choose()
            if channel is None:
                conn.close()  # no worker at all (they died since the accept): the client retries
                return
            channel.open += 1
            if channel.pending:
                channel.pending.append((index, conn))
                self._update()
                return
            try:
                socket.send_fds(channel.sock, [_INDEX.pack(index)], [conn.fileno()])
            except BlockingIOError:  # its channel is full: keep it in order, send when writable
                channel.pending.append((index, conn))
                self._want_write(channel, True)
                self._update()
                return
            except OSError:  # the worker is gone (EPIPE, ECONNRESET): the next one
                self.worker_gone(channel.index)
                continue
            conn.close()
            return

    def _want_write(self, channel: _Channel, on: bool) -> None:
        if channel.writing == on:
            return
        channel.writing = on
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if on else 0)
        self.selector.modify(channel.sock, events, lambda mask: self._channel_event(channel, mask))

    def _channel_event(self, channel: _Channel, mask: int) -> None:
        if self.channels.get(channel.index) is not channel:
            return  # dropped earlier in the same round of events
        if mask & selectors.EVENT_READ:
            self._reports(channel)
        if mask & selectors.EVENT_WRITE and self.channels.get(channel.index) is channel:
            self._flush(channel)

    def _flush(self, channel: _Channel) -> None:
        while channel.pending:
            index, conn = channel.pending[0]
            try:
                socket.send_fds(channel.sock, [_INDEX.pack(index)], [conn.fileno()])
            except BlockingIOError:
                return
            except OSError:
                self.worker_gone(channel.index)
                return
            channel.pending.popleft()
            conn.close()
        self._want_write(channel, False)
        self._update()

    def _reports(self, channel: _Channel) -> None:
        """Sessions a worker reports ended; EOF: the worker is gone."""
        for _ in range(64):
            try:
                data = channel.sock.recv(64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if len(data) != _ENDED.size:
                if not data:
                    self.worker_gone(channel.index)
                    return
                continue  # never sent by a worker: ignored
            channel.open = max(0, channel.open - _ENDED.unpack(data)[0])


# -- a worker ------------------------------------------------------------------------------------------

class HandedListener(asyncio.AbstractServer):
    """What a worker has for one configured listener: serving while the channel is open (for
    `/readyz` and `SmtpServer.stop`, in place of an `asyncio.Server`)."""

    def __init__(self, receiver: HandoffReceiver, name: str) -> None:
        self.receiver = receiver
        self.name = name
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    def is_serving(self) -> bool:
        return not self.closed and self.receiver.open

    async def start_serving(self) -> None:
        return None

    async def serve_forever(self) -> None:
        raise NotImplementedError("served by the master's hand-off")

    async def wait_closed(self) -> None:
        return None


class HandoffReceiver:
    """A worker's half: reads its channel on the running loop and serves each socket."""

    def __init__(self, fd: int, bound: dict[str, tuple[str, int]]) -> None:
        self.sock = socket.socket(fileno=fd)
        self.sock.setblocking(False)
        #: where the master listens, per listener name
        self.bound = bound
        self._listeners: dict[int, tuple[HandedListener, Callable[[], asyncio.Protocol], ssl.SSLContext | None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ended = 0
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.open = False

    @classmethod
    def from_env(cls) -> HandoffReceiver | None:
        """The channel a dispatching master gave this worker (None: it binds its own ports)."""
        fd = os.environ.pop(HANDOFF_FD_ENV, None)
        if fd is None:
            return None
        return cls(int(fd), parse_listeners_env(os.environ.pop(HANDOFF_LISTENERS_ENV, "")))

    def listener(self, index: int, name: str, factory: Callable[[], Any],
                 ssl_context: ssl.SSLContext | None = None) -> HandedListener:
        """Serve the sockets of configured listener `index` with `factory`'s protocols (and TLS
        from the first byte when `ssl_context` is given: an implicit-TLS listener)."""
        handed = HandedListener(self, name)
        self._listeners[index] = (handed, factory, ssl_context)
        return handed

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._readable)
        self.open = True

    def close(self) -> None:
        """Stop taking sockets (those still queued in the channel are closed with it)."""
        if self.open and self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
        self.open = False
        self._flush()
        self.sock.close()

    def _readable(self) -> None:
        for _ in range(64):
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.sock, 16, 4)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, fds = b"", []
            if not data and not fds:  # EOF: the master is gone (`watch_master` ends this process)
                assert self._loop is not None
                self._loop.remove_reader(self.sock.fileno())
                self.open = False
                return
            for fd in fds[1:]:  # one per record; anything more is not ours to serve
                os.close(fd)
            if fds:
                self.serve(_INDEX.unpack(data[:_INDEX.size])[0] if len(data) >= _INDEX.size else -1, fds[0])

    def serve(self, index: int, fd: int) -> None:
        """One handed-over socket becomes a session of listener `index` (or is closed)."""
        entry = self._listeners.get(index)
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)
            self._session_ended()
            return
        if entry is None or entry[0].closed:
            sock.close()
            self._session_ended()
            return
        _handed, factory, ssl_context = entry
        assert self._loop is not None
        task = self._loop.create_task(self._connect(sock, factory, ssl_context))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, sock: socket.socket, factory: Callable[[], Any],
                       ssl_context: ssl.SSLContext | None) -> None:
        ended = False

        def once() -> None:
            nonlocal ended
            if not ended:
                ended = True
                self._session_ended()

        def make() -> Any:
            protocol = factory()
            lost = protocol.connection_lost

            def connection_lost(exc: Exception | None) -> None:
                try:
                    lost(exc)
                finally:
                    once()
            protocol.connection_lost = connection_lost
            return protocol

        assert self._loop is not None
        try:
            await self._loop.connect_accepted_socket(make, sock, ssl=ssl_context)
        except Exception as exc:  # noqa: BLE001 - a failed handshake or a reset: this session only
            sock.close()
            once()
            log.debug("handed-over connection not served: %s", type(exc).__name__)

    def _session_ended(self) -> None:
        self._ended += 1
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Tell the master how many sessions ended (one record for all since the last one)."""
        self._flush_scheduled = False
        if not self._ended or self.sock.fileno() < 0:
            return
        try:
            self.sock.send(_ENDED.pack(self._ended))
        except BlockingIOError:  # the master is busy: try again shortly
            if self._loop is not None and not self._flush_scheduled:
                self._flush_scheduled = True
                self._loop.call_later(0.05, self._flush)
            return
        except OSError:
            return
        self._ended = 0
