"""Small shared kit for the benchmarks (bench/ never imports from tests/).

- `write_gateway_config` / `GatewayProcess`: a `msgw serve` child on free loopback ports, optionally
  with the TEST PKI keys, trust store, directory entry and the protection policy (sign + encrypt);
- `BenchSink`: a minimal SMTP sink of ours in its own process that records, per message, its arrival
  time and the send time carried in the Message-ID (so latency needs no clock other than this host's);
- `send_load`: an asyncio SMTP client (plain SMTP, one session per connection, like smtp-source);
- `PostfixInstance`: a throw-away Postfix in a temp directory on loopback (must run as root);
- /proc readers (CPU seconds, peak RSS), percentiles, table printing and JSON output.

Everything listens on 127.0.0.1 only and is stopped in `finally` blocks by the callers.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import multiprocessing
import os
import platform
import random
import re
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
MSGW = str(Path(sys.executable).with_name("msgw"))
CLK_TCK = os.sysconf("SC_CLK_TCK")
SENDER = "labo@labo-tests.sante.test"  # = gateway.smime.testpki.ORG_EMAIL
RECIPIENT = "jean.test-dupont@cabinet-parc.sante.test"  # = PERSON_EMAIL (has an encryption cert)
SENDER_PASSWORD = "bench password, TEST only"  # noqa: S105 - the throw-away bench gateway's account
#: The sequence and send time, from the To display name (an S/MIME copy's outer Message-ID is
#: fresh and random; To with its display name is on the outer allow-list) or the Message-ID.
MSGID_RE = re.compile(rb"^(?:To: \"|Message-ID: <)bench\.(\d+)\.(\d+)", re.IGNORECASE | re.MULTILINE)


# -- small helpers ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def wait_greeting(port: int, timeout: float = 30.0) -> None:
    """A 220 greeting read on `port` (then QUIT): someone *serves* the port, not only listens.
    A dispatching master listens before its workers are up and accepts only once they are."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=max(0.5, deadline - time.monotonic())) as s:
                line = s.makefile("rb").readline()
                if line.startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"no SMTP greeting on 127.0.0.1:{port} after {timeout}s")


def tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    return f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None


def proc_cpu_seconds(pid: int, *, waited_children: bool = False) -> float:
    """utime + stime of one process (all its threads), from /proc/<pid>/stat; with `waited_children`
    also cutime + cstime (children it has already reaped)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text.rsplit(")", 1)[1].split()
    total = int(fields[11]) + int(fields[12])
    if waited_children:
        total += int(fields[13]) + int(fields[14])
    return total / CLK_TCK


def proc_tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and of its whole tree: live descendants (msgw's master → its worker
    processes, issue 15) and the children each has reaped (a worker that died and was restarted)."""
    total = proc_cpu_seconds(pid, waited_children=True)
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            with contextlib.suppress(OSError):
                total += proc_tree_cpu_seconds(int(child))
    return total


def listening_sockets(port: int) -> int:
    """How many sockets listen on 127.0.0.1:port (SO_REUSEPORT: one per msgw worker process)."""
    want = f"0100007F:{port:04X}"
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for ln in lines if ln.split()[1] == want and ln.split()[3] == "0A")


