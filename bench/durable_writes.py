"""Durable writes per message: what one gateway worker does to the disk for each message it signs,
encrypts and relays (fsyncs by file, SQLite WAL writes, file creates/renames/unlinks, audit records
and batches), and its CPU per message.

Why a bench of its own: issue 15's "fewer durable writes" item is judged by counts, which a busy
shared machine does not disturb, more than by a throughput it does. Two runs against one gateway
(`msgw serve --workers 1`, sign+encrypt, 1 KB): one with `strace -f -y` attached to every thread
(counts only: strace slows everything), one without (CPU per message of the process tree).

    .venv/bin/python bench/durable_writes.py --count 500
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _support import (  # noqa: E402
    BenchSink,
    GatewayProcess,
    body_lines,
    build_pki,
    proc_tree_cpu_seconds,
    send_load,
    write_gateway_config,
)

TRACED = "fsync,fdatasync,rename,renameat,renameat2,openat,unlink,unlinkat,pwrite64,write,flock"
#: `--perf`: counted by kernel tracepoints (`perf stat`), nearly free: counts at full speed, no paths.
PERF_EVENTS = ("fsync", "fdatasync", "rename", "renameat2", "unlink", "unlinkat", "flock", "pwrite64")
_LINE = re.compile(r"^(?:\[pid\s+\d+\]\s+)?(?:\d+\s+)?(\w+)\((.*)\)\s+=\s+(-?\d+)")


def _kind(path: str) -> str:
    """A traced path as a category (the spool's folders, the WAL, the audit trail)."""
    rel = path.partition("/gw-smime/")[2]
    for key, name in (("queue.sqlite-wal", "wal"), ("queue.sqlite-shm", "shm"), ("queue.sqlite", "db"),
                      ("audit.jsonl.head", "audit-head"), ("audit.jsonl", "audit"), ("spool/tmp/", "spool-tmp"),
                      ("spool/msg/", "msg"), ("spool/copy/", "copy")):
        if key in rel:
            return name
    if rel in ("spool/msg", "spool/copy", "spool/tmp", "spool", ""):
        return "dir " + (rel or "gw")
    return "other " + rel[:20]


def summarise(trace: Path, messages: int) -> dict[str, float]:
    """Per message: each (syscall, category) count, from `strace -y` lines."""
    counts: collections.Counter[str] = collections.Counter()
    unfinished: dict[str, str] = {}
    for raw in trace.read_text(errors="replace").splitlines():
        pid, _, rest = raw.partition(" ")
        rest = rest.lstrip()
        if rest.endswith("<unfinished ...>"):
            unfinished[pid] = rest[:-len("<unfinished ...>")]
            continue
        resumed = re.match(r"<\.\.\. \w+ resumed>(.*)", rest)
        if resumed:
            rest = unfinished.pop(pid, "") + resumed.group(1)
        line = rest
        m = _LINE.match(line)
        if not m or int(m.group(3)) < 0:
            continue
        call, args = m.group(1), m.group(2)
        if call in ("write", "pwrite64", "fsync", "fdatasync", "flock"):
            fd = re.match(r"\d+<([^>]*)>", args)
            if not fd or "socket" in fd.group(1) or "pipe" in fd.group(1) or "anon_inode" in fd.group(1):
                continue
            counts[f"{call} {_kind(fd.group(1))}"] += 1
        elif call == "openat":
            if "O_CREAT" not in args:
                continue
            path = re.search(r'"([^"]*)"', args)
            counts[f"create {_kind(path.group(1) if path else '')}"] += 1
        elif call.startswith("rename"):
            paths = re.findall(r'"([^"]*)"', args)
            counts[f"rename →{_kind(paths[-1]) if paths else ''}"] += 1
        elif call.startswith("unlink"):
            path = re.search(r'"([^"]*)"', args)
            counts[f"unlink {_kind(path.group(1) if path else '')}"] += 1
    return {k: v / messages for k, v in sorted(counts.items())}


def _threads(pid: int) -> list[str]:
    return sorted(os.listdir(f"/proc/{pid}/task"))


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of a process (Python does not name them: name/tid)."""
    out: collections.Counter[str] = collections.Counter()
    tick = os.sysconf("SC_CLK_TCK")
    for tid in _threads(pid):
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[f"{name}/{tid}"] += (int(fields[11]) + int(fields[12])) / tick
    return dict(out)


def _perf_counts(pid: int, run: Callable[[], None], messages: int) -> dict[str, float]:
    """Syscalls of every thread of `pid` while `run()` runs, per message, by `perf stat`."""
    events = ",".join(f"syscalls:sys_enter_{e}" for e in PERF_EVENTS)
    tids = ",".join(_threads(pid))
    perf = subprocess.Popen(["perf", "stat", "-x", ",", "-e", events, "-t", tids], stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    run()
    time.sleep(0.5)
    perf.send_signal(signal.SIGINT)
    _, err = perf.communicate(timeout=30)
    out = {}
    for line in err.splitlines():
        parts = line.split(",")
        if len(parts) > 2 and parts[2].startswith("syscalls:sys_enter_") and parts[0].isdigit():
            out[parts[2].removeprefix("syscalls:sys_enter_")] = int(parts[0]) / messages
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=10)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--no-strace", action="store_true", help="CPU only")
    ap.add_argument("--perf", action="store_true", help="count syscalls with perf stat (full speed, no paths)")
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="msgw-bench-durable-"))
    sink = BenchSink(work)
    body = body_lines(args.size)
    out: dict[str, object] = {"count": args.count, "size": args.size}
    try:
        sink.start()
        setup = write_gateway_config(work / "gw-smime", sink.port, pki=build_pki(work))
        with GatewayProcess(setup, 1) as gw:
            seq = 0

            def load(n: int) -> None:
                nonlocal seq
                sink.reset()
                res = send_load(setup.relay_port, n, args.concurrency, body, first_seq=seq, timeout=120)
                seq += n + 1000
                if not sink.wait_for(res.accepted, 120) or res.accepted != n:
                    raise SystemExit(f"only {res.accepted}/{n} accepted or not all delivered")

            load(100)  # warm up: connections, caches, the first WAL pages
            cpu0, threads0 = proc_tree_cpu_seconds(gw.pid), thread_cpu(gw.pid)
            t0 = time.monotonic()
            load(args.count)
            out["cpu_ms_per_msg"] = (proc_tree_cpu_seconds(gw.pid) - cpu0) * 1000 / args.count
            per_thread = [(v - threads0.get(k, 0.0)) * 1000 / args.count for k, v in thread_cpu(gw.pid).items()]
            out["busiest_threads_cpu_ms_per_msg"] = sorted((round(v, 2) for v in per_thread if v > 0), reverse=True)
            out["msgs_s_untraced"] = args.count / (time.monotonic() - t0)
            audit = setup.folder / "audit.jsonl"
            if args.perf:
                out["perf_per_msg"] = _perf_counts(gw.pid, lambda: load(args.count), args.count)
            if not args.no_strace:
                trace = work / "strace.txt"
                tids = _threads(gw.pid)
                command = ["strace", "-f", "-y", "-qq", "-s", "0", "-e", f"trace={TRACED}", "-o", str(trace)]
                strace = subprocess.Popen([*command, *[a for t in tids for a in ("-p", t)]], stderr=subprocess.DEVNULL)
                time.sleep(1.0)
                lines0 = _lines(audit)
                t0 = time.monotonic()
                load(args.count)
                out["msgs_s_traced"] = args.count / (time.monotonic() - t0)
                time.sleep(0.5)  # the audit writer's last batch
                strace.send_signal(signal.SIGINT)
                strace.wait(timeout=30)
                out["audit_records_per_msg"] = (_lines(audit) - lines0) / args.count
                out["per_msg"] = summarise(trace, args.count)
    finally:
        sink.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


def _lines(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            return sum(1 for _ in fh)
    except FileNotFoundError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
