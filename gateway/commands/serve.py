"""`msgw serve`: run the gateway until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys
from pathlib import Path

from gateway.app import Gateway
from gateway.commands.common import add_config_option, config_from
from gateway.config import DEFAULT_FILES
from gateway.default_setup import prepare_default_files
from gateway.delivery.transports import unknown_transports
from gateway.logs import event, setup_logging
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.config:
        # The embedded default names first-run files (TLS pair, demo account, TEST PKI); loading
        # it creates nothing, so the command that runs it makes them first (reused on later runs).
        prepare_default_files(Path.cwd() / DEFAULT_FILES)
    config = config_from(args)
    setup_logging(args.log_format or config.log.format, config.log.level, config.log.file)
    unknown = unknown_transports(config)
    for source, key, message in unknown:
        print(f"{source}: {key}: {message}", file=sys.stderr)
    if unknown or not keys_usable(config):
        return 2
    if not args.config:
        print(_default_banner(config), file=sys.stderr)
    count = worker_count(config.workers, args.workers)
    loop_name, _ = loop_factory(config.event_loop)
    print(f"msgw: {count} worker process{'es' if count > 1 else ''}, event loop {loop_name}", file=sys.stderr)
    if count > 1:
        name_log_lines("master")
    event(log, "serving", workers=count, event_loop=loop_name)
    if count == 1:
        run_on_loop(Gateway(config).serve_forever, config.event_loop)
        return 0
    taken = ports_in_use(config)
    for where in taken:
        print(f"msgw: {where} is already in use (another gateway?): not starting", file=sys.stderr)
    if taken or not recover_spool(config):
        return 2
    return Supervisor(count, str(Path(args.config).resolve()) if args.config else None, args.log_format,
                      shutdown_grace=config.spool.shutdown_grace).run()


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


def ports_in_use(config) -> list[str]:
    """The SMTP listeners' addresses another process listens on. Workers bind with SO_REUSEPORT,
    which would let a second gateway share the ports silently (the kernel would split the clients
    between them); the master probes each address first *without* it, as a single process binds."""
    taken = []
    for listener in config.listeners:
        family = socket.AF_INET6 if ":" in listener.address else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio: TIME_WAIT is no owner
            try:
                probe.bind((listener.address, listener.port))
            except OSError:
                taken.append(f"{listener.address}:{listener.port} ({listener.name})")
    return taken


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("at least 1")
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
    pw_file = config.spool.path.parent / "default" / "demo.password"
    lines = ["msgw: embedded default configuration (loopback only, state in ./var)"]
    if sub:
        lines.append(f"  submission: {sub.address}:{sub.port} (STARTTLS + AUTH, "
                     f"account demo@msgw.localhost, password in {pw_file})")
    if relay:
        domains = ", ".join("@" + d for d in config.local.domains)
        lines.append(f"  relay:      {relay.address}:{relay.port} (mail for {domains} only)")
    lines.append(f"  local mail is delivered to the Maildir {config.local.maildir}/<address>/new/")
    if sub:
        lines.append(f"  try:  swaks --server {sub.address}:{sub.port} --tls --auth PLAIN "
                     f"--auth-user demo@msgw.localhost --auth-password \"$(cat {pw_file})\" "
                     "--from demo@msgw.localhost --to doctor@msgw.localhost")
    if relay:
        lines.append(f"  or:   swaks --server {relay.address}:{relay.port} --from lab@example.org "
                     "--to doctor@msgw.localhost")
    return "\n".join(lines)
