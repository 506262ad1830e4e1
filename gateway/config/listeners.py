"""`[listeners.<name>]`: the SMTP doors (submission with AUTH, relay for partners and networks)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gateway.config.reader import Reader, parse_duration, parse_size

_LISTENER_KEYS = {"kind", "address", "port", "tls_cert", "tls_key", "client_ca", "allowed_networks",
                  "allowed_client_subjects", "max_message_size", "max_recipients", "timeout", "require_tls",
                  "senders", "tls_policy", "password_auth"}
#: `tls_policy` presets (issue 17): Référentiel #2 ECO.1.1.3 (+ TLS 1.3), TLS 1.3 only, broad TLS 1.2+.
TLS_POLICIES = ("mssante-ref2", "modern", "compatible")


@dataclass(frozen=True)
class ListenerConfig:
    name: str
    kind: Literal["submission", "relay"]
    address: str
    port: int
    tls_cert: Path | None
    tls_key: Path | None
    client_ca: Path | None
    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    allowed_client_subjects: tuple[str, ...]
    max_message_size: int
    max_recipients: int
    timeout: float
    require_tls: bool
    #: For clients trusted by `allowed_networks` (an internal mail server): the sender addresses
    #: they may use. With a list, they are the identity `network:<listener>`, bound to it and
    #: allowed a signing key; without one they relay unbound and never sign.
    senders: tuple[str, ...] = ()
    #: The TLS protocol versions and suites offered (`TLS_POLICIES`; gateway.tlspolicy applies it).
    tls_policy: str = "mssante-ref2"
    #: False: PLAIN/LOGIN are not offered here (professionals log in with a card or PSC only).
    password_auth: bool = True


#: Names the gateway's own HTTP listeners go by in logs, the audit trail and the inventory.
RESERVED_NAMES = ("console", "metrics")


def read_listeners(r: Reader, data: dict[str, Any]) -> tuple[ListenerConfig, ...]:
    out = []
    for name, spec in r.table(data, "listeners").items():
        if not isinstance(spec, dict):
            r.problem(f"listeners.{name}", "expected a table")
            continue
        if name in RESERVED_NAMES:  # the console's and the metrics listener's names (logs, audit, inventory)
            r.problem(f"listeners.{name}", f"{name!r} is the name of the gateway's own {name} listener: choose another")
        out.append(_listener(r, name, spec))
    ports = [(lc.address, lc.port) for lc in out if lc.port]
    if len(ports) != len(set(ports)):
        r.problem("listeners", "two listeners share the same address and port")
    return tuple(out)


def _listener(r: Reader, name: str, spec: dict[str, Any]) -> ListenerConfig:
    prefix = f"listeners.{name}."
    r.unknown(spec, _LISTENER_KEYS, prefix)
    kind = r.choice(spec, "kind", prefix, ("submission", "relay"), name if name in ("submission", "relay")
                    else "relay")
    nets = []
    for i, net in enumerate(r.get(spec, "allowed_networks", prefix, list, [])):
        try:
            nets.append(ipaddress.ip_network(str(net), strict=False))
        except ValueError:
            r.problem(f"{prefix}allowed_networks[{i}]", f"not a network: {net!r}")
    subjects = tuple(str(s) for s in r.get(spec, "allowed_client_subjects", prefix, list, []))
    tls_cert = r.path(spec, "tls_cert", prefix, must_exist=True)
    tls_key = r.path(spec, "tls_key", prefix, must_exist=True)
    if (tls_cert is None) != (tls_key is None):
        r.problem(prefix + "tls_key", "tls_cert and tls_key go together")
    if kind == "submission" and tls_cert is None:
        r.problem(prefix + "tls_cert", "a submission listener needs TLS (AUTH is only offered over TLS)")
    client_ca = r.path(spec, "client_ca", prefix, must_exist=True)
    if subjects and client_ca is None:
        r.problem(prefix + "client_ca", "allowed_client_subjects needs client_ca to check client certificates")
    return ListenerConfig(
        name=name, kind=kind,  # type: ignore[arg-type]
        address=r.get(spec, "address", prefix, str, "127.0.0.1"),
        port=r.port(spec, "port", prefix, 587 if kind == "submission" else 25),
        tls_cert=tls_cert, tls_key=tls_key, client_ca=client_ca,
        allowed_networks=tuple(nets), allowed_client_subjects=subjects,
        max_message_size=r.convert(spec, "max_message_size", prefix, parse_size, 50 * 1000**2),
        max_recipients=r.positive(spec, "max_recipients", prefix, 100),
        timeout=r.convert(spec, "timeout", prefix, parse_duration, 300),
        require_tls=r.get(spec, "require_tls", prefix, bool, kind == "submission"),
        senders=r.senders(spec, prefix),
        tls_policy=r.choice(spec, "tls_policy", prefix, TLS_POLICIES, "mssante-ref2"),
        password_auth=r.get(spec, "password_auth", prefix, bool, True),
    )
