"""Shared helpers of the command modules: loading the config the same way everywhere; progress
on long commands."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
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


def on_terminal() -> bool:
    """Progress is for a person watching: only when stderr is a terminal (never in a pipe, a log
    file, cron's mail or systemd's journal)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def progress(description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
    """A `rich` progress bar on stderr (a spinner with the elapsed time when ``total`` is None);
    yields ``advance(n)``. Off a terminal it shows nothing and ``advance`` does nothing.

    While the bar is shown, rich prints what the command writes to stdout/stderr above it."""
    if not on_terminal():
        yield _nothing
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = ([TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TimeRemainingColumn()] if total is not None
               else [SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()])
    with Progress(*columns, console=Console(stderr=True), refresh_per_second=2) as bar:
        task = bar.add_task(description, total=total)

        def advance(n: int = 1) -> None:
            bar.advance(task, n)

        yield advance


def _nothing(n: int = 1) -> None:
    """`advance` off a terminal."""


class Ticker:
    """Counts one by one and tells ``advance`` every ``every`` (a bar update costs microseconds:
    not per row of a million-row import)."""

    def __init__(self, advance: Callable[[int], None], every: int = 2000) -> None:
        self.advance, self.every, self.count = advance, every, 0

    def __call__(self) -> None:
        self.count += 1
        if self.count % self.every == 0:
            self.advance(self.every)

    def flush(self) -> None:
        self.advance(self.count % self.every)


def count_lines(path: Path) -> int:
    """Lines of a file, counted by blocks of 1 MiB (a progress bar's total: ~0.1 s per 100 MB)."""
    lines, last = 0, b"\n"
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")
