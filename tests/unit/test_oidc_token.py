"""Pro Santé Connect token validation (issue 17 item 2): the pure validator with real keys and
real signatures (joserfc), each check with its attack; the JWKS cache and its rate-limited
refetch; the issuer fetch over real HTTPS (untrusted certificate, error, oversize); the SASL
messages; the `[auth.oidc]` reader."""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

from gateway.config import ConfigError, GatewayConfig, parse_config
from gateway.config.oidc import OidcConfig
from gateway.server.oauth import SaslMalformed, parse_oauthbearer, parse_xoauth2
from gateway.server.oidcjwks import (
    REFETCH_INTERVAL,
    IssuerUnavailable,
    JwksSource,
    TokenVerifier,
    https_get,
    tls_context,
)
from gateway.server.oidctoken import TokenRefused, validate
from gateway.tlstestpki import TestCA
from tests.server.oidc_issuer import AUDIENCE, Issuer, b64url

ISSUER = "https://auth.bas.psc.esante.gouv.fr/auth/realms/esante-wallet"
POLICY = OidcConfig(issuer=ISSUER, audience=AUDIENCE)
NID = "810000000001"
KEY = RSAKey.generate_key(2048, parameters={"kid": "k1"})
KEYS = KeySet.import_key_set({"keys": [KEY.as_dict(private=False)]})


def _claims(**over: object) -> dict:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "exp": now + 300, "iat": now, "acr": "eidas1",
              "scope": "openid scope_all profile", "preferred_username": NID}
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def _token(key=KEY, alg: str = "RS256", kid: str | None = "k1", **over: object) -> str:
    header = {"alg": alg} | ({"kid": kid} if kid else {})
    return jwt.encode(header, _claims(**over), key, algorithms=[alg])


def _reason(token: str, keys: KeySet = KEYS, policy: OidcConfig = POLICY, now: float | None = None) -> str:
    with pytest.raises(TokenRefused) as err:
        validate(token, keys, policy, time.time() if now is None else now)
    assert token not in str(err.value) and NID not in str(err.value)  # no credential, no identity in messages
    return err.value.check


def test_a_valid_token_gives_the_identifiant_national() -> None:
    assert validate(_token(), KEYS, POLICY, time.time()).national_id == NID
    ec = ECKey.generate_key("P-256", parameters={"kid": "e1"})
    keys = KeySet.import_key_set({"keys": [ec.as_dict(private=False)]})
    assert validate(_token(ec, "ES256", "e1"), keys, POLICY, time.time()).national_id == NID
    assert validate(_token(alg="PS256"), KEYS, POLICY, time.time()).national_id == NID


def test_audience_in_an_aud_list_or_as_azp() -> None:
    assert validate(_token(aud=["account", AUDIENCE]), KEYS, POLICY, time.time()).national_id == NID
    assert validate(_token(aud="account", azp=AUDIENCE), KEYS, POLICY, time.time()).national_id == NID
    assert _reason(_token(aud=["account", "other"], azp="other")) == "audience"
    assert _reason(_token(aud=None)) == "audience"


def test_alg_none_is_refused() -> None:
    header = b64url(json.dumps({"alg": "none", "kid": "k1"}).encode())
    assert _reason(f"{header}.{b64url(json.dumps(_claims()).encode())}.") == "algorithm"


def test_hs256_keyed_with_the_public_key_is_refused() -> None:
    issuer_like = Issuer.__new__(Issuer)  # only the token forgery helper, no server
    issuer_like.key = KEY
    issuer_like.url = ISSUER
    forged = issuer_like.hs256_with_public_key(NID)
    assert _reason(forged) == "algorithm"
    # even a policy naming RS256 only for a key of another type: the library refuses it too
    assert _reason(_token(alg="RS384")) == "algorithm"


def test_signature_by_another_key_with_the_same_kid_is_refused() -> None:
    other = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    assert _reason(_token(other)) == "signature"
    parts = _token().split(".")
    tampered = ".".join([parts[0], b64url(json.dumps(_claims(preferred_username="899999999999")).encode()), parts[2]])
    assert _reason(tampered) == "signature"


def test_time_claims_with_a_bounded_skew() -> None:
    now = time.time()
    assert validate(_token(exp=int(now) - 30), KEYS, POLICY, now).national_id == NID  # within 60 s
    assert _reason(_token(exp=int(now) - 90), now=now) == "expired"
    assert _reason(_token(nbf=int(now) + 120), now=now) == "not-yet-valid"
    assert _reason(_token(iat=int(now) + 120), now=now) == "not-yet-valid"
    assert _reason(_token(exp=None)) == "malformed"
    assert _reason(_token(exp="tomorrow")) == "malformed"


