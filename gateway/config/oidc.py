"""`[auth.oidc]`: the OpenID Connect issuer whose access tokens log professionals in (SASL
OAUTHBEARER and XOAUTH2, issue 17) — Pro Santé Connect by default.

Pro Santé Connect as the ANS documents it (sources in docs/architecture.md and the README):
issuer ``https://auth.bas.psc.esante.gouv.fr/auth/realms/esante-wallet`` (bac à sable) or
``https://auth.esw.esante.gouv.fr/auth/realms/esante-wallet`` (production), discovery document at
``<issuer>/.well-known/wallet-openid-configuration`` (not the standard name: hence
`discovery_url`), ``acr`` ``eidas1``, scopes ``openid scope_all``. Reading only: no connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gateway.config.reader import Reader, parse_duration

#: Asymmetric JWS algorithms a token may be signed with; ``none`` and HS* are never accepted
#: (an HMAC "signed" with the issuer's public key is the classic algorithm-confusion attack).
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
DEFAULT_ALGORITHMS = ("RS256", "PS256", "ES256")
_KEYS = {"issuer", "audience", "accepted_acr", "required_scopes", "national_id_claim", "algorithms",
         "clock_skew", "jwks_cache_time", "ca_file", "discovery_url"}


@dataclass(frozen=True)
class OidcConfig:
    """One issuer. `audience`: this gateway's client id at the issuer (the token's ``aud``, or its
    ``azp`` for Keycloak-style access tokens whose ``aud`` names other services)."""

    issuer: str
    audience: str
    accepted_acr: tuple[str, ...] = ("eidas1",)
    required_scopes: tuple[str, ...] = ("openid", "scope_all")
    #: PSC userinfo carries the identifiant national in ``SubjectNameID``; its (Keycloak) access
    #: tokens in ``preferred_username`` (the same value). Configurable: the access token is read.
    national_id_claim: str = "preferred_username"
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    clock_skew: float = 60.0
    jwks_cache_time: float = 3600.0
    ca_file: str | None = None
    #: Where the discovery document is; default ``<issuer>/.well-known/openid-configuration``.
    discovery_url: str | None = None

    @property
    def discovery(self) -> str:
        return self.discovery_url or self.issuer.rstrip("/") + "/.well-known/openid-configuration"


def _https(r: Reader, value: str | None, key: str) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname:
        r.problem(key, "must be an https:// URL")
        return None
    return value


def _strings(r: Reader, spec: dict[str, Any], key: str, prefix: str, default: tuple[str, ...]) -> tuple[str, ...]:
    values = r.get(spec, key, prefix, list, list(default))
    out = []
    for i, value in enumerate(values):
        if not isinstance(value, str) or not value or any(c.isspace() for c in value):
            r.problem(f"{prefix}{key}[{i}]", "expected a non-empty string without spaces")
            continue
        out.append(value)
    return tuple(out)


def read_oidc(r: Reader, auth: dict[str, Any]) -> OidcConfig | None:
    """`[auth.oidc]`, or None when it is absent (OAUTHBEARER/XOAUTH2 then not offered)."""
    if "oidc" not in auth:
        return None
    spec = r.table(auth, "oidc", "auth.")
    prefix = "auth.oidc."
    r.unknown(spec, _KEYS, prefix)
    issuer = _https(r, r.string(spec, "issuer", prefix, None), prefix + "issuer")
    audience = r.string(spec, "audience", prefix, None)
    if "issuer" not in spec:
        r.problem(prefix + "issuer", "missing (the issuer URL, e.g. Pro Santé Connect's)")
    if not audience:
        r.problem(prefix + "audience", "missing (this gateway's client id at the issuer)")
    accepted_acr = _strings(r, spec, "accepted_acr", prefix, OidcConfig.accepted_acr)
    if not accepted_acr:
        r.problem(prefix + "accepted_acr", "must list at least one authentication level")
    algorithms = _strings(r, spec, "algorithms", prefix, DEFAULT_ALGORITHMS)
    for i, alg in enumerate(algorithms):
        if alg not in ASYMMETRIC_ALGORITHMS:
            r.problem(f"{prefix}algorithms[{i}]", "only asymmetric algorithms (RS*, PS*, ES*, EdDSA)")
    if not algorithms:
        r.problem(prefix + "algorithms", "must list at least one algorithm")
    claim = r.string(spec, "national_id_claim", prefix, OidcConfig.national_id_claim) or ""
    if not claim:
        r.problem(prefix + "national_id_claim", "must not be empty")
    skew = r.convert(spec, "clock_skew", prefix, parse_duration, "60s")
    if skew > 300:
        r.problem(prefix + "clock_skew", "at most 5 minutes")
    cache = r.convert(spec, "jwks_cache_time", prefix, parse_duration, "1h")
    ca_file = r.path(spec, "ca_file", prefix, must_exist=True)
    discovery = _https(r, r.string(spec, "discovery_url", prefix, None), prefix + "discovery_url")
    if issuer is None or not audience:
        return None
    return OidcConfig(issuer=issuer, audience=audience, accepted_acr=accepted_acr,
                      required_scopes=_strings(r, spec, "required_scopes", prefix, OidcConfig.required_scopes),
                      national_id_claim=claim, algorithms=tuple(a for a in algorithms if a in ASYMMETRIC_ALGORITHMS),
                      clock_skew=skew, jwks_cache_time=cache, ca_file=str(ca_file) if ca_file else None,
                      discovery_url=discovery)
