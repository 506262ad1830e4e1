"""`msgw init`: create the first-run files under ./var/default (loopback TLS pair, demo account,
TEST PKI with its demo directory entries, TEST legacy keys, the demo drop folder).

Loading a configuration never creates files: `msgw serve` (on the embedded default), `msgw demo`
and this command make them. The example config/gateway.toml points at the same files, so
`msgw init` makes it usable on a fresh clone, and other commands can then use the default.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway.default_setup import DEMO_USER, prepare_default_files


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="create the TEST loopback certificate and demo account under ./var/default")
    p.add_argument("--dir", type=Path, default=Path("var/default"),
                   help="folder for the first-run files (default: %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    prepare_default_files(args.dir)
    print(f"{args.dir}: tls-cert.pem, tls-key.pem (self-signed, TEST), demo account {DEMO_USER} "
          f"(password in {args.dir / 'demo.password'})")
    return 0
