"""The `msgw` command: argument parsing and dispatch only (see ../shared/CLI.md).

Each command group lives in `gateway/commands/<name>.py` with a `register(subparsers)`
function that adds its parser and sets `func`. Exit codes: 0 success, 1 a "no" answer,
2 bad usage or bad input (with a one-line reason on stderr).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from gateway.errors import GatewayError

COMMAND_MODULES = ("serve", "init", "check", "demo", "send", "queue", "passwd", "smime", "certs", "tokens",
                   "directory", "audit", "payload", "legacy", "console", "zam", "storage")


def _version() -> str:
    """The installed distribution's version (pyproject.toml), or "unknown" from a bare checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("msgw")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msgw", description="Secure health messaging gateway")
    parser.add_argument("--version", action="version", version=f"msgw {_version()}",
                        help="print the installed version and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"gateway.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"gateway.commands.{name}":
                continue  # command group not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except GatewayError as exc:
        print(f"msgw: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - one line for operators; MSGW_DEBUG=1 shows the traceback
        if os.environ.get("MSGW_DEBUG"):
            raise
        print(f"msgw: internal error: {type(exc).__name__}: {str(exc)[:200]} (MSGW_DEBUG=1 for details)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
