"""SASL OAUTHBEARER (RFC 7628) and XOAUTH2 (Google's format): their client messages, their error
challenge, and the account a verified token logs in as.

The account: the `[accounts.*]` entry whose `national_ids` holds the token's identifiant national,
else the directory's local mailboxes of that person (an account made on the fly that may send only
as those addresses, with no password). An authorization identity given by the client (``a=`` in
the GS2 header, ``user=`` in XOAUTH2) must be that account's name or one of its addresses.
"""

from __future__ import annotations

import json
import re
from base64 import b64encode
from dataclasses import dataclass

from gateway.config import GatewayConfig
from gateway.config.accounts import Account
from gateway.errors import PermanentError
from gateway.server.logins import NationalIdLookup, account_for_national_id, may_act_as
from gateway.server.oidcjwks import TokenVerifier
from gateway.server.oidctoken import MAX_TOKEN, TokenRefused

#: RFC 6750 b64token.
_BEARER = re.compile(r"Bearer ([A-Za-z0-9\-._~+/]+=*)\Z")


class SaslMalformed(PermanentError):
    """The client message does not follow the mechanism's syntax."""

    code = "sasl-malformed"
    status = "5.5.2"


@dataclass(frozen=True)
class OAuthRequest:
    authzid: str | None
    token: str


def _kvpairs(parts: list[bytes]) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in parts:
        key, sep, value = part.partition(b"=")
        if not sep or not re.fullmatch(rb"[A-Za-z]+", key):
            raise SaslMalformed("bad key=value pair")
        out[key.decode("ascii").lower()] = value.decode("utf-8")
    return out


def _bearer(pairs: dict[str, str]) -> str:
    match = _BEARER.match(pairs.get("auth", ""))
    if match is None or len(match.group(1)) > MAX_TOKEN:
        raise SaslMalformed("no Bearer token")
    return match.group(1)


def parse_oauthbearer(blob: bytes) -> OAuthRequest:
    """``n,a=<authzid>,\\x01auth=Bearer <token>\\x01\\x01`` (RFC 7628 §3.1; GS2 header RFC 5801)."""
    try:
        gs2, sep, rest = blob.partition(b"\x01")
        if not sep or not rest.endswith(b"\x01\x01"):
            raise SaslMalformed("not an OAUTHBEARER message")
        fields = gs2.split(b",")
        if len(fields) != 3 or fields[0] not in (b"n", b"y") or fields[2] != b"":
            raise SaslMalformed("bad GS2 header")
        authzid = None
        if fields[1]:
            if not fields[1].startswith(b"a="):
                raise SaslMalformed("bad GS2 authzid")
            # RFC 5801 saslname: "=2C" is ",", "=3D" is "="
            authzid = fields[1][2:].decode("utf-8").replace("=2C", ",").replace("=3D", "=")
        pairs = _kvpairs([p for p in rest[:-2].split(b"\x01") if p])
        return OAuthRequest(authzid=authzid or None, token=_bearer(pairs))
    except UnicodeDecodeError:
        raise SaslMalformed("not UTF-8") from None


def parse_xoauth2(blob: bytes) -> OAuthRequest:
    """``user=<user>\\x01auth=Bearer <token>\\x01\\x01`` (Google's XOAUTH2)."""
    if not blob.endswith(b"\x01\x01"):
        raise SaslMalformed("not an XOAUTH2 message")
    try:
        pairs = _kvpairs([p for p in blob[:-2].split(b"\x01") if p])
    except UnicodeDecodeError:
        raise SaslMalformed("not UTF-8") from None
    return OAuthRequest(authzid=pairs.get("user") or None, token=_bearer(pairs))


def error_challenge(verifier: TokenVerifier) -> bytes:
    """RFC 7628 §3.2.2 error, base64 for the ``334`` challenge: what the client should fetch."""
    cfg = verifier.config
    body = {"status": "invalid_token", "scope": " ".join(cfg.required_scopes),
            "openid-configuration": cfg.discovery}
    return b64encode(json.dumps(body, separators=(",", ":")).encode("ascii"))


class OAuthLogin:
    """Token → account, for `GatewaySMTP.auth_OAUTHBEARER` / `auth_XOAUTH2`."""

    def __init__(self, config: GatewayConfig, verifier: TokenVerifier,
                 directory_lookup: NationalIdLookup | None = None) -> None:
        self.config = config
        self.verifier = verifier
        self.directory_lookup = directory_lookup

    async def account(self, request: OAuthRequest) -> Account:
        """The account this request proves; TokenRefused (or IssuerUnavailable) otherwise."""
        valid = await self.verifier.verify(request.token)
        account = await account_for_national_id(self.config, self.directory_lookup, valid.national_id,
                                                request.authzid)
        if account is None:
            raise TokenRefused("unknown-national-id", "no account or local mailbox for this identifiant national")
        if not may_act_as(account, request.authzid):
            raise TokenRefused("authzid", "authorization identity is not this professional's account")
        return account


__all__ = ["OAuthLogin", "OAuthRequest", "SaslMalformed", "parse_oauthbearer", "parse_xoauth2", "error_challenge"]
