"""The two halves of the connection hand-off (`gateway.server.handoff`) in one process, with real
sockets, real SCM_RIGHTS and real TLS: the master's choice (fewest open sessions among the ready
workers, ties in turn), its start-up gate, a dead worker's channel, the worker's reports of ended
sessions, and an implicit-TLS listener served from the first byte (STARTTLS stays in the SMTP
protocol). The end-to-end tests with `msgw serve` are `tests/e2e/test_workers_balance.py`."""

from __future__ import annotations

import asyncio
import selectors
import socket
import ssl
import struct
from pathlib import Path

import pytest

from gateway.default_setup import make_self_signed
from gateway.server.handoff import Dispatcher, HandoffReceiver, bind_listeners, parse_listeners_env

ENDED = struct.Struct("!I")


class _FakeWorker:
    """A worker's end of its channel, read by hand: the sockets it was given."""

    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)
        self.sock.setblocking(False)
        self.got: list[tuple[int, socket.socket]] = []

    def take(self) -> None:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.sock, 16, 4)
            except BlockingIOError:
                return
            for fd in fds:
                self.got.append((struct.unpack("!H", data)[0], socket.socket(fileno=fd)))

    def ended(self, n: int) -> None:
        self.sock.send(ENDED.pack(n))


def _pump(selector: selectors.BaseSelector, rounds: int = 5) -> None:
    for _ in range(rounds):
        for key, mask in selector.select(0.05):
            key.data(mask)


@pytest.fixture
def master():
    selector = selectors.DefaultSelector()
    listening = bind_listeners([("relay", "127.0.0.1", 0), ("submission", "127.0.0.1", 0)], 64)
    dispatcher = Dispatcher(listening, selector)
    clients: list[socket.socket] = []

    def connect(which: int = 0) -> socket.socket:
        client = socket.create_connection(listening[which].bound)
        clients.append(client)
        return client
    yield dispatcher, selector, connect
    dispatcher.close()
    selector.close()
    for client in clients:
        client.close()


def test_the_least_loaded_ready_worker_gets_each_connection_and_the_real_peer(master) -> None:
    dispatcher, selector, connect = master
    workers = [_FakeWorker(dispatcher.add_worker(i)) for i in range(2)]
    first = connect()
    dispatcher.worker_ready(0)
    _pump(selector)
    for w in workers:
        w.take()
    assert [len(w.got) for w in workers] == [0, 0], "accepted before every worker was ready"
    dispatcher.worker_ready(1)
    more = [connect() for _ in range(4)] + [connect(1)]
    _pump(selector)
    for w in workers:
        w.take()
    assert [len(w.got) for w in workers] == [3, 3]
    assert dispatcher.sessions() == {0: 3, 1: 3}
    # each worker holds the client's own connection: its peer is the client's address and port
    peers = {s.getpeername() for w in workers for _, s in w.got}
    assert peers == {c.getsockname() for c in [first, *more]}
    assert sorted(i for w in workers for i, _ in w.got) == [0, 0, 0, 0, 0, 1]  # listener index
    # worker 0's sessions end: the next two go to it
    workers[0].ended(2)
    _pump(selector)
    assert dispatcher.sessions() == {0: 1, 1: 3}
    connect(), connect()
    _pump(selector)
    for w in workers:
        w.take()
    assert [len(w.got) for w in workers] == [5, 3]
    # a report never makes a count negative
    workers[1].ended(10)
    _pump(selector)
    assert dispatcher.sessions() == {0: 3, 1: 0}


def test_a_dead_workers_channel_is_dropped_and_new_connections_go_to_the_live_one(master) -> None:
    dispatcher, selector, connect = master
    workers = [_FakeWorker(dispatcher.add_worker(i)) for i in range(2)]
    dispatcher.worker_ready(0)
    dispatcher.worker_ready(1)
    workers[1].sock.close()  # worker 1 died (its end closed with the process)
    _pump(selector)
    assert dispatcher.sessions() == {0: 0}
    client = connect()
    _pump(selector)
    workers[0].take()
    assert len(workers[0].got) == 1 and workers[0].got[0][1].getpeername() == client.getsockname()


def test_a_connection_queued_to_a_worker_that_dies_is_closed(master) -> None:
    """What was in a dead worker's channel is closed by the kernel: the client sees the end, never
    a session that hangs."""
    dispatcher, selector, connect = master
    worker = _FakeWorker(dispatcher.add_worker(0))
    dispatcher.worker_ready(0)
    client = connect()
    _pump(selector)
    assert dispatcher.sessions() == {0: 1}
    worker.sock.close()  # dies before reading it
    _pump(selector)
    client.settimeout(5)
    assert client.recv(16) == b""


def test_with_no_worker_ready_the_kernel_queues_and_the_port_stays_open(master) -> None:
    dispatcher, selector, connect = master
    worker = _FakeWorker(dispatcher.add_worker(0))
    dispatcher.worker_ready(0)
    dispatcher.worker_gone(0)
    worker.sock.close()
    client = connect()  # connects: the master's socket listens
    _pump(selector)
    replacement = _FakeWorker(dispatcher.add_worker(0))
    dispatcher.worker_ready(0)
    _pump(selector)
    replacement.take()
    assert [s.getpeername() for _, s in replacement.got] == [client.getsockname()]


