"""Next-hop resolution for a recipient domain: MX, implicit MX, null MX (RFC 5321 §5.1, RFC 7505).

Failures are classified so the retry logic needs no DNS knowledge: a domain that cannot receive
mail (NXDOMAIN, null MX, no address at all) is permanent; anything that may heal (SERVFAIL,
timeout, no answering nameserver, MX hosts without addresses yet) is temporary.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from collections.abc import Iterable
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.resolver
import dns.rrset

from gateway.errors import DeliveryError, TemporaryError

#: RFC 3463 X.4.3 "directory server failure": DNS did not answer usefully; X.1.2 bad system.
_TEMP_DNS = "4.4.3"
_NO_DOMAIN = "5.1.2"
_NULL_MX = "5.1.10"  # RFC 7505 §3
_NO_ROUTE = "5.4.4"


@dataclass(frozen=True)
class NextHop:
    host: str                   # MX host name (or the domain for implicit MX)
    addresses: tuple[str, ...]  # IPv4/IPv6 addresses, A then AAAA
    port: int
    preference: int


class _Temporary(TemporaryError):
    """A lookup that failed in a way that may heal (SERVFAIL, timeout): RFC 3463 4.4.3."""

    code = "dns-temporary"
    status = _TEMP_DNS


def _literal(domain: str, port: int) -> list[NextHop] | None:
    """`[192.0.2.1]` / `[IPv6:2001:db8::1]` address literals (RFC 5321 §4.1.3)."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    if inner[:5].lower() == "ipv6:":
        inner = inner[5:]
    try:
        address = str(ipaddress.ip_address(inner))
    except ValueError:
        raise DeliveryError(f"invalid address literal {domain!r}", temporary=False,
                            status=_NO_DOMAIN) from None
    return [NextHop(host=address, addresses=(address,), port=port, preference=0)]


def _to_name(domain: str) -> dns.name.Name:
    try:
        return dns.name.from_text(domain.rstrip(".") + ".")
    except (dns.exception.DNSException, UnicodeError, ValueError):
        raise DeliveryError(f"invalid domain name {domain!r}", temporary=False, status=_NO_DOMAIN) from None


Resolver = dns.asyncresolver.Resolver


async def _query(resolver: Resolver, name: dns.name.Name, rdtype: str) -> dns.rrset.RRset | None:
    """RRset of `rdtype` at `name`; None when the name has no such record; NXDOMAIN propagates."""
    try:
        answer = await resolver.resolve(name, rdtype, search=False)
    except dns.resolver.NoAnswer:
        return None
    except dns.resolver.NXDOMAIN:
        raise
    except dns.exception.DNSException as exc:  # NoNameservers (SERVFAIL, REFUSED), Timeout, ...
        raise _Temporary(f"{type(exc).__name__} for {name} {rdtype}") from None
    return answer.rrset


async def _addresses(resolver: Resolver, name: dns.name.Name) -> tuple[tuple[str, ...], bool]:
    """(A then AAAA addresses of `name`, whether a lookup failed temporarily)."""
    results = await asyncio.gather(_query(resolver, name, "A"), _query(resolver, name, "AAAA"),
                                   return_exceptions=True)
    addresses: list[str] = []
    temporary = False
    for result in results:
        if isinstance(result, dns.resolver.NXDOMAIN):
            continue
        if isinstance(result, _Temporary):
            temporary = True
            continue
        if isinstance(result, BaseException):
            raise result
        if result is not None:
            addresses.extend(rdata.address for rdata in result)
    return tuple(dict.fromkeys(addresses)), temporary


def _ordered_mx(rrset: Iterable[object]) -> list[tuple[int, dns.name.Name]]:
    """MX (preference, exchange) sorted by preference, equal preferences shuffled, duplicates dropped."""
    records = [(int(r.preference), r.exchange) for r in rrset]  # type: ignore[attr-defined]
    random.shuffle(records)
    records.sort(key=lambda item: item[0])  # stable: the shuffle survives within a preference
    seen: set[dns.name.Name] = set()
    ordered = []
    for preference, exchange in records:
        if exchange not in seen:
            seen.add(exchange)
            ordered.append((preference, exchange))
    return ordered


def _host_text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


async def _implicit_mx(resolver: dns.asyncresolver.Resolver, name: dns.name.Name, port: int) -> list[NextHop]:
    addresses, temporary = await _addresses(resolver, name)
    if addresses:
        return [NextHop(host=_host_text(name), addresses=addresses, port=port, preference=0)]
    if temporary:
        raise DeliveryError(f"DNS lookup of {_host_text(name)} addresses failed temporarily",
                            temporary=True, status=_TEMP_DNS)
    raise DeliveryError(f"domain {_host_text(name)} has no MX and no address", temporary=False,
                        status=_NO_ROUTE)


async def resolve_next_hops(domain: str, *, resolver: dns.asyncresolver.Resolver | None = None,
                            port: int = 25) -> list[NextHop]:
    """The hosts to try for `domain`, best first; raises DeliveryError (temporary or permanent)."""
    domain = domain.strip()
    literal = _literal(domain, port)
    if literal is not None:
        return literal
    name = _to_name(domain)
    if resolver is None:
        try:
            resolver = dns.asyncresolver.Resolver()
        except dns.exception.DNSException:
            raise DeliveryError("no DNS resolver configured", temporary=True, status=_TEMP_DNS) from None
    try:
        rrset = await _query(resolver, name, "MX")
    except dns.resolver.NXDOMAIN:
        raise DeliveryError(f"domain {_host_text(name)} does not exist", temporary=False,
                            status=_NO_DOMAIN) from None
    except _Temporary:
        raise DeliveryError(f"DNS MX lookup for {_host_text(name)} failed temporarily", temporary=True,
                            status=_TEMP_DNS) from None
    if rrset is None or len(rrset) == 0:
        return await _implicit_mx(resolver, name, port)
    if any(r.exchange == dns.name.root for r in rrset):
        raise DeliveryError(f"domain {_host_text(name)} does not accept mail (null MX)", temporary=False,
                            status=_NULL_MX)
    return await _resolve_mx_hosts(resolver, name, _ordered_mx(rrset), port)


async def _resolve_mx_hosts(resolver: dns.asyncresolver.Resolver, name: dns.name.Name,
                            mx: list[tuple[int, dns.name.Name]], port: int) -> list[NextHop]:
    results = await asyncio.gather(*(_addresses(resolver, exchange) for _, exchange in mx),
                                   return_exceptions=True)
    hops = []
    for (preference, exchange), result in zip(mx, results, strict=True):
        if isinstance(result, dns.resolver.NXDOMAIN):
            continue
        if isinstance(result, BaseException):
            raise result
        addresses, _temporary = result
        if addresses:
            hops.append(NextHop(host=_host_text(exchange), addresses=addresses, port=port,
                                preference=preference))
    if not hops:
        raise DeliveryError(f"no MX host of {_host_text(name)} has an address", temporary=True,
                            status=_TEMP_DNS)
    return hops