def sessions_by_pid(port: int) -> dict[int, int]:
    """Established server-side TCP sessions on `port` per owning process (`ss -tnp`): how
    SO_REUSEPORT spread a load's sessions over the gateway's worker processes."""
    out = subprocess.run(["ss", "-Htnp", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, check=False).stdout
    counts: dict[int, int] = {}
    for line in out.splitlines():
        if "pid=" in line:
            pid = int(line.split("pid=", 1)[1].split(",", 1)[0])
            counts[pid] = counts.get(pid, 0) + 1
    return counts


def system_busy_seconds() -> float:
    """Busy CPU seconds of the whole machine (all cores) from /proc/stat (everything but idle+iowait)."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in parts[:8]]
    return (sum(values) - values[3] - values[4]) / CLK_TCK


def self_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def proc_status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def loadavg() -> float:
    """The 1-minute load average (other work on the machine skews every figure: it is recorded)."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def machine() -> dict[str, object]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    git: dict[str, object] = {}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.split("\n")
        git = {"head": head, "modified": [line[3:] for line in dirty if line.strip()]}
    return {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "cores": os.cpu_count(),
            "cpu": model, "python": platform.python_version(), "kernel": platform.release(), "git": git,
            "loadavg_1min": loadavg()}


def fmt(value: object, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_table(headers: list[str], rows: list[list[object]], digits: int = 1) -> str:
    cells = [[fmt(c, digits) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
             "| " + " | ".join("-" * w for w in widths) + " |"]
    for r in cells:
        lines.append("| " + " | ".join(c.rjust(w) if i else c.ljust(w)
                                       for i, (c, w) in enumerate(zip(r, widths, strict=True))) + " |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def write_json(path: str | Path, document: dict) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"JSON written to {out}", flush=True)
    return out


def default_json(name: str) -> str:
    return str(BENCH / "results" / f"{name}.json")


# -- messages ---------------------------------------------------------------------------------------
def body_lines(size: int, seed: int = 7) -> bytes:
    """`size` bytes of 76-character text lines (no line starts with a dot)."""
    rnd = random.Random(seed)
    alphabet = string.ascii_letters + string.digits
    line = "".join(rnd.choice(alphabet) for _ in range(76)).encode() + b"\r\n"
    out = (line * (size // len(line) + 1))[:size]
    return out.rstrip(b"\r\n") + b"\r\n"


def bench_message(run: int, seq: int, body: bytes, sent_ns: int | None = None) -> bytes:
    """A plain text message whose To display name and Message-ID carry the sequence and the send time (ns)."""
    sent_ns = time.time_ns() if sent_ns is None else sent_ns
    head = (f"From: Labo TEST <{SENDER}>\r\nTo: \"bench.{seq}.{sent_ns}\" <{RECIPIENT}>\r\n"
            f"Subject: TEST bench {seq}\r\n"
            f"Date: Wed, 25 Nov 2026 09:00:00 +0000\r\nMessage-ID: <bench.{seq}.{sent_ns}@bench.test>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n")
    return head.encode() + body


# -- our sink ---------------------------------------------------------------------------------------
class _SinkProtocol(asyncio.Protocol):
    """Just enough SMTP (EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT; PIPELINING-safe)."""

    def __init__(self, records: list[tuple[int, int, int, int]], counter: multiprocessing.sharedctypes.Synchronized,
                 ) -> None:
        self.records = records
        self.counter = counter
        self.buf = bytearray()
        self.in_data = False
        self.scan_from = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(b"220 bench-sink ESMTP\r\n")  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        out = []
        while True:
            if self.in_data:
                end = self.buf.find(b"\r\n.\r\n", max(0, self.scan_from - 4))
                if end < 0:
                    self.scan_from = len(self.buf)
                    break
                now = time.time_ns()
                head = bytes(self.buf[:min(end, 65536)])
                match = MSGID_RE.search(head)
                seq, sent = (int(match.group(1)), int(match.group(2))) if match else (-1, 0)
                self.records.append((seq, sent, now, end + 2))
                with self.counter.get_lock():
                    self.counter.value += 1
                del self.buf[:end + 5]
                self.in_data = False
                self.scan_from = 0
                out.append(b"250 2.0.0 Ok: queued\r\n")
                continue
            nl = self.buf.find(b"\r\n")
            if nl < 0:
                break
            line = bytes(self.buf[:nl]).upper()
            del self.buf[:nl + 2]
            verb = line[:4]
            if verb == b"EHLO":
                out.append(b"250-bench-sink\r\n250-PIPELINING\r\n250-SIZE 209715200\r\n250-8BITMIME\r\n"
                           b"250 ENHANCEDSTATUSCODES\r\n")
            elif verb == b"DATA":
                self.in_data = True
                self.scan_from = 0
                self.buf[:0] = b"\r\n"  # so a message ending right away still matches CRLF.CRLF
                out.append(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            elif verb == b"QUIT":
                out.append(b"221 2.0.0 Bye\r\n")
                self.transport.write(b"".join(out))  # type: ignore[attr-defined]
                self.transport.close()
                return
            else:
                out.append(b"250 2.0.0 Ok\r\n")
        if out:
            self.transport.write(b"".join(out))  # type: ignore[attr-defined]


def _sink_main(port: int, out_path: str, counter: multiprocessing.sharedctypes.Synchronized,
               stop: multiprocessing.synchronize.Event) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    records: list[tuple[int, int, int, int]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _SinkProtocol(records, counter), "127.0.0.1", port, backlog=512)
        while not stop.is_set():
            await asyncio.sleep(0.05)
        server.close()

    asyncio.run(main())
    Path(out_path).write_text("\n".join(" ".join(map(str, r)) for r in records))


class BenchSink:
    """Our recording sink in a child process; `.records()` after `.stop()`."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.out = workdir / f"sink-{self.port}.txt"
        ctx = multiprocessing.get_context("fork")
        self.counter = ctx.Value("q", 0)
        self.stop_event = ctx.Event()
        self.proc = ctx.Process(target=_sink_main, args=(self.port, str(self.out), self.counter, self.stop_event),
                                daemon=True)

    def start(self) -> BenchSink:
        self.proc.start()
        wait_port(self.port)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid or 0

    def count(self) -> int:
        return int(self.counter.value)

    def reset(self) -> None:
        with self.counter.get_lock():
            self.counter.value = 0

    def wait_for(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count() >= count:
                return True
            time.sleep(0.01)
        return self.count() >= count

    def stop(self) -> list[tuple[int, int, int, int]]:
        """Stop the sink; its records as (seq, sent_ns, arrival_ns, size)."""
        if self.proc.is_alive():
            self.stop_event.set()
            self.proc.join(10)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(5)
        if not self.out.exists():
            return []
        rows = []
        for line in self.out.read_text().splitlines():
            a, b, c, d = line.split()
            rows.append((int(a), int(b), int(c), int(d)))
        return rows


# -- our load generator -----------------------------------------------------------------------------
@dataclass
class LoadResult:
    sent: int = 0
    accepted: int = 0
    refused: int = 0
    errors: list[str] = field(default_factory=list)
    accept_ns: dict[int, int] = field(default_factory=dict)  # seq -> time the 250 after DATA arrived
    start_ns: int = 0
    end_ns: int = 0


async def _reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed")
        lines.append(line)
        if len(line) < 4 or line[3:4] != b"-":
            return int(line[:3]), b"".join(lines)


async def _submission_login(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, user: str,
                            password: str) -> None:
    """STARTTLS then AUTH PLAIN, as a lab system or a doctor's mail client does on submission."""
    import base64
    import ssl

    writer.write(b"STARTTLS\r\n")
    code, text = await _reply(reader)
    if code != 220:
        raise ConnectionError(f"STARTTLS refused: {text!r}")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # noqa: S502 - the gateway's throw-away loopback certificate
    await writer.start_tls(ctx, server_hostname="localhost")
    writer.write(b"EHLO bench-client.bench.test\r\n")
    await _reply(reader)
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    writer.write(f"AUTH PLAIN {token}\r\n".encode())
    code, text = await _reply(reader)
    if code != 235:
        raise ConnectionError(f"AUTH refused: {text!r}")


async def _session(host: str, port: int, seqs: list[int], body: bytes, result: LoadResult, timeout: float,
                   login: tuple[str, str] | None = None, due: dict[int, float] | None = None) -> None:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=1 << 20), timeout)
    try:
        await _reply(reader)
        writer.write(b"EHLO bench-client.bench.test\r\n")
        await _reply(reader)
        if login is not None:
            await asyncio.wait_for(_submission_login(reader, writer, *login), timeout)
        for seq in seqs:
            if due is not None:  # paced: not before this message's slot (open loop while the target keeps up)
                await asyncio.sleep(max(0.0, due[seq] - time.monotonic()))
            data = bench_message(0, seq, body)
            writer.write(f"MAIL FROM:<{SENDER}> SIZE={len(data)}\r\n".encode())
            code, text = await asyncio.wait_for(_reply(reader), timeout)
            if code != 250:
                result.refused += 1
                result.errors.append(text.decode(errors="replace").strip())
                writer.write(b"RSET\r\n")
                await _reply(reader)
                continue
            writer.write(f"RCPT TO:<{RECIPIENT}>\r\n".encode())
            code, text = await asyncio.wait_for(_reply(reader), timeout)
            if code != 250:
                result.refused += 1
                result.errors.append(text.decode(errors="replace").strip())
                writer.write(b"RSET\r\n")
                await _reply(reader)
                continue
            writer.write(b"DATA\r\n")
            code, text = await asyncio.wait_for(_reply(reader), timeout)
            if code != 354:
                result.refused += 1
                result.errors.append(text.decode(errors="replace").strip())
                continue
            writer.write(data)
            writer.write(b".\r\n")
            result.sent += 1
            code, text = await asyncio.wait_for(_reply(reader), timeout)
            if code == 250:
                result.accepted += 1
                result.accept_ns[seq] = time.time_ns()
            else:
                result.refused += 1
                result.errors.append(text.decode(errors="replace").strip())
        writer.write(b"QUIT\r\n")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(_reply(reader), 5)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def send_load(port: int, count: int, concurrency: int, body: bytes, *, first_seq: int = 0,
              timeout: float = 120.0, login: tuple[str, str] | None = None, rate: float | None = None) -> LoadResult:
    """`count` messages over `concurrency` sessions to 127.0.0.1:port (plain SMTP, or STARTTLS + AUTH
    PLAIN once per session with `login`). With `rate` (messages/s) the n-th message is not sent before
    start + n/rate: a steady offered load instead of a closed loop (latency at a given load)."""
    result = LoadResult()
    seqs = list(range(first_seq, first_seq + count))
    shares = [seqs[i::concurrency] for i in range(concurrency)]

    async def run() -> None:
        result.start_ns = time.time_ns()
        t0 = time.monotonic() + 0.05
        due = {seq: t0 + n / rate for n, seq in enumerate(seqs)} if rate else None
        outcomes = await asyncio.gather(*(_session("127.0.0.1", port, s, body, result, timeout, login, due)
                                          for s in shares if s), return_exceptions=True)
        result.end_ns = time.time_ns()
        for o in outcomes:
            if isinstance(o, BaseException):
                result.errors.append(f"{type(o).__name__}: {o}")

    asyncio.run(run())
    return result


# -- the gateway ------------------------------------------------------------------------------------
@dataclass
class GatewaySetup:
    folder: Path
    config: Path
    submission_port: int
    relay_port: int


def _make_tls(folder: Path) -> None:
    from gateway.default_setup import make_self_signed

    cert, key = folder / "tls-cert.pem", folder / "tls-key.pem"
    if not cert.exists():
        cert_pem, key_pem = make_self_signed("localhost")
        cert.write_bytes(cert_pem)
        key.write_bytes(key_pem)


def write_gateway_config(folder: Path, sink_port: int, *, pki: object | None = None,
                         max_message_size: str = "100MB", event_loop: str | None = None) -> GatewaySetup:
    """A gateway on free loopback ports relaying to 127.0.0.1:sink_port.

    The relay listener accepts 127.0.0.0/8 (the load generator speaks plain SMTP there, as it does to
    Postfix). With `pki` (a TestPKI) the protection policy is on: mail from SENDER is signed with the
    TEST organisation key and encrypted to RECIPIENT's TEST certificate from the directory.
    """
    from gateway.server.passwords import hash_password

    folder.mkdir(parents=True, exist_ok=True)
    _make_tls(folder)
    sub_port, relay_port = free_port(), free_port()
    text = f"""
[gateway]
hostname = "msgw.bench.test"
{f'event_loop = "{event_loop}"' if event_loop else ""}

[listeners.submission]
kind = "submission"
address = "127.0.0.1"
port = {sub_port}
tls_cert = "tls-cert.pem"
tls_key = "tls-key.pem"
max_message_size = "{max_message_size}"

[listeners.relay]
kind = "relay"
address = "127.0.0.1"
port = {relay_port}
tls_cert = "tls-cert.pem"
tls_key = "tls-key.pem"
require_tls = false
allowed_networks = ["127.0.0.0/8"]
senders = ["{SENDER}"]      # the loopback "LIS" is bound to the lab's address and signs as the lab
max_message_size = "{max_message_size}"
timeout = "300s"

[accounts."bench@msgw.bench.test"]
password_hash = "{hash_password('bench password not secret')}"

[accounts."{SENDER}"]
password_hash = "{hash_password(SENDER_PASSWORD)}"

[spool]
path = "spool"
retry_schedule = ["1s", "2s"]
max_queue_lifetime = "1h"
poll_interval = "200ms"
shutdown_grace = "5s"

[local]
domains = ["msgw.bench.test"]
maildir = "maildir"

[log]
format = "json"
level = "WARNING"
file = "gateway.log"

[delivery]
connect_timeout = "3s"
smarthost = "127.0.0.1:{sink_port}"
tls = "none"
"""
    if pki is not None:
        p = pki
        text += f"""
[keys.labo-sign]
ref = "{p['org_sign'].key_path}"
cert = "{p['org_sign'].cert_path}"
chain = "{p['org_sign'].chain_path}"

[trust]
anchors = "{p.trust_dir}"
crl_files = [{", ".join(f'"{c}"' for c in p.crl_paths)}]
fetch_crls = false

[policy]
default = "require-smime"
neutral_subject = "Message securise"

[policy.sign_with]
"{SENDER}" = "labo-sign"
"network:relay" = "labo-sign"
"""
    config = folder / "gateway.toml"
    config.write_text(text)
    setup = GatewaySetup(folder, config, sub_port, relay_port)
    if pki is not None:
        from cryptography.hazmat.primitives import serialization

        pem = folder / "person-encrypt.pem"
        pem.write_bytes(pki["person_encrypt"].cert.public_bytes(serialization.Encoding.PEM))
        out = subprocess.run([MSGW, "directory", "add", RECIPIENT, "--capability", "smime", "--cert", str(pem),
                              "--rpps", "10101234567", "--config", str(config)],
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"msgw directory add failed: {out.stderr}")
    return setup


def build_pki(folder: Path) -> object:
    from gateway.smime.testpki import build_test_pki

    return build_test_pki(folder / "pki")


class GatewayProcess:
    """`msgw serve --config ...` as a child process (SIGTERM, then SIGKILL, on stop)."""

    def __init__(self, setup: GatewaySetup, workers: int | None = None) -> None:
        self.setup = setup
        #: `msgw serve --workers N`; None: the configuration's default (one per core).
        self.workers = workers
        self.proc: subprocess.Popen | None = None

    def start(self) -> GatewayProcess:
        stderr = open(self.setup.folder / "stderr.log", "ab")  # noqa: SIM115 - owned by the child
        more = ["--workers", str(self.workers)] if self.workers else []
        self.proc = subprocess.Popen([MSGW, "serve", "--config", str(self.setup.config), *more],
                                     cwd=self.setup.folder, stdout=subprocess.DEVNULL, stderr=stderr)
        stderr.close()
        try:
            wait_port(self.setup.relay_port, 30)
            wait_port(self.setup.submission_port, 30)
            self._wait_all_workers(30)
        except RuntimeError:
            self.stop()
            raise
        return self

    @property
    def worker_count(self) -> int:
        """What `msgw serve` said it runs ("msgw: N worker processes, ...")."""
        m = re.search(r"msgw: (\d+) worker process", (self.setup.folder / "stderr.log").read_text())
        return int(m.group(1)) if m else 1

    def _wait_all_workers(self, timeout: float) -> None:
        """Every worker listens before the load starts: the sessions opened before the second worker
        binds its port would all stay with the first one for the whole run."""
        said = (self.setup.folder / "stderr.log").read_text()
        if "worker process" not in said:
            return  # a msgw from before issue 15 (bench/compare_revisions.py): one process
        if "hands each connection" in said:
            # The master listens alone from the start and accepts once every worker is ready
            # (gateway.server.handoff): a greeting means they are. Without this wait the first run
            # counted the workers' start-up CPU (imports, keys) and time as its messages'.
            wait_greeting(self.setup.relay_port, timeout)
            wait_greeting(self.setup.submission_port, timeout)
            return
        n = self.worker_count
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(listening_sockets(p) >= n for p in (self.setup.relay_port, self.setup.submission_port)):
                return
            time.sleep(0.05)
        raise RuntimeError("not every gateway worker is listening")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- Postfix ----------------------------------------------------------------------------------------
MASTER_CF = """\
{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixInstance:
    """A throw-away Postfix (queue, config and log in a temp dir) relaying 127.0.0.1:port -> sink."""

    def __init__(self, sink_port: int) -> None:
        # Its own temp dir, world-traversable: the postfix user must reach data_directory and the queue.
        self.folder = Path(tempfile.mkdtemp(prefix="msgw-bench-postfix-"))
        self.folder.chmod(0o755)
        self.port = free_port()
        self.sink_port = sink_port
        self.conf = self.folder / "etc"
        self.started = False

    def start(self) -> PostfixInstance:
        postfix = tool("postfix")
        if postfix is None or os.geteuid() != 0:
            raise RuntimeError("Postfix baseline needs /usr/sbin/postfix and root")
        self.conf.mkdir(parents=True)
        queue, data = self.folder / "queue", self.folder / "data"
        queue.mkdir()
        data.mkdir()
        shutil.chown(data, "postfix")
        (self.conf / "main.cf").write_text(f"""\
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix-bench.localhost
mydomain = localhost
myorigin = $myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{self.sink_port}
smtp_host_lookup = native
smtpd_tls_security_level = none
smtp_tls_security_level = none
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
message_size_limit = 209715200
maillog_file = {self.folder / "maillog"}
maillog_file_prefixes = {self.folder}
import_environment = MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C
smtputf8_enable = no
biff = no
""")
        (self.conf / "master.cf").write_text(MASTER_CF.format(port=f"127.0.0.1:{self.port}"))
        env = dict(os.environ, MAIL_CONFIG=str(self.conf))
        out = subprocess.run([postfix, "-c", str(self.conf), "start"], capture_output=True, text=True,
                             timeout=60, env=env)
        if out.returncode != 0:
            # Postfix logs to syslog unless stderr is a terminal: ask `postfix check` again under `script`.
            why = subprocess.run(["script", "-qc", f"{postfix} -c {self.conf} check", "/dev/null"],
                                 capture_output=True, text=True, timeout=60, env=env)
            raise RuntimeError(f"postfix start failed: {out.stdout}{out.stderr}{why.stdout}")
        self.started = True
        wait_port(self.port, 30)
        return self

    def master_pid(self) -> int | None:
        pid_file = self.folder / "queue" / "pid" / "master.pid"
        with contextlib.suppress(OSError, ValueError):
            return int(pid_file.read_text().strip())
        return None

    def stop(self) -> None:
        if not self.started:
            return
        postfix = tool("postfix") or "postfix"
        env = dict(os.environ, MAIL_CONFIG=str(self.conf))
        subprocess.run([postfix, "-c", str(self.conf), "stop"], capture_output=True, timeout=60, env=env)
        pid = self.master_pid()
        deadline = time.monotonic() + 15
        while pid and Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.started = False

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> PostfixInstance:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
