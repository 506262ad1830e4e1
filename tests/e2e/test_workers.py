"""Both cores (issue 15, item 6): a real `msgw serve` with `[gateway] workers = 2` is a master and
two worker processes sharing the spool; the master listens on the SMTP ports and hands each
connection to the least busy worker (gateway/server/handoff.py; tests/e2e/test_workers_balance.py
holds the spread).

What the tests hold it to: every message answered 250 is delivered, once in a normal run; a
worker killed by SIGKILL mid-load is started again and nothing it acknowledged is lost (at least
once: what it had sent but not yet recorded as delivered may go a second time, never more — the
same promise as a kill -9 of the single process, tests/e2e/test_crash.py); a master killed by
SIGKILL takes its workers with it (the ports are free at once) and a restart delivers the rest;
the audit trail written by two processes verifies.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import time
from collections import Counter
from pathlib import Path

import aiosmtplib

from tests.e2e.harness import (
    GatewayProcess,
    GatewaySetup,
    Sink,
    log_events,
    make_message,
    msgw,
    queue_json,
    write_config,
)

SESSIONS = 10
PER_SESSION = 20
SENDER, RCPT = "lab@partner.example", "dr@cabinet.example"


def two_workers(tmp_path: Path, sink: Sink) -> GatewaySetup:
    setup = write_config(tmp_path, sink_port=sink.port, relay_networks='["127.0.0.0/8"]')
    text = setup.config.read_text()
    assert "workers = 1\n" in text
    setup.config.write_text(text.replace("workers = 1\n", "workers = 2\n", 1))
    return setup


def _message(tag: str) -> bytes:
    return make_message(SENDER, RCPT, tag, f"body {tag}", extra_headers=f"X-Seq: {tag}\r\n")


async def _sessions(port: int, acked: set[str], *, sessions: int = SESSIONS, per_session: int = PER_SESSION,
                    first: int = 0, on_ack=None) -> None:
    """`sessions` SMTP connections, each sending `per_session` messages (RSET-free: MAIL after 250)."""
    async def one(s: int) -> None:
        try:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=15, start_tls=False,
                                     local_hostname="lis.partner.example")
            await client.connect()
        except (aiosmtplib.SMTPException, OSError):
            return
        try:
            for n in range(per_session):
                tag = f"seq-{first + s * per_session + n:04d}"
                try:
                    await client.sendmail(SENDER, [RCPT], _message(tag))
                except (aiosmtplib.SMTPException, OSError):
                    return  # the worker serving this session died: no 250, no promise
                acked.add(tag)
                if on_ack is not None:
                    on_ack()
        finally:
            if client.is_connected:
                try:
                    await client.quit()
                except (aiosmtplib.SMTPException, OSError):
                    client.close()

    await asyncio.gather(*(one(s) for s in range(sessions)))


def _seq(data: bytes) -> str:
    m = re.search(rb"X-Seq: (seq-\d{4})", data)
    assert m, "message without sequence header"
    return m.group(1).decode()


def _delivered(sink: Sink) -> Counter[str]:
    return Counter(_seq(m.data) for m in sink.handler.snapshot())


def _drain(setup: GatewaySetup, sink: Sink, acked: set[str], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if acked <= set(_delivered(sink)) and not queue_json(setup):
            return
        time.sleep(0.25)
    raise AssertionError(f"not drained: {len(acked - set(_delivered(sink)))} undelivered, "
                         f"{len(queue_json(setup))} queued")


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _wait_workers(master: int, count: int, timeout: float = 30, *, gone: int | None = None) -> list[int]:
    """The master's `count` live workers (`gone`: a worker that must have been replaced)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = [k for k in _children(master) if _alive(k)]
        if len(kids) == count and gone not in kids:
            return kids
        time.sleep(0.05)
    raise AssertionError(f"master {master} has {_children(master)} as workers, expected {count}")


def _wait_listening(setup: GatewaySetup, count: int, timeout: float = 30) -> None:
    """Until `count` workers listen on the relay port: connections before that all go to the first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = {e.get("worker") for e in log_events(setup)
                 if e["event"] == "listening" and e.get("listener") == "relay"}
        if len(ready) >= count:
            return
        time.sleep(0.05)
    raise AssertionError("the workers did not all listen")


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _port_free(port: int) -> bool:
    """Bindable as a restarted gateway binds it (SO_REUSEADDR: the test's closed sessions may
    linger in TIME_WAIT) but without SO_REUSEPORT: fails while any worker still listens on it."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_two_workers_share_the_load_deliver_once_and_audit_verifies(tmp_path: Path) -> None:
    sink = Sink().start()
    try:
        setup = two_workers(tmp_path, sink)
        with GatewayProcess(setup) as gw:
            assert gw.proc is not None
            _wait_workers(gw.proc.pid, 2)
            _wait_listening(setup, 2)
            acked: set[str] = set()
            asyncio.run(_sessions(setup.relay_port, acked))
            assert len(acked) == SESSIONS * PER_SESSION
            _drain(setup, sink, acked)
        counts = _delivered(sink)
        assert set(counts) == acked
        assert {k: v for k, v in counts.items() if v != 1} == {}, "delivered more than once"
        by_worker = Counter(e.get("worker") for e in log_events(setup) if e["event"] == "accepted")
        assert set(by_worker) == {"w0", "w1"}, by_worker
        assert sum(by_worker.values()) == SESSIONS * PER_SESSION
        verify = msgw("audit", "verify", "--config", str(setup.config))
        assert verify.returncode == 0, verify.stdout + verify.stderr
        stderr = (setup.folder / "stderr.log").read_text()
        assert "msgw: 2 worker processes" in stderr
    finally:
        sink.stop()


