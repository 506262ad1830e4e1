"""`[log]`: text or JSON lines, level, optional file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gateway.config.reader import Reader


@dataclass(frozen=True)
class LogConfig:
    format: Literal["text", "json"]
    level: str
    file: Path | None


def read_log(r: Reader, data: dict[str, Any]) -> LogConfig:
    spec = r.table(data, "log")
    prefix = "log."
    r.unknown(spec, {"format", "level", "file"}, prefix)
    return LogConfig(
        format=r.choice(spec, "format", prefix, ("text", "json"), "text"),  # type: ignore[arg-type]
        level=r.choice(spec, "level", prefix, ("DEBUG", "INFO", "WARNING", "ERROR"), "INFO"),
        file=r.path(spec, "file", prefix),
    )
