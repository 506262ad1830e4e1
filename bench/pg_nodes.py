"""One gateway node vs two on one PostgreSQL, sign + encrypt (issue 18: "two nodes reach ≥ 1.7×
one node's sign+encrypt throughput, same run, p99 accept time under 1 s").

Each node is `msgw serve` with `[storage] backend = "postgresql"` on the same database, the
protection policy on (TEST PKI: signed with the lab's TEST key, encrypted to the TEST person's
certificate from the shared directory), relaying to our recording sink. The load generator
speaks plain SMTP to each node's relay listener (half the sessions to each node in the two-node
run, as DNS MX or a TCP load balancer would spread them). Each run gets a fresh database.

Figures: msg/s end to end (first MAIL to the last message at the sink) and accepted msg/s,
p50/p99 accept time (MAIL → the 250 after DATA), CPU per message (the nodes' process trees, and
the whole machine's busy time, PostgreSQL included), and the ratio two/one.

PostgreSQL: `--dsn URI --password-file FILE` (an existing server; the role needs CREATE DATABASE),
or by default a throw-away cluster (`initdb` + `pg_ctl` in a temp dir, Debian's `postgresql`
package; as root it runs as `nobody`). On a small machine the nodes, PostgreSQL, the sink and
the load generator share the cores: the ratio then says more about the machine than about us.

    .venv/bin/python bench/pg_nodes.py --count 400 --concurrency 8
    .venv/bin/python bench/pg_nodes.py --count 2000 --node-cpu 0.5   # as root: each node half a core
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _support import (  # noqa: E402 - bench/ is run as a script
    MSGW,
    BenchSink,
    GatewayProcess,
    LoadResult,
    body_lines,
    build_pki,
    default_json,
    free_port,
    machine,
    percentile,
    print_table,
    proc_tree_cpu_seconds,
    send_load,
    system_busy_seconds,
    write_gateway_config,
    write_json,
)

PG_USER = "msgw"
CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")
CGROUP_ROOT = Path("/sys/fs/cgroup")


class CpuCap:
    """A CPU quota for one node's process tree (a cgroup of its own): with ``--node-cpu X`` each
    node gets at most X cores, as if it ran on a small machine of its own, while PostgreSQL, the
    sink and the load generator stay outside the quota. Why: on a machine with few cores the nodes,
    PostgreSQL and the harness share them, so an uncapped second node can only use what the first
    left idle and the ratio measures the machine; with a cap (and the cores for 2 × X plus the rest)
    the ratio measures whether the shared queue lets a second node add its capacity. Needs root and
    a writable cgroup ``cpu`` controller (v1 ``cpu.cfs_quota_us`` or v2 ``cpu.max``)."""

    def __init__(self, name: str, cores: float) -> None:
        period = 100_000
        quota = max(1_000, int(cores * period))
        controllers = CGROUP_ROOT / "cgroup.controllers"
        if controllers.exists() and "cpu" in controllers.read_text().split():
            self.path = CGROUP_ROOT / name
            self.path.mkdir(exist_ok=True)
            (self.path / "cpu.max").write_text(f"{quota} {period}\n")
        elif CGROUP_V1_CPU.is_dir():
            self.path = CGROUP_V1_CPU / name
            self.path.mkdir(exist_ok=True)
            (self.path / "cpu.cfs_period_us").write_text(f"{period}\n")
            (self.path / "cpu.cfs_quota_us").write_text(f"{quota}\n")
        else:
            raise SystemExit("--node-cpu needs a cgroup cpu controller (/sys/fs/cgroup/cpu or cgroup v2 with cpu)")

    def add_tree(self, pid: int) -> None:
        """Move ``pid`` and every descendant into the cgroup (children started later inherit it)."""
        todo = [pid]
        while todo:
            p = todo.pop()
            with contextlib.suppress(OSError):
                (self.path / "cgroup.procs").write_text(f"{p}\n")
            for task in glob.glob(f"/proc/{p}/task/*/children"):
                with contextlib.suppress(OSError):
                    todo.extend(int(c) for c in Path(task).read_text().split())

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.rmdir()


def _pg_bin(name: str) -> str:
    for found in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True):
        return found
    which = shutil.which(name)
    if which is None:
        raise SystemExit(f"PostgreSQL's {name} is not installed (Debian package postgresql), or give --dsn")
    return which


@contextlib.contextmanager
def throwaway_cluster(workdir: Path) -> Iterator[tuple[str, Path]]:
    """A PostgreSQL cluster of our own on a free loopback port: (admin DSN without password,
    password file). Stopped and removed afterwards."""
    run_as = "nobody" if os.geteuid() == 0 else None
    base = Path(tempfile.mkdtemp(prefix="msgw-bench-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    password = uuid.uuid4().hex
    pwfile = base / "pwfile"
    pwfile.write_text(password + "\n")
    if run_as:
        entry = pwd.getpwnam(run_as)
        for path in (base, sock, pwfile):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        base.chmod(0o700)

    def as_owner(cmd: list[str]) -> list[str]:
        return ["runuser", "-u", run_as, "--", *cmd] if run_as else cmd

    subprocess.run(as_owner([_pg_bin("initdb"), "-D", str(data), "-U", PG_USER, "--auth=scram-sha-256",
                             f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]),
                   check=True, capture_output=True, timeout=120)
    port = free_port()
    with (data / "postgresql.conf").open("a") as conf:
        conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{sock}'\n"
                   "max_connections = 300\nfsync = on\nsynchronous_commit = on\nshared_buffers = 128MB\n")
    client_pw = workdir / "pg.password"
    client_pw.write_text(password + "\n")
    client_pw.chmod(0o600)
    ctl = [_pg_bin("pg_ctl"), "-D", str(data)]
    subprocess.run(as_owner([*ctl, "-l", str(data / "server.log"), "-w", "-t", "60", "start"]), check=True,
                   capture_output=True, timeout=120)
    try:
        yield f"postgresql://{PG_USER}@127.0.0.1:{port}/postgres", client_pw
    finally:
        subprocess.run(as_owner([*ctl, "-m", "fast", "-w", "stop"]), capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)


def fresh_database(admin_dsn: str, password_file: Path) -> str:
    """CREATE DATABASE for one run; its DSN (still without the password)."""
    import psycopg

    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_dsn, password=password_file.read_text().strip(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    parts = urlsplit(admin_dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


def node_setup(folder: Path, sink_port: int, pki: object, dsn: str, password_file: Path, node: str,
               directory: bool) -> object:
    """The bench's protected gateway config plus `[storage]` on the shared database; the directory
    entry of the recipient added once (to the shared directory)."""
    setup = write_gateway_config(folder, sink_port, pki=pki)  # also adds it to a local SQLite directory
    with setup.config.open("a") as conf:
        conf.write(f'\n[storage]\nbackend = "postgresql"\ndsn = "{dsn}"\npassword_file = "{password_file}"\n'
                   f'node = "{node}"\n')
    if directory:
        from _support import RECIPIENT

        out = subprocess.run([MSGW, "directory", "add", RECIPIENT, "--capability", "smime", "--cert",
                              str(folder / "person-encrypt.pem"), "--rpps", "10101234567", "--config",
                              str(setup.config)], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"msgw directory add (shared) failed: {out.stderr}")
    return setup


def run(label: str, nodes: int, args: argparse.Namespace, pki: object, admin_dsn: str, password_file: Path,
        workdir: Path, first_seq: int) -> dict:
    dsn = fresh_database(admin_dsn, password_file)
    sink = BenchSink(workdir).start()
    gateways = []
    caps: list[CpuCap] = []
    try:
        for i in range(nodes):
            setup = node_setup(workdir / f"{label}-n{i}", sink.port, pki, dsn, password_file, f"bench-{i}",
                               directory=i == 0)
            gateways.append(GatewayProcess(setup, workers=args.workers).start())
            if args.node_cpu:
                caps.append(CpuCap(f"msgw-bench-{os.getpid()}-{label.replace(' ', '-')}-{i}", args.node_cpu))
                caps[-1].add_tree(gateways[-1].pid)
        body = body_lines(args.size)
        # warm-up (TLS-free, but the first message loads the keys and opens the pools)
        for i, gw in enumerate(gateways):
            warm = send_load(gw.setup.relay_port, 2, 1, body, first_seq=first_seq + 900_000 + 10 * i)
            if warm.accepted != 2:
                raise RuntimeError(f"warm-up refused: {warm.errors[:2]}")
        sink.wait_for(2 * nodes, 60)
        sink.reset()
        cpu0 = [proc_tree_cpu_seconds(gw.pid) for gw in gateways]
        busy0 = system_busy_seconds()
        results: list[LoadResult] = [LoadResult() for _ in gateways]
        share = args.count // nodes

        def load(i: int) -> None:
            results[i] = send_load(gateways[i].setup.relay_port, share, max(1, args.concurrency // nodes), body,
                                   first_seq=first_seq + i * share, timeout=args.max_wait)

        t0 = time.monotonic()
        threads = [threading.Thread(target=load, args=(i,)) for i in range(nodes)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        accepted_at = time.monotonic() - t0
        accepted = sum(r.accepted for r in results)
        complete = sink.wait_for(accepted, args.max_wait)
        elapsed = time.monotonic() - t0
        node_cpu = sum(proc_tree_cpu_seconds(gw.pid) - c for gw, c in zip(gateways, cpu0, strict=True))
        busy = system_busy_seconds() - busy0
    finally:
        for gw in gateways:
            gw.stop()
        for cap in caps:
            cap.remove()
        records = sink.stop()
    sent = {seq: sent_ns for seq, sent_ns, _, _ in records}
    accept_s = [(ns - sent[seq]) / 1e9 for r in results for seq, ns in r.accept_ns.items() if seq in sent]
    errors = [e for r in results for e in r.errors][:3]
    return {"label": label, "nodes": nodes, "count": nodes * share, "accepted": accepted, "complete": complete,
            "elapsed_s": elapsed, "accept_phase_s": accepted_at, "msgs_s": accepted / elapsed if elapsed else 0.0,
            "accepted_msgs_s": accepted / accepted_at if accepted_at else 0.0,
            "accept_p50_s": percentile(accept_s, 50), "accept_p99_s": percentile(accept_s, 99),
            "node_cpu_ms_per_msg": 1000 * node_cpu / accepted if accepted else None,
            "machine_cpu_ms_per_msg": 1000 * busy / accepted if accepted else None, "errors": errors}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=2000, help="messages per run (default 2000)")
    ap.add_argument("--concurrency", type=int, default=16, help="SMTP sessions in all (split over the nodes)")
    ap.add_argument("--size", type=int, default=4096, help="body bytes (default 4 KiB)")
    ap.add_argument("--workers", type=int, default=1, help="worker processes per node (default 1)")
    ap.add_argument("--node-cpu", type=float, default=None, metavar="CORES",
                    help="cap each node's process tree at CORES cores (a cgroup CPU quota; root): each node "
                         "as its own small machine, PostgreSQL and the harness outside the cap")
    ap.add_argument("--max-wait", type=float, default=600.0)
    ap.add_argument("--dsn", help="an existing server's admin DSN, without the password (default: a throw-away one)")
    ap.add_argument("--password-file", type=Path, help="its password, with --dsn")
    ap.add_argument("--json", default=default_json("pg_nodes"), help="where to write the figures")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="msgw-bench-pgnodes-") as tmp:
        workdir = Path(tmp)
        pki = build_pki(workdir)
        with contextlib.ExitStack() as stack:
            if args.dsn:
                if args.password_file is None:
                    raise SystemExit("--dsn needs --password-file")
                admin, password_file = args.dsn, args.password_file
            else:
                admin, password_file = stack.enter_context(throwaway_cluster(workdir))
            one = run("one node", 1, args, pki, admin, password_file, workdir, 0)
            two = run("two nodes", 2, args, pki, admin, password_file, workdir, 1_000_000)
    rows = [[r["label"], f"{r['accepted']}/{r['count']}", "yes" if r["complete"] else "NO", r["msgs_s"],
             r["accepted_msgs_s"], r["accept_p50_s"], r["accept_p99_s"], r["node_cpu_ms_per_msg"],
             r["machine_cpu_ms_per_msg"]] for r in (one, two)]
    print_table(["run", "accepted", "all delivered", "msg/s", "accepted msg/s", "p50 accept s",
                       "p99 accept s", "node CPU ms/msg", "machine CPU ms/msg"], rows, digits=2)
    ratio = two["msgs_s"] / one["msgs_s"] if one["msgs_s"] else 0.0
    if args.node_cpu:
        print(f"each node capped at {args.node_cpu:g} cores (cgroup CPU quota); PostgreSQL, the sink and the "
              "load generator uncapped")
    p99 = two["accept_p99_s"]
    print(f"two nodes / one node: {ratio:.2f}x (target >= 1.7x); p99 accept time with two nodes "
          f"{p99 if p99 is None else round(p99, 3)} s (target < 1 s)")
    for r in (one, two):
        if r["errors"]:
            print(f"  {r['label']}: first refusals {r['errors']}")
    write_json(args.json, {"bench": "pg_nodes", "machine": machine(), "args": vars(args) | {
        "password_file": str(args.password_file) if args.password_file else None}, "runs": [one, two],
        "ratio": ratio})
    return 0 if one["complete"] and two["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
