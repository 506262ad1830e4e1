"""`[directory]`: where the directory of correspondents (SQLite) lives.

Read here (it was read raw by `gateway.directory.directory.directory_path` before, so a typo
went unnoticed); `directory_path(config)` now returns `config.directory.path`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config.reader import Reader


@dataclass(frozen=True)
class DirectoryConfig:
    #: The SQLite file (relative to the config file's folder); default `directory.sqlite` beside the spool.
    path: Path


def read_directory(r: Reader, data: dict[str, Any], state_dir: Path) -> DirectoryConfig:
    """`state_dir`: the folder beside the spool where the embedded stores live by default."""
    spec = r.table(data, "directory")
    r.unknown(spec, {"path"}, "directory.")
    return DirectoryConfig(path=r.path(spec, "path", "directory.", nonempty=True) or state_dir / "directory.sqlite")
