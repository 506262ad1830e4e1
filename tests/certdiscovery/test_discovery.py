"""CertificateDiscovery: order, first source wins, rejections, caches, temporary vs permanent."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Sequence

import pytest

from gateway.directory.certdiscovery import (
    CertificateDiscovery,
    CertificateDiscoveryError,
    NoCertificate,
    NoCertificateTemporary,
)
from gateway.directory.certsources import DirectorySource, SourceAnswer
from gateway.errors import GatewayError, PermanentError, TemporaryError

from .conftest import Checker, Clock, Pki, der


class Book:
    """A directory lookup over a dict that counts its calls (address -> DER certificates)."""

    def __init__(self, entries: dict[str, Sequence[bytes]] | None = None,
                 error: Callable[[], Exception] | None = None) -> None:
        self.entries = entries or {}
        self.error = error
        self.calls: list[str] = []

    def __call__(self, address: str) -> Sequence[bytes]:
        self.calls.append(address)
        if self.error is not None:
            raise self.error()
        return self.entries.get(address, [])


class SlowSource:
    name = "slow"

    async def find(self, address: str) -> SourceAnswer:
        await asyncio.sleep(10)
        return SourceAnswer(self.name)


def serials(certs) -> list[int]:
    return [c.serial_number for c in certs]


async def test_first_source_with_a_usable_certificate_wins(pki: Pki, checker: Checker, clock: Clock) -> None:
    first = Book({"alice@example.org": [der(pki.alice_sign), der(pki.alice_expired)]})
    second = Book({"alice@example.org": [der(pki.alice_revoked), der(pki.alice), der(pki.alice2)]})
    third = Book({"alice@example.org": [der(pki.alice)]})
    checker.revoked.add(pki.alice_revoked.serial_number)
    discovery = CertificateDiscovery([DirectorySource(first, name="directory"),
                                      DirectorySource(second, name="harvested"),
                                      DirectorySource(third, name="ldap")], checker, clock=clock)
    result = await discovery.find("Alice@example.org")
    assert result.source == "harvested" and not result.from_cache
    assert serials(result.certificates) == [pki.alice.serial_number, pki.alice2.serial_number]
    assert result.trace == ("directory: 2 certificates", "harvested: 3 certificates")
    assert [(r.source, r.serial, r.reason) for r in result.rejected] == [
        ("directory", format(pki.alice_sign.serial_number, "x"), "key usage does not allow key encipherment"),
        ("directory", format(pki.alice_expired.serial_number, "x"), "expired"),
        ("harvested", format(pki.alice_revoked.serial_number, "x"), "revoked"),
    ]
    assert third.calls == []  # later sources are not asked
    assert {address for _, address in checker.calls} == {"Alice@example.org"}


async def test_no_usable_certificate_is_permanent_and_says_who_said_what(pki: Pki, checker: Checker,
                                                                         clock: Clock) -> None:
    directory = Book({"alice@example.org": [der(pki.alice_foreign), b"junk"]})
    harvested = Book({"alice@example.org": [der(pki.bob)]})  # names another address
    discovery = CertificateDiscovery([DirectorySource(directory), DirectorySource(harvested, name="harvested"),
                                      DirectorySource(Book(), name="ldap")], checker, clock=clock)
    with pytest.raises(NoCertificate) as info:
        await discovery.find("alice@example.org")
    error = info.value
    assert isinstance(error, PermanentError) and isinstance(error, CertificateDiscoveryError)
    assert not error.temporary and error.status == "5.7.1" and error.code == "no-certificate"
    assert error.smtp_reply().startswith("554 5.7.1 no usable encryption certificate for alice@example.org: ")
    assert error.trace == ("directory: 1 certificate", "directory: candidate #2 is not a certificate",
                           "harvested: 1 certificate", "ldap: no certificate")
    assert [r.reason for r in error.rejected] == ["not issued by a trusted CA", "does not name alice@example.org"]
    text = str(error)
    for part in ("directory: 1 certificate", "harvested: 1 certificate", "ldap: no certificate",
                 "not issued by a trusted CA"):
        assert part in text
    assert len(text) <= 400


async def test_negative_cache_hits_without_asking_and_expires(pki: Pki, checker: Checker, clock: Clock) -> None:
    book = Book()
    discovery = CertificateDiscovery([DirectorySource(book)], checker, negative_ttl=300, clock=clock)
    with pytest.raises(NoCertificate):
        await discovery.find("carol@example.org")
    assert book.calls == ["carol@example.org"]
    with pytest.raises(NoCertificate) as again:
        await discovery.find("CAROL@example.org")
    with pytest.raises(NoCertificate):
        discovery.cached("carol@example.org")  # the RCPT-time check knows too, without I/O
    assert book.calls == ["carol@example.org"]
    assert again.value.trace == ("directory: no certificate",)
    clock.advance(301)
    assert discovery.cached("carol@example.org") is None
    book.entries["carol@example.org"] = [der(pki.alice)]  # wrong address: still refused, but asked again
    with pytest.raises(NoCertificate):
        await discovery.find("carol@example.org")
    assert len(book.calls) == 2


async def test_positive_cache_ttl_and_invalidate(pki: Pki, checker: Checker, clock: Clock) -> None:
    book = Book({"bob@example.org": [der(pki.bob)]})
    discovery = CertificateDiscovery([DirectorySource(book)], checker, cache_ttl=3600, clock=clock)
    assert discovery.cached("bob@example.org") is None
    first = await discovery.find("bob@example.org")
    hit = discovery.cached("Bob@Example.org")
    assert hit is not None and hit.from_cache and serials(hit.certificates) == [pki.bob.serial_number]
    assert (await discovery.find("bob@example.org")).from_cache
    assert len(book.calls) == 1
    clock.advance(3599)
    assert discovery.cached("bob@example.org") is not None
    clock.advance(2)
    assert discovery.cached("bob@example.org") is None
    again = await discovery.find("bob@example.org")
    assert len(book.calls) == 2 and not again.from_cache and again.found_at > first.found_at
    discovery.invalidate("BOB@example.org")
    assert discovery.cached("bob@example.org") is None
    await discovery.find("bob@example.org")
    assert len(book.calls) == 3


async def test_positive_cache_never_outlives_the_certificate(pki: Pki, checker: Checker, clock: Clock) -> None:
    book = Book({"alice@example.org": [der(pki.alice_soon)]})  # expires 10 minutes from now
    discovery = CertificateDiscovery([DirectorySource(book)], checker, cache_ttl=3600, clock=clock)
    await discovery.find("alice@example.org")
    clock.advance(9 * 60)
    assert discovery.cached("alice@example.org") is not None
    clock.advance(2 * 60)
    assert discovery.cached("alice@example.org") is None
    with pytest.raises(NoCertificate) as info:
        await discovery.find("alice@example.org")
    assert [r.reason for r in info.value.rejected] == ["expired"]


async def test_temporary_failure_with_nothing_elsewhere_is_temporary_and_not_cached(
        pki: Pki, checker: Checker, clock: Clock) -> None:
    broken = Book(error=lambda: sqlite3.OperationalError("database is locked"))
    empty = Book()
    discovery = CertificateDiscovery([DirectorySource(broken), DirectorySource(empty, name="ldap")], checker,
                                     clock=clock)
    with pytest.raises(NoCertificateTemporary) as info:
        await discovery.find("dave@example.org")
    error = info.value
    assert isinstance(error, TemporaryError) and isinstance(error, CertificateDiscoveryError)
    assert error.temporary and error.status == "4.4.3" and error.smtp_reply().startswith("451 4.4.3 ")
    assert error.trace == ("directory: unavailable (OperationalError)", "ldap: no certificate")
    assert discovery.cached("dave@example.org") is None  # temporary: asked again next time
    with pytest.raises(NoCertificateTemporary):
        await discovery.find("dave@example.org")
    assert len(broken.calls) == 2 and len(empty.calls) == 2


async def test_temporary_failure_does_not_hide_a_later_usable_certificate(pki: Pki, checker: Checker,
                                                                          clock: Clock) -> None:
    broken = Book(error=lambda: sqlite3.OperationalError("locked"))
    good = Book({"bob@example.org": [der(pki.bob)]})
    discovery = CertificateDiscovery([DirectorySource(broken), DirectorySource(good, name="harvested")], checker,
                                     clock=clock)
    result = await discovery.find("bob@example.org")
    assert result.source == "harvested"
    assert result.trace == ("directory: unavailable (OperationalError)", "harvested: 1 certificate")


async def test_temporary_rejection_makes_the_refusal_temporary(pki: Pki, checker: Checker, clock: Clock) -> None:
    checker.revocation_unknown.add(pki.alice.serial_number)
    book = Book({"alice@example.org": [der(pki.alice), der(pki.alice_sign)]})
    discovery = CertificateDiscovery([DirectorySource(book)], checker, clock=clock)
    with pytest.raises(NoCertificateTemporary) as info:
        await discovery.find("alice@example.org")
    assert [(r.reason, r.temporary) for r in info.value.rejected] == [
        ("revocation status unknown (CRL unreachable)", True),
        ("key usage does not allow key encipherment", False)]


async def test_slow_and_buggy_sources_are_temporary_failures(pki: Pki, checker: Checker, clock: Clock,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    buggy = Book(error=lambda: RuntimeError("bug"))
    discovery = CertificateDiscovery([SlowSource(), DirectorySource(buggy, name="buggy")], checker,
                                     source_timeout=0.1, clock=clock)
    with caplog.at_level(logging.ERROR, logger="gateway.directory.certdiscovery"):
        with pytest.raises(NoCertificateTemporary) as info:
            await discovery.find("alice@example.org")
    assert info.value.trace == ("slow: timeout", "buggy: error (RuntimeError)")
    assert "certificate source buggy failed" in caplog.text


async def test_a_bug_in_the_validator_is_not_swallowed(pki: Pki, clock: Clock) -> None:
    async def broken(cert, address) -> None:
        raise KeyError("bug")

    discovery = CertificateDiscovery([DirectorySource(Book({"bob@example.org": [der(pki.bob)]}))], broken,
                                     clock=clock)
    with pytest.raises(KeyError):
        await discovery.find("bob@example.org")


async def test_concurrent_lookups_of_one_address_share_one_query(pki: Pki, checker: Checker,
                                                                 clock: Clock) -> None:
    calls: list[str] = []

    class Gate:
        name = "gate"

        def __init__(self) -> None:
            self.release = asyncio.Event()

        async def find(self, address: str) -> SourceAnswer:
            calls.append(address)
            await self.release.wait()
            return SourceAnswer(self.name, (pki.bob,), "gate: 1 certificate")

    gate = Gate()
    discovery = CertificateDiscovery([gate], checker, clock=clock)
    tasks = [asyncio.create_task(discovery.find(a)) for a in ("bob@example.org", "Bob@example.org")]
    await asyncio.sleep(0.01)
    gate.release.set()
    results = await asyncio.gather(*tasks)
    assert calls == ["bob@example.org"]
    assert all(serials(r.certificates) == [pki.bob.serial_number] for r in results)


def test_configuration_errors(checker: Checker) -> None:
    with pytest.raises(ValueError, match="distinct names"):
        CertificateDiscovery([DirectorySource(Book()), DirectorySource(Book())], checker)


def test_rejection_errors_are_gateway_errors() -> None:
    assert issubclass(NoCertificate, GatewayError) and issubclass(NoCertificateTemporary, GatewayError)


async def test_a_waiter_survives_the_cancellation_of_the_first_caller(pki: Pki, checker: Checker,
                                                                      clock: Clock) -> None:
    calls: list[str] = []

    class Slow:
        name = "slow"

        async def find(self, address: str) -> SourceAnswer:
            calls.append(address)
            if len(calls) == 1:
                await asyncio.sleep(10)
            return SourceAnswer(self.name, (pki.bob,), "slow: 1 certificate")

    discovery = CertificateDiscovery([Slow()], checker, clock=clock)
    leader = asyncio.create_task(discovery.find("bob@example.org"))
    await asyncio.sleep(0.01)
    follower = asyncio.create_task(discovery.find("bob@example.org"))
    await asyncio.sleep(0.01)
    leader.cancel()
    result = await asyncio.wait_for(follower, 5)
    assert leader.cancelled()
    assert serials(result.certificates) == [pki.bob.serial_number] and len(calls) == 2