def test_the_startup_gate_opens_after_the_wait_with_the_ready_workers() -> None:
    now = [0.0]
    selector = selectors.DefaultSelector()
    listening = bind_listeners([("relay", "127.0.0.1", 0)], 16)
    dispatcher = Dispatcher(listening, selector, startup_wait=30.0, clock=lambda: now[0])
    try:
        worker = _FakeWorker(dispatcher.add_worker(0))
        dispatcher.add_worker(1)  # never ready
        dispatcher.worker_ready(0)
        client = socket.create_connection(listening[0].bound)
        _pump(selector)
        worker.take()
        assert worker.got == []
        now[0] = 31.0
        dispatcher.tick()
        _pump(selector)
        worker.take()
        assert len(worker.got) == 1
        client.close()
    finally:
        dispatcher.close()
        selector.close()


def test_a_second_bind_of_the_same_port_fails() -> None:
    """No SO_REUSEPORT: a second gateway cannot share the master's ports."""
    first = bind_listeners([("relay", "127.0.0.1", 0)], 16)
    try:
        with pytest.raises(OSError):
            bind_listeners([("relay", "127.0.0.1", first[0].bound[1])], 16)
        probe = socket.socket()
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        with pytest.raises(OSError), probe:
            probe.bind(first[0].bound)
    finally:
        first[0].sock.close()


def test_listeners_env_round_trip() -> None:
    assert parse_listeners_env("relay=127.0.0.1|2525 submission=::1|5870") == \
        {"relay": ("127.0.0.1", 2525), "submission": ("::1", 5870)}


class _Greeter(asyncio.Protocol):
    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(b"220 hello\r\n")

    def data_received(self, data: bytes) -> None:
        self.transport.write(b"221 bye\r\n")
        self.transport.close()


async def _report(master_end: socket.socket, timeout: float = 5) -> int:
    loop = asyncio.get_running_loop()
    data = await asyncio.wait_for(loop.sock_recv(master_end, 16), timeout)
    return ENDED.unpack(data)[0]


async def test_a_worker_serves_an_implicit_tls_listener_and_reports_each_end(tmp_path: Path) -> None:
    cert_pem, key_pem = make_self_signed("localhost")
    (tmp_path / "c.pem").write_bytes(cert_pem)
    (tmp_path / "k.pem").write_bytes(key_pem)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    server_ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    client_ctx = ssl.create_default_context(cafile=str(tmp_path / "c.pem"))
    loop = asyncio.get_running_loop()
    listening = bind_listeners([("smtps", "127.0.0.1", 0)], 16)[0]
    master_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    master_end.setblocking(False)
    receiver = HandoffReceiver(worker_end.detach(), {"smtps": listening.bound})
    handed = receiver.listener(0, "smtps", _Greeter, ssl_context=server_ctx)
    receiver.start()
    assert handed.is_serving()

    async def hand(listener: int = 0) -> None:
        conn, _ = await loop.sock_accept(listening.sock)
        socket.send_fds(master_end, [struct.pack("!H", listener)], [conn.fileno()])
        conn.close()
    try:
        # TLS from the first byte, the certificate checked by the client
        opening = asyncio.ensure_future(asyncio.open_connection(*listening.bound, ssl=client_ctx,
                                                                server_hostname="localhost"))
        await hand()
        reader, writer = await asyncio.wait_for(opening, 10)
        assert await reader.readline() == b"220 hello\r\n"
        assert writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
        writer.write(b"QUIT\r\n")
        assert await reader.readline() == b"221 bye\r\n"
        writer.close()
        assert await _report(master_end) == 1
        # a client that does not speak TLS: no session, but the end is reported all the same
        plain = socket.create_connection(listening.bound)
        await hand()
        plain.sendall(b"EHLO not-tls\r\n")
        assert await _report(master_end, timeout=10) == 1
        plain.close()
        # a listener index this worker does not serve: closed, reported
        other = socket.create_connection(listening.bound)
        await hand(listener=7)
        assert await _report(master_end) == 1
        other.close()
    finally:
        receiver.close()
        handed.close()
        assert not handed.is_serving()
        master_end.close()
        listening.sock.close()


def test_a_full_channel_keeps_the_sockets_in_order_and_sends_them_when_writable() -> None:
    """A worker that reads slowly: its channel fills (~280 records), the master keeps the rest in
    order and sends them once the channel drains, without losing or duplicating one."""
    selector = selectors.DefaultSelector()
    listening = bind_listeners([("relay", "127.0.0.1", 0)], 1024)
    dispatcher = Dispatcher(listening, selector)
    clients = []
    try:
        worker = _FakeWorker(dispatcher.add_worker(0))
        dispatcher.worker_ready(0)
        for _ in range(400):
            clients.append(socket.create_connection(listening[0].bound))
        _pump(selector, rounds=20)
        assert dispatcher.sessions() == {0: 400}
        assert dispatcher.channels[0].pending, "the channel never filled: the test proves nothing"
        for _ in range(20):
            worker.take()
            _pump(selector, rounds=2)
        worker.take()
        assert not dispatcher.channels[0].pending
        peers = [s.getpeername() for _, s in worker.got]
        assert peers == [c.getsockname() for c in clients]  # the accept order, none lost or twice
    finally:
        dispatcher.close()
        selector.close()
        for client in clients:
            client.close()
