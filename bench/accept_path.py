"""CPU of the receiving side per message: the SMTP listener's protocol *and* the gateway's hooks
(`GatewayHandler`: MAIL identity, RCPT relay check, the From:/Sender: claim check, the Received
field, the hand-off to the spool), without the spool's own work.

Why: `bench/data_phase.py` measures `GatewaySMTP` with hooks that answer at once; the relay
benchmark mixes the accept path with fsyncs, delivery and the queue. This runs the real
`SmtpServer` of a bench-like configuration (the relay listener bound to the lab's address by
`senders`, so every message's From: is checked, as in `bench/relay_throughput.py`) over a spool
that records nothing, in this process on uvloop when installed; the client is a separate process
(its CPU is not counted) speaking like the relay benchmark's load client: one reply awaited per
command (or, with `--pipelined`, MAIL+RCPT+DATA in one write). The figure is
`time.process_time()` of this process per message (all its threads), best of the rounds.

    .venv/bin/python bench/accept_path.py [--sizes 1KB,20KB] [--count 2000] [--rounds 5] [--pipelined]

Run it twice with PYTHONPATH pointing at two revisions' trees to compare them. No thresholds.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _support import RECIPIENT, SENDER, body_lines, write_gateway_config  # noqa: E402

SIZES = {"1KB": 1_000, "20KB": 20_000}

CLIENT = r"""
import socket, sys
port, count, pipelined = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
message = sys.stdin.buffer.read()
s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
f = s.makefile("rb")
def reply():
    while True:
        line = f.readline()
        if line[3:4] != b"-":
            return line
reply()
s.sendall(b"EHLO bench-client.bench.test\r\n"); reply()
mail = b"MAIL FROM:<%s> SIZE=%d\r\n" % (sys.argv[4].encode(), len(message))
rcpt = b"RCPT TO:<%s>\r\n" % sys.argv[5].encode()
for _ in range(count):
    if pipelined:
        s.sendall(mail + rcpt + b"DATA\r\n")
        replies = [reply(), reply(), reply()]
    else:
        s.sendall(mail); replies = [reply()]
        s.sendall(rcpt); replies.append(reply())
        s.sendall(b"DATA\r\n"); replies.append(reply())
    assert [r[:3] for r in replies] == [b"250", b"250", b"354"], replies
    s.sendall(message + b".\r\n")
    r = reply()
    assert r.startswith(b"250"), r
s.sendall(b"QUIT\r\n"); reply()
"""


class NullSpool:
    """Takes every message and keeps nothing (the spool's own cost is not the accept path's)."""

    def __init__(self) -> None:
        self.ids = itertools.count()

    def accept(self, sender: str, rcpts: list[str], data: bytes, **_: object) -> str:
        return f"m{next(self.ids)}"


def _message(size: int) -> bytes:
    """A message like the relay benchmark's (`_support.bench_message`), fixed so rounds are alike."""
    head = (f"From: Labo TEST <{SENDER}>\r\nTo: \"bench.1.1764806400000000000\" <{RECIPIENT}>\r\n"
            "Subject: TEST bench 1\r\nDate: Wed, 25 Nov 2026 09:00:00 +0000\r\n"
            "Message-ID: <bench.1.1764806400000000000@bench.test>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n")
    return head.encode() + body_lines(size)


async def _round(config: object, message: bytes, count: int, pipelined: bool) -> float:
    from gateway.server.smtp import SmtpServer

    server = SmtpServer(config, NullSpool())  # type: ignore[arg-type]
    await server.start()
    port = server.bound["relay"][1]
    cpu0 = time.process_time()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", CLIENT, str(port), str(count),
                                                "1" if pipelined else "0", SENDER, RECIPIENT,
                                                stdin=subprocess.PIPE)
    await proc.communicate(message)
    assert proc.returncode == 0
    cpu = time.process_time() - cpu0
    await server.stop()
    return cpu / count * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1KB,20KB")
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pipelined", action="store_true", help="MAIL+RCPT+DATA in one write")
    args = ap.parse_args(argv)
    import logging

    import gateway
    from gateway.config import load_config

    logging.basicConfig(level=logging.WARNING)  # as the bench gateway logs: warnings only
    try:
        import uvloop
        new_loop = uvloop.new_event_loop
    except ImportError:
        new_loop = asyncio.new_event_loop
    print(f"gateway from {Path(gateway.__file__).parent}; loop {new_loop.__module__}")
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(write_gateway_config(Path(tmp), sink_port=9).config)
        for name in args.sizes.split(","):
            message = _message(SIZES[name])
            figures = []
            for _ in range(args.rounds):
                with asyncio.Runner(loop_factory=new_loop) as runner:
                    figures.append(runner.run(_round(config, message, args.count, args.pipelined)))
            print(f"{name:>5}: {min(figures):.3f} ms CPU per message (best of "
                  f"{', '.join(f'{f:.3f}' for f in figures)}; {args.count} messages a round)", flush=True)
    subprocess.run(["cat", "/proc/loadavg"], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