def test_a_worker_killed_mid_load_is_restarted_and_nothing_is_lost(tmp_path: Path) -> None:
    sink = Sink().start()
    try:
        setup = two_workers(tmp_path, sink)
        with GatewayProcess(setup) as gw:
            assert gw.proc is not None
            master = gw.proc.pid
            victim = _wait_workers(master, 2)[1]
            _wait_listening(setup, 2)
            acked: set[str] = set()
            killed = False

            def kill_at_half() -> None:
                nonlocal killed
                if not killed and len(acked) >= SESSIONS * PER_SESSION // 3:
                    killed = True
                    os.kill(victim, signal.SIGKILL)

            asyncio.run(_sessions(setup.relay_port, acked, on_ack=kill_at_half))
            assert killed
            _wait_workers(master, 2, gone=victim)  # the killed worker was replaced
            assert _alive(master)
            # The sessions the victim served broke off: send what was not acknowledged again.
            rest = {f"seq-{n:04d}" for n in range(SESSIONS * PER_SESSION)} - acked
            again: set[str] = set()

            async def resend() -> None:
                async with aiosmtplib.SMTP(hostname="127.0.0.1", port=setup.relay_port, timeout=15,
                                           start_tls=False, local_hostname="lis.partner.example") as client:
                    for tag in sorted(rest):
                        await client.sendmail(SENDER, [RCPT], _message(tag))
                        again.add(tag)
            asyncio.run(resend())
            acked |= again
            assert len(acked) == SESSIONS * PER_SESSION
            _drain(setup, sink, acked)
            events = log_events(setup)
            assert any(e["event"] == "worker-died" for e in events)
        counts = _delivered(sink)
        assert not acked - set(counts), "acknowledged messages lost"
        assert all(v <= 2 for v in counts.values()), {k: v for k, v in counts.items() if v > 2}
    finally:
        sink.stop()


def test_kill9_of_the_master_takes_the_workers_and_a_restart_delivers_the_rest(tmp_path: Path) -> None:
    sink = Sink().start()
    try:
        setup = two_workers(tmp_path, sink)
        sink.handler.data_reply = "451 4.3.0 try later"  # keep everything queued while we kill
        gw = GatewayProcess(setup).start()
        assert gw.proc is not None
        workers = _wait_workers(gw.proc.pid, 2)
        _wait_listening(setup, 2)
        acked: set[str] = set()
        asyncio.run(_sessions(setup.relay_port, acked, sessions=4, per_session=10))
        assert len(acked) == 40
        gw.kill9()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.02)
        assert not any(_alive(w) for w in workers), "workers outlived a kill -9 of the master"
        # The leader of a killed worker may show as gone while its other threads still exit and
        # hold the sockets for a few milliseconds: the ports must be free right after that.
        while time.monotonic() < deadline and not (_port_free(setup.relay_port) and _port_free(setup.submission_port)):
            time.sleep(0.02)
        assert _port_free(setup.relay_port) and _port_free(setup.submission_port)
        sink.handler.data_reply = "250 2.0.0 OK"
        with GatewayProcess(setup) as again:
            assert again.proc is not None
            _wait_workers(again.proc.pid, 2)
            _drain(setup, sink, acked)
        counts = _delivered(sink)
        assert set(counts) == acked
        assert all(v == 1 for v in counts.values())
    finally:
        sink.stop()


def test_a_second_gateway_on_the_same_ports_or_spool_refuses_to_start(tmp_path: Path) -> None:
    """SO_REUSEPORT would let a second multi-worker gateway bind the first one's ports without an
    error (the kernel would then split clients between two gateways and two spools), and a second
    master on the same spool would run workers with the same claim names (w0, w1) as the first:
    two deliveries of one message. Both must refuse to start, as a single process does."""
    sink = Sink().start()
    try:
        setup = two_workers(tmp_path / "first", sink)
        with GatewayProcess(setup) as gw:
            assert gw.proc is not None
            _wait_workers(gw.proc.pid, 2)
            _wait_listening(setup, 2)
            # Same ports, another spool.
            other = two_workers(tmp_path / "other", sink)
            text = other.config.read_text()
            for mine, theirs in ((other.relay_port, setup.relay_port),
                                 (other.submission_port, setup.submission_port)):
                text = text.replace(f"port = {mine}\n", f"port = {theirs}\n")
            other.config.write_text(text)
            same_ports = msgw("serve", "--config", str(other.config))
            assert same_ports.returncode == 2, same_ports.stderr
            assert b"already in use" in same_ports.stderr
            # Same spool, free ports.
            twin = setup.config.with_name("twin.toml")  # relative paths: the same spool
            text = setup.config.read_text()
            for port in (setup.relay_port, setup.submission_port):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    text = text.replace(f"port = {port}\n", f"port = {s.getsockname()[1]}\n")
            twin.write_text(text)
            same_spool = msgw("serve", "--config", str(twin))
            assert same_spool.returncode == 2, same_spool.stderr
            assert b"open in another process" in same_spool.stderr
            assert gw.proc.poll() is None
    finally:
        sink.stop()
