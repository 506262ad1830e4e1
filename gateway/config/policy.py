"""`[policy]`: the protection policy (per-destination rule, who signs with which key, discovery).

`for_domain`, `signing_key_name` and `_POLICIES` are used by the stages (and re-exported by
`gateway.config`): keep those names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from gateway.config.reader import Reader, is_address, is_domain, parse_duration

DestinationPolicy = Literal["require-smime", "trust-space-tls", "refuse"]

_POLICIES = ("require-smime", "trust-space-tls", "refuse")
_POLICY_KEYS = {"enabled", "default", "destinations", "sign_with", "neutral_subject", "sender_copy",
                "inbound_unverified", "discovery", "weak_algorithms"}
_DISCOVERY_KEYS = {"order", "ldap_url", "ldap_base", "dns_cert", "cache_ttl", "negative_ttl"}


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


def _destinations(r: Reader, spec: dict[str, Any], prefix: str) -> tuple[tuple[str, DestinationPolicy], ...]:
    out = []
    for domain, value in r.get(spec, "destinations", prefix, dict, {}).items():
        if value not in _POLICIES:
            r.problem(f'{prefix}destinations."{domain}"', f"must be one of {', '.join(_POLICIES)}")
        elif not is_domain(domain.lstrip(".")):
            r.problem(f'{prefix}destinations."{domain}"', "not a domain name")
        else:
            out.append((domain.lower(), value))
    return tuple(out)


def _signer_name_ok(who: str, accounts: Any) -> bool:
    return (who == "*" or who.lower().startswith(("partner:", "network:")) or is_address(who)
            or (who.startswith("@") and is_domain(who[1:])) or (isinstance(accounts, dict) and who in accounts))


def _sign_with(r: Reader, spec: dict[str, Any], prefix: str, accounts: Any,
               keys: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    out = []
    for who, key_name in r.get(spec, "sign_with", prefix, dict, {}).items():
        if not _signer_name_ok(who, accounts):
            r.problem(f'{prefix}sign_with."{who}"', "must be an account name, partner:<subject>, "
                      "network:<listener>, @domain or *")
        elif not isinstance(key_name, str) or key_name not in keys:
            r.problem(f'{prefix}sign_with."{who}"', f"names no [keys.{key_name}] table")
        else:
            out.append((who.lower(), key_name))
    return tuple(out)


def _discovery(r: Reader, spec: dict[str, Any], prefix: str) -> DiscoveryConfig:
    dspec = r.table(spec, "discovery", prefix)
    dprefix = prefix + "discovery."
    r.unknown(dspec, _DISCOVERY_KEYS, dprefix)
    order = tuple(r.get(dspec, "order", dprefix, list, ["directory", "harvested"]))
    for i, name in enumerate(order):
        if name not in ("directory", "harvested", "ldap", "dns"):
            r.problem(f"{dprefix}order[{i}]", "must be one of directory, harvested, ldap, dns")
    ldap_url = r.get(dspec, "ldap_url", dprefix, str, None)
    if "ldap" in order and not ldap_url:
        r.problem(dprefix + "ldap_url", "needed when 'ldap' is in the discovery order")
    return DiscoveryConfig(
        order=order, ldap_url=ldap_url, ldap_base=r.get(dspec, "ldap_base", dprefix, str, None),
        dns_cert=r.get(dspec, "dns_cert", dprefix, bool, "dns" in order),
        cache_ttl=r.convert(dspec, "cache_ttl", dprefix, parse_duration, "1h"),
        negative_ttl=r.convert(dspec, "negative_ttl", dprefix, parse_duration, "5m"))


def read_policy(r: Reader, data: dict[str, Any], keys: dict[str, Any]) -> PolicyConfig | None:
    """`keys`: the `[keys.X]` names a `sign_with` entry may name."""
    if "policy" not in data:
        return None
    spec = r.table(data, "policy")
    prefix = "policy."
    r.unknown(spec, _POLICY_KEYS, prefix)
    if "local_form" in spec:
        r.problem(prefix + "local_form", "not supported: local copies are delivered decrypted and verified, with the "
                  "verdict in X-Msgw-Verification; remove the key")
    destinations = _destinations(r, spec, prefix)
    sign_with = _sign_with(r, spec, prefix, data.get("accounts", {}), keys)
    return PolicyConfig(
        enabled=r.get(spec, "enabled", prefix, bool, True),
        default=r.choice(spec, "default", prefix, _POLICIES, "require-smime"),  # type: ignore[arg-type]
        destinations=destinations, sign_with=sign_with,
        neutral_subject=r.get(spec, "neutral_subject", prefix, str, "Message sécurisé / Secure message"),
        sender_copy=r.get(spec, "sender_copy", prefix, bool, True),
        inbound_unverified=r.choice(spec, "inbound_unverified", prefix, ("flag", "refuse"), "flag"),  # type: ignore[arg-type]
        weak_algorithms=r.choice(spec, "weak_algorithms", prefix, ("flag", "refuse"), "flag"),  # type: ignore[arg-type]
        discovery=_discovery(r, spec, prefix),
    )
