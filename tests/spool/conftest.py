"""The queue store on both backends (issue 18): `queue_store` opens stores of one backend, SQLite
(files + SQLite in a temp dir) or PostgreSQL (a fresh database of the session's real server).
Tests that only use the `QueueStore` protocol take it and run twice."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.spool import QueueStore, Spool

#: Short leases keep the failover tests short (the heartbeat renews every third of it).
TEST_LEASE = 2.0

OpenStore = Callable[..., QueueStore]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def queue_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """A function opening a store of this test's backend: `open_store(owner="", recover=True)`.
    Every store opened on the same backend shares the same state (one folder, one database),
    as nodes and restarts do; all are closed after the test."""
    opened: list[QueueStore] = []
    if request.param == "sqlite":
        def open_store(owner: str = "", *, recover: bool = True, **_: object) -> QueueStore:
            store = Spool(tmp_path / "spool", owner=owner).open(recover=recover)
            opened.append(store)
            return store
    else:
        from gateway.spool.pg import PgSpool

        dsn = request.getfixturevalue("pg_dsn")

        def open_store(owner: str = "", *, recover: bool = True, **kwargs: object) -> QueueStore:
            kwargs.setdefault("lease", TEST_LEASE)
            kwargs.setdefault("connect_timeout", 2.0)
            store = PgSpool(dsn, owner=owner, **kwargs).open(recover=recover)  # type: ignore[arg-type]
            opened.append(store)
            return store

    open_store.backend = request.param  # type: ignore[attr-defined]
    yield open_store
    for store in opened:
        store.close()
