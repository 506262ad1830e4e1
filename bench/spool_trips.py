"""The queue's bookkeeping per delivered message: executor trips, spool transactions (durable
ones: one WAL fsync each), Python-level fsyncs and CPU, in the delivery manager's real path
(`DeliveryManager.run_once` over a real `Spool`, to our SMTP sink in its own process).

Why: issue 15's "fewer transactions and trips per message" is judged by counts, which a busy
shared machine does not disturb; the CPU column shows what they cost. The same scenario runs in
child processes importing `gateway` from this tree and from `--base` (another worktree, default
/work/main), alternating rounds; the counts are per delivered message of the delivery phase only
(the accepts before it are not counted), CPU is `time.process_time()` of the child (all threads,
the sink excluded), the best and the median of the rounds.

    .venv/bin/python bench/spool_trips.py [--count 400] [--rounds 5] [--base /work/main] [--size 1024]

Two phases per round, each with its own table: the accepts (`Spool.accept` from 6 threads, as
concurrent SMTP sessions' executor calls: group commit at work), then the deliveries. "durable tx"
counts COMMITs run with synchronous=FULL (SQLite fsyncs its WAL once per such commit); "tx" every
BEGIN IMMEDIATE; "py fsync" and "rename" the `os.fsync`/`os.replace` calls made from Python (the
message files, the `msg/` folder). Per message, so a group commit shows below 1. No thresholds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _support import (  # noqa: E402
    RECIPIENT,
    SENDER,
    BenchSink,
    bench_message,
    body_lines,
    default_json,
    machine,
    print_table,
    write_gateway_config,
    write_json,
)

HERE = Path(__file__).resolve().parents[1]


def child(count: int, size: int, sink_port: int, folder: Path) -> dict[str, float]:
    """One round in this process, with whatever `gateway` is on sys.path."""
    import asyncio
    import time
    from concurrent.futures import ThreadPoolExecutor

    import gateway
    from gateway.config import load_config
    from gateway.runner import QueueService
    from gateway.spool import Spool

    setup = write_gateway_config(folder, sink_port)
    config = load_config(setup.config)
    spool = Spool(config.spool.path).open()
    spool.prepare_on_accept = "as-is"  # the plain relay: accepted as its own prepared copy
    body = body_lines(size)
    messages = [bench_message(0, seq, body) for seq in range(count)]
    service = QueueService(config, spool)
    counts = {"trips": 0, "tx": 0, "durable": 0, "fsync": 0, "rename": 0}
    relaxed = [False]

    def trace(sql: str) -> None:
        if sql == "PRAGMA synchronous=NORMAL":
            relaxed[0] = True
        elif sql == "PRAGMA synchronous=FULL":
            relaxed[0] = False
        elif sql == "BEGIN IMMEDIATE":
            counts["tx"] += 1
        elif sql == "COMMIT" and not relaxed[0]:
            counts["durable"] += 1

    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        counts["fsync"] += 1
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        counts["rename"] += 1
        real_replace(src, dst)

    class Counting(ThreadPoolExecutor):
        def submit(self, *args, **kwargs):  # type: ignore[no-untyped-def, override]
            counts["trips"] += 1
            return super().submit(*args, **kwargs)

    def taken(phase: str, cpu: float, n: int) -> dict[str, float]:
        out = {f"{phase}_{k}": v / max(n, 1) for k, v in counts.items()}
        out[f"{phase}_cpu_ms"] = cpu * 1000 / max(n, 1)
        for k in counts:
            counts[k] = 0
        return out

    def accept_all() -> None:
        """Six threads, as concurrent SMTP sessions' executor calls: group commit at work."""
        with ThreadPoolExecutor(max_workers=6) as pool:
            list(pool.map(lambda m: spool.accept(SENDER, [RECIPIENT], m, lifetime=3600), messages))

    async def deliver() -> int:
        asyncio.get_running_loop().set_default_executor(Counting(max_workers=8))
        done = 0
        while done < count:
            n = await service.delivery.run_once()
            if not n:
                break
            done += n
        return done

    spool.db.set_trace_callback(trace)
    os.fsync, os.replace = fsync, replace  # type: ignore[assignment]
    try:
        started = time.process_time()
        accept_all()
        result = taken("accept", time.process_time() - started, count)
        started = time.process_time()
        done = asyncio.run(deliver())
        result |= taken("deliver", time.process_time() - started, done)
    finally:
        os.fsync, os.replace = real_fsync, real_replace
        spool.db.set_trace_callback(None)
    left = len(spool.list())
    spool.close()
    return {"delivered": done, "left": left, **result, "gateway": str(Path(gateway.__file__).parent)}


def run_child(tree: Path, count: int, size: int, sink_port: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="spool-trips-") as tmp:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        out = subprocess.run([sys.executable, __file__, "--child", str(count), str(size), str(sink_port), tmp],
                             env=env, cwd=tree, capture_output=True, text=True, timeout=600, check=False)
        if out.returncode:
            raise SystemExit(f"child ({tree}) failed:\n{out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        count, size, port = (int(a) for a in sys.argv[2:5])
        print(json.dumps(child(count, size, port, Path(sys.argv[5]))))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=400)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--base", default="/work/main")
    ap.add_argument("--json", default=default_json("spool_trips"))
    args = ap.parse_args()
    trees = {"base": Path(args.base).resolve(), "new": HERE}
    results: dict[str, list[dict[str, float]]] = {"base": [], "new": []}
    with tempfile.TemporaryDirectory(prefix="spool-trips-sink-") as tmp:
        sink = BenchSink(Path(tmp)).start()
        try:
            for n in range(args.rounds):
                for name in (("base", "new") if n % 2 == 0 else ("new", "base")):
                    sink.reset()
                    results[name].append(run_child(trees[name], args.count, args.size, sink.port))
        finally:
            sink.stop()
    print(f"{args.count} messages of {args.size} B per round, {args.rounds} rounds each, alternating")
    for phase, what in (("deliver", "delivery bookkeeping, per delivered message"),
                        ("accept", "accept() from 6 threads, per message")):
        rows = []
        for name in ("base", "new"):
            rs = results[name]
            cpu = [r[f"{phase}_cpu_ms"] for r in rs]
            first = rs[0]
            rows.append([f"{name} ({first['gateway']})", *(first[f"{phase}_{k}"] for k in
                         ("trips", "tx", "durable", "fsync", "rename")), min(cpu), statistics.median(cpu)])
        print(f"\n{what}")
        print_table(["tree", "executor trips", "tx", "durable tx", "py fsync", "rename", "CPU ms best",
                     "CPU ms median"], rows, digits=3)
        base_cpu = statistics.median(r[f"{phase}_cpu_ms"] for r in results["base"])
        new_cpu = statistics.median(r[f"{phase}_cpu_ms"] for r in results["new"])
        print(f"median CPU new/base: {new_cpu / base_cpu:.3f}")
    print(f"left in the queue after the rounds: {sum(r['left'] for rs in results.values() for r in rs)}")
    write_json(args.json, {"bench": "spool_trips", "machine": machine(), "args": vars(args), "results": results})


if __name__ == "__main__":
    main()
