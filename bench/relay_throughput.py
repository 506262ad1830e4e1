"""Relay throughput and latency: the gateway signing + encrypting, next to Postfix, in the same run.

Every target gets the same load from the same client and delivers to the same sink:

    our asyncio client ──plain SMTP, C sessions──▶ target relay listener ──▶ our recording sink

targets, one after the other, per message size:
- ``harness``: client → sink directly (what the client and sink can do at all: the measuring ceiling);
- ``postfix``: a throw-away Postfix (temp dir, loopback ports, durable queue) relaying to the sink;
- ``gw-plain``: the gateway with no [policy] (relay mode: SMTP + fsynced spool + delivery, no crypto);
- ``gw-smime``: the gateway signing (TEST organisation key, soft) and encrypting (AES-256-CBC, RSA
  key transport) to a recipient whose TEST certificate is in the directory;
- ``gw-submit``: the same gateway on its SUBMISSION listener, as labs and mail clients use it: each
  session does STARTTLS and AUTH PLAIN (scrypt-hashed password) once, then sends its messages,
  which are signed with the authenticated sender's key and encrypted as above.

Why our client and not smtp-source: the gateway's submission listener needs STARTTLS + AUTH, which
smtp-source cannot do, so the comparison with Postfix is made on the RELAY listeners (the gateway's
allows 127.0.0.0/8, like Postfix's mynetworks), and ``gw-submit`` adds the submission path; our
client stamps each message's Message-ID with its
send time, which the gateway keeps on the outer (encrypted) message; our sink records the arrival
time. Latency = sink arrival − the client's receipt of the 250 after DATA (accept→delivered), on the
same host clock. The load is closed-loop (C sessions sending back to back), so latency includes the
queue that builds when a target accepts faster than it delivers.

CPU per message: (a) the gateway's process tree (utime+stime from /proc/<pid>/stat, threads
included: with worker processes, the master and every worker, ``--workers N`` to choose N);
(b) for every target, machine-wide busy CPU (/proc/stat) minus the client's and the sink's own CPU,
which also covers Postfix's many short-lived processes.

The crypto floor is from ``openssl speed`` (one core): one RSA-2048 signature + one RSA-2048 public
operation (key transport to one recipient) + AES-256-CBC over the message bytes.

With ``--metrics`` each gateway also gets a ``[metrics]`` listener on a free loopback port, and its
``/metrics`` is scraped before each load run, every ``--metrics-interval`` seconds during it and after
it: accepted messages, delivered/deferred/bounced recipients and the queue (issue 16: "curl on /metrics
during a bench run shows the counters moving"). A scrape costs worker 0 some CPU: compare figures
taken with ``--metrics`` only with others taken with it.

Usage: .venv/bin/python bench/relay_throughput.py [--quick] [--json FILE] [--concurrency 10] [--workers N]
       [--metrics [--metrics-interval 1]]
No thresholds, no asserts: it prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _support import (  # noqa: E402 - bench/ is not a package
    SENDER,
    SENDER_PASSWORD,
    BenchSink,
    GatewayProcess,
    PostfixInstance,
    body_lines,
    build_pki,
    default_json,
    free_port,
    loadavg,
    machine,
    percentile,
    print_table,
    proc_cpu_seconds,
    proc_tree_cpu_seconds,
    self_cpu_seconds,
    send_load,
    sessions_by_pid,
    system_busy_seconds,
    tool,
    wait_port,
    write_gateway_config,
    write_json,
)

SIZES = {"1KB": 1_000, "20KB": 20_000, "1MB": 1_000_000}
# messages per (size, target); chosen so the default run stays around 3 minutes on 2 cores
DEFAULT_COUNTS = {"1KB": 1000, "20KB": 1000, "1MB": 100}
QUICK_COUNTS = {"1KB": 100, "20KB": 100, "1MB": 10}
#: Messages sent through each freshly started target before its measured runs (`Runner.warm_up`).
WARM_UP = 40


def openssl_floor(seconds: int) -> dict[str, float | None]:
    openssl = tool("openssl")
    if openssl is None:
        return {"rsa2048_sign_s": None, "rsa2048_verify_s": None, "aes256cbc_bytes_s": None}
    rsa = subprocess.run([openssl, "speed", "-seconds", str(seconds), "rsa2048"], capture_output=True, text=True,
                         timeout=120).stdout
    aes = subprocess.run([openssl, "speed", "-seconds", str(seconds), "-bytes", "16384", "-evp", "aes-256-cbc"],
                         capture_output=True, text=True, timeout=120).stdout
    m = re.search(r"^rsa\s+2048 bits\s+\S+s\s+\S+s\s+([\d.]+)\s+([\d.]+)", rsa, re.MULTILINE)
    a = re.search(r"^AES-256-CBC\s+([\d.]+)k", aes, re.MULTILINE | re.IGNORECASE)
    return {"rsa2048_sign_s": float(m.group(1)) if m else None, "rsa2048_verify_s": float(m.group(2)) if m else None,
            "aes256cbc_bytes_s": float(a.group(1)) * 1000 if a else None}


def floor_msgs_s(floor: dict[str, float | None], size: int) -> float | None:
    sign, pub, aes = floor["rsa2048_sign_s"], floor["rsa2048_verify_s"], floor["aes256cbc_bytes_s"]
    if not (sign and pub and aes):
        return None
    return 1.0 / (1.0 / sign + 1.0 / pub + size / aes)


def add_metrics_listener(config: Path) -> str:
    """A `[metrics]` section on a free loopback port appended to a gateway's config; its /metrics URL."""
    port = free_port()
    with config.open("a", encoding="utf-8") as out:
        out.write(f'\n[metrics]\naddress = "127.0.0.1"\nport = {port}\n')
    return f"http://127.0.0.1:{port}/metrics"


