"""Shared helpers of the command modules: loading the config the same way everywhere."""

from __future__ import annotations

import argparse

from gateway.config import GatewayConfig, load_config, load_default_config


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", metavar="FILE",
                        help="gateway TOML file (default: the embedded loopback default under ./var)")


def config_from(args: argparse.Namespace) -> GatewayConfig:
    return load_config(args.config) if getattr(args, "config", None) else load_default_config()