def test_issuer_acr_scope_and_identifier() -> None:
    assert _reason(_token(iss=ISSUER + "/")) == "issuer"
    assert _reason(_token(acr="eidas0")) == "acr"
    assert _reason(_token(acr=None)) == "acr"
    assert _reason(_token(scope="openid")) == "scope"
    assert _reason(_token(scope=None)) == "scope"
    assert _reason(_token(preferred_username=None)) == "national-id"
    assert _reason(_token(preferred_username="8 1000")) == "national-id"
    custom = OidcConfig(issuer=ISSUER, audience=AUDIENCE, national_id_claim="SubjectNameID", accepted_acr=("eidas2",),
                        required_scopes=())
    assert validate(_token(SubjectNameID=NID, acr="eidas2", scope=None), KEYS, custom, time.time()).national_id == NID


def test_malformed_tokens() -> None:
    assert _reason("not a token") == "malformed"
    assert _reason("a.b.c.d.e") == "malformed"  # a JWE (five parts) is not accepted
    assert _reason("x" * 20000) == "malformed"
    assert _reason(_token() + "A" * 5).startswith(("signature", "malformed"))


# -- the JWKS source ---------------------------------------------------------------------------

class FakeIssuer:
    """The issuer's two documents, in memory (the HTTPS transport is tested below)."""

    def __init__(self, *keys: RSAKey) -> None:
        self.keys = list(keys)
        self.discovery = {"issuer": ISSUER, "jwks_uri": ISSUER + "/protocol/openid-connect/certs"}
        self.calls: list[str] = []
        self.down = False

    def fetch(self, url: str, limit: int) -> bytes:
        self.calls.append(url)
        if self.down:
            raise IssuerUnavailable("issuer unreachable (ConnectionRefusedError)")
        if url.endswith("/.well-known/openid-configuration"):
            return json.dumps(self.discovery).encode()
        return json.dumps({"keys": [k.as_dict(private=False) for k in self.keys]}).encode()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_unknown_kid_refetches_once_then_not_before_the_interval() -> None:
    fake, clock = FakeIssuer(KEY), Clock()
    verifier = TokenVerifier(POLICY, JwksSource(POLICY, fetch=fake.fetch, clock=clock))
    assert (await verifier.verify(_token())).national_id == NID
    assert len(fake.calls) == 2  # discovery + JWKS
    new = RSAKey.generate_key(2048, parameters={"kid": "k2"})
    fake.keys = [new]
    assert (await verifier.verify(_token(new, kid="k2"))).national_id == NID  # rotation followed
    assert len(fake.calls) == 4
    for n in range(5):  # a flood of invented kids: refused, no fetch
        with pytest.raises(TokenRefused) as err:
            await verifier.verify(_token(new, kid=f"bogus-{n}"))
        assert err.value.check == "unknown-kid"
    assert len(fake.calls) == 4
    clock.now += REFETCH_INTERVAL
    with pytest.raises(TokenRefused):
        await verifier.verify(_token(new, kid="bogus-late"))
    assert len(fake.calls) == 6  # one more refetch once the interval is over


async def test_cache_time_and_an_issuer_down() -> None:
    fake, clock = FakeIssuer(KEY), Clock()
    source = JwksSource(POLICY, fetch=fake.fetch, clock=clock)
    verifier = TokenVerifier(POLICY, source)
    await verifier.verify(_token())
    await verifier.verify(_token())
    assert len(fake.calls) == 2
    clock.now += POLICY.jwks_cache_time
    fake.down = True
    with pytest.raises(IssuerUnavailable) as err:  # never a yes on stale keys, never a definitive no
        await verifier.verify(_token())
    assert err.value.temporary and err.value.status == "4.7.0"


@pytest.mark.parametrize("change", ["issuer", "http-jwks", "no-keys"])
async def test_a_discovery_document_that_does_not_fit_is_a_temporary_failure(change: str) -> None:
    fake = FakeIssuer(KEY)
    if change == "issuer":
        fake.discovery["issuer"] = "https://evil.example"
    elif change == "http-jwks":
        fake.discovery["jwks_uri"] = "http://auth.example/certs"
    else:
        fake.keys = []
        fake.fetch = lambda url, limit: b'{"issuer": "%s", "jwks_uri": "https://x/c"}' % ISSUER.encode() \
            if "well-known" in url else b'{"nokeys": 1}'  # type: ignore[method-assign]
    with pytest.raises(IssuerUnavailable):
        await TokenVerifier(POLICY, JwksSource(POLICY, fetch=fake.fetch)).verify(_token())


