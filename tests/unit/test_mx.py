"""Next-hop resolution against a real DNS server on loopback (tests/dnsserver.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import dns.asyncresolver
import dns.resolver
import pytest

from gateway.delivery.mx import NextHop, resolve_next_hops
from gateway.errors import DeliveryError
from tests.dnsserver import DNSServer

ZONE = """
$ORIGIN example.org.
@          MX 10 mx1
@          MX 20 mx2.example.net.
@          MX 30 mx3
mx1        A 192.0.2.1
mx1        A 192.0.2.2
mx1        AAAA 2001:db8::1
mx3        AAAA 2001:db8::3
$ORIGIN example.net.
mx2        A 198.51.100.2
$ORIGIN implicit.test.
@          A 192.0.2.50
@          AAAA 2001:db8::50
www        A 192.0.2.51
$ORIGIN nullmx.test.
@          MX 0 .
$ORIGIN ghosts.test.
@          MX 10 nowhere.ghosts.test.
@          MX 20 noaddr
noaddr     TXT "no address here"
$ORIGIN partial.test.
@          MX 10 broken
@          MX 20 good
good       A 192.0.2.77
$ORIGIN tempmx.test.
@          MX 10 broken
$ORIGIN equal.test.
@          MX 10 a
@          MX 10 b
@          MX 10 c
@          MX 5 first
a          A 192.0.2.10
b          A 192.0.2.11
c          A 192.0.2.12
first      A 192.0.2.9
$ORIGIN alias.test.
@          MX 10 mail
mail       CNAME real.alias.test.
real       A 192.0.2.88
$ORIGIN nothing.test.
@          TXT "exists but no MX and no address"
"""


@pytest.fixture(scope="module")
def dns_server() -> Iterator[DNSServer]:
    with DNSServer(ZONE, servfail={"servfail.test", "broken.partial.test", "broken.tempmx.test"},
                   drop={"slow.test"}) as server:
        yield server


@pytest.fixture
def resolver(dns_server: DNSServer) -> dns.asyncresolver.Resolver:
    return dns_server.resolver()


async def test_mx_sorted_with_a_then_aaaa(resolver: dns.asyncresolver.Resolver) -> None:
    hops = await resolve_next_hops("example.org", resolver=resolver)
    assert hops == [
        NextHop("mx1.example.org", ("192.0.2.1", "192.0.2.2", "2001:db8::1"), 25, 10)
        if hops[0].addresses[0] == "192.0.2.1" else
        NextHop("mx1.example.org", ("192.0.2.2", "192.0.2.1", "2001:db8::1"), 25, 10),
        NextHop("mx2.example.net", ("198.51.100.2",), 25, 20),
        NextHop("mx3.example.org", ("2001:db8::3",), 25, 30),
    ]


async def test_port_and_case_and_trailing_dot(resolver: dns.asyncresolver.Resolver) -> None:
    hops = await resolve_next_hops("EXAMPLE.org.", resolver=resolver, port=2525)
    assert [h.port for h in hops] == [2525, 2525, 2525]
    assert [h.host for h in hops] == ["mx1.example.org", "mx2.example.net", "mx3.example.org"]


async def test_equal_preferences_are_shuffled(resolver: dns.asyncresolver.Resolver) -> None:
    seen_orders = set()
    for _ in range(40):
        hops = await resolve_next_hops("equal.test", resolver=resolver)
        assert hops[0] == NextHop("first.equal.test", ("192.0.2.9",), 25, 5)
        assert {h.preference for h in hops[1:]} == {10}
        seen_orders.add(tuple(h.host for h in hops[1:]))
    assert len(seen_orders) > 1  # 40 draws of 6 orders: all equal with probability 6**-39


async def test_implicit_mx(resolver: dns.asyncresolver.Resolver) -> None:
    hops = await resolve_next_hops("implicit.test", resolver=resolver)
    assert hops == [NextHop("implicit.test", ("192.0.2.50", "2001:db8::50"), 25, 0)]


async def test_implicit_mx_on_subdomain_without_mx(resolver: dns.asyncresolver.Resolver) -> None:
    hops = await resolve_next_hops("www.implicit.test", resolver=resolver)
    assert hops == [NextHop("www.implicit.test", ("192.0.2.51",), 25, 0)]


async def test_no_mx_no_address_is_permanent(resolver: dns.asyncresolver.Resolver) -> None:
    with pytest.raises(DeliveryError) as info:
        await resolve_next_hops("nothing.test", resolver=resolver)
    assert info.value.temporary is False
    assert info.value.status.startswith("5.")


async def test_null_mx_is_permanent(resolver: dns.asyncresolver.Resolver) -> None:
    with pytest.raises(DeliveryError) as info:
        await resolve_next_hops("nullmx.test", resolver=resolver)
    assert info.value.temporary is False
    assert info.value.status == "5.1.10"


async def test_nxdomain_is_permanent(resolver: dns.asyncresolver.Resolver) -> None:
    with pytest.raises(DeliveryError) as info:
        await resolve_next_hops("does-not-exist.example.org", resolver=resolver)
    assert info.value.temporary is False
    assert info.value.status == "5.1.2"


async def test_servfail_is_temporary(resolver: dns.asyncresolver.Resolver) -> None:
    with pytest.raises(DeliveryError) as info:
        await resolve_next_hops("servfail.test", resolver=resolver)
    assert info.value.temporary is True
    assert info.value.status == "4.4.3"


async def test_timeout_is_temporary(dns_server: DNSServer) -> None:
    with pytest.raises(DeliveryError) as info:
        await resolve_next_hops("slow.test", resolver=dns_server.resolver(timeout=0.2, lifetime=0.5))
    assert info.value.temporary is True


async def test_no_nameserver_listening_is_temporary(port_factory) -> None:
    res = dns.asyncresolver.Resolver(configure=False)
    res.nameservers = ["127.0.0.1"]
    res.port = port_factory()  # nothing listens there
    res.timeout, res.lifetime = 0.2, 0.6
    with pytest.raises(DeliveryError) as info:
        await resolve_next_hops("example.org", resolver=res)
    assert info.value.temporary is True


async def test_mx_hosts_without_address_are_skipped(resolver: dns.asyncresolver.Resolver) -> None:
    hops = await resolve_next_hops("partial.test", resolver=resolver)
    assert hops == [NextHop("good.partial.test", ("192.0.2.77",), 25, 20)]


async def test_no_mx_host_left_is_temporary(resolver: dns.asyncresolver.Resolver) -> None:
    for domain in ("ghosts.test", "tempmx.test"):
        with pytest.raises(DeliveryError) as info:
            await resolve_next_hops(domain, resolver=resolver)
        assert info.value.temporary is True, domain


async def test_cname_to_mx_host_is_followed(resolver: dns.asyncresolver.Resolver) -> None:
    hops = await resolve_next_hops("alias.test", resolver=resolver)
    assert hops == [NextHop("mail.alias.test", ("192.0.2.88",), 25, 10)]


async def test_address_and_mx_lookups_use_the_given_resolver(dns_server: DNSServer) -> None:
    dns_server.queries.clear()
    await resolve_next_hops("example.org", resolver=dns_server.resolver())
    asked = set(dns_server.queries)
    assert ("example.org.", "MX") in asked
    for host in ("mx1.example.org.", "mx2.example.net.", "mx3.example.org."):
        assert (host, "A") in asked and (host, "AAAA") in asked


@pytest.mark.parametrize(("domain", "address"), [
    ("[127.0.0.1]", "127.0.0.1"), ("[IPv6:::1]", "::1"), ("[ipv6:2001:DB8::5]", "2001:db8::5"),
])
async def test_address_literals(domain: str, address: str) -> None:
    assert await resolve_next_hops(domain, port=2525) == [NextHop(address, (address,), 2525, 0)]


@pytest.mark.parametrize("domain", ["[999.1.1.1]", "[not-an-ip]", "a..b", ""])
async def test_invalid_destinations_are_permanent(domain: str, resolver: dns.asyncresolver.Resolver) -> None:
    with pytest.raises(DeliveryError) as info:
        await resolve_next_hops(domain, resolver=resolver)
    assert info.value.temporary is False


def test_server_serves_tcp_and_large_answers(dns_server: DNSServer) -> None:
    """A CERT answer too big for UDP comes back truncated and the resolver retries over TCP."""
    blob = "A" * 4000
    dns_server.add("big.cert.test", "CERT", f"PKIX 0 0 {blob}")
    dns_server.add("big.cert.test", "TXT", '"hello"')
    answer = dns_server.sync_resolver().resolve("big.cert.test", "CERT")
    assert len(answer.rrset[0].certificate) == 3000  # base64 of 3000 bytes
    tcp_answer = dns_server.sync_resolver().resolve("big.cert.test", "TXT", tcp=True)
    assert tcp_answer.rrset[0].strings == (b"hello",)
    smimea = "3 0 0 " + "ab" * 32
    dns_server.add("_smimecert.cert.test", "SMIMEA", smimea)
    got = dns_server.sync_resolver().resolve("_smimecert.cert.test", "SMIMEA")
    assert got.rrset[0].to_text() == smimea
    with pytest.raises(dns.resolver.NXDOMAIN):
        dns_server.sync_resolver().resolve("missing.cert.test", "A")
    with pytest.raises(dns.resolver.NoAnswer):
        dns_server.sync_resolver().resolve("cert.test", "A")  # empty non-terminal: NODATA


def test_dict_zone_and_origin_refusal() -> None:
    zone = {"example.com": {"MX": ["10 mx.example.com."]}, "mx.example.com": {"A": "192.0.2.3"}}
    with DNSServer(zone, origin="example.com") as server:
        res = server.sync_resolver()
        assert [r.address for r in res.resolve("mx.example.com", "A")] == ["192.0.2.3"]
        hops = asyncio.run(resolve_next_hops("example.com", resolver=server.resolver()))
        assert hops == [NextHop("mx.example.com", ("192.0.2.3",), 25, 10)]
        with pytest.raises(dns.resolver.NoNameservers):  # REFUSED outside the served zone
            res.resolve("example.net", "A")
        server.servfail.add("mx.example.com.")
        with pytest.raises(DeliveryError) as info:
            asyncio.run(resolve_next_hops("example.com", resolver=server.resolver()))
        assert info.value.temporary is True
