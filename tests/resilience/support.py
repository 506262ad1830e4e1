"""Helpers of the resilience suite: tagged messages, a raw SMTP dialogue on a real socket,
counting what the next hop received."""

from __future__ import annotations

import re
import socket
import time
from collections import Counter

from tests.e2e.harness import Received, make_message

SENDER = "lab@partner.example"
RCPT = "dr@cabinet.example"
_SEQ = re.compile(rb"X-Seq: ([a-z]+-\d{5})")


def tagged(tag: str, sender: str = SENDER, rcpt: str = RCPT, body: str | None = None) -> bytes:
    return make_message(sender, rcpt, tag, body or f"body {tag}", extra_headers=f"X-Seq: {tag}\r\n")


def seq_of(data: bytes) -> str | None:
    m = _SEQ.search(data)
    return m.group(1).decode() if m else None


def counts(received: list[Received]) -> Counter[str]:
    return Counter(s for s in (seq_of(m.data) for m in received) if s is not None)


def wait_until(predicate, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


class RawSMTP:
    """A line-level SMTP client on a plain socket: sends exactly the bytes it is given."""

    def __init__(self, port: int, timeout: float = 15.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.banner = self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> tuple[int, str]:
        """Read one (possibly multi-line) reply."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"connection closed by the server after {lines!r}")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line.decode("utf-8", "replace"))
            if len(line) < 4 or line[3:4] != b"-":
                return int(line[:3]), "\n".join(lines)

    def cmd(self, line: bytes) -> tuple[int, str]:
        self.send(line + b"\r\n")
        return self.reply()

    def close(self) -> None:
        try:
            self.sock.sendall(b"QUIT\r\n")
        except OSError:
            pass
        self.sock.close()

    def __enter__(self) -> RawSMTP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
