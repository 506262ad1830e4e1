"""CPU of the delivery side per delivered message, in process, through the real delivery path.

Why: issue 15 (CPU per message). `DeliveryManager._send` → `_deliver_group` → `SmtpTransport`
→ the connection cache → `SmtpSession.send` → a real SMTP sink (`_support.BenchSink`, an asyncio
server on 127.0.0.1 in another process, whose CPU is not counted), with the outcome's report
(metrics, the `delivery` log line as JSON to a file at INFO, the gateway's default level).
The spool is left out: `_write` only reports (`_report`), it records nothing, so the figure is
the delivery side's own CPU (the spool transactions are measured elsewhere).

The base is another tree's code (`--base /work/main`: a child process imports `gateway` from
there) beside this tree's, in the same run: each round runs one child per tree, alternating
which goes first; a child opens its session, sends `--warmup` unrecorded messages, then
`--count` messages one after the other and reports `time.process_time()` per message (its
event-loop thread; the spool executor is not used).

    .venv/bin/python bench/delivery_manager.py [--base /work/main] [--sizes 1KB,20KB] [--count 2000] [--rounds 5]
No thresholds, no asserts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SIZES = {"1KB": 1_000, "20KB": 20_000}


def _child(tree: str, port: int, sizes: list[str], count: int, warmup: int, work: str, loop: str) -> None:
    """One tree's measurement (runs in its own process: `gateway` imported from `tree`)."""
    sys.path.insert(0, tree)
    import asyncio
    import logging
    import time

    from _support import RECIPIENT, SENDER, bench_message, body_lines, write_gateway_config

    import gateway
    from gateway.config import load_config
    from gateway.delivery.manager import DeliveryManager
    from gateway.logs import setup_logging
    from gateway.spool import PreparedCopy, QueuedMessage, QueuedRecipient, RecipientState

    assert str(Path(gateway.__file__).resolve()).startswith(str(Path(tree).resolve())), gateway.__file__
    if loop == "uvloop":
        import uvloop
        uvloop.install()
    setup = write_gateway_config(Path(work), port)
    config = load_config(setup.config)
    setup_logging("json", "INFO", Path(work) / "delivery.log")

    class Unrecorded(DeliveryManager):
        """Reports outcomes (metrics, logs) without writing them anywhere."""

        async def _write(self, msg, outcomes):  # type: ignore[no-untyped-def]
            if outcomes:
                self._report(msg, outcomes)

    def message(i: int, size: int, data: bytes) -> tuple[QueuedMessage, list]:
        now = time.time()
        rcpt = QueuedRecipient(1, f"m{i}", RECIPIENT, RecipientState.QUEUED, 0, 0.0, None, None, None, now, False,
                               copy_id=1)
        copy = PreparedCopy(1, f"m{i}", "smime", False, len(data), "copy")
        msg = QueuedMessage(f"m{i}", SENDER, len(data), now, now + 3600, "relay", "127.0.0.1", None, False, 0,
                            False, (rcpt,), (copy,))
        return msg, [(copy, data, [rcpt])]

    async def run() -> dict[str, float]:
        manager = Unrecorded(config, spool=None)  # type: ignore[arg-type]
        out = {}
        for name in sizes:
            body = body_lines(SIZES[name])
            items = [message(i, SIZES[name], bench_message(0, i, body)) for i in range(warmup + count)]
            for msg, batches in items[:warmup]:
                await manager._send(msg, batches)
            cpu0 = time.process_time()
            for msg, batches in items[warmup:]:
                await manager._send(msg, batches)
            out[name] = (time.process_time() - cpu0) / count * 1000
        await manager._close_sessions()
        return out

    logging.getLogger("gateway").setLevel(logging.INFO)
    print(json.dumps(asyncio.run(run())), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="/work/main", help="the tree whose gateway/ is the base")
    parser.add_argument("--sizes", default="1KB,20KB")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--event-loop", choices=("asyncio", "uvloop"), default="uvloop")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", nargs=3, metavar=("TREE", "PORT", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = args.sizes.split(",")
    if args.child:
        tree, port, work = args.child
        _child(tree, int(port), sizes, args.count, args.warmup, work, args.event_loop)
        return
    from _support import BenchSink, default_json, loadavg, machine, write_json

    trees = {"base": str(Path(args.base).resolve()), "new": str(HERE.parent)}
    per: dict[str, dict[str, list[float]]] = {t: {s: [] for s in sizes} for t in trees}
    with tempfile.TemporaryDirectory() as work:
        sink = BenchSink(Path(work)).start()
        try:
            load0 = loadavg()
            print(f"load average {load0:.2f}; {args.event_loop}; median of {args.rounds} rounds of {args.count} "
                  f"messages (after {args.warmup} unrecorded), one at a time on a cached session", flush=True)
            for r in range(args.rounds):
                order = list(trees) if r % 2 == 0 else list(reversed(trees))
                for name in order:
                    child_work = Path(work) / f"{name}{r}"
                    out = subprocess.run(
                        [sys.executable, __file__, "--child", trees[name], str(sink.port), str(child_work),
                         "--sizes", args.sizes, "--count", str(args.count), "--warmup", str(args.warmup),
                         "--event-loop", args.event_loop],
                        capture_output=True, text=True, timeout=600, check=False)
                    if out.returncode != 0:
                        raise SystemExit(f"{name} child failed:\n{out.stderr}")
                    for size, ms in json.loads(out.stdout.strip().splitlines()[-1]).items():
                        per[name][size].append(ms)
        finally:
            sink.stop()
    rows = []
    print("| size | base CPU ms/msg | new CPU ms/msg | new/base |\n|---|---|---|---|")
    for size in sizes:
        base, new = statistics.median(per["base"][size]), statistics.median(per["new"][size])
        rows.append({"size": size, "base_ms": base, "new_ms": new, "ratio": new / base,
                     "rounds": {t: per[t][size] for t in trees}})
        print(f"| {size} | {base:.3f} | {new:.3f} | {new / base:.2f} |", flush=True)
    load1 = loadavg()
    print(f"load average {load1:.2f}")
    write_json(args.json or default_json("delivery_manager"),
               {"machine": machine(), "base": trees["base"], "loadavg_1min": [load0, load1], "rows": rows})


if __name__ == "__main__":
    main()
