"""`[delivery]` and `[delivery.routes."<domain>"]`: how copies leave (smarthost, MX, per-route TLS)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gateway.config.consumers import ConsumerConfig, read_consumers
from gateway.config.listeners import TLS_POLICIES
from gateway.config.reader import Reader, is_domain, parse_duration

TlsPolicy = Literal["required", "opportunistic", "none"]

_DELIVERY_KEYS = {"smarthost", "tls", "ca_file", "client_cert", "client_key", "connect_timeout", "command_timeout",
                  "max_parallel", "per_destination", "dns_nameservers", "dns_port", "mx_port", "routes",
                  "consumers", "connection_cache_time", "connection_reuse_limit", "tls_policy", "capture"}
_ROUTE_KEYS = {"domain", "host", "port", "tls", "ca_file", "client_cert", "client_key", "concurrency", "transport",
               "tls_policy"}


@dataclass(frozen=True)
class TlsSettings:
    """The TLS a delivery to one destination uses (a route's, or `[delivery]`'s as fallback)."""

    policy: TlsPolicy = "opportunistic"
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    #: The versions and suites of verified (`required`) TLS, a `TLS_POLICIES` preset;
    #: opportunistic TLS always offers the broad "compatible" one (`gateway.tlspolicy`).
    preset: str = "mssante-ref2"

    def mutual_tls_problem(self, where: str) -> str | None:
        """Why this cannot carry a copy protected by mutual TLS only (trust-space TLS), or None:
        the one rule for `msgw check`, the delivery manager and the SMTP client."""
        if self.policy != "required":
            return f"{where} does not require TLS, and a copy protected by transport security only needs mutual TLS"
        if not (self.client_cert and self.client_key):
            return f"{where} presents no client certificate, and a copy protected by transport security only " \
                   "needs mutual TLS"
        return None


@dataclass(frozen=True)
class RouteConfig:
    domain: str
    host: str | None
    port: int
    tls: TlsPolicy
    ca_file: Path | None
    client_cert: Path | None
    client_key: Path | None
    concurrency: int
    #: The transport that carries this route's copies (a name in `gateway.delivery.transports.
    #: TRANSPORTS`, checked by `msgw check` / `msgw serve`): `smtp`, `lmtp`, `maildir`, ...
    transport: str = "smtp"
    #: The TLS preset when `tls = "required"` (`TLS_POLICIES`); unset: `[delivery]`'s.
    tls_policy: str | None = None


@dataclass(frozen=True)
class DeliveryConfig:
    smarthost: str | None
    smarthost_port: int
    tls: TlsPolicy
    ca_file: Path | None
    client_cert: Path | None
    client_key: Path | None
    connect_timeout: float
    command_timeout: float
    max_parallel: int
    per_destination: int
    dns_nameservers: tuple[str, ...]
    dns_port: int
    mx_port: int
    routes: tuple[RouteConfig, ...]
    #: Application mailboxes delivered to a DPI/RIS as MDMs (`gateway.config.consumers`).
    consumers: tuple[ConsumerConfig, ...] = ()
    #: How long an SMTP session to a destination stays open, idle, for the next message (Postfix's
    #: `smtp_connection_cache_time_limit`); 0 turns the connection cache off.
    connection_cache_time: float = 2.0
    #: Messages sent over one cached session before it is closed (Postfix's
    #: `smtp_connection_reuse_count_limit`).
    connection_reuse_limit: int = 100
    #: The TLS preset of `required` TLS (`TLS_POLICIES`): Référentiel #2 unless the config says otherwise.
    tls_policy: str = "mssante-ref2"
    #: Capture mode (the embedded default only): every copy for a non-local domain (without a route) goes into
    #: this folder (`<domain>/<name>.eml`, the bytes that would have been sent) instead of leaving
    #: the machine (`gateway.delivery.capture`). None: mail leaves as the next-hop table says.
    capture: Path | None = None

    def consumer_for(self, address: str) -> ConsumerConfig | None:
        """The consumer mailbox at this exact address, if any (a per-address row, before domains)."""
        address = address.lower()
        return next((c for c in self.consumers if c.address == address), None)

    def tls_for(self, route: RouteConfig | None) -> TlsSettings:
        """The TLS of a route, its missing CA and client certificate taken from `[delivery]`."""
        if route is None:
            return TlsSettings(self.tls, self.ca_file, self.client_cert, self.client_key, self.tls_policy)
        return TlsSettings(route.tls, route.ca_file or self.ca_file, route.client_cert or self.client_cert,
                           route.client_key or self.client_key, route.tls_policy or self.tls_policy)

    def route_for(self, domain: str) -> RouteConfig | None:
        domain = domain.lower()
        for route in self.routes:
            if route.domain == domain or (route.domain.startswith(".") and domain.endswith(route.domain)):
                return route
        return None


def _tls_policy(r: Reader, spec: dict[str, Any], prefix: str, default: str) -> TlsPolicy:
    return r.choice(spec, "tls", prefix, ("required", "opportunistic", "none"), default)  # type: ignore[return-value]


_TRANSPORT_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")


def _transport_name(r: Reader, spec: dict[str, Any], prefix: str) -> str:
    """A transport's name; whether one is registered by that name is checked at start-up (the
    registry lives with delivery, which the configuration does not import)."""
    name = r.get(spec, "transport", prefix, str, "smtp")
    if not _TRANSPORT_NAME.fullmatch(name):
        r.problem(prefix + "transport", "not a transport name (lower-case letters, digits, - and _)")
        return "smtp"
    return name


def _routes(r: Reader, spec: dict[str, Any], prefix: str) -> tuple[RouteConfig, ...]:
    routes = []
    for domain, rspec in r.get(spec, "routes", prefix, dict, {}).items():
        rprefix = f"delivery.routes.\"{domain}\"."
        if not isinstance(rspec, dict):
            r.problem(rprefix[:-1], "expected a table")
            continue
        r.unknown(rspec, _ROUTE_KEYS, rprefix)
        if not is_domain(domain.lstrip(".")):
            r.problem(rprefix[:-1], "not a domain name")
        routes.append(RouteConfig(
            domain=domain.lower(), host=r.get(rspec, "host", rprefix, str, None),
            port=r.port(rspec, "port", rprefix, 25), tls=_tls_policy(r, rspec, rprefix, "required"),
            ca_file=r.path(rspec, "ca_file", rprefix, must_exist=True),
            client_cert=r.path(rspec, "client_cert", rprefix, must_exist=True),
            client_key=r.path(rspec, "client_key", rprefix, must_exist=True),
            concurrency=r.positive(rspec, "concurrency", rprefix, 5),
            transport=_transport_name(r, rspec, rprefix),
            tls_policy=r.choice(rspec, "tls_policy", rprefix, TLS_POLICIES, "") if "tls_policy" in rspec else None,
        ))
    return tuple(routes)


def _smarthost(r: Reader, spec: dict[str, Any], prefix: str) -> tuple[str | None, int]:
    smarthost = r.get(spec, "smarthost", prefix, str, None)
    if smarthost and ":" in smarthost.rsplit("]", 1)[-1]:
        host, _, port_text = smarthost.rpartition(":")
        if port_text.isdigit() and 0 < int(port_text) < 65536:
            return host, int(port_text)
        r.problem(prefix + "smarthost", "port must be a number between 1 and 65535")
    return smarthost, 25


#: `Reader.source` of the embedded default (`gateway.config.gateway.DEFAULT_SOURCE`, which this
#: module cannot import: gateway.py imports it).
_EMBEDDED_DEFAULT = "<embedded default>"


def _capture(r: Reader, spec: dict[str, Any], prefix: str) -> Path | None:
    """The capture folder. Refused in a config file: a real gateway that "delivers" into a folder
    would tell every sender their mail left when nothing did, so only the first-run default has it."""
    if "capture" not in spec:
        return None
    if r.source != _EMBEDDED_DEFAULT:
        r.problem(prefix + "capture", "capture mode (mail written to a folder, nothing leaves this machine) "
                  "is for the embedded default only: remove it from a real configuration")
        return None
    return r.path(spec, "capture", prefix, nonempty=True)


def read_delivery(r: Reader, data: dict[str, Any]) -> DeliveryConfig:
    spec = r.table(data, "delivery")
    prefix = "delivery."
    r.unknown(spec, _DELIVERY_KEYS, prefix)
    routes = _routes(r, spec, prefix)
    smarthost, smarthost_port = _smarthost(r, spec, prefix)
    nameservers = []
    for i, ns in enumerate(r.get(spec, "dns_nameservers", prefix, list, [])):
        try:
            nameservers.append(str(ipaddress.ip_address(str(ns))))
        except ValueError:
            r.problem(f"{prefix}dns_nameservers[{i}]", f"not an IP address: {ns!r}")
    return DeliveryConfig(
        smarthost=smarthost, smarthost_port=smarthost_port,
        tls=_tls_policy(r, spec, prefix, "opportunistic"),
        ca_file=r.path(spec, "ca_file", prefix, must_exist=True),
        client_cert=r.path(spec, "client_cert", prefix, must_exist=True),
        client_key=r.path(spec, "client_key", prefix, must_exist=True),
        connect_timeout=r.convert(spec, "connect_timeout", prefix, parse_duration, 30),
        command_timeout=r.convert(spec, "command_timeout", prefix, parse_duration, 300),
        max_parallel=r.positive(spec, "max_parallel", prefix, 20),
        per_destination=r.positive(spec, "per_destination", prefix, 5),
        dns_nameservers=tuple(nameservers), dns_port=r.port(spec, "dns_port", prefix, 53),
        mx_port=r.port(spec, "mx_port", prefix, 25),
        routes=routes,
        consumers=read_consumers(r, spec, prefix),
        connection_cache_time=r.convert(spec, "connection_cache_time", prefix, parse_duration, 2),
        connection_reuse_limit=r.positive(spec, "connection_reuse_limit", prefix, 100),
        tls_policy=r.choice(spec, "tls_policy", prefix, TLS_POLICIES, "mssante-ref2"),
        capture=_capture(r, spec, prefix),
    )
