"""`msgw serve`: run the gateway until SIGTERM.

Before any banner every port it will listen on is probed: a busy one is one line naming the
port and the way out (`--listen-base`, another config), exit 2, never a traceback after a
banner. `--listen-base B` moves the embedded default's loopback ports (`gateway.config.ports`).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import shlex
import socket
import sys
from pathlib import Path

from gateway.app import Gateway
from gateway.commands.common import add_config_option, config_from
from gateway.config import DEFAULT_FILES, GatewayConfig, load_default_config
from gateway.config.ports import PORT_SPAN, listen_base_problem
from gateway.default_setup import TEST_DOCTOR_CERT, TEST_DOCTOR_KEY, prepare_default_files
from gateway.delivery.capture import capture_notice
from gateway.delivery.transports import unknown_transports
from gateway.logs import event, setup_logging
from gateway.server.handoff import bind_listeners
from gateway.server.smtp import LISTEN_BACKLOG
from gateway.smime.testpki import ORG_EMAIL, PERSON_EMAIL
from gateway.startup import check_keys
from gateway.storage import open_queue_store
from gateway.workers import Supervisor, loop_factory, name_log_lines, run_on_loop, worker_count

log = logging.getLogger("gateway")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the gateway")
    add_config_option(p)
    p.add_argument("--log-format", choices=("text", "json"), help="override log.format")
    p.add_argument("--workers", type=_positive, metavar="N",
                   help="worker processes (overrides [gateway] workers; default: one per core; "
                        "1: a single process, no master)")
    p.add_argument("--listen-base", type=_port_base, metavar="B",
                   help="embedded default only: listen on B (relay), B+1 (submission), B+2 (MLLP), "
                        "B+3 (metrics), B+4 (console) instead of 2525, 5870, 2575, 9587, 8587 "
                        "(a config file names its own ports)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.config and args.listen_base is not None:
        print("msgw: --listen-base moves the embedded default's ports; with --config the ports are the "
              "config's own (change them there)", file=sys.stderr)
        return 2
    if not args.config:
        # The embedded default names first-run files (TLS pair, demo account, TEST PKI); loading
        # it creates nothing, so the command that runs it makes them first (reused on later runs).
        prepare_default_files(Path.cwd() / DEFAULT_FILES)
    config = config_from(args) if args.config else load_default_config(listen_base=args.listen_base)
    setup_logging(args.log_format or config.log.format, config.log.level, config.log.file)
    unknown = unknown_transports(config)
    for source, key, message in unknown:
        print(f"{source}: {key}: {message}", file=sys.stderr)
    if unknown or not keys_usable(config):
        return 2
    taken = ports_in_use(config)
    if taken:
        print(busy_ports_line(taken, args.config, args.listen_base), file=sys.stderr)
        return 2
    if not args.config:
        print(_default_banner(config), file=sys.stderr)
    count = worker_count(config.workers, args.workers)
    loop_name, _ = loop_factory(config.event_loop)
    handed = ", the master hands each connection to the least busy worker" if count > 1 else ""
    print(f"msgw: {count} worker process{'es' if count > 1 else ''}, event loop {loop_name}{handed}", file=sys.stderr)
    if count > 1:
        name_log_lines("master")
    event(log, "serving", workers=count, event_loop=loop_name)
    if count == 1:
        try:
            run_on_loop(Gateway(config).serve_forever, config.event_loop)
        except OSError as exc:
            return _taken_since_the_probe(exc, config, args)
        return 0
    if not recover_spool(config):
        return 2
    try:  # the master listens; each connection goes to the least busy worker (gateway.server.handoff)
        listening = bind_listeners([(lc.name, lc.address, lc.port) for lc in config.listeners], LISTEN_BACKLOG)
    except OSError as exc:
        return _taken_since_the_probe(exc, config, args)
    if config.metrics.enabled:  # issue 16: every worker's counters in one folder, served by worker 0
        from gateway.ops.metrics import prepare_worker_metrics
        prepare_worker_metrics(config)
    return Supervisor(count, str(Path(args.config).resolve()) if args.config else None, args.log_format,
                      shutdown_grace=config.spool.shutdown_grace, listen_base=args.listen_base,
                      listening=listening).run()


def recover_spool(config) -> bool:
    """The master recovers the spool once, and releases every claim a previous run left, before
    any worker opens it (workers open without recovering). False when another process has the
    spool open (recovery skipped): a second gateway on the same spool would share its workers'
    claim names, so the master refuses to start rather than deliver twice."""
    spool = open_queue_store(config).open()
    try:
        stats = spool.recover()
        if stats.get("skipped"):
            print(f"msgw: the spool {config.spool.path} is open in another process (another gateway?): "
                  "not starting", file=sys.stderr)
            return False
        event(log, "recovered", **stats)
        event(log, "claims-released", count=spool.release_claims())
        return True
    finally:
        spool.close()


def listening_ports(config) -> list[tuple[str, str, int]]:
    """(name, address, port) of every listener the gateway opens: the SMTP listeners, MLLP, and
    the metrics and console listeners when the config has them (read by attribute: those sections
    belong to their own modules; a disabled one has `enabled = False`)."""
    ports = [(listener.name, listener.address, listener.port) for listener in config.listeners]
    if config.intake.mllp is not None:
        ports.append(("MLLP", config.intake.mllp.address, config.intake.mllp.port))
    for name in ("metrics", "console"):
        section = getattr(config, name, None)
        if section is not None and getattr(section, "enabled", True) and getattr(section, "port", None):
            ports.append((name, getattr(section, "address", "127.0.0.1"), section.port))
    return ports


def _bindable(address: str, port: int) -> OSError | None:
    """None when nothing listens on (address, port), else the bind's error."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio: TIME_WAIT is no owner
        try:
            probe.bind((address, port))
        except OSError as exc:
            return exc
    return None


