"""msgw as a systemd service (issue 16, item 3): the unit file passes `systemd-analyze verify`, and
a real `msgw serve` tells the notify socket READY=1 only once its SMTP listeners answer (1 and 2
workers), and STOPPING=1 on SIGTERM.

systemd itself is not run (the test machine's PID 1 is not systemd): the notify socket is a
datagram socket of the test, named by NOTIFY_SOCKET exactly as systemd names its own."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import sdnotify
from tests.conftest import MSGW, require_tool
from tests.e2e.harness import GatewaySetup, write_config

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "contrib" / "msgw.service"
PRODUCTION_MSGW = "/opt/msgw/venv/bin/msgw"


def test_the_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """`verify` checks that ExecStart's binary exists: the copy under test runs this venv's msgw;
    the committed file keeps the documented production path."""
    analyze = require_tool("systemd-analyze")
    text = UNIT.read_text()
    assert f"ExecStart={PRODUCTION_MSGW} serve --config /etc/msgw/gateway.toml" in text
    unit = tmp_path / "msgw.service"
    unit.write_text(text.replace(PRODUCTION_MSGW, MSGW))
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "msgw.service" not in out.stderr, out.stderr  # no warning about our unit either
    directives = {line.split("=", 1)[0] for line in text.splitlines() if "=" in line and not line.startswith("#")}
    for required in ("Type", "User", "NotifyAccess", "Restart", "NoNewPrivileges", "ProtectSystem", "ProtectHome",
                     "PrivateTmp", "PrivateDevices", "RestrictAddressFamilies", "CapabilityBoundingSet",
                     "LimitNOFILE", "UMask", "SystemCallFilter", "StateDirectory"):
        assert required in directives, required
    assert "Type=notify" in text and "User=msgw" in text and "UMask=0077" in text
    # systemd's own hardening score of the unit (0 = locked down, 10 = none; a bare unit scores 9.2)
    out = subprocess.run([analyze, "security", "--offline=yes", str(unit)], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    score = re.search(r"Overall exposure level for msgw\.service: ([0-9.]+) (\w+)", out.stdout + out.stderr)
    assert score, out.stdout + out.stderr
    assert float(score.group(1)) <= 2.0 and score.group(2) == "OK", score.group(0)


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket like systemd's (a short path: AF_UNIX paths are limited to 107 bytes)."""
    folder = tempfile.mkdtemp(prefix="msgw-notify-")
    path = os.path.join(folder, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        yield sock, path
    finally:
        sock.close()
        shutil.rmtree(folder, ignore_errors=True)


def _wait_for(sock: socket.socket, state: str, got: list[str], proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(0.5)
        try:
            data = sock.recv(4096)
        except TimeoutError:
            assert proc.poll() is None, f"msgw exited ({proc.returncode}) before {state}; got {got}"
            continue
        got.extend(data.decode().splitlines())
        if state in got:
            return
    raise AssertionError(f"no {state} within {timeout} s; got {got}")


def _banner(port: int) -> int:
    with smtplib.SMTP(timeout=10) as client:
        code, _ = client.connect("127.0.0.1", port)
        return code


def _start(setup: GatewaySetup, workers: int, notify: str) -> subprocess.Popen:
    env = dict(os.environ, NOTIFY_SOCKET=notify)
    stderr = open(setup.folder / "stderr.log", "ab")  # noqa: SIM115 - owned by the child
    try:
        return subprocess.Popen([MSGW, "serve", "--config", str(setup.config), "--workers", str(workers)],
                                cwd=setup.folder, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    finally:
        stderr.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_ready_only_once_the_listeners_answer_and_stopping_on_sigterm(
        tmp_path: Path, notify_socket: tuple[socket.socket, str], workers: int) -> None:
    sock, path = notify_socket
    setup = write_config(tmp_path / "gw", sink_port=9)  # nothing is delivered in this test
    proc = _start(setup, workers, path)
    got: list[str] = []
    try:
        _wait_for(sock, "READY=1", got, proc)
        # right after READY, with nothing waited for: every SMTP listener greets
        assert _banner(setup.relay_port) == 220
        assert _banner(setup.submission_port) == 220
        status = [s for s in got if s.startswith("STATUS=")]
        assert status, got
        if workers == 1:
            assert f"relay 127.0.0.1:{setup.relay_port}" in status[-1]
            assert f"submission 127.0.0.1:{setup.submission_port}" in status[-1]
        else:
            # the master waited for every worker's report before READY (its log says so first)
            events = [json.loads(line) for line in setup.log_file.read_text().splitlines() if line.strip()]
            ready = {e.get("worker") for e in events if e.get("event") == "worker-ready"}
            assert ready == {"w0", "w1"}, ready
            assert status[-1] == "STATUS=2 workers serving"
        for _ in range(3):  # more connections, spread by the kernel over the workers
            assert _banner(setup.relay_port) == 220
        assert "STOPPING=1" not in got
        proc.send_signal(signal.SIGTERM)
        _wait_for(sock, "STOPPING=1", got, proc)
        assert proc.wait(timeout=60) == 0
        assert got.count("READY=1") == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_notify_reaches_an_abstract_socket_and_is_a_no_op_without_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """`@name` is systemd's spelling of a Linux abstract socket; no NOTIFY_SOCKET: nothing sent."""
    name = f"msgw-test-{os.getpid()}-{time.time_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.ready("serving relay 127.0.0.1:2525")
        assert sock.recv(4096).decode().splitlines() == ["READY=1", "STATUS=serving relay 127.0.0.1:2525"]
        assert sdnotify.stopping()
        assert sock.recv(4096).decode().splitlines() == ["STOPPING=1", "STATUS=stopping"]
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert sdnotify.notify("READY=1") is False
