"""One way to open the small private SQLite stores beside the spool (the CI-SIS ZAM ledger, the
delivered-documents store): created 0600 without following a symlink, WAL, ``synchronous=FULL``
(what they hold replaces an answer already given: a ZAM owed after an ACK, a document delivered
to a DPI), autocommit so each store says where its transactions begin.

Raises `OSError` or `sqlite3.Error`; each store turns them into its own temporary error."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from gateway.filemodes import PRIVATE_FILE


def open_private_db(path: Path, schema: str) -> sqlite3.Connection:
    """The store's connection (shared between threads behind the store's own lock), schema applied."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, PRIVATE_FILE))
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(schema)
    except sqlite3.Error:
        db.close()
        raise
    return db


__all__ = ["open_private_db"]
