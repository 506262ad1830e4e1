"""Both backends of every store (issue 18): ``backend`` is SQLite beside a temp spool, or the
session's real PostgreSQL (a fresh database per test, marker ``postgresql``) reached as
production reaches it: a DSN without the password, the password from a file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from gateway import storage
from gateway.cisis.ledger import ZamLedger
from gateway.config.reader import Secret
from gateway.config.storage import StorageConfig


def split_password(dsn: str) -> tuple[str, str]:
    """(the DSN without its password, the password)."""
    parts = urlsplit(dsn)
    netloc = f"{parts.username}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc)), parts.password or ""


def pg_storage(dsn: str, tmp_path: Path, **kwargs: Any) -> StorageConfig:
    plain, password = split_password(dsn)
    secret = tmp_path / "pg-password"
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    return StorageConfig(backend="postgresql", dsn=plain, password=Secret(file=secret), **kwargs)


@dataclass
class Backend:
    """Opens each store on one backend (what `gateway.storage` would, with test clocks)."""

    name: str
    storage: StorageConfig
    state: Path

    def dedup(self, window: float = 7 * 86400.0) -> Any:
        return storage.dedup_store(self.storage, self.state, window=window)

    def directory(self) -> Any:
        return storage.directory_store(self.storage, self.state / "directory.sqlite")

    def delivered(self, clock: Any = None) -> Any:
        store = storage.delivered_store(self.storage, self.state / "spool")
        if clock is not None:
            store.clock = clock
        return store

    def harvest(self, **kwargs: Any) -> Any:
        if self.name == "sqlite":
            from gateway.directory.certsources import HarvestStore

            return HarvestStore(self.state / storage.HARVEST_FILE, **kwargs)
        from gateway.directory.harvest_pg import PgHarvestStore

        return PgHarvestStore(self.storage.dsn, password=storage.password(self.storage), **kwargs)

    def ledger(self, **kwargs: Any) -> ZamLedger:
        if self.name == "sqlite":
            return ZamLedger.beside(self.state / "spool", **kwargs)
        from gateway.cisis.ledger_pg import PgZamLedger

        return PgZamLedger(self.storage.dsn, password=storage.password(self.storage), **kwargs)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    (tmp_path / "spool").mkdir()
    if request.param == "sqlite":
        return Backend("sqlite", StorageConfig(), tmp_path)
    return Backend("postgresql", pg_storage(request.getfixturevalue("pg_dsn"), tmp_path), tmp_path)
