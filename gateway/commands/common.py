"""Shared helpers of the command modules: loading the config the same way everywhere."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.config import GatewayConfig, load_config, load_default_config


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", metavar="FILE",
                        help="gateway TOML file (default: the embedded loopback default under ./var)")


def config_from(args: argparse.Namespace) -> GatewayConfig:
    return load_config(args.config) if getattr(args, "config", None) else load_default_config()


def read_input(path: str, error: type[Exception]) -> bytes:
    """The bytes of FILE, or of standard input for `-`; `error(reason)` when it cannot be read."""
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise error(f"cannot read {Path(path).name} ({exc.strerror})") from None


def write_output(path: str, data: bytes, error: type[Exception]) -> None:
    """Write to FILE, or to standard output for `-`; `error(reason)` when it cannot be written."""
    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        Path(path).write_bytes(data)
    except OSError as exc:
        raise error(f"cannot write {Path(path).name} ({exc.strerror})") from None
