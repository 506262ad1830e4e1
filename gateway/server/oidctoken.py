"""Validation of an OpenID Connect access token (a JWS-signed JWT) for SMTP AUTH, pure.

The signature, the header and the claims are checked with joserfc (a maintained JOSE library),
never by hand: only the configured asymmetric algorithms (``none`` and HS* refused before any
key is touched, so an HMAC keyed with the issuer's public key cannot pass), ``iss`` exact, this
gateway in ``aud`` (or as ``azp``: Keycloak, which Pro Santé Connect runs on, puts the client in
``azp`` and other services in ``aud``), ``exp``/``nbf``/``iat`` with a bounded skew, ``acr``
among the accepted levels, the required scopes, and the identifiant national claim present.

`TokenRefused.check` (the check that failed) is a short fixed word for the log and the audit; messages name claims,
never their values (a token is a credential and carries the professional's identity).
No I/O: the keys come from the caller (`gateway.server.oidcjwks`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import KeySet

from gateway.config.oidc import OidcConfig
from gateway.errors import PermanentError

#: A compact JWS: three base64url parts (an encrypted JWE has five and is not accepted).
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\Z")
MAX_TOKEN = 16384


class TokenRefused(PermanentError):
    """The token does not log in. `check`: one word for logs (``expired``, ``audience``...)."""

    code = "token-refused"
    status = "5.7.8"

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.check = reason
        self.detail = detail


@dataclass(frozen=True)
class TokenHeader:
    """What the unverified header says: enough to pick a key, nothing trusted yet."""

    alg: str
    kid: str | None


@dataclass(frozen=True)
class ValidToken:
    national_id: str
    kid: str | None


def read_header(token: str, policy: OidcConfig) -> TokenHeader:
    """The header, refused unless its algorithm is one the policy allows (before any key lookup)."""
    if len(token) > MAX_TOKEN or not _COMPACT.match(token):
        raise TokenRefused("malformed", "not a compact JWS")
    try:
        header = jws.extract_compact(token.encode("ascii")).headers()
    except (JoseError, ValueError, UnicodeError):
        raise TokenRefused("malformed", "unreadable header") from None
    alg = header.get("alg")
    kid = header.get("kid")
    if not isinstance(alg, str) or alg not in policy.algorithms:
        raise TokenRefused("algorithm", "alg not among the configured asymmetric algorithms")
    if kid is not None and not isinstance(kid, str):
        raise TokenRefused("malformed", "kid is not a string")
    if "crit" in header or "jku" in header or "x5u" in header or "jwk" in header:
        raise TokenRefused("malformed", "header names its own key or critical extensions")
    return TokenHeader(alg=alg, kid=kid)


def validate(token: str, keys: KeySet, policy: OidcConfig, now: float) -> ValidToken:
    """Check `token` against the issuer's `keys` and the policy; the identifiant national it proves."""
    header = read_header(token, policy)
    try:
        decoded = jwt.decode(token, keys, algorithms=list(policy.algorithms))
    except BadSignatureError:
        raise TokenRefused("signature", "bad signature") from None
    except JoseError as exc:  # no key for the kid/alg, a key of the wrong type...
        raise TokenRefused("signature", type(exc).__name__) from None
    except (ValueError, UnicodeError):
        raise TokenRefused("malformed", "unreadable claims") from None
    claims = decoded.claims
    if not isinstance(claims, dict):
        raise TokenRefused("malformed", "claims are not an object")
    _check_claims(claims, policy, now)
    nid = claims.get(policy.national_id_claim)
    if not isinstance(nid, str) or not re.fullmatch(r"[0-9A-Za-z]{2,30}", nid):
        raise TokenRefused("national-id", f"claim {policy.national_id_claim} missing or not an identifiant national")
    return ValidToken(national_id=nid, kid=header.kid)


def _check_claims(claims: dict[str, Any], policy: OidcConfig, now: float) -> None:
    if claims.get("iss") != policy.issuer:
        raise TokenRefused("issuer", "iss is not the configured issuer")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if policy.audience not in audiences and claims.get("azp") != policy.audience:
        raise TokenRefused("audience", "neither aud nor azp names this gateway")
    skew = policy.clock_skew
    exp = _time(claims, "exp", required=True)
    if exp is not None and exp + skew < now:
        raise TokenRefused("expired", "exp is past")
    nbf = _time(claims, "nbf", required=False)
    if nbf is not None and nbf - skew > now:
        raise TokenRefused("not-yet-valid", "nbf is in the future")
    iat = _time(claims, "iat", required=False)
    if iat is not None and iat - skew > now:
        raise TokenRefused("not-yet-valid", "iat is in the future")
    if claims.get("acr") not in policy.accepted_acr:
        raise TokenRefused("acr", "acr is not an accepted authentication level")
    scope = claims.get("scope")
    granted = set(scope.split()) if isinstance(scope, str) else set()
    missing = [s for s in policy.required_scopes if s not in granted]
    if missing:
        raise TokenRefused("scope", "required scope missing: " + " ".join(missing))


def _time(claims: dict[str, Any], name: str, *, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise TokenRefused("malformed", f"{name} missing")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TokenRefused("malformed", f"{name} is not a number")
    return float(value)


__all__ = ["TokenRefused", "TokenHeader", "ValidToken", "read_header", "validate", "MAX_TOKEN"]
