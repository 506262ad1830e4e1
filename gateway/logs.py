"""Structured logging: one event per line, as text or JSON lines.

Events carry ids, sizes, addresses' domains and decisions — never bodies, attachments or
subjects (health data). Call `event(logger, "name", key=value, ...)`; the JSON formatter
writes the fields as keys, the text formatter as `key=value`.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """One event, as `logger.log(level, name, extra={"fields": fields})` makes it, minus the
    caller's file and line look-up (`findCaller`, a stack walk our formatters never print: a
    fifth of an event's cost on the delivery path). Nothing at all when `level` is off."""
    if not logger.isEnabledFor(level):
        return
    logger.handle(logger.makeRecord(logger.name, level, _NO_FILE, 0, name, (), None, _NO_FUNC,
                                    {"fields": fields}))


#: What `logging` puts in a record whose caller was not looked up (its own placeholders).
_NO_FILE, _NO_FUNC = "(unknown file)", "(unknown function)"

#: One encoder for every JSON line: `json.dumps` with options builds a new one per call.
_JSON = json.JSONEncoder(default=str, ensure_ascii=False)


@functools.lru_cache(maxsize=4)
def _utc_second(second: int) -> str:
    """"YYYY-MM-DDTHH:MM:SS" of a whole UTC second: formatted once per second, not per line."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": _utc_second(int(record.created // 1)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "event": record.getMessage(),
        }
        data.update(getattr(record, "fields", {}) or {})
        if record.exc_info and record.exc_info[0] is not None:
            data["exc_type"] = record.exc_info[0].__name__
        return _JSON.encode(data)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {}) or {}
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if record.exc_info and record.exc_info[0] is not None:
            line += f" exc_type={record.exc_info[0].__name__}"
        return f"{line} {extra}".rstrip()


def setup_logging(fmt: str = "text", level: str = "INFO", file: Path | None = None) -> None:
    handler: logging.Handler = logging.FileHandler(file) if file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    # aiosmtpd logs every command line at DEBUG/INFO (including AUTH exchanges): keep it quiet.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
