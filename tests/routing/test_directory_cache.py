"""`SqliteDirectory.address` keeps its answers (issue 15, hot path: it is asked on the event loop
for every recipient, at RCPT time and when routing) only while the database is provably
unchanged: a change by another process (`msgw directory` while the gateway runs) or through the
store itself is seen by the very next lookup; unchanged, an address costs one query."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gateway.directory.directory import SMIME, TRUSTED_DOMAIN, SqliteDirectory, operator_item

ADDR = "dr.martin@cabinet.test"


def _other_process(path: Path, code: str) -> None:
    """Run `code` against the directory at `path` in a separate Python process (its own connection)."""
    prelude = ("import sys\nfrom gateway.directory.directory import *\n"
               f"d = SqliteDirectory({str(path)!r})\n")
    subprocess.run([sys.executable, "-c", prelude + code + "\nd.close()\n"], check=True, timeout=60)


def _address_queries(store: SqliteDirectory) -> list[str]:
    seen: list[str] = []
    store._db.set_trace_callback(lambda sql: seen.append(sql) if "FROM address" in sql else None)
    return seen


def test_an_unchanged_address_costs_one_query(tmp_path: Path) -> None:
    with SqliteDirectory(tmp_path / "d.sqlite") as store:
        store.put(operator_item(ADDR, TRUSTED_DOMAIN))
        queries = _address_queries(store)
        first = store.address(ADDR)
        assert first is not None and first.capability == TRUSTED_DOMAIN
        assert store.address(ADDR.upper()) == first
        assert store.address("nobody@cabinet.test") is None
        assert store.address("nobody@cabinet.test") is None
        assert len(queries) == 2  # one per address, the unknown one included


def test_a_change_by_another_process_is_seen_at_the_next_lookup(tmp_path: Path,
                                                                cert_pair: tuple[bytes, bytes]) -> None:
    path = tmp_path / "d.sqlite"
    with SqliteDirectory(path) as store:
        assert store.address(ADDR) is None  # a negative answer is kept too...
        _other_process(path, f"d.put(operator_item({ADDR!r}, TRUSTED_DOMAIN))")
        found = store.address(ADDR)  # ...until another process commits
        assert found is not None and found.capability == TRUSTED_DOMAIN and found.certificates == ()
        # a certificate and capability changed from outside: seen at once
        _other_process(path, f"d.put(operator_item({ADDR!r}, SMIME, certificates=[{cert_pair[0]!r}]))")
        found = store.address(ADDR)
        assert found is not None and found.capability == SMIME and found.certificates == (cert_pair[0],)
        _other_process(path, f"assert d.remove('addr:{ADDR}')")
        assert store.address(ADDR) is None


def test_a_change_through_another_connection_or_the_store_itself_is_seen(tmp_path: Path,
                                                                         cert_pair: tuple[bytes, bytes]) -> None:
    path = tmp_path / "d.sqlite"
    with SqliteDirectory(path) as store, SqliteDirectory(path) as other:
        store.put(operator_item(ADDR, TRUSTED_DOMAIN))
        assert store.address(ADDR).capability == TRUSTED_DOMAIN  # type: ignore[union-attr]
        other.put(operator_item(ADDR, SMIME, certificates=[cert_pair[1]]))
        assert store.address(ADDR).certificates == (cert_pair[1],)  # type: ignore[union-attr]
        store.put(operator_item(ADDR, SMIME, certificates=[cert_pair[0]]))
        assert store.address(ADDR).certificates == (cert_pair[0],)  # type: ignore[union-attr]
        assert other.address(ADDR).certificates == (cert_pair[0],)  # type: ignore[union-attr]