def ports_in_use(config) -> list[str]:
    """The listeners' addresses another process listens on, as "address:port (name)", probed
    *without* SO_REUSEPORT (a process that binds with it would otherwise share the ports silently:
    the kernel would split the clients between two gateways), before any banner. The master of
    several workers then binds the SMTP ports itself, without SO_REUSEPORT (`bind_listeners`)."""
    taken = []
    for name, address, port in listening_ports(config):
        error = _bindable(address, port)
        if error is not None and error.errno == errno.EADDRINUSE:
            taken.append(f"{address}:{port} ({name})")
    return taken


def free_listen_base(avoid: int | None = None, first: int = 12500, step: int = 1000) -> int:
    """A listen base whose PORT_SPAN loopback ports are free now (the first of a few tried), to
    suggest in the busy-port line; `first` when none is."""
    for base in range(first, 65536 - PORT_SPAN, step):
        if base != avoid and all(_bindable("127.0.0.1", base + i) is None for i in range(PORT_SPAN)):
            return base
    return first


def busy_ports_line(taken: list[str], config_file: str | None, listen_base: int | None) -> str:
    """The one line a busy port gets: which, and the way out."""
    what = f"port {taken[0]} is" if len(taken) == 1 else f"ports {', '.join(taken)} are"
    if config_file:
        return f"msgw: {what} already in use: stop the other program (another gateway?), or change the port " \
               f"in {config_file}"
    base = free_listen_base(avoid=listen_base)
    return f"msgw: {what} already in use: stop the other program (another gateway?), or run " \
           f"msgw serve --listen-base {base} (ports {base}-{base + PORT_SPAN - 1}), or give a config with -c"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("at least 1")
    return value


