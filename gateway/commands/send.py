"""`msgw send`: inject a file into the spool as if it had been received (durably)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.commands.common import add_config_option, config_from
from gateway.spool import Spool


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("send", help="inject a message file into the queue")
    add_config_option(p)
    p.add_argument("--from", dest="sender", required=True, metavar="ADDR")
    p.add_argument("--to", dest="recipients", action="append", required=True, metavar="ADDR")
    p.add_argument("file", type=Path)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = config_from(args)
    try:
        data = args.file.read_bytes()
    except OSError as exc:
        print(f"msgw: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    # Normalise line endings: a file from disk usually has LF; SMTP and S/MIME want CRLF.
    data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    with Spool(config.spool.path).open(recover=False) as spool:
        msg_id = spool.accept(args.sender, args.recipients, data, lifetime=config.spool.max_queue_lifetime,
                              listener="cli")
    print(msg_id)
    return 0
