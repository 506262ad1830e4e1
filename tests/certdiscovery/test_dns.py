"""DNS CERT (RFC 4398, Direct Project) and SMIMEA (RFC 8162) against the real loopback DNS server."""

from __future__ import annotations

import base64
import hashlib

import pytest

from gateway.directory.certdiscovery import CertificateDiscovery, NoCertificate, NoCertificateTemporary
from gateway.directory.certsources import DnsCertSource, SmimeaSource
from tests.dnsserver import DNSServer

from .conftest import Checker, Pki, der


def b64(cert) -> str:
    return base64.b64encode(der(cert)).decode()


def cert_rr(owner: str, cert) -> str:
    return f"{owner} CERT PKIX 0 0 {b64(cert)}\n"


async def test_address_bound_record_is_found_and_org_not_asked(pki: Pki) -> None:
    zone = cert_rr("alice.example.org.", pki.alice) + cert_rr("example.org.", pki.org)
    with DNSServer(zone) as server:
        answer = await DnsCertSource(server.resolver()).find("alice@example.org")
        assert [c.serial_number for c in answer.certificates] == [pki.alice.serial_number]
        assert answer.note == "dns CERT alice.example.org.: 1 certificate"
        assert ("example.org.", "CERT") not in server.queries


async def test_org_bound_record_when_no_address_bound(pki: Pki) -> None:
    with DNSServer(cert_rr("example.org.", pki.org)) as server:
        answer = await DnsCertSource(server.resolver()).find("carol@example.org")
        assert [c.serial_number for c in answer.certificates] == [pki.org.serial_number]
        assert answer.note == "dns CERT carol.example.org.: NXDOMAIN; dns CERT example.org.: 1 certificate"
        assert not answer.failed
        assert server.queries[:2] == [("carol.example.org.", "CERT"), ("example.org.", "CERT")]


async def test_dotted_local_part_and_large_answer_over_tcp(pki: Pki) -> None:
    # two RSA certificates do not fit a UDP answer: the resolver must retry over TCP by itself
    zone = cert_rr("jean.dupont.example.org.", pki.dotted) + cert_rr("jean.dupont.example.org.", pki.alice)
    with DNSServer(zone) as server:
        answer = await DnsCertSource(server.resolver()).find("jean.dupont@Example.org")
        assert sorted(c.serial_number for c in answer.certificates) == sorted(
            [pki.dotted.serial_number, pki.alice.serial_number])
        assert server.queries.count(("jean.dupont.example.org.", "CERT")) == 2  # UDP (truncated), then TCP


async def test_nxdomain_is_a_permanent_answer(pki: Pki) -> None:
    with DNSServer("example.org. MX 10 mx.example.org.\n", origin="example.org.") as server:
        answer = await DnsCertSource(server.resolver()).find("nobody@example.org")
        assert answer.certificates == () and not answer.failed
        assert answer.note == "dns CERT nobody.example.org.: NXDOMAIN; dns CERT example.org.: no record"


async def test_servfail_and_timeout_are_temporary(pki: Pki) -> None:
    with DNSServer("", servfail={"alice.example.org", "example.org"}) as server:
        answer = await DnsCertSource(server.resolver()).find("alice@example.org")
        assert answer.failed
        assert answer.note == "dns CERT alice.example.org.: SERVFAIL; dns CERT example.org.: SERVFAIL"
    with DNSServer("", drop={"alice.example.org"}) as server:
        answer = await DnsCertSource(server.resolver(timeout=0.2, lifetime=0.4)).find("alice@example.org")
        assert answer.failed
        assert answer.note == "dns CERT alice.example.org.: timeout; dns CERT example.org.: NXDOMAIN"


async def test_servfail_on_address_bound_but_org_bound_found(pki: Pki) -> None:
    with DNSServer(cert_rr("example.org.", pki.org), servfail={"alice.example.org"}) as server:
        answer = await DnsCertSource(server.resolver()).find("alice@example.org")
        assert not answer.failed
        assert [c.serial_number for c in answer.certificates] == [pki.org.serial_number]
        assert "alice.example.org.: SERVFAIL" in answer.note


