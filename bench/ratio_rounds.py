"""The gateway beside Postfix in alternating rounds: issue 15's ratios as medians, every round shown.

Why: `relay_throughput.py` runs each target once, one after the other (Postfix, then the plain
gateway, then the signing one), minutes apart. On a shared 2-core VM the machine's speed drifts by
more than the effects being measured: on 2026-12-04 Postfix went from 794 to 504 msg/s within five
minutes, and the same gateway revision measured 336–505 msg/s in back-to-back runs. Here the three
targets run side by side (an idle one costs nothing), and each round sends the same closed-loop
load to Postfix, the signing gateway and the plain gateway in turn (the order rotates every round),
so each round's ratios come from runs seconds apart; the medians over the rounds are the figures.

Same load, client, sink and CPU accounting as `relay_throughput.py` (its `Runner`), the same
gateway configurations (`_support.write_gateway_config`), 2 worker processes by default (one per
core). Each target first gets `--warm-up` unrecorded messages. No thresholds: a table and JSON.

    .venv/bin/python bench/ratio_rounds.py [--sizes 1KB,20KB] [--count 2000] [--rounds 5] [--warm-up 500]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _support import (  # noqa: E402 - bench/ is not a package
    BenchSink,
    GatewayProcess,
    PostfixInstance,
    build_pki,
    default_json,
    loadavg,
    machine,
    print_table,
    write_gateway_config,
    write_json,
)
from relay_throughput import SIZES, Runner, stop_all, summarise  # noqa: E402

TARGETS = ("postfix", "gw-smime", "gw-plain")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1KB,20KB", help="comma list among " + ",".join(SIZES))
    ap.add_argument("--count", type=int, default=2000, help="messages per size, target and round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warm-up", type=int, default=500, help="unrecorded 1 KB messages through each target first")
    ap.add_argument("--concurrency", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2, help="msgw serve --workers N")
    ap.add_argument("--max-wait", type=float, default=180.0)
    ap.add_argument("--json", default=default_json("ratio_rounds"))
    args = ap.parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    print(f"ratio rounds: sizes {sizes}, {args.count} messages per size, target and round, {args.rounds} rounds, "
          f"C={args.concurrency}, {args.workers} workers, load average {loadavg():.2f}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="msgw-bench-rounds-"))
    sink = BenchSink(work)
    runner = Runner(sink, args.concurrency, args.max_wait)
    postfix: PostfixInstance | None = None
    try:
        sink.start()
        postfix = PostfixInstance(sink.port).start()
        plain = write_gateway_config(work / "gw-plain", sink.port)
        smime = write_gateway_config(work / "gw-smime", sink.port, pki=build_pki(work))
        with GatewayProcess(plain, args.workers) as gw_plain, GatewayProcess(smime, args.workers) as gw_smime:
            targets = {"postfix": (postfix.port, None), "gw-smime": (smime.relay_port, gw_smime.pid),
                       "gw-plain": (plain.relay_port, gw_plain.pid)}
            for name, (port, _pid) in targets.items():
                runner.warm_up(name, port, args.warm_up)
            for n in range(args.rounds):
                order = TARGETS[n % len(TARGETS):] + TARGETS[:n % len(TARGETS)]
                print(f"round {n + 1}: {', '.join(order)}", flush=True)
                for size in sizes:
                    for name in order:
                        port, pid = targets[name]
                        runner.run(name, size, port, args.count, pid)
                        runner.runs[-1]["round"] = n
    finally:
        records = stop_all(sink, postfix, work)

    results = summarise(runner.runs, records)
    by = {(r["target"], r["size"], r["round"]): r for r in results}
    per_round = []
    for size in sizes:
        for n in range(args.rounds):
            pf, sm, pl = (by[(t, size, n)] for t in TARGETS)
            per_round.append([size, n + 1, pf["msgs_s"], sm["msgs_s"], pl["msgs_s"], sm["msgs_s"] / pf["msgs_s"],
                              pl["msgs_s"] / pf["msgs_s"], pf["cpu_ms_per_msg_target"],
                              sm["cpu_ms_per_msg_gateway_proc"], pl["cpu_ms_per_msg_gateway_proc"]])
    print("\nEach round (msgs/s: accept of the first message → arrival of the last; CPU ms per message: Postfix "
          "machine − harness, the gateways their process trees)")
    table1 = print_table(["size", "round", "postfix", "gw sign+enc", "gw plain", "sign+enc/postfix",
                          "plain/postfix", "postfix CPU", "sign+enc CPU", "plain CPU"], per_round, 2)
    medians = []
    for size in sizes:
        rows = [r for r in per_round if r[0] == size]
        medians.append([size, len(rows), *(statistics.median(r[i] for r in rows) for i in range(2, 10)),
                        min(r[5] for r in rows), max(r[5] for r in rows)])
    print("\nMedians over the rounds")
    table2 = print_table(["size", "rounds", "postfix", "gw sign+enc", "gw plain", "sign+enc/postfix", "plain/postfix",
                          "postfix CPU", "sign+enc CPU", "plain CPU", "sign+enc/postfix min", "max"], medians, 2)
    write_json(args.json, {"machine": machine(), "args": vars(args), "runs": results, "tables": [table1, table2]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
