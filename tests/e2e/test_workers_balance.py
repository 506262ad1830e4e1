"""The master listens and hands each connection to the least busy worker (issue 15, fourth round:
`gateway.server.handoff`), with a real `msgw serve` of two workers and real sockets.

Held to: 10 simultaneous sessions land 5/5 (with SO_REUSEPORT the kernel's hash gave 5/5, 6/4,
7/3 or 8/2); after sessions of unequal length, new ones go to the worker with fewer open; the
port is one socket, the master's, so it stays open while every worker is being restarted (the
connection waits in the kernel's queue and is served by the new worker); a worker serves the
client's own connection (its address and port, the relay rules on that address, `Received:`).
Sessions are counted per worker process from the kernel's table (`ss -tnp`), as
`bench/_support.py: sessions_by_pid` does.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

from tests.conftest import require_tool
from tests.e2e.harness import GatewayProcess, GatewaySetup, Sink, log_events, make_message, write_config
from tests.e2e.test_workers import _alive, _wait_listening, _wait_workers

SENDER, RCPT = "lab@partner.example", "dr@cabinet.example"


def _two_workers(tmp_path: Path, sink: Sink, relay_networks: str = '["127.0.0.0/8"]') -> GatewaySetup:
    setup = write_config(tmp_path, sink_port=sink.port, relay_networks=relay_networks)
    text = setup.config.read_text()
    assert "workers = 1\n" in text
    setup.config.write_text(text.replace("workers = 1\n", "workers = 2\n", 1))
    return setup


def _sessions_by_pid(port: int) -> dict[int, int]:
    """Established server-side sessions on `port` per owning process (the kernel's view)."""
    out = subprocess.run([require_tool("ss"), "-Htnp", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    counts: Counter[int] = Counter()
    for line in out.splitlines():
        if "pid=" in line:
            counts[int(line.split("pid=", 1)[1].split(",", 1)[0])] += 1
    return dict(counts)


def _listening_sockets(port: int) -> int:
    want = f"0100007F:{port:04X}"
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for ln in lines if ln.split()[1] == want and ln.split()[3] == "0A")


def _open_session(port: int, source: tuple[str, int] = ("127.0.0.1", 0), timeout: float = 15) -> socket.socket:
    """A connected client that has read the 220 greeting (a worker serves it)."""
    sock = socket.socket()
    sock.settimeout(timeout)
    sock.bind(source)
    sock.connect(("127.0.0.1", port))
    banner = sock.recv(512)
    assert banner.startswith(b"220 "), banner
    return sock


def _quit(sock: socket.socket) -> None:
    sock.sendall(b"QUIT\r\n")
    assert sock.recv(512).startswith(b"221")
    sock.close()


def _owner(port: int, client: socket.socket) -> int:
    """The pid of the process that serves `client`'s session."""
    local = client.getsockname()
    out = subprocess.run([require_tool("ss"), "-Htnp", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if f"{local[0]}:{local[1]} " in line + " " and "pid=" in line:
            return int(line.split("pid=", 1)[1].split(",", 1)[0])
    raise AssertionError(f"no server session for {local}: {out}")


def _wait(condition, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(what)


class _TwoWorkers(GatewayProcess):
    """`msgw serve` with two workers, entered once both are ready: `workers` are their pids."""

    workers: list[int]

    def start(self) -> _TwoWorkers:
        super().start()
        assert self.proc is not None
        self.workers = _wait_workers(self.proc.pid, 2)
        _wait_listening(self.setup, 2)
        _wait(lambda: sum(e["event"] == "worker-ready" for e in log_events(self.setup)) >= 2, "workers not ready")
        return self


def test_ten_simultaneous_sessions_are_spread_five_and_five(tmp_path: Path) -> None:
    sink = Sink().start()
    clients: list[socket.socket] = []
    try:
        setup = _two_workers(tmp_path, sink)
        with _TwoWorkers(setup) as gw:
            workers = gw.workers
            # one listening socket, the master's: nothing bound with SO_REUSEPORT by the workers
            assert _listening_sockets(setup.relay_port) == 1
            assert _listening_sockets(setup.submission_port) == 1
            for _ in range(10):
                clients.append(_open_session(setup.relay_port))
            spread = _sessions_by_pid(setup.relay_port)
            assert set(spread) == set(workers), (spread, workers)
            assert sorted(spread.values()) == [5, 5], spread
            for client in clients:
                _quit(client)
            clients.clear()
        stderr = (setup.folder / "stderr.log").read_text()
        assert "the master hands each connection to the least busy worker" in stderr
    finally:
        for client in clients:
            client.close()
        sink.stop()


def test_new_sessions_go_to_the_worker_with_fewer_open(tmp_path: Path) -> None:
    sink = Sink().start()
    clients: list[socket.socket] = []
    try:
        setup = _two_workers(tmp_path, sink)
        with _TwoWorkers(setup) as gw:
            workers = gw.workers
            port = setup.relay_port
            clients = [_open_session(port) for _ in range(6)]
            owners = {c: _owner(port, c) for c in clients}
            assert sorted(Counter(owners.values()).values()) == [3, 3], owners
            # the sessions of one worker end early (a short lab session); the other's go on
            short = owners[clients[0]]
            for client in [c for c in clients if owners[c] == short]:
                _quit(client)
            clients = [c for c in clients if owners[c] != short]
            _wait(lambda: _sessions_by_pid(port).get(short, 0) == 0, "the ended sessions are still open")
            time.sleep(1.0)  # the worker's report of the ended sessions reaches the master
            fresh = [_open_session(port) for _ in range(3)]
            clients += fresh
            assert [_owner(port, c) for c in fresh] == [short] * 3, (short, workers)
            # now 3/3 again: the next two go one to each
            more = [_open_session(port) for _ in range(2)]
            clients += more
            assert sorted(Counter(_owner(port, c) for c in more).values()) == [1, 1]
            assert sorted(_sessions_by_pid(port).values()) == [4, 4]
            for client in clients:
                _quit(client)
            clients = []
    finally:
        for client in clients:
            client.close()
        sink.stop()


def test_the_port_stays_open_while_every_worker_is_restarted(tmp_path: Path) -> None:
    """Both workers killed: a client connecting during their restart is queued by the kernel on the
    master's listening socket and served by a new worker, never refused."""
    sink = Sink().start()
    try:
        setup = _two_workers(tmp_path, sink)
        with _TwoWorkers(setup) as gw:
            workers = gw.workers
            assert gw.proc is not None
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
            _wait(lambda: sum(e["event"] == "worker-died" for e in log_events(setup)) >= 2, "deaths not seen")
            assert not any(_alive(pid) for pid in workers)
            client = _open_session(setup.relay_port, timeout=30)  # no ECONNREFUSED: the master listens
            try:
                client.sendall(b"NOOP\r\n")
                assert client.recv(1024).startswith(b"250")
            finally:
                _quit(client)
            fresh = _wait_workers(gw.proc.pid, 2)
            assert not set(fresh) & set(workers)
    finally:
        sink.stop()


def test_a_worker_serves_the_clients_own_address_and_port(tmp_path: Path) -> None:
    """Relaying is allowed to 127.0.0.2 only: the worker must see the client's address (not the
    master's, not 127.0.0.1), and the session is the client's own TCP connection (its port)."""
    import smtplib

    sink = Sink().start()
    try:
        setup = _two_workers(tmp_path, sink, relay_networks='["127.0.0.2/32"]')
        with _TwoWorkers(setup) as gw:
            workers = gw.workers
            port = setup.relay_port
            with smtplib.SMTP("127.0.0.1", port, local_hostname="lis.partner.example",
                              source_address=("127.0.0.2", 0), timeout=15) as smtp:
                sock = smtp.sock
                assert sock is not None
                client_port = sock.getsockname()[1]
                out = subprocess.run([require_tool("ss"), "-Htnp", "state", "established", f"( sport = :{port} )"],
                                     capture_output=True, text=True, check=True).stdout
                line = next(ln for ln in out.splitlines() if f"127.0.0.2:{client_port} " in ln + " ")
                assert int(line.split("pid=", 1)[1].split(",", 1)[0]) in workers
                smtp.sendmail(SENDER, [RCPT], make_message(SENDER, RCPT, "where from", "TEST"))
            with smtplib.SMTP("127.0.0.1", port, local_hostname="lis.partner.example",
                              source_address=("127.0.0.1", 0), timeout=15) as smtp:
                smtp.ehlo()
                assert smtp.mail(SENDER)[0] == 250
                assert smtp.rcpt(RCPT)[0] >= 500  # not a relay client: 127.0.0.1 is not allowed
            _wait(lambda: len(sink.handler.snapshot()) == 1, "not delivered", timeout=30)
            data = sink.handler.snapshot()[0].data
            assert b"([127.0.0.2])" in data.split(b"\r\n\r\n", 1)[0]
            accepted = [e for e in log_events(setup) if e["event"] == "accepted"]
            assert [e.get("client") for e in accepted] == ["127.0.0.2"], accepted
    finally:
        sink.stop()


def test_starttls_and_auth_on_the_submission_port_of_a_handed_over_session(tmp_path: Path) -> None:
    """STARTTLS stays in the worker's SMTP protocol: a handed-over session upgrades, logs in (only
    after TLS) and submits; its peer is still the client's own (certificate-checked TLS from the
    gateway's self-signed pair)."""
    import smtplib
    import ssl

    from tests.e2e.harness import PASSWORD, USER

    sink = Sink().start()
    try:
        setup = _two_workers(tmp_path, sink)
        with _TwoWorkers(setup):
            ctx = ssl.create_default_context(cafile=str(setup.cert))
            ctx.check_hostname = False  # the pair names "localhost"; the test connects to 127.0.0.1
            for n in range(4):  # both workers serve some of them
                with smtplib.SMTP("127.0.0.1", setup.submission_port, local_hostname="client.test",
                                  timeout=15) as smtp:
                    smtp.ehlo()
                    assert "auth" not in smtp.esmtp_features  # AUTH only over TLS
                    smtp.starttls(context=ctx)
                    smtp.ehlo()
                    smtp.login(USER, PASSWORD)
                    smtp.sendmail(USER, [RCPT], make_message(USER, RCPT, f"tls {n}", "TEST"))
            _wait(lambda: len(sink.handler.snapshot()) == 4, "not delivered", timeout=30)
            by_worker = Counter(e.get("worker") for e in log_events(setup) if e["event"] == "accepted")
            assert by_worker == {"w0": 2, "w1": 2}, by_worker
    finally:
        sink.stop()