async def test_ipkix_ignored_without_fetcher_and_fetched_with_one(pki: Pki) -> None:
    url = "http://certs.example.org/alice.der"
    zone = f'alice.example.org. CERT IPKIX 0 0 {base64.b64encode(url.encode()).decode()}\n'
    with DNSServer(zone) as server:
        ignored = await DnsCertSource(server.resolver()).find("alice@example.org")
        assert ignored.certificates == () and not ignored.failed
        assert "alice.example.org.: 0 certificates, IPKIX URL ignored (no fetcher configured)" in ignored.note

        fetched: list[str] = []

        async def fetch(u: str) -> bytes:
            fetched.append(u)
            return der(pki.alice)

        found = await DnsCertSource(server.resolver(), fetch=fetch).find("alice@example.org")
        assert fetched == [url]
        assert [c.serial_number for c in found.certificates] == [pki.alice.serial_number]

        async def failing(u: str) -> bytes:
            raise ConnectionRefusedError(u)

        failed = await DnsCertSource(server.resolver(), fetch=failing).find("alice@example.org")
        assert failed.failed and "IPKIX fetch failed (ConnectionRefusedError)" in failed.note


async def test_smimea_full_certificate_record(pki: Pki) -> None:
    qname = SmimeaSource.qname("Alice@example.org")
    assert qname.to_text() == hashlib.sha256(b"Alice").digest()[:28].hex() + "._smimecert.example.org."
    zone = f"{qname.to_text()} SMIMEA 3 0 0 {der(pki.alice).hex()}\n{qname.to_text()} SMIMEA 3 1 1 {'ab' * 32}\n"
    with DNSServer(zone) as server:
        answer = await SmimeaSource(server.resolver()).find("Alice@example.org")
        assert [c.serial_number for c in answer.certificates] == [pki.alice.serial_number]
        assert answer.note.endswith(": 1 certificate, 1 record(s) ignored")
        missing = await SmimeaSource(server.resolver()).find("alice@example.org")  # the hash is case-sensitive
        assert missing.certificates == () and missing.note.endswith(": NXDOMAIN")


async def test_discovery_over_dns_rejects_then_raises_typed_errors(pki: Pki, checker: Checker, clock) -> None:
    zone = cert_rr("alice.example.org.", pki.alice_expired) + cert_rr("alice.example.org.", pki.alice_sign)
    with DNSServer(zone, servfail={"broken.example.org"}) as server:
        discovery = CertificateDiscovery([DnsCertSource(server.resolver())], checker, clock=clock)
        with pytest.raises(NoCertificate) as refused:
            await discovery.find("alice@example.org")
        reasons = sorted(r.reason for r in refused.value.rejected)
        assert reasons == ["expired", "key usage does not allow key encipherment"]
        assert refused.value.status == "5.7.1" and not refused.value.temporary
        with pytest.raises(NoCertificateTemporary) as deferred:
            await discovery.find("user@broken.example.org")
        assert deferred.value.temporary and deferred.value.status.startswith("4.")
        assert "dns CERT user.broken.example.org.: NXDOMAIN; dns CERT broken.example.org.: SERVFAIL" in str(
            deferred.value)


async def test_names_that_dns_cannot_carry_are_an_answer_not_a_crash(pki: Pki, checker: Checker, clock) -> None:
    with DNSServer(cert_rr("example.org.", pki.org)) as server:
        # a local part with an empty label: only the organisation-bound name is asked
        assert [n.to_text() for n in DnsCertSource.names("a..b@example.org")] == ["example.org."]
        answer = await DnsCertSource(server.resolver()).find("a..b@example.org")
        assert [c.serial_number for c in answer.certificates] == [pki.org.serial_number]
        bad_domain = await DnsCertSource(server.resolver()).find("alice@example..org")
        assert bad_domain.certificates == () and not bad_domain.failed
        assert bad_domain.note == "dns CERT: alice@example..org cannot be looked up in DNS"
        smimea = await SmimeaSource(server.resolver()).find("alice@example..org")
        assert smimea.note == "smimea: alice@example..org cannot be looked up in DNS" and not smimea.failed
        discovery = CertificateDiscovery([DnsCertSource(server.resolver())], checker, clock=clock)
        with pytest.raises(NoCertificate, match="is not a valid address"):
            await discovery.find("no-at-sign")
