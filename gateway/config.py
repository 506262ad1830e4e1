"""TOML configuration → typed, validated, immutable objects.

The only place that reads configuration. Validation collects *every* problem (file, key,
message) before raising `ConfigError`, so `msgw check` can print them all at once.
Secrets (passwords of outbound connections, PINs) are never written in the TOML: a key
names a file (`*_file`) or an environment variable (`*_env`) and `Secret.read()` fetches it
when needed. Relative paths are resolved against the config file's folder (the embedded
default resolves against the working directory, so `./var` is where you ran `msgw`).
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from gateway.errors import ConfigError

TlsPolicy = Literal["required", "opportunistic", "none"]
LocalMode = Literal["maildir", "lmtp"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2,
               "gib": 1024**3, None: 1}
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$",
                     re.IGNORECASE)


@dataclass(frozen=True)
class Secret:
    """A secret referenced by file or environment variable, read only when used."""

    file: Path | None = None
    env: str | None = None

    def read(self) -> str:
        if self.file is not None:
            try:
                return self.file.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ConfigError([(str(self.file), "secret", f"cannot read secret file: {exc.strerror}")]) from None
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise ConfigError([("environment", self.env, "environment variable is not set")])
            return value
        raise ConfigError([("config", "secret", "no secret configured")])


@dataclass(frozen=True)
class Account:
    """A submission login. `senders`: the addresses (or `@domain` patterns) it may use in MAIL FROM
    and in From:/Sender: — by default only its own name when that is an address."""

    username: str
    password_hash: str
    senders: tuple[str, ...] = ()


@dataclass(frozen=True)
class PartnerConfig:
    """A relay partner known by its client certificate (`[partners."<subject>"]`).

    `subject` is written as in a listener's `allowed_client_subjects` (a CN, or a whole RFC 4514
    subject); `senders` lists the addresses or `@domain` patterns it may use. Without a table, a
    partner may use only the names its own certificate carries (see `gateway.senders`)."""

    subject: str
    senders: tuple[str, ...]


@dataclass(frozen=True)
class AuthConfig:
    """AUTH guessing limits: failures counted per client address and per account name within
    `window`; past `max_failures` that address (or account) is refused for `lockout`."""

    max_failures: int = 5
    window: float = 900.0
    lockout: float = 900.0


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


@dataclass(frozen=True)
class TlsSettings:
    """The TLS a delivery to one destination uses (a route's, or `[delivery]`'s as fallback)."""

    policy: TlsPolicy = "opportunistic"
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None

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

    def tls_for(self, route: RouteConfig | None) -> TlsSettings:
        """The TLS of a route, its missing CA and client certificate taken from `[delivery]`."""
        if route is None:
            return TlsSettings(self.tls, self.ca_file, self.client_cert, self.client_key)
        return TlsSettings(route.tls, route.ca_file or self.ca_file, route.client_cert or self.client_cert,
                           route.client_key or self.client_key)

    def route_for(self, domain: str) -> RouteConfig | None:
        domain = domain.lower()
        for route in self.routes:
            if route.domain == domain or (route.domain.startswith(".") and domain.endswith(route.domain)):
                return route
        return None


@dataclass(frozen=True)
class SpoolConfig:
    path: Path
    retry_schedule: tuple[float, ...]
    max_queue_lifetime: float
    delay_warning: float
    poll_interval: float
    shutdown_grace: float


@dataclass(frozen=True)
class LocalConfig:
    """Local domains and their mailboxes. A local recipient is accepted at RCPT only when it is
    known: listed in `mailboxes`, an account, the postmaster, a directory entry with the `local`
    capability; otherwise it goes to `catch_all` when one is set, else 550 5.1.1."""

    domains: tuple[str, ...]
    mode: LocalMode
    maildir: Path
    lmtp_host: str
    lmtp_port: int
    mailboxes: tuple[str, ...] = ()
    catch_all: str | None = None


@dataclass(frozen=True)
class LogConfig:
    format: Literal["text", "json"]
    level: str
    file: Path | None


DestinationPolicy = Literal["require-smime", "trust-space-tls", "refuse"]


@dataclass(frozen=True)
class TrustConfig:
    """Where trust comes from: CA folder (roots + intermediates), CRLs, the MSSanté domain list."""

    anchors: Path | None
    crl_files: tuple[Path, ...]
    fetch_crls: bool
    crl_max_age: float
    authorised_domains_file: Path | None
    #: Ask the certificates' OCSP responders too (fresher than CRLs; either answer suffices).
    ocsp: bool = False


@dataclass(frozen=True)
class DiscoveryConfig:
    order: tuple[str, ...]
    ldap_url: str | None
    ldap_base: str | None
    dns_cert: bool
    cache_ttl: float
    negative_ttl: float


@dataclass(frozen=True)
class PolicyConfig:
    """The protection policy. Disabled (plain relay) only when `[policy]` is absent."""

    enabled: bool
    default: DestinationPolicy
    destinations: tuple[tuple[str, DestinationPolicy], ...]
    sign_with: tuple[tuple[str, str], ...]
    neutral_subject: str
    sender_copy: bool
    inbound_unverified: Literal["flag", "refuse"]
    discovery: DiscoveryConfig
    #: Inbound S/MIME with a weak algorithm (3DES, RC2, SHA-1, RSA < 2048): marked `weak=` in the
    #: verdict ("flag") or refused like an unverified message ("refuse").
    weak_algorithms: Literal["flag", "refuse"] = "flag"

    def for_domain(self, domain: str) -> DestinationPolicy:
        domain = domain.lower()
        for pattern, policy in self.destinations:
            if pattern == domain or (pattern.startswith(".") and domain.endswith(pattern)):
                return policy
        return self.default

    def signing_key_name(self, identity: str | None) -> str | None:
        """The `[keys.X]` that signs for an authenticated identity (an account name, a
        `partner:<subject>`, `network:<listener>`, the configured sender of an intake channel),
        never for an address a client typed: without an identity nothing is signed. `@domain`
        matches the identities that are addresses in that domain, `*` every one of them;
        partners and network clients sign only when named."""
        if not identity:
            return None
        table = dict(self.sign_with)
        who = identity.lower()
        if who in table:
            return table[who]
        if who.startswith(("partner:", "network:")):
            return None
        return table.get("@" + who.rpartition("@")[2]) or table.get("*")


@dataclass(frozen=True)
class LegacyCodecConfig:
    """One legacy format the bridge speaks: its key store and the bridge's own identity in it.

    ``options`` holds the values of the codec's own keys (its ``config_fields``, e.g. openpgp's
    ``passphrase_file``), the ones the file gives; the codec reads them in ``open_keys``."""

    name: str
    keys: Path
    identity: str
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class LegacyConfig:
    codecs: tuple[LegacyCodecConfig, ...]
    sign_key: str | None      # [keys.X] that signs what the bridge rebuilds as S/MIME
    decrypt_key: str | None   # [keys.X] that opens S/MIME encrypted to the bridge's certificate
    #: The paths on which legacy-encrypted mail is bridged (decoded, re-signed by the organisation):
    #: listener names. Legacy mail from a sender the directory knows as `legacy:<codec>` is bridged
    #: on any listener; on every other path legacy armor is ordinary content, never re-labelled.
    listeners: tuple[str, ...] = ()

    def codec(self, name: str) -> LegacyCodecConfig | None:
        return next((c for c in self.codecs if c.name == name), None)


@dataclass(frozen=True)
class GatewayConfig:
    source: str
    hostname: str
    postmaster: str
    listeners: tuple[ListenerConfig, ...]
    accounts: tuple[Account, ...]
    spool: SpoolConfig
    delivery: DeliveryConfig
    local: LocalConfig
    log: LogConfig
    trust: TrustConfig | None = None
    policy: PolicyConfig | None = None
    legacy: LegacyConfig | None = None
    partners: tuple[PartnerConfig, ...] = ()
    auth: AuthConfig = field(default_factory=AuthConfig)
    intake: Any = None  # gateway.intake.settings.IntakeConfig (parsed there: it owns those keys)
    keys: dict[str, Any] = field(default_factory=dict, compare=False)
    base: Path = field(default_factory=Path.cwd, compare=False)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def path(self, value: str) -> Path:
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else self.base / p

    @property
    def state_dir(self) -> Path:
        """Where the embedded stores live by default (directory, audit, harvest): beside the spool."""
        return self.spool.path.parent

    def is_local(self, domain: str) -> bool:
        return domain.lower() in self.local.domains

    def account(self, username: str) -> Account | None:
        for acc in self.accounts:
            if acc.username.lower() == username.lower():
                return acc
        return None

    def partner(self, subject: str) -> PartnerConfig | None:
        for p in self.partners:
            if p.subject == subject:
                return p
        return None


def parse_duration(value: Any) -> float:
    """'5d', '30m', '10s', '250ms' or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '30m' or a number of seconds")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("duration must not be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ValueError(f"not a duration: {value!r} (use e.g. '30s', '15m', '4h', '5d')")


