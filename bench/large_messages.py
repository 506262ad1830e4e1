"""Large messages (1, 10, 50 MB) through the gateway: time and PEAK RSS against the message size.

For each size and mode, a FRESH gateway process (so its VmHWM, the peak resident set from
/proc/<pid>/status, belongs to that one message) receives one message from our client on its relay
listener (plain SMTP, 127.0.0.0/8 allowed) and delivers it to our sink:
- ``plain``: no [policy] (relay mode: SMTP + spool + delivery), the baseline in the same run;
- ``smime``: signed with the TEST organisation key (soft) and encrypted (AES-256-CBC) to the TEST
  recipient certificate from the directory.

Reported: time to the 250 after DATA (transfer + fsync), accept→delivered, VmRSS when idle, VmHWM
after delivery, and (VmHWM − idle RSS) / message size: how many copies of the message the process held
at its peak; the same ratio read right after the 250 shows what receiving took (the SMTP DATA read
and the spool's accept; the pipeline or delivery may have begun by then). CPU seconds of the gateway process per
message too. Meanwhile a probe connects to the same listener every 100 ms and times the 220
greeting: the slowest one shows how long the event loop was blocked (no other client served) while
this message was received and processed.

Usage: .venv/bin/python bench/large_messages.py [--quick] [--json FILE] [--sizes 1,10,50] [--modes plain,smime]
       [--timeline]   (VmRSS sampled every 2 ms and printed per 50 ms: where the peak is)
No thresholds, no asserts.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _support import (  # noqa: E402 - bench/ is not a package
    BenchSink,
    GatewayProcess,
    body_lines,
    build_pki,
    default_json,
    loadavg,
    machine,
    print_table,
    proc_status_kb,
    proc_tree_cpu_seconds,
    send_load,
    write_gateway_config,
    write_json,
)

MB = 1_000_000


class BannerProbe(threading.Thread):
    """Connects to the listener every 100 ms and times the 220 greeting: a blocked event loop shows here."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop_event = threading.Event()
        self.samples: list[float] = []

    def run(self) -> None:
        while not self.stop_event.is_set():
            t = time.monotonic()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=60) as sock:
                    sock.settimeout(60)
                    sock.recv(512)
                    self.samples.append(time.monotonic() - t)
                    sock.sendall(b"QUIT\r\n")
            except OSError:
                self.samples.append(float("inf"))
            self.stop_event.wait(0.1)

    def stop(self) -> list[float]:
        self.stop_event.set()
        self.join(70)
        return self.samples