def _port_base(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    problem = listen_base_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def keys_usable(config) -> bool:
    """Check every key before listening: a broken one must stop the start, not bounce accepted mail.
    Errors go to stderr (one line each); warnings to the log."""
    statuses = asyncio.run(check_keys(config))
    errors = [f"{s.source}: {s.where}: {m}" for s in statuses for m in s.errors]
    for line in errors:
        print(line, file=sys.stderr)
    if errors:
        print(f"msgw: {len(errors)} problem(s) with keys or certificates: not starting", file=sys.stderr)
        return False
    for status in statuses:
        for message in status.warnings:
            event(log, "key-warning", logging.WARNING, key=status.where, reason=message)
    return True


def _default_banner(config) -> str:
    sub = next((lc for lc in config.listeners if lc.kind == "submission"), None)
    relay = next((lc for lc in config.listeners if lc.kind == "relay"), None)
    folder = config.spool.path.parent / "default"
    pw_file = _shown(folder / "demo.password")
    lines = ["msgw: embedded default configuration (loopback only, state in ./var, TEST keys only)"]
    if sub:
        lines.append(f"  submission: {sub.address}:{sub.port} (STARTTLS + AUTH, accounts demo@msgw.localhost "
                     f"and {ORG_EMAIL}, password in {pw_file})")
    if relay:
        domains = ", ".join("@" + d for d in config.local.domains)
        lines.append(f"  relay:      {relay.address}:{relay.port} (mail for {domains} only)")
    if config.intake.mllp is not None:
        lines.append(f"  MLLP:       {config.intake.mllp.address}:{config.intake.mllp.port} (HL7 v2)")
    if config.console.enabled:
        lines.append(f"  console:    https://{config.console.address}:{config.console.port}/ (operator admin, "
                     f"password in {_shown(config.spool.path.parent / 'default' / 'console-admin.password')})")
    lines.append(f"  local mail is delivered to the Maildir {_shown(config.local.maildir)}/<address>/new/")
    notice = capture_notice(config)
    if notice:
        lines.append(f"  {notice}")
    if sub:
        lines.append(f"  try:  {smtp_one_liner(sub.address, sub.port, pw_file)}")
        if notice:
            outbox = _shown(config.delivery.capture / PERSON_EMAIL.rpartition("@")[2])
            lines.append(f"  then: ls {outbox}/ and open the newest file with the TEST doctor key: "
                         f"msgw smime decrypt --key {_shown(folder / TEST_DOCTOR_KEY)} "
                         f"--cert {_shown(folder / TEST_DOCTOR_CERT)} --trust {_shown(folder / 'pki' / 'trust')} "
                         f"--crl {_shown(folder / 'pki' / 'crl')}/*.crl --in FILE")
        lines.append(f"  with swaks:  swaks --server {sub.address}:{sub.port} --tls --auth PLAIN "
                     f"--auth-user demo@msgw.localhost --auth-password \"$(cat {pw_file})\" "
                     "--from demo@msgw.localhost --to doctor@msgw.localhost")
    return "\n".join(lines)


def smtp_one_liner(host: str, port: int, password_file: str) -> str:
    """A Python-stdlib command (no swaks needed) that submits a TEST result from the lab's account,
    over STARTTLS + AUTH, to the TEST doctor of the default directory: it leaves signed and encrypted."""
    message = (f"From: <{ORG_EMAIL}>\\r\\nTo: <{PERSON_EMAIL}>\\r\\nSubject: TEST result\\r\\n\\r\\n"
               "TEST: glycemia 5.4 mmol/l, no real patient.\\r\\n")
    code = (f'import smtplib; s = smtplib.SMTP("{host}", {port}); s.starttls(); '
            f's.login("{ORG_EMAIL}", open("{password_file}").read().strip()); '
            f's.sendmail("{ORG_EMAIL}", ["{PERSON_EMAIL}"], b"{message}"); s.quit()')
    return f"python3 -c '{code}'" if "'" not in code else f"python3 -c {shlex.quote(code)}"


def _shown(path: Path) -> str:
    """A path as the user would type it from where msgw runs (relative under the working directory)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _taken_since_the_probe(exc: OSError, config: GatewayConfig, args: argparse.Namespace) -> int:
    """A port taken between the probe and the bind: the busy-port line, late (exit 2); any other
    bind error is raised."""
    if exc.errno != errno.EADDRINUSE:
        raise exc
    print(busy_ports_line(ports_in_use(config) or ["a listening port"], args.config, args.listen_base),
          file=sys.stderr)
    return 2
