"""The issuer's signing keys: discovery document → ``jwks_uri`` → JWKS, over HTTPS only.

Fetched off the event loop (`asyncio.to_thread`; `http.client` follows no redirect, so an
``https`` URL cannot be bounced to ``http``), TLS 1.2+ with the system CAs or `ca_file`, size and
time bounded. Kept `jwks_cache_time`; a token whose ``kid`` is not in the cache makes one refetch
(the issuer rotated its key), at most once per `REFETCH_INTERVAL` so a flood of invented kids does
not hammer the issuer. An issuer that cannot be reached (or answers nonsense) is a local fault:
`IssuerUnavailable`, temporary (454 4.7.0), never a yes and never a definitive no.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from gateway.config.oidc import OidcConfig
from gateway.errors import TemporaryError
from gateway.logs import event
from gateway.server.oidctoken import TokenRefused, ValidToken, read_header, validate

log = logging.getLogger("gateway.server.oidc")

FETCH_TIMEOUT = 5.0
MAX_DISCOVERY = 64 * 1024
MAX_JWKS = 256 * 1024
#: At most one refetch for unknown kids per this many seconds (the first one at once).
REFETCH_INTERVAL = 30.0


class IssuerUnavailable(TemporaryError):
    """The issuer's discovery document or JWKS could not be had: try again later (454 4.7.0)."""

    code = "oidc-unavailable"
    status = "4.7.0"


Fetch = Callable[[str, int], bytes]


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Verified TLS 1.2+ to the issuer: the system CAs, or only `ca_file` when given."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def https_get(ctx: ssl.SSLContext, url: str, limit: int) -> bytes:
    """GET `url` (https only, no redirect), at most `limit` bytes, or IssuerUnavailable."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise IssuerUnavailable("issuer URL is not https")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn = http.client.HTTPSConnection(parts.hostname, parts.port or 443, context=ctx, timeout=FETCH_TIMEOUT)
    try:
        conn.request("GET", path, headers={"Accept": "application/json", "User-Agent": "msgw"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise IssuerUnavailable(f"issuer answered HTTP {resp.status}")
        body = resp.read(limit + 1)
    except (OSError, http.client.HTTPException) as exc:
        raise IssuerUnavailable(f"issuer unreachable ({type(exc).__name__})") from None
    finally:
        conn.close()
    if len(body) > limit:
        raise IssuerUnavailable("issuer document too large")
    return body


class JwksSource:
    """The issuer's keys, cached; `fetch(url, limit)` is blocking and runs in a thread."""

    def __init__(self, config: OidcConfig, *, fetch: Fetch | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        if fetch is None:
            ctx = tls_context(config.ca_file)
            fetch = lambda url, limit: https_get(ctx, url, limit)  # noqa: E731
        self._fetch = fetch
        self._clock = clock
        self._keys: KeySet | None = None
        self._fetched_at = 0.0
        self._last_refetch: float | None = None
        self._lock = asyncio.Lock()
        #: How many times the keys were fetched (for `msgw` diagnostics and tests).
        self.fetches = 0

    async def keys_for(self, kid: str | None) -> KeySet:
        """Keys that should hold `kid`: the cache, refreshed when stale or (rate-limited) when
        `kid` is unknown. Raises IssuerUnavailable when no usable keys can be had."""
        async with self._lock:
            now = self._clock()
            if self._keys is None or now - self._fetched_at >= self.config.jwks_cache_time:
                await self._refresh(now)
            elif kid is not None and not _has_kid(self._keys, kid) and self._may_refetch(now):
                self._last_refetch = now
                event(log, "oidc-jwks-refetch", issuer=self.config.issuer, kid=kid[:64])
                await self._refresh(now)
            assert self._keys is not None
            return self._keys

    def _may_refetch(self, now: float) -> bool:
        return self._last_refetch is None or now - self._last_refetch >= REFETCH_INTERVAL

    async def _refresh(self, now: float) -> None:
        try:
            keys = await asyncio.to_thread(self._load)
        except IssuerUnavailable as exc:
            event(log, "oidc-unavailable", logging.WARNING, issuer=self.config.issuer, reason=str(exc))
            raise
        self._keys, self._fetched_at = keys, now
        self.fetches += 1

    def _load(self) -> KeySet:
        discovery = _json(self._fetch(self.config.discovery, MAX_DISCOVERY), "discovery document")
        if discovery.get("issuer") != self.config.issuer:
            raise IssuerUnavailable("discovery document names another issuer")
        jwks_uri = discovery.get("jwks_uri")
        if not isinstance(jwks_uri, str) or urlsplit(jwks_uri).scheme != "https":
            raise IssuerUnavailable("discovery document has no https jwks_uri")
        data = _json(self._fetch(jwks_uri, MAX_JWKS), "JWKS")
        keys = data.get("keys")
        if not isinstance(keys, list):
            raise IssuerUnavailable("JWKS has no keys")
        # Only public signature keys: an "oct" (symmetric) key in a JWKS is never used.
        usable = [k for k in keys if isinstance(k, dict) and k.get("kty") in ("RSA", "EC", "OKP")
                  and k.get("use", "sig") == "sig" and "d" not in k]
        try:
            return KeySet.import_key_set({"keys": usable})
        except (JoseError, ValueError, TypeError):
            raise IssuerUnavailable("JWKS keys unreadable") from None


def _json(body: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeError):
        raise IssuerUnavailable(f"{what} is not JSON") from None
    if not isinstance(data, dict):
        raise IssuerUnavailable(f"{what} is not a JSON object")
    return data


def _has_kid(keys: KeySet, kid: str) -> bool:
    return any(k.kid == kid for k in keys.keys)


class TokenVerifier:
    """An access token → the identifiant national it proves (TokenRefused, IssuerUnavailable)."""

    def __init__(self, config: OidcConfig, source: JwksSource | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.source = source or JwksSource(config)
        self._clock = clock

    async def verify(self, token: str) -> ValidToken:
        header = read_header(token, self.config)
        keys = await self.source.keys_for(header.kid)
        if header.kid is not None and not _has_kid(keys, header.kid):
            raise TokenRefused("unknown-kid", "no key of the issuer has this kid")
        return validate(token, keys, self.config, self._clock())


__all__ = ["IssuerUnavailable", "JwksSource", "TokenVerifier", "https_get", "tls_context", "REFETCH_INTERVAL"]
