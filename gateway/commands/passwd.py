"""`msgw passwd`: hash a password for an SMTP AUTH account in the config.

The password is read from stdin (without echo on a terminal, so it never lands in shell
history or on screen); only the hash is printed, ready to paste into the config.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from gateway.server.passwords import hash_password


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "passwd", help="hash a password for an AUTH account (reads it from stdin)",
        description="Read a password from stdin and print its hash for the config.",
    )
    parser.add_argument("--scheme", choices=("scrypt", "argon2"), default="scrypt",
                        help="hash scheme (default: scrypt)")
    parser.set_defaults(func=run)


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != first:
            raise SystemExit("msgw: passwords do not match")
        return first
    line = sys.stdin.readline()
    return line.rstrip("\r\n")


def run(args: argparse.Namespace) -> int:
    password = _read_password()
    if not password:
        print("msgw: empty password", file=sys.stderr)
        return 2
    print(hash_password(password, args.scheme))
    return 0
