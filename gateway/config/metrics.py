"""`[metrics]`: the Prometheus endpoint and the health checks (issue 16), on a listener of their own.

Why off without the section: a configuration declares what the gateway listens on (as
`[listeners.*]`), and a configuration written before issue 16 must not start listening on a
new port (9587 may be another program's); the embedded default has `[metrics]` on loopback, so
a first run has it. With the section, `enabled` defaults to true: `[metrics]` alone is enough.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from gateway.config.reader import Reader, parse_duration

#: The contract between engineers (issue 16): metrics/health on loopback 9587 by default.
DEFAULT_PORT = 9587
_KEYS = {"enabled", "address", "port", "inventory_interval"}


@dataclass(frozen=True)
class MetricsConfig:
    """Where `/metrics`, `/healthz` and `/readyz` are served; `enabled=False`: nowhere."""

    enabled: bool = False
    address: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    #: How long the inventory (certificates, CRLs, trust-space list, tokens) is reused between scrapes.
    inventory_interval: float = 60.0


def read_metrics(r: Reader, data: dict[str, Any]) -> MetricsConfig:
    if "metrics" not in data:
        return MetricsConfig()
    spec = r.table(data, "metrics")
    prefix = "metrics."
    r.unknown(spec, _KEYS, prefix)
    address = r.get(spec, "address", prefix, str, "127.0.0.1")
    try:
        ipaddress.ip_address(address)
    except ValueError:
        r.problem(prefix + "address", "expected an IP address (e.g. 127.0.0.1 or ::1)")
        address = "127.0.0.1"
    interval = r.convert(spec, "inventory_interval", prefix, parse_duration, "60s")
    if interval <= 0:
        r.problem(prefix + "inventory_interval", "must be more than zero")
        interval = 60.0
    return MetricsConfig(enabled=r.boolean(spec, "enabled", prefix, True), address=address,
                         port=r.port(spec, "port", prefix, DEFAULT_PORT), inventory_interval=float(interval))
