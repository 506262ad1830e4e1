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

#: Top-level commands some other module adds to (`msgw certs tokens` comes from `tokens`).
_MODULES_OF = {"certs": ("certs", "tokens"), "tokens": ("certs", "tokens")}


def modules_for(argv: list[str]) -> tuple[str, ...]:
    """The command modules a command line needs: only its command's (importing all seventeen
    costs ~0.8 s of a `msgw directory add`, most of it the server's imports); every one for
    `msgw --help`, `--version` or an unknown command, so those print the whole list."""
    first = next((a for a in argv if not a.startswith("-")), None)
    if first is None or first not in COMMAND_MODULES:
        return COMMAND_MODULES
    return _MODULES_OF.get(first, (first,))


def _version() -> str:
    """The installed distribution's version (pyproject.toml), or "unknown" from a bare checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("msgw")
    except PackageNotFoundError:
        return "unknown"


def build_parser(modules: tuple[str, ...] = COMMAND_MODULES) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msgw", description="Secure health messaging gateway")
    parser.add_argument("--version", action="version", version=f"msgw {_version()}",
                        help="print the installed version and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in modules:
        try:
            module = importlib.import_module(f"gateway.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"gateway.commands.{name}":
                continue  # command group not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    parser = build_parser(modules_for(words))
    args = parser.parse_args(words)
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
