"""The spool's write turn (issue 15, third round): two processes on one spool take turns to write
through `<spool>/write.lock` instead of SQLite's busy handler, which slept 1, 2, 5, 10 … ms
between tries while the other's commit took ~1 ms. Real flocks, real SQLite, real threads."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

import pytest

from gateway.spool import Spool
from gateway.spool import store as spool_store

BODY = b"From: lab@lab.example\r\nSubject: t\r\n\r\nbody\r\n"


def _holder(path: Path) -> int:
    """Another process's turn: the write lock held on its own open file description."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_a_write_transaction_holds_the_turn_and_gives_it_back(tmp_path: Path) -> None:
    """While a transaction of this spool is open, no other process can take the turn; after its
    commit, it can (the turn is not kept between transactions)."""
    spool = Spool(tmp_path, owner="w0").open()
    seen: list[bool] = []

    def probe(_db: object) -> None:
        fd = os.open(spool.write_lock_path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append(True)
        except BlockingIOError:
            seen.append(False)
        finally:
            os.close(fd)

    spool._write("probe", probe)
    assert seen == [False], "the turn is held for the whole transaction"
    fd = _holder(spool.write_lock_path)  # free again once committed
    os.close(fd)
    assert oct(spool.write_lock_path.stat().st_mode & 0o777) == "0o600"
    spool.close()


def test_writes_wait_for_another_process_s_turn_and_go_on_when_it_ends(tmp_path: Path) -> None:
    """Accepts wait while another process holds the turn (no "database is locked", no 4xx) and
    are all written once it gives it back."""
    spool = Spool(tmp_path, owner="w0").open()
    fd = _holder(spool.write_lock_path)
    results: list[object] = []

    def accept(i: int) -> None:
        try:
            results.append(spool.accept("lab@lab.example", [f"dr{i}@y.example"], BODY, lifetime=3600))
        except Exception as exc:  # noqa: BLE001 - what the caller got
            results.append(exc)

    threads = [threading.Thread(target=accept, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    assert results == [], "the writes wait for the other process's turn"
    os.close(fd)  # the other process ends its transaction (or dies: the kernel frees the flock)
    for t in threads:
        t.join(30)
    assert len(results) == 4 and all(isinstance(r, str) for r in results), results
    assert sorted(m.id for m in spool.due(limit=10)) == sorted(results)  # type: ignore[type-var]
    spool.close()


def test_a_turn_held_too_long_leaves_the_wait_to_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A holder that never gives the turn back (stopped, not in SQLite) does not stop writes for
    good: past the bounded wait SQLite's own locking decides, which here lets the write through."""
    monkeypatch.setattr(spool_store, "_WRITE_TURN_WAIT", 0.2)
    spool = Spool(tmp_path, owner="w0").open()
    fd = _holder(spool.write_lock_path)
    try:
        started = time.monotonic()
        msg_id = spool.accept("lab@lab.example", ["dr@y.example"], BODY, lifetime=3600)
        assert time.monotonic() - started >= 0.2
        assert spool.get(msg_id) is not None
    finally:
        os.close(fd)
        spool.close()
