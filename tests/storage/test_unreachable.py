"""PostgreSQL unreachable: every store answers with its own *temporary* error (the caller defers:
4xx, never a yes), bounded by ``connect_timeout``, and works again by itself once the server is
back — the same store objects, no restart. The server is really stopped and started again."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from gateway import storage
from gateway.cisis.ledger import LedgerError
from gateway.directory.directory import DirectoryUnavailable, operator_item
from gateway.errors import GatewayError
from gateway.intake.dedup import DedupError
from gateway.lps.model import Delivered
from gateway.lps.store import StoreError
from tests.cisis.zamdata import ORIGINAL
from tests.storage.conftest import pg_storage

pytestmark = pytest.mark.postgresql

KEY = ("hl7-oru", "ORD1#abc")
DOC = Delivered(unique_id="u1", set_id="s1", version=1, author="810000000001", patient="p", organisation="o")
TIMEOUT = 2.0


def _temporary(call, kind: type[GatewayError]) -> float:
    """Seconds until ``call`` raised ``kind`` (a temporary error)."""
    start = time.monotonic()
    with pytest.raises(kind) as err:
        call()
    assert err.value.temporary and err.value.status.startswith("4.")
    return time.monotonic() - start


def _eventually(call, kind: type[GatewayError]):
    """``call()``'s result once it stops raising ``kind`` (polling: the bound is the test's timeout)."""
    while True:
        try:
            return call()
        except kind:
            time.sleep(0.2)


def test_stores_fail_temporarily_while_postgresql_is_down_and_resume_after(pg_cluster, pg_dsn, tmp_path: Path) -> None:
    cfg = pg_storage(pg_dsn, tmp_path, connect_timeout=TIMEOUT)
    dedup = storage.dedup_store(cfg, tmp_path, window=3600.0)
    directory = storage.directory_store(cfg, tmp_path / "unused.sqlite")
    delivered = storage.delivered_store(cfg, tmp_path)
    from gateway.cisis.ledger_pg import PgZamLedger

    ledger = PgZamLedger(cfg.dsn, password=storage.password(cfg), connect_timeout=TIMEOUT)
    dedup.record(KEY, "dr@x.test", now=1000.0)
    directory.put(operator_item("dr@x.test", "trusted-domain"))
    pg_cluster.stop("immediate")  # a crash, not a clean shutdown
    try:
        waits = [
            _temporary(lambda: dedup.seen(KEY, "dr@x.test", now=1001.0), DedupError),
            _temporary(lambda: dedup.record(KEY, "other@x.test", now=1001.0), DedupError),
            _temporary(lambda: directory.address("dr@x.test"), DirectoryUnavailable),
            _temporary(lambda: directory.put(operator_item("new@x.test", "trusted-domain")), DirectoryUnavailable),
            _temporary(lambda: delivered.previous("u1"), StoreError),
            _temporary(lambda: delivered.record(DOC), StoreError),
            _temporary(lambda: ledger.record(ORIGINAL, "labo", {}, []), LedgerError),
            _temporary(lambda: ledger.due(), LedgerError),
            # a store opened while the server is down: refused the same way
            _temporary(lambda: storage.dedup_store(cfg, tmp_path, window=1.0), DedupError),
        ]
        # bounded by connect_timeout (the pool's wait), not by libpq's or TCP's defaults
        assert max(waits) < 10 * TIMEOUT, waits
    finally:
        pg_cluster.start()
    # back: the same objects reconnect by themselves (the first calls may still be deferred while
    # the pool's retry of the lost connection runs out: `gateway.pgstore.reconnect_timeout`)
    assert _eventually(lambda: dedup.seen(KEY, "dr@x.test", now=1001.0), DedupError)
    dedup.record(KEY, "other@x.test", now=1002.0)
    assert _eventually(lambda: directory.address("dr@x.test"), DirectoryUnavailable) is not None
    _eventually(lambda: delivered.record(DOC), StoreError)
    assert delivered.previous("u1") == DOC
    _eventually(lambda: ledger.record(ORIGINAL, "labo", {}, []), LedgerError)
    assert ledger.known(ORIGINAL)
    for store in (dedup, directory, delivered, ledger):
        store.close()


def test_a_server_that_never_answers_is_a_temporary_error_within_the_connect_timeout(tmp_path: Path) -> None:
    """A socket that accepts TCP but never speaks (a hung server, a half-open path): without the
    bound, libpq would wait for ever."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        secret = tmp_path / "pass"
        secret.write_text("x\n")
        from gateway.config.reader import Secret
        from gateway.config.storage import StorageConfig

        cfg = StorageConfig(backend="postgresql", dsn=f"postgresql://msgw@127.0.0.1:{port}/msgw",
                            password=Secret(file=secret), connect_timeout=TIMEOUT)
        took = _temporary(lambda: storage.delivered_store(cfg, tmp_path), StoreError)
    assert TIMEOUT * 0.9 <= took < 10 * TIMEOUT, took
