"""DirectorySource, HarvestStore/HarvestSource and certificate parsing."""

from __future__ import annotations

import sqlite3

from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from gateway.directory.certsources import (
    CertificateSource,
    DirectorySource,
    HarvestSource,
    HarvestStore,
    fingerprint,
    parse_certificates,
)

from .conftest import DAY, Clock, Pki, der


async def test_directory_source_returns_parsed_candidates(pki: Pki) -> None:
    asked: list[str] = []

    def lookup(address: str) -> list[bytes]:
        asked.append(address)
        return [der(pki.alice), der(pki.alice2), der(pki.alice)]  # duplicate dropped

    source = DirectorySource(lookup)
    assert isinstance(source, CertificateSource)
    answer = await source.find("Alice@Example.ORG")
    assert asked == ["alice@example.org"]
    assert [fingerprint(c) for c in answer.certificates] == [fingerprint(pki.alice), fingerprint(pki.alice2)]
    assert answer.note == "directory: 2 certificates"
    assert not answer.failed and answer.problems == ()


async def test_directory_source_nothing_garbage_and_failure(pki: Pki) -> None:
    empty = await DirectorySource(lambda a: []).find("nobody@example.org")
    assert empty.certificates == () and empty.note == "directory: no certificate" and not empty.failed

    garbage = await DirectorySource(lambda a: [b"not a certificate", der(pki.bob)]).find("bob@example.org")
    assert [c.serial_number for c in garbage.certificates] == [pki.bob.serial_number]
    assert garbage.problems == ("candidate #1 is not a certificate",)

    def broken(address: str) -> list[bytes]:
        raise sqlite3.OperationalError("database is locked")

    failed = await DirectorySource(broken).find("bob@example.org")
    assert failed.failed and failed.certificates == ()
    assert failed.note == "directory: unavailable (OperationalError)"


def test_parse_certificates_accepts_pkcs7_and_pem_bundles(pki: Pki) -> None:
    bundle = pkcs7.serialize_certificates([pki.alice, pki.bob], Encoding.DER)
    pem = pki.alice2.public_bytes(Encoding.PEM)
    certs, problems = parse_certificates([bundle, pem])
    serials = [c.serial_number for c in certs]
    # a PKCS#7 certificate SET has no order (DER sorts it); the PEM one comes after the bundle
    assert sorted(serials[:2]) == sorted([pki.alice.serial_number, pki.bob.serial_number])
    assert serials[2:] == [pki.alice2.serial_number]
    assert problems == []


def test_harvest_store_persists_across_reopen_and_keeps_newest(tmp_path, pki: Pki, clock: Clock) -> None:
    path = tmp_path / "harvest.sqlite"
    with HarvestStore(path, clock=clock) as store:
        store.harvest("Alice@Example.org", pki.alice, seen_at=clock() - 10 * DAY.total_seconds())
        store.harvest("alice@example.org", pki.alice2, seen_at=clock() - 5 * DAY.total_seconds())
        # the same certificate seen again, later: one row, newest sighting kept
        store.harvest("alice@example.org", pki.alice, seen_at=clock() - 1 * DAY.total_seconds())
        # an older sighting arriving late does not move it back
        store.harvest("alice@example.org", pki.alice, seen_at=clock() - 20 * DAY.total_seconds())
        assert store.count() == 2
    with HarvestStore(path, clock=clock) as store:
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.certificates("ALICE@example.org") == [der(pki.alice), der(pki.alice2)]  # newest first
        assert store.certificates("bob@example.org") == []


def test_harvest_store_expires_old_sightings_and_expired_certificates(tmp_path, pki: Pki, clock: Clock) -> None:
    day = DAY.total_seconds()
    with HarvestStore(tmp_path / "h.sqlite", max_age=30 * day, clock=clock, expire_every=float("inf")) as store:
        store.harvest("alice@example.org", pki.alice, seen_at=clock() - 40 * day)     # too old a sighting
        store.harvest("alice@example.org", pki.alice2, seen_at=clock() - 1 * day)
        store.harvest("alice@example.org", pki.alice_expired, seen_at=clock())       # certificate expired
        store.harvest("bob@example.org", pki.bob, seen_at=clock() - 29 * day)
        assert store.certificates("alice@example.org") == [der(pki.alice2)]     # filtered even before expire()
        assert store.expire() == 2
        assert store.count() == 2
        clock.advance(2 * day)  # bob's sighting is now 31 days old
        assert store.certificates("bob@example.org") == []
        assert store.expire() == 1
        assert store.count() == 1


def test_harvest_store_expires_by_itself_once_a_day(tmp_path, pki: Pki, clock: Clock) -> None:
    day = DAY.total_seconds()
    with HarvestStore(tmp_path / "h.sqlite", max_age=30 * day, clock=clock) as store:
        store.harvest("alice@example.org", pki.alice, seen_at=clock() - 40 * day)  # first harvest: expired at once
        assert store.count() == 0
        store.harvest("bob@example.org", pki.bob, seen_at=clock() - 29 * day)
        assert store.count() == 1
        clock.advance(2 * day)  # bob's sighting is now 31 days old
        store.harvest("alice@example.org", pki.alice2)  # a day has passed: the housekeeping runs again
        assert store.count() == 1 and store.certificates("alice@example.org") == [der(pki.alice2)]


def test_harvest_store_bounds_rows_per_address(tmp_path, pki: Pki, clock: Clock) -> None:
    with HarvestStore(tmp_path / "h.sqlite", max_per_address=2, clock=clock) as store:
        for offset, cert in enumerate([pki.alice, pki.alice2, pki.alice_sign]):
            store.harvest("alice@example.org", cert, seen_at=clock() - 100 + offset)
        store.harvest("bob@example.org", pki.bob)
        assert store.certificates("alice@example.org") == [der(pki.alice_sign), der(pki.alice2)]
        assert store.count() == 3


async def test_harvest_source(tmp_path, pki: Pki, clock: Clock) -> None:
    with HarvestStore(tmp_path / "h.sqlite", clock=clock) as store:
        store.harvest("bob@example.org", pki.bob)
        source = HarvestSource(store)
        found = await source.find("Bob@example.org")
        assert [c.serial_number for c in found.certificates] == [pki.bob.serial_number]
        assert found.note == "harvested: 1 certificate"
        none = await source.find("carol@example.org")
        assert none.certificates == () and none.note == "harvested: no certificate" and not none.failed