def parse_size(value: Any) -> int:
    """'50MB', '10 MiB', or a number of bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            unit = m.group(2).lower() if m.group(2) else None
            return int(m.group(1)) * _SIZE_UNITS[unit]
    raise ValueError(f"not a size: {value!r} (use e.g. '50MB' or a number of bytes)")


def is_domain(name: str) -> bool:
    return bool(_DOMAIN.match(name))


class _Reader:
    """Typed accessors over a TOML table that record problems instead of raising."""

    def __init__(self, source: str, base: Path) -> None:
        self.source = source
        self.base = base
        self.problems: list[tuple[str, str, str]] = []

    def problem(self, key: str, message: str) -> None:
        self.problems.append((self.source, key, message))

    def table(self, data: dict[str, Any], key: str, prefix: str = "") -> dict[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, dict):
            self.problem(prefix + key, "expected a table")
            return {}
        return value

    def get(self, data: dict[str, Any], key: str, prefix: str, kind: type | tuple[type, ...], default: Any) -> Any:
        if key not in data:
            return default
        value = data[key]
        if isinstance(value, bool) and kind is not bool and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            self.problem(prefix + key, f"expected {_kind_name(kind)}, got a boolean")
            return default
        if not isinstance(value, kind):
            self.problem(prefix + key, f"expected {_kind_name(kind)}, got {type(value).__name__}")
            return default
        return value

    def convert(self, data: dict[str, Any], key: str, prefix: str, conv: Any, default: Any) -> Any:
        if key not in data:
            return conv(default) if isinstance(default, (str, int)) and not isinstance(default, bool) else default
        try:
            return conv(data[key])
        except ValueError as exc:
            self.problem(prefix + key, str(exc))
            return conv(default) if isinstance(default, (str, int)) else default

    def path(self, data: dict[str, Any], key: str, prefix: str, *, must_exist: bool = False) -> Path | None:
        value = self.get(data, key, prefix, str, None)
        if value is None:
            return None
        p = Path(os.path.expanduser(value))
        if not p.is_absolute():
            p = self.base / p
        if must_exist and not p.exists():
            self.problem(prefix + key, f"file not found: {p}")
        return p

    def port(self, data: dict[str, Any], key: str, prefix: str, default: int) -> int:
        value = self.get(data, key, prefix, int, default)
        if not 0 <= value <= 65535:
            self.problem(prefix + key, "port must be between 0 and 65535")
            return default
        return value

    def positive(self, data: dict[str, Any], key: str, prefix: str, default: int) -> int:
        value = self.get(data, key, prefix, int, default)
        if value < 1:
            self.problem(prefix + key, "must be at least 1")
            return default
        return value

    def choice(self, data: dict[str, Any], key: str, prefix: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(data, key, prefix, str, default)
        if value not in choices:
            self.problem(prefix + key, f"must be one of {', '.join(choices)}")
            return default
        return value

    def unknown(self, data: dict[str, Any], allowed: set[str], prefix: str) -> None:
        for key in data:
            if key not in allowed:
                self.problem(prefix + key, "unknown key")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
             dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


_LISTENER_KEYS = {"kind", "address", "port", "tls_cert", "tls_key", "client_ca", "allowed_networks",
                  "allowed_client_subjects", "max_message_size", "max_recipients", "timeout", "require_tls",
                  "senders"}
_ROUTE_KEYS = {"domain", "host", "port", "tls", "ca_file", "client_cert", "client_key", "concurrency"}


def _listeners(r: _Reader, data: dict[str, Any]) -> tuple[ListenerConfig, ...]:
    out = []
    table = r.table(data, "listeners")
    for name, spec in table.items():
        prefix = f"listeners.{name}."
        if not isinstance(spec, dict):
            r.problem(f"listeners.{name}", "expected a table")
            continue
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
        out.append(ListenerConfig(
            name=name, kind=kind,  # type: ignore[arg-type]
            address=r.get(spec, "address", prefix, str, "127.0.0.1"),
            port=r.port(spec, "port", prefix, 587 if kind == "submission" else 25),
            tls_cert=tls_cert, tls_key=tls_key, client_ca=client_ca,
            allowed_networks=tuple(nets), allowed_client_subjects=subjects,
            max_message_size=r.convert(spec, "max_message_size", prefix, parse_size, 50 * 1000**2),
            max_recipients=r.positive(spec, "max_recipients", prefix, 100),
            timeout=r.convert(spec, "timeout", prefix, parse_duration, 300),
            require_tls=r.get(spec, "require_tls", prefix, bool, kind == "submission"),
            senders=_senders(r, spec, prefix),
        ))
    ports = [(lc.address, lc.port) for lc in out if lc.port]
    if len(ports) != len(set(ports)):
        r.problem("listeners", "two listeners share the same address and port")
    return tuple(out)


def _accounts(r: _Reader, data: dict[str, Any]) -> tuple[Account, ...]:
    out = []
    table = r.table(data, "accounts")
    for username, spec in table.items():
        prefix = f"accounts.{username}."
        if not isinstance(spec, dict):
            r.problem(f"accounts.{username}", "expected a table with password_hash or password_hash_file")
            continue
        r.unknown(spec, {"password_hash", "password_hash_file", "senders"}, prefix)
        senders = _senders(r, spec, prefix)
        if not senders and not is_address(username):
            r.problem(prefix + "senders", "the account name is not an address: list the addresses it may send as")
        stored = r.get(spec, "password_hash", prefix, str, None)
        hash_file = r.path(spec, "password_hash_file", prefix, must_exist=True)
        if stored is None and hash_file is not None and hash_file.exists():
            stored = hash_file.read_text(encoding="utf-8").strip()
        if not stored:
            r.problem(prefix + "password_hash", "missing (make one with `msgw passwd`)")
            continue
        if not (stored.startswith("$scrypt$") or stored.startswith("$argon2")):
            r.problem(prefix + "password_hash", "must be a $scrypt$ or $argon2 hash, never a clear password")
            continue
        out.append(Account(username=username, password_hash=stored,
                           senders=senders or (username.lower(),)))
    return tuple(out)


_ADDRESS_TEXT = re.compile(r"^[^@\s<>()\[\],;:\"\x00-\x1f\x7f]+@[A-Za-z0-9.-]+\Z")


def is_address(text: str) -> bool:
    return bool(_ADDRESS_TEXT.match(text)) and is_domain(text.rpartition("@")[2])


def _senders(r: _Reader, spec: dict[str, Any], prefix: str) -> tuple[str, ...]:
    """A `senders` list: addresses or `@domain` patterns, lowercased."""
    out = []
    for i, item in enumerate(r.get(spec, "senders", prefix, list, [])):
        text = item.strip().lower() if isinstance(item, str) else None
        if text and ((text.startswith("@") and is_domain(text[1:])) or is_address(text)):
            out.append(text)
        else:
            r.problem(f"{prefix}senders[{i}]", f"not an address or @domain: {item!r}")
    return tuple(out)


def _partners(r: _Reader, data: dict[str, Any], listeners: tuple[ListenerConfig, ...]) -> tuple[PartnerConfig, ...]:
    known = {s for lc in listeners for s in lc.allowed_client_subjects}
    out = []
    for subject, spec in r.table(data, "partners").items():
        prefix = f'partners."{subject}".'
        if not isinstance(spec, dict):
            r.problem(prefix[:-1], "expected a table with senders = [...]")
            continue
        r.unknown(spec, {"senders"}, prefix)
        if subject not in known:
            r.problem(prefix[:-1], "not in any listener's allowed_client_subjects")
        out.append(PartnerConfig(subject=subject, senders=_senders(r, spec, prefix)))
    return tuple(out)


def _auth(r: _Reader, data: dict[str, Any]) -> AuthConfig:
    spec = r.table(data, "auth")
    prefix = "auth."
    r.unknown(spec, {"max_failures", "window", "lockout"}, prefix)
    return AuthConfig(max_failures=r.positive(spec, "max_failures", prefix, 5),
                      window=r.convert(spec, "window", prefix, parse_duration, "15m"),
                      lockout=r.convert(spec, "lockout", prefix, parse_duration, "15m"))


def _tls_policy(r: _Reader, spec: dict[str, Any], prefix: str, default: str) -> TlsPolicy:
    return r.choice(spec, "tls", prefix, ("required", "opportunistic", "none"), default)  # type: ignore[return-value]


def _delivery(r: _Reader, data: dict[str, Any]) -> DeliveryConfig:
    spec = r.table(data, "delivery")
    prefix = "delivery."
    r.unknown(spec, {"smarthost", "tls", "ca_file", "client_cert", "client_key", "connect_timeout",
                     "command_timeout", "max_parallel", "per_destination", "dns_nameservers", "dns_port",
                     "mx_port", "routes"}, prefix)
    routes = []
    raw_routes = r.get(spec, "routes", prefix, dict, {})
    for domain, rspec in raw_routes.items():
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
        ))
    smarthost = r.get(spec, "smarthost", prefix, str, None)
    smarthost_port = 25
    if smarthost and ":" in smarthost.rsplit("]", 1)[-1]:
        host, _, port_text = smarthost.rpartition(":")
        if port_text.isdigit() and 0 < int(port_text) < 65536:
            smarthost, smarthost_port = host, int(port_text)
        else:
            r.problem(prefix + "smarthost", "port must be a number between 1 and 65535")
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
        routes=tuple(routes),
    )


def _spool(r: _Reader, data: dict[str, Any]) -> SpoolConfig:
    spec = r.table(data, "spool")
    prefix = "spool."
    r.unknown(spec, {"path", "retry_schedule", "max_queue_lifetime", "delay_warning", "poll_interval",
                     "shutdown_grace"}, prefix)
    schedule = []
    for i, item in enumerate(r.get(spec, "retry_schedule", prefix, list, ["1m", "5m", "15m", "30m", "1h", "2h", "4h"])):
        try:
            schedule.append(parse_duration(item))
        except ValueError as exc:
            r.problem(f"{prefix}retry_schedule[{i}]", str(exc))
    if not schedule:
        r.problem(prefix + "retry_schedule", "needs at least one delay")
        schedule = [60.0]
    return SpoolConfig(
        path=r.path(spec, "path", prefix) or r.base / "var" / "spool",
        retry_schedule=tuple(schedule),
        max_queue_lifetime=r.convert(spec, "max_queue_lifetime", prefix, parse_duration, "5d"),
        delay_warning=r.convert(spec, "delay_warning", prefix, parse_duration, "4h"),
        poll_interval=r.convert(spec, "poll_interval", prefix, parse_duration, "1s"),
        shutdown_grace=r.convert(spec, "shutdown_grace", prefix, parse_duration, "20s"),
    )


def _local(r: _Reader, data: dict[str, Any]) -> LocalConfig:
    spec = r.table(data, "local")
    prefix = "local."
    r.unknown(spec, {"domains", "mode", "maildir", "lmtp_host", "lmtp_port", "mailboxes", "catch_all"}, prefix)
    domains = []
    for i, d in enumerate(r.get(spec, "domains", prefix, list, [])):
        if not isinstance(d, str) or not is_domain(d):
            r.problem(f"{prefix}domains[{i}]", f"not a domain name: {d!r}")
        else:
            domains.append(d.lower())
    mailboxes = []
    for i, m in enumerate(r.get(spec, "mailboxes", prefix, list, [])):
        if not isinstance(m, str) or not is_address(m) or m.rpartition("@")[2].lower() not in domains:
            r.problem(f"{prefix}mailboxes[{i}]", f"not an address in a local domain: {m!r}")
        else:
            mailboxes.append(m.lower())
    catch_all = r.get(spec, "catch_all", prefix, str, None)
    if catch_all is not None:
        if not is_address(catch_all) or catch_all.rpartition("@")[2].lower() not in domains:
            r.problem(prefix + "catch_all", f"not an address in a local domain: {catch_all!r}")
            catch_all = None
        else:
            catch_all = catch_all.lower()
    return LocalConfig(
        domains=tuple(domains),
        mode=r.choice(spec, "mode", prefix, ("maildir", "lmtp"), "maildir"),  # type: ignore[arg-type]
        maildir=r.path(spec, "maildir", prefix) or r.base / "var" / "maildir",
        lmtp_host=r.get(spec, "lmtp_host", prefix, str, "127.0.0.1"),
        lmtp_port=r.port(spec, "lmtp_port", prefix, 24),
        mailboxes=tuple(mailboxes), catch_all=catch_all,
    )


def _log(r: _Reader, data: dict[str, Any]) -> LogConfig:
    spec = r.table(data, "log")
    prefix = "log."
    r.unknown(spec, {"format", "level", "file"}, prefix)
    return LogConfig(
        format=r.choice(spec, "format", prefix, ("text", "json"), "text"),  # type: ignore[arg-type]
        level=r.choice(spec, "level", prefix, ("DEBUG", "INFO", "WARNING", "ERROR"), "INFO"),
        file=r.path(spec, "file", prefix),
    )


def _trust(r: _Reader, data: dict[str, Any]) -> TrustConfig | None:
    if "trust" not in data:
        return None
    spec = r.table(data, "trust")
    prefix = "trust."
    r.unknown(spec, {"anchors", "crl_files", "fetch_crls", "crl_max_age", "authorised_domains_file", "ocsp"}, prefix)
    anchors = r.path(spec, "anchors", prefix, must_exist=True)
    if anchors is not None and anchors.exists() and not anchors.is_dir():
        r.problem(prefix + "anchors", "must be a folder of PEM CA certificates")
    crls = []
    for i, item in enumerate(r.get(spec, "crl_files", prefix, list, [])):
        p = r.path({"": item}, "", f"{prefix}crl_files[{i}]", must_exist=True) if isinstance(item, str) else None
        if p is None:
            r.problem(f"{prefix}crl_files[{i}]", "expected a file path")
        else:
            crls.append(p)
    return TrustConfig(
        anchors=anchors, crl_files=tuple(crls), fetch_crls=r.get(spec, "fetch_crls", prefix, bool, True),
        crl_max_age=r.convert(spec, "crl_max_age", prefix, parse_duration, "7d"),
        authorised_domains_file=r.path(spec, "authorised_domains_file", prefix, must_exist=True),
        ocsp=r.get(spec, "ocsp", prefix, bool, False),
    )


_POLICIES = ("require-smime", "trust-space-tls", "refuse")


def _policy(r: _Reader, data: dict[str, Any], keys: dict[str, Any]) -> PolicyConfig | None:
    if "policy" not in data:
        return None
    spec = r.table(data, "policy")
    prefix = "policy."
    r.unknown(spec, {"enabled", "default", "destinations", "sign_with", "neutral_subject", "sender_copy",
                     "inbound_unverified", "discovery", "weak_algorithms"}, prefix)
    if "local_form" in spec:
        r.problem(prefix + "local_form", "not supported: local copies are delivered decrypted and verified, with the "
                  "verdict in X-Msgw-Verification; remove the key")
    destinations = []
    for domain, value in r.get(spec, "destinations", prefix, dict, {}).items():
        if value not in _POLICIES:
            r.problem(f'{prefix}destinations."{domain}"', f"must be one of {', '.join(_POLICIES)}")
        elif not is_domain(domain.lstrip(".")):
            r.problem(f'{prefix}destinations."{domain}"', "not a domain name")
        else:
            destinations.append((domain.lower(), value))
    sign_with = []
    for who, key_name in r.get(spec, "sign_with", prefix, dict, {}).items():
        accounts = data.get("accounts", {})
        if not (who == "*" or who.lower().startswith(("partner:", "network:")) or is_address(who)
                or (who.startswith("@") and is_domain(who[1:])) or (isinstance(accounts, dict) and who in accounts)):
            r.problem(f'{prefix}sign_with."{who}"', "must be an account name, partner:<subject>, "
                      "network:<listener>, @domain or *")
        elif not isinstance(key_name, str) or key_name not in keys:
            r.problem(f'{prefix}sign_with."{who}"', f"names no [keys.{key_name}] table")
        else:
            sign_with.append((who.lower(), key_name))
    dspec = r.table(spec, "discovery", prefix)
    dprefix = prefix + "discovery."
    r.unknown(dspec, {"order", "ldap_url", "ldap_base", "dns_cert", "cache_ttl", "negative_ttl"}, dprefix)
    order = tuple(r.get(dspec, "order", dprefix, list, ["directory", "harvested"]))
    for i, name in enumerate(order):
        if name not in ("directory", "harvested", "ldap", "dns"):
            r.problem(f"{dprefix}order[{i}]", "must be one of directory, harvested, ldap, dns")
    ldap_url = r.get(dspec, "ldap_url", dprefix, str, None)
    if "ldap" in order and not ldap_url:
        r.problem(dprefix + "ldap_url", "needed when 'ldap' is in the discovery order")
    return PolicyConfig(
        enabled=r.get(spec, "enabled", prefix, bool, True),
        default=r.choice(spec, "default", prefix, _POLICIES, "require-smime"),  # type: ignore[arg-type]
        destinations=tuple(destinations), sign_with=tuple(sign_with),
        neutral_subject=r.get(spec, "neutral_subject", prefix, str, "Message sécurisé / Secure message"),
        sender_copy=r.get(spec, "sender_copy", prefix, bool, True),
        inbound_unverified=r.choice(spec, "inbound_unverified", prefix, ("flag", "refuse"), "flag"),  # type: ignore[arg-type]
        weak_algorithms=r.choice(spec, "weak_algorithms", prefix, ("flag", "refuse"), "flag"),  # type: ignore[arg-type]
        discovery=DiscoveryConfig(
            order=order, ldap_url=ldap_url, ldap_base=r.get(dspec, "ldap_base", dprefix, str, None),
            dns_cert=r.get(dspec, "dns_cert", dprefix, bool, "dns" in order),
            cache_ttl=r.convert(dspec, "cache_ttl", dprefix, parse_duration, "1h"),
            negative_ttl=r.convert(dspec, "negative_ttl", dprefix, parse_duration, "5m")),
    )


_LEGACY_OPTION_TYPES: dict[str, type] = {"str": str, "int": int, "bool": bool}


def _legacy_option(r: _Reader, spec: dict[str, Any], option: Any, prefix: str) -> Any:
    """One codec-specific key (a ``gateway.legacy.codec.CodecOption``) checked as the codec declares it."""
    if option.kind == "path":
        return r.path(spec, option.name, prefix, must_exist=option.must_exist)
    return r.get(spec, option.name, prefix, _LEGACY_OPTION_TYPES[option.kind], None)


def _legacy(r: _Reader, data: dict[str, Any], keys: dict[str, Any]) -> LegacyConfig | None:
    if "legacy" not in data:
        return None
    from gateway.legacy import codec as registry  # the codec names and each codec's own keys

    spec = r.table(data, "legacy")
    prefix = "legacy."
    r.unknown(spec, {"sign_key", "decrypt_key", "listeners", *registry.names()}, prefix)
    listeners = tuple(str(x) for x in r.get(spec, "listeners", prefix, list, []))
    codecs = []
    for name in registry.names():
        if name not in spec:
            continue
        fields = registry.get(name).config_fields
        cspec = r.table(spec, name, prefix)
        cprefix = f"{prefix}{name}."
        r.unknown(cspec, {"keys", "identity", *(f.name for f in fields)}, cprefix)
        folder = r.path(cspec, "keys", cprefix, must_exist=True)
        identity = r.get(cspec, "identity", cprefix, str, None)
        if folder is None:
            r.problem(cprefix + "keys", "missing (the key folder or keyring of this format)")
        if not identity:
            r.problem(cprefix + "identity", "missing (the bridge's own identity in this format)")
        options = {f.name: value for f in fields if (value := _legacy_option(r, cspec, f, cprefix)) is not None}
        if folder is not None and identity:
            codecs.append(LegacyCodecConfig(name, folder, identity, MappingProxyType(options)))
    refs = {}
    for key in ("sign_key", "decrypt_key"):
        value = r.get(spec, key, prefix, str, None)
        if value is not None and value not in keys:
            r.problem(prefix + key, f"names no [keys.{value}] table")
            value = None
        refs[key] = value
    return LegacyConfig(tuple(codecs), refs["sign_key"], refs["decrypt_key"], listeners)


def _keys(r: _Reader, data: dict[str, Any]) -> dict[str, Any]:
    """`[keys.<name>]` tables → KeyRef (validated by the key store, which knows the fields)."""
    from gateway.smime.keystore import KeyRef

    out: dict[str, Any] = {}
    for name, spec in r.table(data, "keys").items():
        if not isinstance(spec, dict):
            r.problem(f"keys.{name}", "expected a table")
            continue
        try:
            out[name] = KeyRef.from_mapping(spec, source=r.source, prefix=f"keys.{name}.", base=r.base)
        except ConfigError as exc:
            r.problems.extend(exc.problems)
    return out


_TOP_KEYS = {"gateway", "listeners", "accounts", "spool", "delivery", "local", "log",
             "keys", "directory", "trust", "routing", "legacy", "policy", "audit", "intake", "partners", "auth"}


def parse_config(data: dict[str, Any], *, source: str, base: Path) -> GatewayConfig:
    """Validate a parsed TOML document; raise ConfigError listing every problem."""
    r = _Reader(source, base)
    r.unknown(data, _TOP_KEYS, "")
    gw = r.table(data, "gateway")
    r.unknown(gw, {"hostname", "postmaster"}, "gateway.")
    hostname = r.get(gw, "hostname", "gateway.", str, "msgw.localhost")
    if not is_domain(hostname):
        r.problem("gateway.hostname", f"not a host name: {hostname!r}")
    keys = _keys(r, data)
    from gateway.intake.settings import IntakeConfig, parse_intake

    try:
        intake = parse_intake(data.get("intake", {}), source=source, base=base)
    except ConfigError as exc:
        r.problems.extend(exc.problems)
        intake = IntakeConfig()
    listeners = _listeners(r, data)
    config = GatewayConfig(
        source=source,
        hostname=hostname,
        postmaster=r.get(gw, "postmaster", "gateway.", str, f"postmaster@{hostname}"),
        listeners=listeners,
        accounts=_accounts(r, data),
        spool=_spool(r, data),
        delivery=_delivery(r, data),
        local=_local(r, data),
        log=_log(r, data),
        trust=_trust(r, data),
        policy=_policy(r, data, keys),
        legacy=_legacy(r, data, keys),
        partners=_partners(r, data, listeners),
        auth=_auth(r, data),
        intake=intake,
        keys=keys,
        base=base,
        raw=data,
    )
    if config.policy is not None and config.policy.enabled and config.trust is None:
        r.problem("trust", "the protection policy needs a [trust] table (anchors)")
    if not config.listeners:
        r.problem("listeners", "at least one listener is needed")
    _check_trust_space_routes(r, config)
    _check_network_signers(r, config)
    if config.legacy is not None:
        names = {lc.name for lc in config.listeners}
        for i, name in enumerate(config.legacy.listeners):
            if name not in names:
                r.problem(f"legacy.listeners[{i}]", f"no listener named {name!r}")
    if any(lc.kind == "submission" for lc in config.listeners) and not config.accounts:
        r.problem("accounts", "a submission listener needs at least one account")
    if r.problems:
        raise ConfigError(r.problems)
    return config


def _check_network_signers(r: _Reader, config: GatewayConfig) -> None:
    """`network:<listener>` in sign_with needs that listener's `senders`: an organisation key
    signs for a trusted network only the addresses the operator listed."""
    if config.policy is None:
        return
    listeners = {lc.name: lc for lc in config.listeners}
    for who, _ in config.policy.sign_with:
        if who.startswith("network:"):
            lc = listeners.get(who[len("network:"):])
            if lc is None or not lc.allowed_networks or not lc.senders:
                r.problem(f'policy.sign_with."{who}"', "needs a listener of that name with allowed_networks and "
                          "senders = [...] (the addresses the key may sign for)")


def _check_trust_space_routes(r: _Reader, config: GatewayConfig) -> None:
    """A `trust-space-tls` copy is protected by mutual TLS only: its route must require TLS and
    present our client certificate (a route's own, or `[delivery]`'s), or it would go anonymous."""
    policy = config.policy
    if policy is None or not policy.enabled:
        return
    d = config.delivery
    wanted: list[tuple[str, str | None]] = [(f'policy.destinations."{p}"', p) for p, v in policy.destinations
                                            if v == "trust-space-tls"]
    if policy.default == "trust-space-tls":
        wanted.append(("policy.default", None))
    for key, pattern in wanted:
        route = d.route_for("x" + pattern if pattern and pattern.startswith(".") else pattern) if pattern else None
        where = f'delivery.routes."{route.domain}"' if route is not None else "delivery"
        problem = d.tls_for(route).mutual_tls_problem(where)
        if problem is not None:
            r.problem(key, f"trust-space-tls: {problem} (tls = \"required\", client_cert, client_key)")


def load_config(path: str | Path) -> GatewayConfig:
    """Read and validate a TOML config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([(str(p), "-", f"cannot read: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([(str(p), "-", "not UTF-8 text")]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([(str(p), "-", f"TOML syntax error: {exc}")]) from None
    return parse_config(data, source=str(p), base=p.resolve().parent)


def default_config_text() -> str:
    return resources.files("gateway").joinpath("defaults/default.toml").read_text(encoding="utf-8")


def load_default_config(base: Path | None = None) -> GatewayConfig:
    """The embedded default: loopback listeners, ./var spool and Maildir, a demo account.

    The TLS certificate and the demo account's password hash are created under
    `./var/default/` on first use (see `gateway.defaults`)."""
    from gateway.default_setup import prepare_default_files

    base = (base or Path.cwd()).resolve()
    prepare_default_files(base / "var" / "default")
    data = tomllib.loads(default_config_text())
    return parse_config(data, source="<embedded default>", base=base)