async def test_symmetric_keys_in_a_jwks_are_never_used() -> None:
    fake = FakeIssuer(KEY)
    fetch = fake.fetch

    def with_oct(url: str, limit: int) -> bytes:
        body = json.loads(fetch(url, limit))
        if "keys" in body:
            body["keys"].append({"kty": "oct", "kid": "k-oct", "k": b64url(b"s" * 32)})
        return json.dumps(body).encode()
    verifier = TokenVerifier(POLICY, JwksSource(POLICY, fetch=with_oct))
    import hashlib
    import hmac
    header = b64url(json.dumps({"alg": "HS256", "kid": "k-oct"}).encode())
    payload = b64url(json.dumps(_claims()).encode())
    sig = b64url(hmac.new(b"s" * 32, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    with pytest.raises(TokenRefused) as err:
        await verifier.verify(f"{header}.{payload}.{sig}")
    assert err.value.check == "algorithm"


def test_https_fetch_checks_the_certificate_and_limits(tmp_path: Path) -> None:
    issuer = Issuer(tmp_path / "issuer")
    try:
        trusted = tls_context(str(issuer.ca.ca_file))
        body = json.loads(https_get(trusted, issuer.url + "/.well-known/openid-configuration", 4096))
        assert body["issuer"] == issuer.url
        with pytest.raises(IssuerUnavailable):  # another CA: the issuer is not trusted
            https_get(tls_context(str(TestCA(tmp_path / "other").ca_file)), issuer.url + "/jwks", 4096)
        with pytest.raises(IssuerUnavailable):
            https_get(trusted, issuer.url + "/missing", 4096)
        with pytest.raises(IssuerUnavailable):  # larger than the limit
            https_get(trusted, issuer.url + "/jwks", 100)
        with pytest.raises(IssuerUnavailable):  # never plain http
            https_get(trusted, issuer.url.replace("https:", "http:") + "/jwks", 4096)
    finally:
        issuer.stop()


# -- SASL messages -----------------------------------------------------------------------------

def test_oauthbearer_and_xoauth2_messages() -> None:
    req = parse_oauthbearer(b"n,a=dr=2Cx@msgw.test,\x01host=msgw.test\x01port=587\x01auth=Bearer abc.def.ghi\x01\x01")
    assert (req.authzid, req.token) == ("dr,x@msgw.test", "abc.def.ghi")
    assert parse_oauthbearer(b"n,,\x01auth=Bearer abc.def.ghi\x01\x01").authzid is None
    assert parse_xoauth2(b"user=dr@msgw.test\x01auth=Bearer abc.def.ghi\x01\x01").authzid == "dr@msgw.test"
    for bad in (b"", b"\x01", b"n,,\x01auth=Basic abc\x01\x01", b"p=x,,\x01auth=Bearer a.b.c\x01\x01",
                b"n,,auth=Bearer a.b.c\x01\x01", b"n,,\x01auth=Bearer a b\x01\x01", b"n,,\x01auth=Bearer a.b.c\x01"):
        with pytest.raises(SaslMalformed):
            parse_oauthbearer(bad)
    with pytest.raises(SaslMalformed):
        parse_xoauth2(b"user=x\x01auth=Bearer \x01\x01")


# -- [auth.oidc] -------------------------------------------------------------------------------

RELAY = '[listeners.relay]\nkind = "relay"\n'


def _parse(text: str) -> GatewayConfig:
    return parse_config(tomllib.loads(text + RELAY), source="t.toml", base=Path("/srv/msgw"))


def test_auth_oidc_is_read_with_psc_defaults() -> None:
    assert _parse("").auth.oidc is None
    cfg = _parse(f'[auth.oidc]\nissuer = "{ISSUER}"\naudience = "msgw"\n').auth.oidc
    assert cfg == OidcConfig(issuer=ISSUER, audience="msgw")
    assert cfg.accepted_acr == ("eidas1",) and cfg.required_scopes == ("openid", "scope_all")
    assert cfg.algorithms == ("RS256", "PS256", "ES256") and cfg.clock_skew == 60
    assert cfg.discovery == ISSUER + "/.well-known/openid-configuration"
    psc = _parse(f'[auth.oidc]\nissuer = "{ISSUER}"\naudience = "msgw"\nclock_skew = "30s"\n'
                 f'discovery_url = "{ISSUER}/.well-known/wallet-openid-configuration"\n'
                 'national_id_claim = "SubjectNameID"\naccepted_acr = ["eidas1", "eidas2"]\n').auth.oidc
    assert psc.discovery.endswith("wallet-openid-configuration") and psc.clock_skew == 30
    assert psc.national_id_claim == "SubjectNameID" and psc.accepted_acr == ("eidas1", "eidas2")


def test_auth_oidc_problems_name_their_key() -> None:
    with pytest.raises(ConfigError) as err:
        _parse('[auth.oidc]\nissuer = "http://idp.example"\nalgorithms = ["HS256", "none"]\n'
               'clock_skew = "1h"\nbogus = 1\naccepted_acr = []\n')
    keys = {p[1] for p in err.value.problems}
    assert {"auth.oidc.issuer", "auth.oidc.audience", "auth.oidc.algorithms[0]", "auth.oidc.algorithms[1]",
            "auth.oidc.clock_skew", "auth.oidc.bogus", "auth.oidc.accepted_acr"} <= keys, keys
