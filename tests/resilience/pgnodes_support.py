"""Helpers of the several-nodes tests (issue 18): gateway nodes on one real PostgreSQL, each a
`msgw serve` child in its own process group (so a SIGKILL takes the whole node, workers and all),
a plain SMTP client that times every reply, and read-only looks at the shared queue through an
independent connection (psycopg with the test's own DSN, never the gateway's objects)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from tests.conftest import MSGW
from tests.e2e.harness import GatewaySetup, wait_port, write_config
from tests.resilience.support import RCPT, SENDER, tagged
from tests.storage.conftest import split_password

#: The runner's poll (`[spool] poll_interval` of `write_config`): the safety net of claiming.
POLL_SECONDS = 0.2


def node_config(folder: Path, *, sink_port: int, dsn: str, password_file: Path, node: str, lease: str = "5s",
                connect_timeout: str = "3s", workers: int = 1) -> GatewaySetup:
    """A relay node (127.0.0.0/8 may relay, policy off) on the shared database `dsn` (without its
    password: the password is read from `password_file`, as production does)."""
    plain, _ = split_password(dsn)
    setup = write_config(folder, sink_port=sink_port, relay_networks='["127.0.0.0/8"]', extra=(
        f'[storage]\nbackend = "postgresql"\ndsn = "{plain}"\npassword_file = "{password_file}"\n'
        f'node = "{node}"\nlease = "{lease}"\nconnect_timeout = "{connect_timeout}"\n'))
    if workers != 1:
        text = setup.config.read_text().replace("workers = 1\n", f"workers = {workers}\n", 1)
        setup.config.write_text(text)
    return setup


class Node:
    """`msgw serve` as the leader of its own process group: `kill()` is a SIGKILL of the group
    (the node's machine dying), `stop()` a clean SIGTERM."""

    def __init__(self, setup: GatewaySetup) -> None:
        self.setup = setup
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Node:
        with open(self.setup.folder / "stderr.log", "ab") as stderr:
            self.proc = subprocess.Popen([MSGW, "serve", "--config", str(self.setup.config)],
                                         cwd=self.setup.folder, stdout=subprocess.DEVNULL, stderr=stderr,
                                         start_new_session=True)
        wait_port(self.setup.relay_port, timeout=60)
        return self

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            try:
                self.stop()
            except ProcessLookupError:
                self.proc = None


@dataclass
class Attempt:
    """One SMTP transaction: the final code (0 = no reply: connection lost or refused) and the
    longest wait for any single reply of it."""

    tag: str
    code: int
    started: float
    ended: float
    longest_reply: float
    detail: str = ""


@dataclass
class ReplyTimer:
    """A plain SMTP dialogue (relay listener, no TLS) that times each reply."""

    port: int
    timeout: float = 30.0
    waits: list[float] = field(default_factory=list)

    def _reply(self, sock: socket.socket, buf: bytearray) -> int:
        started = time.monotonic()
        while True:
            end = buf.find(b"\r\n")
            while end < 0:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed by the server")
                buf += chunk
                end = buf.find(b"\r\n")
            line = bytes(buf[:end])
            del buf[:end + 2]
            if len(line) < 4 or line[3:4] != b"-":
                self.waits.append(time.monotonic() - started)
                return int(line[:3])

    def send(self, tag: str) -> Attempt:
        """One message; stops at the first reply that is not a success (as a client would)."""
        started = time.monotonic()
        self.waits = []
        code, detail = 0, ""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout) as sock:
                buf = bytearray()
                steps: list[bytes | None] = [None, b"EHLO lis.partner.example", f"MAIL FROM:<{SENDER}>".encode(),
                                             f"RCPT TO:<{RCPT}>".encode(), b"DATA",
                                             tagged(tag).replace(b"\r\n.", b"\r\n..") + b".\r\n"]
                for step in steps:
                    if step is not None:
                        sock.sendall(step if step.endswith(b".\r\n") else step + b"\r\n")
                    code = self._reply(sock, buf)
                    if code >= 400 or (step == b"DATA" and code != 354):
                        break
                try:
                    sock.sendall(b"QUIT\r\n")
                except OSError:
                    pass
        except (OSError, ValueError) as exc:
            detail = type(exc).__name__
            if code < 400:
                code = 0
        return Attempt(tag, code, started, time.monotonic(), max(self.waits, default=0.0), detail)


# -- read-only looks at the shared queue (an independent client) ----------------------------------
def queue_rows(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute("SELECT count(*) FROM queue_messages").fetchone()
        return int(row[0]) if row else 0


def takeovers(dsn: str) -> int:
    """The store's own count of claims taken from an owner whose lease lapsed."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute("SELECT value FROM queue_stats WHERE name = 'takeovers'").fetchone()
        return int(row[0]) if row else 0


def held_by(dsn: str, node: str) -> tuple[dict[str, float], float]:
    """The messages `node` (or one of its workers) holds a lease on, with the seconds left on
    each lease, by the database's clock (the clock leases use)."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT id, extract(epoch FROM lease_until - now())::float8 FROM queue_messages"
            " WHERE (claimed_by = %s OR claimed_by LIKE %s) AND lease_until IS NOT NULL",
            (node, node + "/%")).fetchall()
        return {r[0]: float(r[1]) for r in rows}, max((float(r[1]) for r in rows), default=0.0)


def still_held(dsn: str, node: str, ids: list[str]) -> int:
    """How many of `ids` are still claimed by `node` (a row gone was delivered by someone else)."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute("SELECT count(*) FROM queue_messages WHERE id = ANY(%s)"
                           " AND (claimed_by = %s OR claimed_by LIKE %s)", (ids, node, node + "/%")).fetchone()
        return int(row[0]) if row else 0


def longest_gap(times: list[float]) -> float:
    """The longest time between two consecutive events (0 with fewer than two)."""
    ordered = sorted(times)
    return max((b - a for a, b in zip(ordered, ordered[1:], strict=False)), default=0.0)


__all__ = ["POLL_SECONDS", "Attempt", "Node", "ReplyTimer", "held_by", "longest_gap", "node_config", "queue_rows",
           "still_held", "takeovers"]
