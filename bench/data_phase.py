"""CPU of the SMTP listener's protocol per message, DATA phase included, without the spool.

Why: the relay benchmarks mix the DATA read with fsyncs, delivery and the queue; this isolates
what `gateway.server.smtp.GatewaySMTP` costs per transaction (EHLO once, then MAIL, RCPT, DATA,
message, final dot) with a handler that answers 250 at once. The server runs in this process on
one event loop; the client is a separate process (its CPU is not counted) sending messages one
transaction at a time on one connection. Run it with two virtualenvs (two revisions) in turn to
compare them: the figure is `time.process_time()` of this process per message.

    .venv/bin/python bench/data_phase.py [--sizes 1KB,20KB,1MB] [--count 2000] [--rounds 3]
No thresholds, no asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SIZES = {"1KB": 1_000, "20KB": 20_000, "1MB": 1_000_000}

CLIENT = r"""
import socket, sys
port, size, count = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
line = b"x" * 74 + b"\r\n"
body = b"From: <lab@partner.example>\r\nTo: <dr@cabinet.example>\r\nSubject: bench\r\n\r\n..dot\r\n"
body += line * max(0, (size - len(body)) // len(line))
s = socket.create_connection(("127.0.0.1", port))
f = s.makefile("rb")
def reply():
    while True:
        l = f.readline()
        if l[3:4] != b"-":
            return l
reply()
s.sendall(b"EHLO client.example\r\n"); reply()
for _ in range(count):
    s.sendall(b"MAIL FROM:<lab@partner.example>\r\nRCPT TO:<dr@cabinet.example>\r\nDATA\r\n")
    assert reply().startswith(b"250") and reply().startswith(b"250") and reply().startswith(b"354")
    s.sendall(body + b".\r\n")
    r = reply()
    assert r.startswith(b"250"), r
s.sendall(b"QUIT\r\n"); reply()
"""


class _Listener:
    """The hooks GatewaySMTP calls, answering at once (no spool, no policy)."""

    listener = type("L", (), {"name": "bench"})()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 2.0.0 OK" if envelope.original_content else "554 empty"


async def _round(size: int, count: int) -> float:
    from gateway.server.smtp import GatewaySMTP

    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: GatewaySMTP(_Listener(), data_size_limit=50_000_000,  # type: ignore[arg-type]
                                                          hostname="bench.test"), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cpu0 = time.process_time()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", CLIENT, str(port), str(size), str(count))
    assert await proc.wait() == 0
    cpu = time.process_time() - cpu0
    server.close()
    await server.wait_closed()
    return cpu / count * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1KB,20KB")
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    import gateway

    print(f"gateway from {Path(gateway.__file__).parent}")
    for name in args.sizes.split(","):
        count = max(20, args.count * 1000 // SIZES[name]) if SIZES[name] > 20_000 else args.count
        figures = [asyncio.run(_round(SIZES[name], count)) for _ in range(args.rounds)]
        print(f"{name:>5}: {statistics.median(figures):.3f} ms CPU per message (median of "
              f"{', '.join(f'{f:.3f}' for f in figures)}; {count} messages a round)", flush=True)
    subprocess.run(["cat", "/proc/loadavg"], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
