"""`[audit]`: where the hash-chained audit trail is written.

Read here (it was read raw by `gateway.audit.audit_path` before, so a typo went unnoticed);
`gateway.audit.audit_path(config)` now returns `config.audit.path`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config.reader import Reader


@dataclass(frozen=True)
class AuditConfig:
    #: The JSON-lines trail (relative to the config file's folder); default `audit.jsonl` beside the spool.
    path: Path


def read_audit(r: Reader, data: dict[str, Any], state_dir: Path) -> AuditConfig:
    """`state_dir`: the folder beside the spool where the embedded stores live by default."""
    spec = r.table(data, "audit")
    r.unknown(spec, {"path"}, "audit.")
    return AuditConfig(path=r.path(spec, "path", "audit.", nonempty=True) or state_dir / "audit.jsonl")
