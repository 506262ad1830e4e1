"""`[routing]`: reserved, and empty today.

The top-level table was accepted and never read, so anything written in it was silently
ignored. Routing from content is configured under `[intake.routing]`, next-hop routes under
`[delivery.routes]`: a key here is reported, with that pointer, instead of being ignored."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.config.reader import Reader


@dataclass(frozen=True)
class RoutingConfig:
    """No settings yet: the table exists so a future one has its place (and its checks)."""


def read_routing(r: Reader, data: dict[str, Any]) -> RoutingConfig:
    for key in r.table(data, "routing"):
        r.problem(f"routing.{key}", "unknown key ([routing] has no settings: payload routing is "
                  "[intake.routing], next hops are [delivery.routes])")
    return RoutingConfig()
