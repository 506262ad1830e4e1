"""End-to-end kit: a gateway process started from a generated config, and a recording SMTP
sink (aiosmtpd on a real socket) whose replies the test controls.

Reusable by later e2e tests (S/MIME, routing): `write_config()` takes extra TOML.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiosmtpd.controller import Controller

from gateway.default_setup import make_self_signed
from gateway.server.passwords import hash_password
from tests.conftest import MSGW, free_port

PASSWORD = "correct horse battery staple"
USER = "lis@lab.example"
#: The local mailboxes the e2e configs know (only known mailboxes are accepted at RCPT).
LOCAL_MAILBOXES = '["secretariat@msgw.test", "lis@msgw.test", "dr.durand@msgw.test", "dr.a@msgw.test", ' \
    '"dr.local@msgw.test", "x@msgw.test"]'


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes


@dataclass
class SinkHandler:
    """Records what it receives; `reply_for(rcpt)` decides RCPT replies (default 250)."""

    received: list[Received] = field(default_factory=list)
    rcpt_reply: Callable[[str], str] | None = None
    data_reply: str = "250 2.0.0 OK"
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.rcpt_reply(address) if self.rcpt_reply else "250 2.1.5 OK"
        if reply.startswith("250"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server, session, envelope):
        if self.data_reply.startswith("250"):
            with self.lock:
                sender = "" if envelope.mail_from == "<>" else envelope.mail_from
                self.received.append(Received(sender, list(envelope.rcpt_tos),
                                              envelope.original_content))
        return self.data_reply

    def snapshot(self) -> list[Received]:
        with self.lock:
            return list(self.received)


class Sink:
    """An aiosmtpd sink on 127.0.0.1:port that can be stopped and restarted on the same port."""

    def __init__(self, port: int | None = None, handler: SinkHandler | None = None) -> None:
        self.port = port or free_port()
        self.handler = handler or SinkHandler()
        self.controller: Controller | None = None

    def start(self) -> Sink:
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port,
                                     data_size_limit=100 * 1024 * 1024)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.handler.snapshot()
            if len(got) >= count:
                return got
            time.sleep(0.05)
        raise AssertionError(f"sink got {len(self.handler.snapshot())} message(s), expected {count}")


@dataclass
class GatewaySetup:
    folder: Path
    config: Path
    submission_port: int
    relay_port: int
    cert: Path
    log_file: Path
    maildir: Path
    spool: Path


def write_config(folder: Path, *, sink_port: int | None = None, extra: str = "", delivery: str | None = None,
                 retry: str = '["1s", "2s"]', lifetime: str = "1h", relay_networks: str = "[]",
                 delay_warning: str = "0s") -> GatewaySetup:
    """A gateway config on free loopback ports delivering remote mail to a smart host sink."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "tls-cert.pem", folder / "tls-key.pem"
    if not cert.exists():
        cert_pem, key_pem = make_self_signed("localhost")
        cert.write_bytes(cert_pem)
        key.write_bytes(key_pem)
    sub_port, relay_port = free_port(), free_port()
    if delivery is None:
        delivery = f'smarthost = "127.0.0.1:{sink_port}"\ntls = "none"\n'
    text = f"""
[gateway]
hostname = "msgw.test"
workers = 1

[listeners.submission]
kind = "submission"
address = "127.0.0.1"
port = {sub_port}
tls_cert = "tls-cert.pem"
tls_key = "tls-key.pem"
max_recipients = 50

[listeners.relay]
kind = "relay"
address = "127.0.0.1"
port = {relay_port}
tls_cert = "tls-cert.pem"
tls_key = "tls-key.pem"
allowed_networks = {relay_networks}

[accounts."{USER}"]
password_hash = "{hash_password(PASSWORD)}"

[spool]
path = "spool"
retry_schedule = {retry}
max_queue_lifetime = "{lifetime}"
delay_warning = "{delay_warning}"
poll_interval = "200ms"
shutdown_grace = "5s"

[local]
domains = ["msgw.test"]
maildir = "maildir"
mailboxes = {LOCAL_MAILBOXES}

[log]
format = "json"
level = "INFO"
file = "gateway.log"

[delivery]
connect_timeout = "3s"
{delivery}
{extra}
"""
    config = folder / "gateway.toml"
    config.write_text(text)
    return GatewaySetup(folder=folder, config=config, submission_port=sub_port, relay_port=relay_port,
                        cert=cert, log_file=folder / "gateway.log", maildir=folder / "maildir",
                        spool=folder / "spool")


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listening on port {port}")


class GatewayProcess:
    """`msgw serve --config ...` as a child process."""

    def __init__(self, setup: GatewaySetup) -> None:
        self.setup = setup
        self.proc: subprocess.Popen | None = None

    def start(self) -> GatewayProcess:
        env = dict(os.environ)
        stderr = open(self.setup.folder / "stderr.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen([MSGW, "serve", "--config", str(self.setup.config)], cwd=self.setup.folder,
                                     env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        stderr.close()
        wait_port(self.setup.submission_port)
        wait_port(self.setup.relay_port)
        return self

    def terminate(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self.proc = None
        return code

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            try:
                self.terminate()
            except subprocess.TimeoutExpired:
                self.kill9()


def msgw(*args: str, cwd: Path | None = None, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([MSGW, *args], cwd=cwd, input=input, capture_output=True, timeout=60)


def queue_json(setup: GatewaySetup) -> list[dict]:
    out = msgw("queue", "list", "--json", "--config", str(setup.config))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def log_events(setup: GatewaySetup) -> list[dict]:
    if not setup.log_file.exists():
        return []
    return [json.loads(line) for line in setup.log_file.read_text().splitlines() if line.strip()]


def make_message(sender: str, rcpt: str, subject: str, body: str, extra_headers: str = "") -> bytes:
    text = (f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{time.time_ns()}@test.example>\r\n{extra_headers}"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n")
    return text.encode()
