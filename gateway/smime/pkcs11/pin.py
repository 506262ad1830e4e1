"""Where a token PIN comes from: a file, an environment variable, or stdin (the CLI).

The PIN is read only when a login is about to happen (so an operator may fix a PIN file
without a restart) and is never stored in a config object, logged, or put in an exception
message; `repr()` of a source names the source, never the PIN.
"""

from __future__ import annotations

import getpass
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gateway.smime.pkcs11.errors import PinUnavailable


class PinSource(Protocol):
    """Something that yields the user PIN when a login needs it."""

    def read(self) -> str: ...

    def describe(self) -> str:
        """Where the PIN comes from, for messages (never the PIN itself)."""
        ...


@dataclass(frozen=True)
class FilePin:
    """The PIN is the first line of a file (trailing newline ignored); keep it mode 0600."""

    path: Path

    def read(self) -> str:
        try:
            text = Path(self.path).read_text(encoding="utf-8")
        except OSError as exc:
            raise PinUnavailable(f"cannot read PIN file {self.path}: {exc.strerror}") from None
        pin = text.splitlines()[0] if text else ""
        if not pin:
            raise PinUnavailable(f"PIN file {self.path} is empty")
        return pin

    def describe(self) -> str:
        return f"file {self.path}"


@dataclass(frozen=True)
class EnvPin:
    """The PIN is in an environment variable named in the config."""

    name: str

    def read(self) -> str:
        pin = os.environ.get(self.name, "")
        if not pin:
            raise PinUnavailable(f"environment variable {self.name} is not set or empty")
        return pin

    def describe(self) -> str:
        return f"environment variable {self.name}"


class StdinPin:
    """Ask once on the terminal (no echo) or read one line from a pipe; keep it for re-logins."""

    def __init__(self, prompt: str = "Token PIN: ") -> None:
        self._prompt = prompt
        self._pin: str | None = None

    def read(self) -> str:
        if self._pin is None:
            if sys.stdin.isatty():
                pin = getpass.getpass(self._prompt)
            else:
                pin = sys.stdin.readline().rstrip("\r\n")
            if not pin:
                raise PinUnavailable("no PIN given on stdin")
            self._pin = pin
        return self._pin

    def describe(self) -> str:
        return "stdin"

    def __repr__(self) -> str:
        return "StdinPin()"


class StaticPin:
    """A PIN already in memory (tests, or a caller that read it itself); hidden from repr."""

    def __init__(self, pin: str) -> None:
        if not pin:
            raise PinUnavailable("empty PIN")
        self._pin = pin

    def read(self) -> str:
        return self._pin

    def describe(self) -> str:
        return "a PIN given by the caller"

    def __repr__(self) -> str:
        return "StaticPin(<hidden>)"


def pin_source(*, pin_file: str | os.PathLike[str] | None = None, pin_env: str | None = None,
               pin_stdin: bool = False) -> PinSource | None:
    """The one PIN source the options name (at most one may be given), or None for no login."""
    given = [x for x in (pin_file, pin_env, pin_stdin or None) if x is not None]
    if len(given) > 1:
        raise PinUnavailable("give only one of pin_file, pin_env, pin_stdin")
    if pin_file is not None:
        return FilePin(Path(pin_file))
    if pin_env is not None:
        return EnvPin(pin_env)
    if pin_stdin:
        return StdinPin()
    return None
