"""The commands on a `[storage] backend = "postgresql"` config use the shared database: what
`msgw directory add` writes on one node, `msgw directory lookup` on any node answers, and no
SQLite file is created beside the spool."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import MSGW
from tests.storage.test_migrate import _config

pytestmark = pytest.mark.postgresql


def _msgw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MSGW, *args], capture_output=True, text=True, timeout=120)


def test_msgw_directory_on_the_shared_database(pg_dsn, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    node_a, node_b = _config(tmp_path / "a", pg_dsn), _config(tmp_path / "b", pg_dsn)
    added = _msgw("directory", "add", "dr.test@hopital.test", "--capability", "trusted-domain", "--rpps",
                  "10000000001", "--last-name", "Test", "--config", str(node_a))
    assert added.returncode == 0, added.stderr
    found = _msgw("directory", "lookup", "10000000001", "--json", "--config", str(node_b))
    assert found.returncode == 0, found.stderr
    assert [a["address"] for c in json.loads(found.stdout) for a in c["addresses"]] == ["dr.test@hopital.test"]
    assert not list(tmp_path.rglob("*.sqlite"))
