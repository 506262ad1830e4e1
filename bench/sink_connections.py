"""`relay_throughput.py` with one more column: how many SMTP connections the sink saw per run.

Why: the delivery connection cache (issue 15, item 4) is measured by the connections it saves
as much as by msg/s. The sink and the runner are `relay_throughput`'s own, patched here before
the sink's process is forked (so the count crosses into it through shared memory), rather than
changed for everyone. The same arguments as `relay_throughput.py`; it prints, per run, the
sink's connections and its RSETs, and adds them (`sink_connections`, `sink_rsets`) to the JSON.

    .venv/bin/python bench/sink_connections.py --sizes 1KB,20KB --count 500 --no-postfix
"""

from __future__ import annotations

import multiprocessing
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _support  # noqa: E402 - bench/ is not a package
import relay_throughput  # noqa: E402

_ctx = multiprocessing.get_context("fork")
CONNECTIONS = _ctx.Value("q", 0)
RSETS = _ctx.Value("q", 0)

_made = _support._SinkProtocol.connection_made
_received = _support._SinkProtocol.data_received


def _connection_made(self: Any, transport: Any) -> None:
    with CONNECTIONS.get_lock():
        CONNECTIONS.value += 1
    _made(self, transport)


def _data_received(self: Any, data: bytes) -> None:
    if not self.in_data and b"RSET\r\n" in data.upper():
        with RSETS.get_lock():
            RSETS.value += data.upper().count(b"RSET\r\n")
    _received(self, data)


_run = relay_throughput.Runner.run


def _counted_run(self: Any, target: str, size_name: str, *args: Any, **kwargs: Any) -> dict:
    c0, r0 = CONNECTIONS.value, RSETS.value
    run: dict = _run(self, target, size_name, *args, **kwargs)
    run["sink_connections"], run["sink_rsets"] = CONNECTIONS.value - c0, RSETS.value - r0
    print(f"  {target:9} {size_name:5} sink saw {run['sink_connections']} connection(s), "
          f"{run['sink_rsets']} RSET(s)", flush=True)
    return run


_support._SinkProtocol.connection_made = _connection_made  # type: ignore[method-assign]
_support._SinkProtocol.data_received = _data_received  # type: ignore[method-assign]
relay_throughput.Runner.run = _counted_run  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(relay_throughput.main())