class RssTimeline(threading.Thread):
    """VmRSS of the gateway every ~2 ms (``--timeline``): where in the message's way the peak is."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.stop_event = threading.Event()
        self.samples: list[tuple[float, int]] = []

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.samples.append((time.monotonic(), proc_status_kb(self.pid, "VmRSS")))
            except OSError:
                return
            self.stop_event.wait(0.002)

    def stop(self) -> list[tuple[float, int]]:
        self.stop_event.set()
        self.join(10)
        return self.samples


def print_timeline(samples: list[tuple[float, int]], t0: float, marks: dict[str, float], idle_kb: int,
                   size: int, step: float = 0.05) -> None:
    """The RSS over idle per message size, the highest sample of every `step` seconds, with the marks."""
    buckets: dict[int, int] = {}
    for t, kb in samples:
        key = int((t - t0) / step)
        buckets[key] = max(buckets.get(key, 0), kb)
    labels = {int((t - t0) / step): name for name, t in marks.items()}
    for key in sorted(buckets):
        ratio = max(0, buckets[key] - idle_kb) * 1024 / size
        print(f"    {key * step:6.2f}s {ratio:5.2f}x {'#' * int(ratio * 20)} {labels.get(key, '')}")


def one(mode: str, size_mb: int, work: Path, sink: BenchSink, pki: object | None, seq: int,
        max_wait: float, timeline: bool = False) -> dict:
    setup = write_gateway_config(work / f"gw-{mode}-{size_mb}", sink.port, pki=pki if mode == "smime" else None,
                                 max_message_size="200MB")
    body = body_lines(size_mb * MB)
    sink.reset()
    with GatewayProcess(setup, workers=1) as gw:  # one process: its VmHWM is the message's (a master holds none)
        time.sleep(0.5)  # let start-up settle before reading the idle RSS
        idle_kb = proc_status_kb(gw.pid, "VmRSS")
        hwm_start_kb = proc_status_kb(gw.pid, "VmHWM")
        cpu0 = proc_tree_cpu_seconds(gw.pid)
        probe = BannerProbe(setup.relay_port)
        probe.start()
        rss = RssTimeline(gw.pid) if timeline else None
        if rss is not None:
            rss.start()
        t0 = time.monotonic()
        load = send_load(setup.relay_port, 1, 1, body, first_seq=seq, timeout=max_wait)
        t_accept = time.monotonic()
        hwm_250_kb = proc_status_kb(gw.pid, "VmHWM")  # the peak while receiving (delivery may have begun)
        delivered = sink.wait_for(1, max_wait)
        t_done = time.monotonic()
        banners = probe.stop()
        samples = rss.stop() if rss is not None else []
        hwm_kb = proc_status_kb(gw.pid, "VmHWM")
        rss_after_kb = proc_status_kb(gw.pid, "VmRSS")
        cpu = proc_tree_cpu_seconds(gw.pid) - cpu0
    size = len(body)
    peak_extra = max(0, hwm_kb - idle_kb) * 1024
    if samples:
        print_timeline(samples, t0, {"<- 250": t_accept, "<- delivered": t_done}, idle_kb, size)
    row = {"mode": mode, "size_mb": size_mb, "bytes": size, "accepted": load.accepted, "errors": load.errors[:3],
           "delivered": delivered, "accept_s": t_accept - t0, "accept_to_delivered_s": t_done - t_accept,
           "total_s": t_done - t0, "idle_rss_kb": idle_kb, "hwm_at_start_kb": hwm_start_kb, "vmhwm_kb": hwm_kb,
           "rss_after_kb": rss_after_kb, "peak_over_idle_per_msg_size": peak_extra / size,
           "vmhwm_at_250_kb": hwm_250_kb, "peak_at_250_per_msg_size": max(0, hwm_250_kb - idle_kb) * 1024 / size,
           "cpu_s": cpu, "loadavg_1min_before": None, "banner_probes": len(banners),
           "banner_max_s": max(banners) if banners else None}
    print(f"  {mode:5} {size_mb:3} MB: {'delivered' if delivered else 'NOT delivered'} in {row['total_s']:.2f}s, "
          f"VmHWM {hwm_kb / 1024:.0f} MiB (idle {idle_kb / 1024:.0f} MiB) → "
          f"{row['peak_over_idle_per_msg_size']:.1f}× the message ({row['peak_at_250_per_msg_size']:.1f}× at the 250)",
          flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 and 5 MB only")
    ap.add_argument("--json", default=default_json("large_messages"))
    ap.add_argument("--sizes", default=None, help="comma list of sizes in MB (default 1,10,50)")
    ap.add_argument("--max-wait", type=float, default=180.0)
    ap.add_argument("--timeline", action="store_true", help="sample VmRSS every 2 ms and print it (the peak's place)")
    ap.add_argument("--modes", default="plain,smime", help="comma list of plain, smime")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in (args.sizes or ("1,5" if args.quick else "1,10,50")).split(",") if s]
    print(f"large messages: sizes {sizes} MB, a fresh gateway process per message", flush=True)
    work = Path(tempfile.mkdtemp(prefix="msgw-bench-large-"))
    sink = BenchSink(work)
    rows: list[dict] = []
    try:
        sink.start()
        pki = build_pki(work)
        seq = 0
        for size in sizes:
            for mode in args.modes.split(","):
                load1 = loadavg()
                row = one(mode, size, work, sink, pki, seq, args.max_wait, args.timeline)
                row["loadavg_1min_before"] = load1
                rows.append(row)
                seq += 1
                shutil.rmtree(work / f"gw-{mode}-{size}", ignore_errors=True)
    finally:
        records = sink.stop()
        shutil.rmtree(work, ignore_errors=True)
    out_sizes = {r[0]: r[3] for r in records}
    for i, row in enumerate(rows):
        row["delivered_bytes"] = out_sizes.get(i)
    table = print_table(
        ["mode", "size MB", "to 250 (s)", "accept→delivered (s)", "total (s)", "CPU (s)", "idle RSS MiB",
         "VmHWM MiB", "(HWM − idle) / size", "same at the 250", "out bytes / in", "slowest 220 greeting meanwhile (s)"],
        [[r["mode"], r["size_mb"], r["accept_s"], r["accept_to_delivered_s"], r["total_s"], r["cpu_s"],
          r["idle_rss_kb"] / 1024, r["vmhwm_kb"] / 1024, r["peak_over_idle_per_msg_size"],
          r["peak_at_250_per_msg_size"],
          (r["delivered_bytes"] / r["bytes"]) if r.get("delivered_bytes") else None, r["banner_max_s"]]
         for r in rows], 2)
    write_json(args.json, {"benchmark": "large_messages", "machine": machine(), "quick": args.quick,
                           "rows": rows, "table": table})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
