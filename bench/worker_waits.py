"""Where do the gateway's workers wait? Per worker process and per thread: CPU per message, how
busy each thread was (CPU seconds / wall seconds), and how the load's sessions were spread over
the workers; optionally a `py-spy record --idle` of one worker meanwhile.

Why: a closed loop of C sessions that keeps 1.2 of 2 cores busy waits somewhere; the busy
fraction of each worker's event-loop thread and the sessions each worker got tell whether it is
the spread of connections (SO_REUSEPORT hashes C sessions over N sockets), a thread hand-off, or
the disk. No thresholds: figures only (run it on a quiet machine and compare revisions).

    .venv/bin/python bench/worker_waits.py [--size 1024] [--count 2000] [--concurrency 10]
                                           [--workers 2] [--plain] [--pyspy FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._support import (  # noqa: E402
    CLK_TCK,
    BenchSink,
    GatewayProcess,
    body_lines,
    build_pki,
    loadavg,
    self_cpu_seconds,
    send_load,
    sessions_by_pid,
    system_busy_seconds,
    write_gateway_config,
)


def children(pid: int) -> list[int]:
    """The worker processes: children of any of the master's threads (a worker restarted by the
    supervisor thread is that thread's child, not the main thread's)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    return sorted(out)


def user_sys(pid: int) -> tuple[float, float]:
    """The process's user and kernel CPU seconds (fsyncs, sockets and page cache are kernel time)."""
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK
    return 0.0, 0.0


def threads(pid: int) -> dict[str, tuple[float, float]]:
    """Per thread kind (the event loop's "main", the others added up): CPU seconds, and seconds
    spent runnable but waiting for a core (`/proc/<tid>/schedstat`: the machine's run queue)."""
    out: dict[str, tuple[float, float]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            sched = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
            key = "main" if tid == str(pid) else "other threads"
            cpu, queued = out.get(key, (0.0, 0.0))
            out[key] = (cpu + (int(fields[11]) + int(fields[12])) / CLK_TCK, queued + int(sched[1]) / 1e9)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--plain", action="store_true", help="crypto off (no [policy])")
    ap.add_argument("--pyspy", help="py-spy record --nonblocking of worker 0 into this file "
                    "(.json speedscope, .txt collapsed stacks, else svg)")
    ap.add_argument("--pyspy-mode", choices=("idle", "active", "gil"), default="idle",
                    help="idle: every thread's samples, waiting included (where it waits); active: only "
                    "threads on a core (where the CPU goes); gil: only the thread holding the GIL")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="msgw-waits-"))
    sink = BenchSink(work).start()
    try:
        pki = None if args.plain else build_pki(work / "pki")
        setup = write_gateway_config(work / "gw", sink.port, pki=pki)
        body = body_lines(args.size)
        with GatewayProcess(setup, workers=args.workers) as gw:
            send_load(setup.relay_port, 200, args.concurrency, body, first_seq=0, timeout=60)  # warm-up
            sink.wait_for(200, 30)
            sink.reset()
            pids = children(gw.pid) or [gw.pid]
            spread: dict[int, int] = {}

            def watch() -> None:
                time.sleep(0.5)
                spread.update(sessions_by_pid(setup.relay_port))

            spy = None
            if args.pyspy:
                fmt = {".json": "speedscope", ".txt": "raw"}.get(Path(args.pyspy).suffix, "flamegraph")
                mode = {"idle": ["--idle"], "active": [], "gil": ["--gil"]}[args.pyspy_mode]
                spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", *mode, "--threads",
                                        "--nonblocking", "-r", "200", "-f", fmt, "-o", args.pyspy,
                                        "-p", str(pids[0])],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)
            before = {p: threads(p) for p in pids}
            us0 = {p: user_sys(p) for p in pids}
            busy0, self0 = system_busy_seconds(), self_cpu_seconds()
            load = time.monotonic()
            watcher = threading.Thread(target=watch)
            watcher.start()
            result = send_load(setup.relay_port, args.count, args.concurrency, body, first_seq=10_000, timeout=180)
            sink.wait_for(result.accepted, 60)
            wall = time.monotonic() - load
            machine, harness = system_busy_seconds() - busy0, self_cpu_seconds() - self0
            after = {p: threads(p) for p in pids}
            us1 = {p: user_sys(p) for p in pids}
            watcher.join()
            if spy is not None:
                spy.send_signal(2)
                spy.wait(30)
        n = result.accepted
        print(f"{args.size} B, {'plain' if args.plain else 'sign+encrypt'}, C={args.concurrency}, "
              f"{len(pids)} workers: {n} msgs in {wall:.2f} s = {n / wall:.0f} msg/s, load average {loadavg():.2f}")
        total = 0.0
        for p in pids:
            used = {k: (v[0] - before[p].get(k, (0.0, 0.0))[0], v[1] - before[p].get(k, (0.0, 0.0))[1])
                    for k, v in after[p].items()}
            cpu = sum(v[0] for v in used.values())
            total += cpu
            user, kernel = (us1[p][0] - us0[p][0]), (us1[p][1] - us0[p][1])
            print(f"  worker pid {p}: sessions {spread.get(p, 0)}, CPU {cpu / wall:.2f} cores "
                  f"(user {user * 1000 / max(n, 1):.2f}, kernel {kernel * 1000 / max(n, 1):.2f} ms/msg)")
            for name, (v, queued) in sorted(used.items()):
                print(f"    {name:14} on a core {v / wall:5.1%} ({v * 1000 / max(n, 1):.2f} ms/msg), "
                      f"runnable waiting for a core {queued / wall:5.1%}")
        print(f"  gateway: {total * 1000 / max(n, 1):.2f} ms CPU/msg, {total / wall:.2f} cores busy; "
              f"machine {machine / wall:.2f} of {os.cpu_count()} cores busy (load client {harness / wall:.2f}, "
              f"anything else {(machine - total - harness) / wall:.2f}, the sink included)")
    finally:
        sink.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
