"""The delivered-documents store: what a replacement or deletion is checked against (900/901)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gateway.lps.model import Delivered
from gateway.lps.store import FILE_NAME, DeliveredStore, StoreError

INS = "248039912345615^^^&1.2.250.1.213.1.4.10&ISO"


def doc(unique: str, version: int, *, set_id: str = "1.2.3.set", author: str = "810000000001") -> Delivered:
    return Delivered(unique_id=unique, set_id=set_id, version=version, author=author, patient=INS,
                     organisation="990000123", confidentiality=("MASQUE_PS",))


def test_previous_by_unique_id_and_by_set_id_latest_version(tmp_path: Path) -> None:
    clock = [1000.0]
    store = DeliveredStore.beside(tmp_path, clock=lambda: clock[0])
    assert store.path == tmp_path / FILE_NAME
    assert store.previous("1.2.3.v1") is None
    store.record(doc("1.2.3.v1", 1))
    clock[0] += 1
    store.record(doc("1.2.3.v2", 2, author="810000000002"))
    assert store.previous("1.2.3.v1") == doc("1.2.3.v1", 1)
    assert store.previous("1.2.3.set") == doc("1.2.3.v2", 2, author="810000000002")
    assert store.previous("another") is None
    store.close()


def test_kept_across_restarts_private_and_recorded_again_idempotently(tmp_path: Path) -> None:
    store = DeliveredStore.beside(tmp_path)
    store.record_all([doc("a", 1), doc("b", 1, set_id="other")])
    store.record(doc("a", 1))  # an ACK lost, the MDM sent again: the same row
    store.close()
    again = DeliveredStore.beside(tmp_path)
    assert again.previous("a") == doc("a", 1)
    assert again.previous("other") == doc("b", 1, set_id="other")
    assert again._db.execute("SELECT COUNT(*) FROM delivered").fetchone()[0] == 2
    again.close()
    assert stat.S_IMODE(os.stat(tmp_path / FILE_NAME).st_mode) == 0o600


def test_a_store_that_cannot_be_opened_is_a_temporary_error(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).mkdir()  # a directory where the file should be
    with pytest.raises(StoreError) as caught:
        DeliveredStore.beside(tmp_path)
    assert caught.value.temporary and caught.value.status.startswith("4.")
