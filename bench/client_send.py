"""CPU per message of the delivery client's pipelined transaction, this tree beside another one.

Why: issue 15, the delivery side's CPU per message. `SmtpSession.send` on a reused session (as
the connection cache keeps it) to the relay benchmark's sink (`_support.BenchSink`, another
process, which offers PIPELINING and SIZE): MAIL, RCPT and DATA in one write, the payload, the
final reply. Two child processes, one importing `gateway` from this tree and one from `--base`
(default /work/main: main's code), each with its own open session and its own warm-up; rounds
of `--count` messages alternate between them, so load on the shared machine falls on both. The
figure is each child's CPU (`time.process_time`: the event loop's thread, no other thread runs)
per message, the median of the rounds; the sink's CPU is not counted.

    .venv/bin/python bench/client_send.py [--base /work/main] [--sizes 1KB,20KB] [--count 2000] [--rounds 6]
No thresholds, no asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from _support import (  # noqa: E402
    RECIPIENT,
    SENDER,
    BenchSink,
    bench_message,
    body_lines,
    default_json,
    loadavg,
    machine,
    print_table,
    write_json,
)

SIZES = {"1KB": 1_000, "20KB": 20_000, "1MB": 1_000_000}


async def _serve_child(port: int, event_loop: str) -> None:
    """In the child: one session, then for each "SIZE COUNT" line on stdin, COUNT messages and a
    line "CPU_MS WALL_MS" (per message) on stdout."""
    import gateway
    from gateway.config import TlsSettings
    from gateway.delivery.smtp_client import open_session

    session = await open_session(host="127.0.0.1", address="127.0.0.1", port=port, tls=TlsSettings(policy="none"),
                                 helo_name="bench.example")
    print(gateway.__file__, flush=True)
    loop = asyncio.get_running_loop()
    messages: dict[int, list[bytes]] = {}
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        size, count = map(int, line.split())
        if size not in messages:
            messages[size] = [bench_message(0, i, body_lines(size)) for i in range(count)]
            for data in messages[size][:200]:  # warm-up
                await session.send(SENDER, [RECIPIENT], data)
        batch = messages[size][:count]
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for data in batch:
            results = await session.send(SENDER, [RECIPIENT], data)
            assert all(r.ok for r in results.values()), results
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        print(f"{cpu / count * 1000:.6f} {wall / count * 1000:.6f}", flush=True)
    await session.quit()


def _child(tree: str, port: int, event_loop: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=tree)
    proc = subprocess.Popen([sys.executable, __file__, "--child", tree, str(port), "--event-loop", event_loop],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=tree)
    assert proc.stdout is not None
    imported = proc.stdout.readline().strip()
    if not imported.startswith(str(Path(tree).resolve())):
        proc.kill()
        raise SystemExit(f"the child for {tree} imported gateway from {imported!r}")
    return proc


def _round(proc: subprocess.Popen[str], size: int, count: int) -> tuple[float, float]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(f"{size} {count}\n")
    proc.stdin.flush()
    cpu, wall = proc.stdout.readline().split()
    return float(cpu), float(wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="/work/main", help="the tree whose gateway/ is the baseline")
    parser.add_argument("--sizes", default="1KB,20KB")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--event-loop", choices=("asyncio", "uvloop"), default="uvloop")
    parser.add_argument("--json", default=default_json("client_send"))
    parser.add_argument("--child", nargs=2, metavar=("TREE", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.event_loop == "uvloop":
        import uvloop
        uvloop.install()
    if args.child:
        asyncio.run(_serve_child(int(args.child[1]), args.event_loop))
        return
    trees = {"base": str(Path(args.base).resolve()), "new": str(BENCH.parent)}
    document: dict[str, object] = {"machine": machine(), "args": vars(args), "rows": []}
    with tempfile.TemporaryDirectory() as work:
        sink = BenchSink(Path(work)).start()
        procs: dict[str, subprocess.Popen[str]] = {}
        try:
            procs = {name: _child(tree, sink.port, args.event_loop) for name, tree in trees.items()}
            print(f"load average {loadavg():.2f}; {args.event_loop}; median of {args.rounds} rounds of "
                  f"{args.count}, alternating; base = {trees['base']}", flush=True)
            rows: list[list[object]] = []
            rounds: dict[str, dict[str, list[float]]] = {}
            for name in args.sizes.split(","):
                per: dict[str, list[tuple[float, float]]] = {way: [] for way in procs}
                for i in range(args.rounds):
                    order = list(procs) if i % 2 == 0 else list(reversed(procs))
                    for way in order:
                        per[way].append(_round(procs[way], SIZES[name], args.count))
                base_cpu = statistics.median(c for c, _ in per["base"])
                new_cpu = statistics.median(c for c, _ in per["new"])
                rows.append([name, base_cpu, new_cpu, new_cpu / base_cpu,
                             statistics.median(w for _, w in per["base"]),
                             statistics.median(w for _, w in per["new"])])
                rounds[name] = {way: [round(c, 4) for c, _ in figures] for way, figures in per.items()}
            print_table(["size", "base CPU ms/msg", "new CPU ms/msg", "new/base", "base wall ms/msg",
                         "new wall ms/msg"], rows, digits=3)
            for name, ways in rounds.items():
                print(f"{name} CPU ms/msg per round: " + "; ".join(f"{way} {ways[way]}" for way in ways), flush=True)
            document["rows"] = rows
            document["rounds"] = rounds
        finally:
            for proc in procs.values():
                if proc.stdin is not None:
                    proc.stdin.close()
            for proc in procs.values():
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            sink.stop()
    document["loadavg_end"] = loadavg()
    print(f"load average {loadavg():.2f}")
    write_json(args.json, document)


if __name__ == "__main__":
    main()
