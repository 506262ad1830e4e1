"""`msgw send`: inject a file into the spool as if it had been received (durably).

An .eml goes in as it is; a bare payload (HPRIM, HL7 v2, CDA, PDF) goes through the same
intake as the drop folders and MLLP: its recipients are read from the payload and looked up
in the directory (plus any --to), duplicates within the window are skipped, and each copy is
wrapped in a neutral message.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from gateway.commands.common import add_config_option, config_from
from gateway.spool import Spool


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("send", help="inject a message or a bare payload file into the queue")
    add_config_option(p)
    p.add_argument("--from", dest="sender", required=True, metavar="ADDR")
    p.add_argument("--to", dest="recipients", action="append", default=[], metavar="ADDR")
    p.add_argument("file", type=Path)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gateway.routing.payload import detect_payload

    config = config_from(args)
    try:
        data = args.file.read_bytes()
    except OSError as exc:
        print(f"msgw: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    kind = detect_payload(data)
    if kind is None:
        if not args.recipients:
            print("msgw: a message file needs at least one --to", file=sys.stderr)
            return 2
        # Normalise line endings: a file from disk usually has LF; SMTP and S/MIME want CRLF.
        data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        with Spool(config.spool.path).open(recover=False) as spool:
            msg_id = spool.accept(args.sender, args.recipients, data, lifetime=config.spool.max_queue_lifetime,
                                  listener="cli")
        print(msg_id)
        return 0
    return _send_payload(config, args, data, kind)


def _send_payload(config, args: argparse.Namespace, data: bytes, kind: str) -> int:
    from gateway.intake.dedup import DedupStore
    from gateway.intake.process import accept_all, intake_bytes
    from gateway.intake.service import DEDUP_FILE
    from gateway.routing.directory import SqliteDirectory, directory_path

    routing = config.intake.routing
    now = dt.datetime.now(dt.UTC)
    dedup = DedupStore(config.state_dir / DEDUP_FILE, window=routing.dedup_window)
    with SqliteDirectory(directory_path(config)) as directory, Spool(config.spool.path).open(recover=False) as spool:
        result = intake_bytes(data, args.file.name, sender=args.sender, envelope_recipients=args.recipients,
                              directory=directory, dedup=dedup, settings=routing, now=now)
        ids = accept_all(result, spool, lifetime=config.spool.max_queue_lifetime, listener="cli",
                         client="msgw-send", dedup=dedup, now=now)
    if not ids:
        print(f"msgw: {kind} payload already sent to every recipient within the dedup window", file=sys.stderr)
    for msg_id in ids:
        print(msg_id)
    return 0