def wait_metrics(url: str, timeout: float = 30.0) -> None:
    """Worker 0 starts the metrics listener after the SMTP listeners: wait for it too."""
    wait_port(int(url.rsplit(":", 1)[1].split("/", 1)[0]), timeout)


#: What the bench follows on /metrics: (key, sample name, label filter). Counters and gauges are
#: summed over the labels not filtered (listeners, domains, forms; every worker's in one scrape).
WATCHED = (("accepted", "msgw_messages_accepted_total", {}),
           ("delivered", "msgw_recipients_total", {"outcome": "delivered"}),
           ("deferred", "msgw_recipients_total", {"outcome": "deferred"}),
           ("bounced", "msgw_recipients_total", {"outcome": "bounced"}),
           ("queue", "msgw_queue_recipients", {}),
           ("oldest_s", "msgw_queue_oldest_age_seconds", {}))


def scrape(url: str) -> dict[str, float] | None:
    """The watched figures of one /metrics scrape (None when it fails: shown, never fatal)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=5) as reply:  # noqa: S310 - our loopback URL
            text = reply.read().decode()
    except OSError:
        return None
    values = dict.fromkeys((key for key, _, _ in WATCHED), 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for key, name, labels in WATCHED:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    values[key] += sample.value
    return values


def metrics_line(label: str, now: dict[str, float] | None, base: dict[str, float] | None) -> str:
    if now is None:
        return f"    /metrics {label}: scrape failed"
    def moved(key: str) -> str:
        return f"{now[key]:.0f}" + (f" (+{now[key] - base[key]:.0f})" if base is not None else "")
    return (f"    /metrics {label}: accepted {moved('accepted')}, delivered {moved('delivered')}, "
            f"deferred {now['deferred']:.0f}, bounced {now['bounced']:.0f}, queue {now['queue']:.0f} "
            f"recipients (oldest {now['oldest_s']:.1f}s)")


def settled(url: str, before: dict[str, float] | None, timeout: float = 5.0) -> dict[str, float] | None:
    """The scrape after a run, once the gateway recorded what the sink already has: the sink sees a
    message before the gateway records its outcome, so the first scrape may lag by a few. At most
    `timeout` seconds (outside the run's measured time), then whatever the last scrape said."""
    deadline = time.monotonic() + timeout
    while True:
        after = scrape(url)
        done = after is not None and after["queue"] == 0 and (
            before is None or after["delivered"] + after["bounced"] - before["delivered"] - before["bounced"]
            >= after["accepted"] - before["accepted"])
        if done or time.monotonic() >= deadline:
            return after
        time.sleep(0.2)


class MetricsWatch:
    """Scrapes `url` every `interval` seconds in a thread while a load run lasts, printing each."""

    def __init__(self, url: str, interval: float, base: dict[str, float] | None) -> None:
        self.url, self.interval, self.base = url, interval, base
        self.samples: list[tuple[float, dict[str, float] | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="metrics-watch", daemon=True)
        self._t0 = time.monotonic()

    def __enter__(self) -> MetricsWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            t = time.monotonic() - self._t0
            values = scrape(self.url)
            self.samples.append((round(t, 2), values))
            print(metrics_line(f"+{t:4.1f}s", values, self.base), flush=True)


class Runner:
    def __init__(self, sink: BenchSink, concurrency: int, max_wait: float, metrics_interval: float = 1.0) -> None:
        self.sink = sink
        self.concurrency = concurrency
        self.max_wait = max_wait
        self.next_seq = 0
        self.runs: list[dict] = []
        #: /metrics of the gateway under test while one runs with `--metrics` (None: not scraped).
        self.metrics_url: str | None = None
        self.metrics_interval = metrics_interval

    def run(self, target: str, size_name: str, port: int, count: int, gateway_pid: int | None = None,
            login: tuple[str, str] | None = None, rate: float | None = None) -> dict:
        body = body_lines(SIZES[size_name])
        first = self.next_seq
        self.next_seq += count + 1000
        self.sink.reset()
        load1 = loadavg()
        busy0, mine0, sink0 = system_busy_seconds(), self_cpu_seconds(), proc_cpu_seconds(self.sink.pid)
        gw0 = proc_tree_cpu_seconds(gateway_pid) if gateway_pid else None
        url = self.metrics_url if gateway_pid else None
        before = scrape(url) if url else None
        if url:
            print(metrics_line(f"{target} {size_name} before", before, None), flush=True)
        watch = MetricsWatch(url, self.metrics_interval, before) if url else None
        t0 = time.monotonic()
        if watch is not None:
            watch.__enter__()
        spread: dict[int, int] = {}
        spy = threading.Timer(0.2, lambda: spread.update(sessions_by_pid(port))) if gateway_pid else None
        if spy is not None:
            spy.start()
        try:
            load = send_load(port, count, self.concurrency, body, first_seq=first, timeout=self.max_wait,
                             login=login, rate=rate)
            complete = self.sink.wait_for(load.accepted, self.max_wait)
            elapsed = time.monotonic() - t0
        finally:
            if watch is not None:
                watch.__exit__()
            if spy is not None:
                spy.cancel()
                spy.join()
        busy = system_busy_seconds() - busy0
        harness = (self_cpu_seconds() - mine0) + (proc_cpu_seconds(self.sink.pid) - sink0)
        gw = proc_tree_cpu_seconds(gateway_pid) - gw0 if gateway_pid and gw0 is not None else None
        run = {"target": target, "size": size_name, "bytes": SIZES[size_name], "count": count,
               "concurrency": self.concurrency, "accepted": load.accepted, "refused": load.refused,
               "errors": load.errors[:5], "complete": complete, "elapsed_s": elapsed,
               "first_seq": first, "last_seq": first + count - 1, "start_ns": load.start_ns,
               "accept_ns": load.accept_ns, "cpu_target_s": max(0.0, busy - harness), "cpu_harness_s": harness,
               "cpu_gateway_proc_s": gw, "loadavg_1min_before": load1, "offered_rate": rate,
               # SO_REUSEPORT hashes the C sessions over the workers: 5/5 and 3/7 are different loads
               "sessions_per_worker": sorted(spread.values(), reverse=True)}
        if url and watch is not None:
            after = settled(url, before)
            print(metrics_line(f"{target} {size_name} after", after, before), flush=True)
            run["metrics"] = {"url": url, "before": before, "during": watch.samples, "after": after}
        self.runs.append(run)
        rate = load.accepted / elapsed if elapsed else 0
        print(f"  {target:9} {size_name:5} {load.accepted}/{count} accepted, "
              f"{'all' if complete else 'NOT all'} delivered in {elapsed:.1f}s (~{rate:.0f} msg/s), "
              f"load average before {load1:.2f}"
              + (f", sessions per worker {'/'.join(map(str, run['sessions_per_worker']))}"
                 if run["sessions_per_worker"] else ""), flush=True)
        return run


    def warm_up(self, target: str, port: int, count: int = WARM_UP) -> None:
        """`count` 1 KB messages through a freshly started target, not recorded: the first
        messages pay one-off work (a gateway's lazy imports, key and certificate loading, the CMS
        templates; Postfix's process spawns), which is not the steady state the runs compare."""
        self.run(f"{target} warm-up", "1KB", port, count)
        self.runs.pop()

    def idle(self, target: str, size_name: str, port: int, count: int) -> dict:
        """`count` messages one at a time, each sent after the previous one reached the sink (no queue)."""
        body = body_lines(SIZES[size_name])
        first = self.next_seq
        self.next_seq += count + 1000
        accept: dict[int, int] = {}
        errors: list[str] = []
        start = time.time_ns()
        t0 = time.monotonic()
        delivered = 0
        for i in range(count):
            self.sink.reset()
            load = send_load(port, 1, 1, body, first_seq=first + i, timeout=self.max_wait)
            accept.update(load.accept_ns)
            errors += load.errors
            if load.accepted and self.sink.wait_for(1, min(self.max_wait, 60)):
                delivered += 1
        run = {"target": f"{target} idle", "size": size_name, "bytes": SIZES[size_name], "count": count,
               "concurrency": 1, "accepted": len(accept), "refused": count - len(accept), "errors": errors[:5],
               "complete": delivered == count, "elapsed_s": time.monotonic() - t0, "first_seq": first,
               "last_seq": first + count - 1, "start_ns": start, "accept_ns": accept, "cpu_target_s": 0.0,
               "cpu_harness_s": 0.0, "cpu_gateway_proc_s": None, "loadavg_1min_before": None, "idle": True}
        self.runs.append(run)
        return run


def paced(runner: Runner, target: str, size: str, port: int, count: int, fraction: float,
          gateway_pid: int | None = None) -> None:
    """The same target at `fraction` of the rate its closed-loop run of this size reached: the latency
    a steady load sees (the closed loop's latency is mostly the queue it builds on purpose)."""
    best = next((r for r in runner.runs if r["target"] == target and r["size"] == size and not r.get("idle")
                 and not r.get("offered_rate")), None)
    if not fraction or best is None or not best["elapsed_s"]:
        return
    rate = fraction * best["accepted"] / best["elapsed_s"]
    runner.run(f"{target} @{fraction:.0%}", size, port, count, gateway_pid, rate=rate)


def summarise(runs: list[dict], records: list[tuple[int, int, int, int]]) -> list[dict]:
    out = []
    for run in runs:
        mine = [r for r in records if run["first_seq"] <= r[0] <= run["last_seq"]]
        accept = run.pop("accept_ns")
        delivered = len(mine)
        lat = [(arr - accept[seq]) / 1e6 for seq, _sent, arr, _size in mine if seq in accept]
        e2e = [(arr - sent) / 1e6 for _seq, sent, arr, _size in mine]
        span = (max(r[2] for r in mine) - run["start_ns"]) / 1e9 if mine else None
        n = max(delivered, 1)
        out.append({**run, "delivered": delivered, "msgs_s": delivered / span if span else None,
                    "span_s": span, "accept_to_delivered_ms": {q: percentile(lat, q) for q in (50, 95, 99)},
                    "send_to_delivered_ms_p50": percentile(e2e, 50),
                    "cpu_ms_per_msg_target": run["cpu_target_s"] * 1000 / n,
                    "cpu_ms_per_msg_gateway_proc": (run["cpu_gateway_proc_s"] * 1000 / n
                                                    if run["cpu_gateway_proc_s"] is not None else None),
                    "out_bytes_avg": sum(r[3] for r in mine) / n})
    return out


def stop_all(sink: BenchSink, postfix: PostfixInstance | None, work: Path) -> list[tuple[int, int, int, int]]:
    """The sink's records, once the sink and Postfix are stopped and the work folder removed."""
    records = sink.stop()
    if postfix is not None:
        postfix.cleanup()
    shutil.rmtree(work, ignore_errors=True)
    return records


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    ap.add_argument("--json", default=default_json("relay_throughput"))
    ap.add_argument("--concurrency", type=int, default=10)
    ap.add_argument("--sizes", default=",".join(SIZES), help="comma list among " + ",".join(SIZES))
    ap.add_argument("--count", type=int, default=None, help="messages per size and target (default per size)")
    ap.add_argument("--idle", type=int, default=None,
                    help="messages sent one at a time for the no-queue latency (default 10, quick 3)")
    ap.add_argument("--warm-up", type=int, default=WARM_UP,
                    help=f"unrecorded 1 KB messages through each freshly started target (default {WARM_UP})")
    ap.add_argument("--no-postfix", action="store_true")
    ap.add_argument("--max-wait", type=float, default=120.0, help="seconds a run may take before giving up")
    ap.add_argument("--event-loop", choices=("auto", "asyncio", "uvloop"), default=None,
                    help="[gateway] event_loop of the gateways (default: the gateway's, auto)")
    ap.add_argument("--paced", type=float, default=0.5,
                    help="after the closed-loop runs, offer this fraction of the measured maximum as a steady "
                         "load to Postfix and gw-smime and report its latency (0: skip)")
    ap.add_argument("--workers", type=int, default=None,
                    help="msgw serve --workers N (default: the gateway's own default, one per core)")
    ap.add_argument("--metrics", action="store_true",
                    help="give each gateway a [metrics] listener on a free loopback port and scrape its /metrics "
                         "before, during (every --metrics-interval) and after each load run")
    ap.add_argument("--metrics-interval", type=float, default=1.0, help="seconds between scrapes with --metrics")
    args = ap.parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    counts = {s: args.count or (QUICK_COUNTS if args.quick else DEFAULT_COUNTS)[s] for s in sizes}
    idle_n = args.idle if args.idle is not None else (3 if args.quick else 10)
    print(f"relay throughput: sizes {sizes}, counts {counts}, concurrency {args.concurrency}", flush=True)

    floor = openssl_floor(1 if args.quick else 2)
    work = Path(tempfile.mkdtemp(prefix="msgw-bench-relay-"))
    sink = BenchSink(work)
    postfix: PostfixInstance | None = None
    notes: list[str] = []
    runner = Runner(sink, args.concurrency, args.max_wait, args.metrics_interval)
    try:
        sink.start()
        for s in sizes:
            runner.run("harness", s, sink.port, counts[s])
        if not args.no_postfix:
            try:
                postfix = PostfixInstance(sink.port).start()
                runner.warm_up("postfix", postfix.port, args.warm_up)
                for s in sizes:
                    runner.run("postfix", s, postfix.port, counts[s])
                for s in sizes:
                    runner.idle("postfix", s, postfix.port, idle_n)
                for s in sizes:
                    paced(runner, "postfix", s, postfix.port, counts[s], args.paced)
            except RuntimeError as exc:
                notes.append(f"Postfix baseline skipped: {exc}")
                print(notes[-1], flush=True)
            finally:
                if postfix is not None:
                    postfix.cleanup()
        plain = write_gateway_config(work / "gw-plain", sink.port, event_loop=args.event_loop)
        plain_metrics = add_metrics_listener(plain.config) if args.metrics else None
        with GatewayProcess(plain, args.workers) as gw:
            notes.append(f"gateway worker processes: {gw.worker_count}")
            print(notes[-1], flush=True)
            if plain_metrics:
                wait_metrics(plain_metrics)
                runner.metrics_url = plain_metrics
            runner.warm_up("gw-plain", plain.relay_port, args.warm_up)
            for s in sizes:
                runner.run("gw-plain", s, plain.relay_port, counts[s], gw.pid)
            for s in sizes:
                runner.idle("gw-plain", s, plain.relay_port, idle_n)
            runner.metrics_url = None
        pki = build_pki(work)
        smime = write_gateway_config(work / "gw-smime", sink.port, pki=pki, event_loop=args.event_loop)
        smime_metrics = add_metrics_listener(smime.config) if args.metrics else None
        with GatewayProcess(smime, args.workers) as gw:
            if smime_metrics:
                wait_metrics(smime_metrics)
                runner.metrics_url = smime_metrics
            runner.warm_up("gw-smime", smime.relay_port, args.warm_up)
            for s in sizes:
                runner.run("gw-smime", s, smime.relay_port, counts[s], gw.pid)
            for s in sizes:
                runner.idle("gw-smime", s, smime.relay_port, idle_n)
            for s in sizes:
                paced(runner, "gw-smime", s, smime.relay_port, counts[s], args.paced, gw.pid)
            for s in sizes:
                runner.run("gw-submit", s, smime.submission_port, counts[s], gw.pid, login=(SENDER, SENDER_PASSWORD))
            runner.metrics_url = None
    finally:
        records = stop_all(sink, postfix, work)

    results = summarise(runner.runs, records)
    by = {(r["target"], r["size"]): r for r in results}

    def rate(target: str, size: str) -> float | None:
        r = by.get((target, size))
        return r["msgs_s"] if r else None

    print("\nThroughput (msgs/s, accept of the first message → arrival of the last at the sink)")
    rows = []
    for s in sizes:
        gw_s, pf, gw_p = rate("gw-smime", s), rate("postfix", s), rate("gw-plain", s)
        fl = floor_msgs_s(floor, SIZES[s])
        rows.append([s, counts[s], gw_s, pf, (gw_s / pf) if gw_s and pf else None, rate("gw-submit", s), gw_p,
                     (gw_p / pf) if gw_p and pf else None, fl, (gw_s / fl) if gw_s and fl else None,
                     rate("harness", s)])
    table1 = print_table(["size", "N", "gw sign+enc", "postfix", "gw/postfix", "gw submission (TLS+AUTH)",
                          "gw plain", "plain/postfix", "crypto floor (1 core)", "gw/floor", "harness ceiling"],
                         rows, 2)
    print("\nLatency accept→delivered (ms; under load: closed loop, C sessions; @50%: a steady load at half the "
          "closed loop's rate; idle: one message at a time) and CPU per message (ms)")
    rows = []
    for r in results:
        # client → sink directly: the sink sees the message before the client reads the 250: no latency
        lat = r["accept_to_delivered_ms"] if r["target"] != "harness" else {50: None, 95: None, 99: None}
        idle = r.get("idle", False)
        name = f"{r['target']} {r['size']}" + (f" ({r['offered_rate']:.0f}/s)" if r.get("offered_rate") else "")
        rows.append([name, f"{r['delivered']}/{r['count']}", lat[50], lat[95], lat[99],
                     None if idle else r["cpu_ms_per_msg_target"], r["cpu_ms_per_msg_gateway_proc"]])
    table2 = print_table(["target size", "delivered", "p50", "p95", "p99", "CPU/msg (machine − harness)",
                          "CPU/msg (gateway process)"], rows, 2)
    tables = [table1, table2]
    watched = [r for r in results if r.get("metrics")]
    if watched:
        print("\nCounters seen on the gateway's /metrics (after − before the run; queue: pending recipients, "
              "the most seen during the run and after it)")
        rows = []
        for r in watched:
            m = r["metrics"]
            before, after = m["before"], m["after"]

            def delta(key: str, before: dict | None = before, after: dict | None = after) -> float | None:
                return after[key] - before[key] if before and after else None

            during = [v["queue"] for _, v in m["during"] if v]
            rows.append([f"{r['target']} {r['size']}", r["accepted"], delta("accepted"), r["delivered"],
                         delta("delivered"), delta("deferred"), delta("bounced"), max(during) if during else None,
                         after["queue"] if after else None, f"{sum(1 for _, v in m['during'] if v)}"
                         f"/{len(m['during'])}"])
        tables.append(print_table(["target size", "client: accepted", "/metrics accepted", "sink: delivered",
                                   "/metrics delivered", "deferred", "bounced", "queue max", "queue after",
                                   "scrapes ok"], rows, 0))
    for note in notes:
        print("note:", note)
    write_json(args.json, {"benchmark": "relay_throughput", "machine": machine(), "quick": args.quick,
                           "concurrency": args.concurrency, "workers": args.workers, "event_loop": args.event_loop,
                           "openssl_speed": floor,
                           "crypto_floor_msgs_s": {s: floor_msgs_s(floor, SIZES[s]) for s in sizes},
                           "runs": results, "notes": notes, "tables": tables, "metrics": args.metrics})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
