"""Where a recipient domain's mail goes: a local mailbox, a configured route, the smart host,
or the domain's MX hosts (with the implicit-MX fallback of RFC 5321 §5.1).

Decisions are made per domain and are pure given the config; only `hops()` (DNS) and
`deliver_local()` (Maildir / LMTP) do I/O. Like Postfix's transport(5) table, a destination
names its *transport* (`smtp`, `lmtp`, `maildir`: see `gateway.delivery.transports`), which is
all the delivery manager needs to know to hand the bytes over.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass

import dns.asyncresolver

from gateway.config import GatewayConfig, TlsSettings
from gateway.delivery.local import lmtp_results, maildir_results
from gateway.delivery.mx import NextHop, resolve_next_hops
from gateway.delivery.smtp_client import RecipientResult
from gateway.errors import DeliveryError


class HashOnce:
    """A frozen dataclass's hash computed once per object (a dataclass computes it at every
    `hash()`: the nested tuples of a `Destination` and its `TlsSettings`, ~1 us, several times a
    delivery as a dict key). Consistent with the generated `__eq__` (the same field values);
    never pickled with the object (string hashes differ between processes)."""

    def __hash__(self) -> int:
        cached: int | None = self.__dict__.get("_hash")
        if cached is None:
            cached = hash(tuple(getattr(self, f) for f in self.__dataclass_fields__))  # type: ignore[attr-defined]
            object.__setattr__(self, "_hash", cached)
        return cached

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state.pop("_hash", None)
        return state


@dataclass(frozen=True, eq=True)
class Destination(HashOnce):
    key: str                  # the semaphore / log key: "local", "route:dom", "smarthost", "mx:dom", "consumer:addr"
    domain: str
    local: bool = False
    host: str | None = None   # fixed host (route or smart host); None → MX lookup
    port: int = 25
    tls: TlsSettings = TlsSettings()
    concurrency: int = 5
    #: The name of the transport that carries the bytes (a key of `transports.TRANSPORTS`).
    transport: str = "smtp"

    __hash__ = HashOnce.__hash__


#: Destinations remembered per domain by a resolver, at most (then forgotten at once).
DESTINATIONS_KEPT = 4096


class NextHopResolver:
    def __init__(self, config: GatewayConfig, resolver: dns.asyncresolver.Resolver | None = None) -> None:
        self.config = config
        d = config.delivery
        if resolver is None and d.dns_nameservers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = list(d.dns_nameservers)
            resolver.port = d.dns_port
        self.resolver = resolver
        #: `destination(domain)` per domain (pure given the config, which is frozen), and the
        #: config it was computed for.
        self._destinations: dict[str, Destination] = {}
        self._destinations_for = config

    def destination_for(self, address: str) -> Destination:
        """Where one recipient's copy goes: an application mailbox's consumer (per address, the
        first lookup, `[delivery.consumers]`), else its domain's destination."""
        consumer = self.config.delivery.consumer_for(address)
        if consumer is not None:
            # One destination per mailbox: its MDMs go one at a time, in order, to its consumer.
            return Destination(key=f"consumer:{consumer.address}", domain=consumer.address.rpartition("@")[2],
                               local=True, concurrency=1, transport="consumer")
        return self.destination(address.rpartition("@")[2].lower())

    def destination(self, domain: str) -> Destination:
        """Where a domain's mail goes; remembered per domain (the same object each time, so its
        hash is computed once: `HashOnce`), forgotten when `config` is another one."""
        if self._destinations_for is not self.config:
            self._destinations, self._destinations_for = {}, self.config
        dest = self._destinations.get(domain)
        if dest is None:
            if len(self._destinations) >= DESTINATIONS_KEPT:
                self._destinations.clear()
            dest = self._destinations[domain] = self._destination(domain)
        return dest

    def _destination(self, domain: str) -> Destination:
        cfg, d = self.config, self.config.delivery
        if cfg.is_local(domain):
            return Destination(key="local", domain=domain, local=True, concurrency=d.per_destination,
                               transport=cfg.local.mode)
        route = d.route_for(domain)
        if route is not None:
            tls = d.tls_for(route)
            return Destination(key=f"route:{route.domain}", domain=domain, host=route.host, port=route.port,
                               tls=tls, concurrency=route.concurrency, transport=route.transport)
        if d.capture is not None:
            # The embedded default's capture mode: what would go to a smart host or an MX is written
            # to a folder (routes, which only `msgw demo` adds to the default, still apply).
            return Destination(key=f"capture:{domain}", domain=domain, concurrency=d.per_destination,
                               transport="capture")
        tls = d.tls_for(None)
        if d.smarthost:
            # One transaction for all recipients that go through the smart host.
            return Destination(key="smarthost", domain="*", host=d.smarthost, port=d.smarthost_port, tls=tls,
                               concurrency=d.per_destination)
        return Destination(key=f"mx:{domain}", domain=domain, port=d.mx_port, tls=tls,
                           concurrency=d.per_destination)

    async def hops(self, dest: Destination) -> list[NextHop]:
        if dest.host is None:
            return await resolve_next_hops(dest.domain, resolver=self.resolver, port=dest.port)
        host = dest.host.strip("[]")
        try:
            ipaddress.ip_address(host)
            return [NextHop(host=host, addresses=(host,), port=dest.port, preference=0)]
        except ValueError:
            pass
        # A route or smart host given by name: its addresses (no MX lookup for a host name).
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, dest.port, type=1)
        except OSError as exc:
            raise DeliveryError(f"cannot resolve {host}: {exc.strerror}", temporary=True, status="4.4.3") from None
        addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
        return [NextHop(host=host, addresses=addresses, port=dest.port, preference=0)]

    async def deliver_local(self, sender: str, recipients: list[str], data: bytes
                            ) -> tuple[dict[str, RecipientResult], str]:
        """Local delivery as configured (`[local] mode`): what the `lmtp` and `maildir`
        transports do, for callers that hold a resolver rather than a destination."""
        local = self.config.local
        if local.mode == "lmtp":
            return await lmtp_results(local.lmtp_host, local.lmtp_port, sender=sender, recipients=recipients,
                                      data=data, lhlo_name=self.config.hostname), "lmtp"
        return await maildir_results(local.maildir, sender, recipients, data), "maildir"
