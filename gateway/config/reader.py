"""The one problem collector of the configuration, and the value parsers every section shares.

Why one collector: `msgw check` must list *every* problem at once, each as (file, key, message),
so a section parser never raises; it records the problem, returns a safe default and goes on.
`Reader.raise_problems()` turns what was collected into one `ConfigError` at the end.

A leaf module (it imports only `gateway.errors`), so any section or package may use it without
closing an import cycle. Messages name keys, never values that could be secrets.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gateway.errors import ConfigError

T = TypeVar("T")
Problem = tuple[str, str, str]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2,
               "gib": 1024**3, None: 1}
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$",
                     re.IGNORECASE)
_ADDRESS_TEXT = re.compile(r"^[^@\s<>()\[\],;:\"\x00-\x1f\x7f]+@[A-Za-z0-9.-]+\Z")
#: The intake doors' looser address rule (single-label domains allowed: test and internal setups).
_INTAKE_ADDRESS = re.compile(r"^[^@\s<>()\[\],;:\"]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


def parse_duration(value: Any) -> float:
    """'5d', '30m', '10s', '250ms' or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '30m' or a number of seconds")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("duration must not be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ValueError(f"not a duration: {value!r} (use e.g. '30s', '15m', '4h', '5d')")


def parse_size(value: Any) -> int:
    """'50MB', '10 MiB', or a number of bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            unit = m.group(2).lower() if m.group(2) else None
            return int(m.group(1)) * _SIZE_UNITS[unit]
    raise ValueError(f"not a size: {value!r} (use e.g. '50MB' or a number of bytes)")


def is_domain(name: str) -> bool:
    return bool(_DOMAIN.match(name))


def is_address(text: str) -> bool:
    return bool(_ADDRESS_TEXT.match(text)) and is_domain(text.rpartition("@")[2])


def valid_address(address: str) -> bool:
    """A plain ``local@domain`` address (single-label domains allowed: test and internal setups)."""
    return bool(_INTAKE_ADDRESS.match(address.strip()))


@dataclass(frozen=True)
class Secret:
    """A secret referenced by file or environment variable, read only when used."""

    file: Path | None = None
    env: str | None = None

    def read(self) -> str:
        if self.file is not None:
            try:
                return self.file.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ConfigError([(str(self.file), "secret", f"cannot read secret file: {exc.strerror}")]) from None
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise ConfigError([("environment", self.env, "environment variable is not set")])
            return value
        raise ConfigError([("config", "secret", "no secret configured")])


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
             dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


class Reader:
    """Typed accessors over TOML tables that record problems instead of raising.

    `source` is the file every problem names; `base` is the folder relative paths resolve against
    (the config file's folder, or the working directory for the embedded default)."""

    def __init__(self, source: str, base: Path) -> None:
        self.source = source
        self.base = base
        self.problems: list[Problem] = []

    # -- recording ---------------------------------------------------------------------------

    def problem(self, key: str, message: str) -> None:
        self.problems.append((self.source, key, message))

    def absorb(self, exc: ConfigError) -> None:
        """Keep the problems of a parser that raises (a key store validating its own fields)."""
        self.problems.extend(exc.problems)

    def raise_problems(self) -> None:
        if self.problems:
            raise ConfigError(self.problems)

    # -- structure ---------------------------------------------------------------------------

    def table(self, data: Mapping[str, Any], key: str, prefix: str = "") -> dict[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, dict):
            self.problem(prefix + key, "expected a table")
            return {}
        return value

    def unknown(self, data: Mapping[str, Any], allowed: set[str], prefix: str) -> None:
        for key in data:
            if key not in allowed:
                self.problem(prefix + key, "unknown key")

    # -- scalars -----------------------------------------------------------------------------

    def get(self, data: Mapping[str, Any], key: str, prefix: str, kind: type | tuple[type, ...], default: Any) -> Any:
        if key not in data:
            return default
        value = data[key]
        if isinstance(value, bool) and kind is not bool and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            self.problem(prefix + key, f"expected {_kind_name(kind)}, got a boolean")
            return default
        if not isinstance(value, kind):
            self.problem(prefix + key, f"expected {_kind_name(kind)}, got {type(value).__name__}")
            return default
        return value

    def string(self, data: Mapping[str, Any], key: str, prefix: str, default: str | None) -> str | None:
        return self.get(data, key, prefix, str, default)  # type: ignore[no-any-return]

    def boolean(self, data: Mapping[str, Any], key: str, prefix: str, default: bool) -> bool:
        value = data.get(key, default)
        if not isinstance(value, bool):
            self.problem(prefix + key, "expected true or false")
            return default
        return value

    def convert(self, data: Mapping[str, Any], key: str, prefix: str, conv: Callable[[Any], T], default: Any) -> T:
        """`conv(data[key])`, or `conv(default)` (a default may be written as in the TOML: '5m')."""
        if key not in data:
            return conv(default) if isinstance(default, (str, int)) and not isinstance(default, bool) else default
        try:
            return conv(data[key])
        except ValueError as exc:
            self.problem(prefix + key, str(exc))
            return conv(default) if isinstance(default, (str, int)) else default  # type: ignore[no-any-return]

    def duration(self, data: Mapping[str, Any], key: str, prefix: str, default: float) -> float:
        value = self.convert(data, key, prefix, parse_duration, default)
        if value < 0:
            self.problem(prefix + key, "must not be negative")
            return default
        return float(value)

    def positive_duration(self, data: Mapping[str, Any], key: str, prefix: str, default: float) -> float:
        value = self.convert(data, key, prefix, parse_duration, default)
        if value <= 0:
            self.problem(prefix + key, "must be more than zero")
            return default
        return float(value)

    def port(self, data: Mapping[str, Any], key: str, prefix: str, default: int) -> int:
        value: int = self.get(data, key, prefix, int, default)
        if not 0 <= value <= 65535:
            self.problem(prefix + key, "port must be between 0 and 65535")
            return default
        return value

    def positive(self, data: Mapping[str, Any], key: str, prefix: str, default: int) -> int:
        value: int = self.get(data, key, prefix, int, default)
        if value < 1:
            self.problem(prefix + key, "must be at least 1")
            return default
        return value

    def choice(self, data: Mapping[str, Any], key: str, prefix: str, choices: tuple[str, ...], default: str) -> str:
        value: str = self.get(data, key, prefix, str, default)
        if value not in choices:
            self.problem(prefix + key, f"must be one of {', '.join(choices)}")
            return default
        return value

    # -- values with a meaning ---------------------------------------------------------------

    def path(self, data: Mapping[str, Any], key: str, prefix: str, *, must_exist: bool = False,
             base: Path | None = None, nonempty: bool = False) -> Path | None:
        """A path, relative ones resolved against `base` (default: the config's folder).
        `nonempty`: an empty string is a problem (where it would silently mean the folder itself)."""
        value = self.string(data, key, prefix, None)
        if value is None:
            return None
        if nonempty and not value.strip():
            self.problem(prefix + key, "must not be empty")
            return None
        p = Path(os.path.expanduser(value))
        if not p.is_absolute():
            p = (base or self.base) / p
        if must_exist and not p.exists():
            self.problem(prefix + key, f"file not found: {p}")
        return p

    def address(self, data: Mapping[str, Any], key: str, prefix: str, *, required: bool) -> str | None:
        """An intake mail address (lowercased), or None with a problem."""
        value = self.string(data, key, prefix, None)
        if value is None:
            if required:
                self.problem(prefix + key, "required (a mail address)")
            return None
        if not valid_address(value):
            self.problem(prefix + key, "not a mail address")
            return None
        return value.strip().lower()

    def senders(self, spec: Mapping[str, Any], prefix: str) -> tuple[str, ...]:
        """A `senders` list: addresses or `@domain` patterns, lowercased."""
        out = []
        for i, item in enumerate(self.get(spec, "senders", prefix, list, [])):
            text = item.strip().lower() if isinstance(item, str) else None
            if text and ((text.startswith("@") and is_domain(text[1:])) or is_address(text)):
                out.append(text)
            else:
                self.problem(f"{prefix}senders[{i}]", f"not an address or @domain: {item!r}")
        return tuple(out)


__all__ = ["Problem", "Reader", "Secret", "is_address", "is_domain", "parse_duration", "parse_size",
           "valid_address"]
