"""`[spool]`: where accepted mail waits, and the retry schedule of its deliveries."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config.reader import Reader, parse_duration

_DEFAULT_SCHEDULE = ["1m", "5m", "15m", "30m", "1h", "2h", "4h"]


@dataclass(frozen=True)
class SpoolConfig:
    path: Path
    retry_schedule: tuple[float, ...]
    max_queue_lifetime: float
    delay_warning: float
    poll_interval: float
    shutdown_grace: float


def read_spool(r: Reader, data: dict[str, Any]) -> SpoolConfig:
    spec = r.table(data, "spool")
    prefix = "spool."
    r.unknown(spec, {"path", "retry_schedule", "max_queue_lifetime", "delay_warning", "poll_interval",
                     "shutdown_grace"}, prefix)
    schedule = []
    for i, item in enumerate(r.get(spec, "retry_schedule", prefix, list, _DEFAULT_SCHEDULE)):
        try:
            schedule.append(parse_duration(item))
        except ValueError as exc:
            r.problem(f"{prefix}retry_schedule[{i}]", str(exc))
    if not schedule:
        r.problem(prefix + "retry_schedule", "needs at least one delay")
        schedule = [60.0]
    return SpoolConfig(
        path=r.path(spec, "path", prefix) or r.base / "var" / "spool",
        retry_schedule=tuple(schedule),
        max_queue_lifetime=r.convert(spec, "max_queue_lifetime", prefix, parse_duration, "5d"),
        delay_warning=r.convert(spec, "delay_warning", prefix, parse_duration, "4h"),
        poll_interval=r.convert(spec, "poll_interval", prefix, parse_duration, "1s"),
        shutdown_grace=r.convert(spec, "shutdown_grace", prefix, parse_duration, "20s"),
    )
