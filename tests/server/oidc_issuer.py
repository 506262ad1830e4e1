"""An OpenID Connect issuer stand-in for the tests: discovery document and JWKS over real HTTPS
(stdlib `http.server` + `ssl` in a thread, certificate from the TEST CA), keys generated here and
rotatable, tokens signed with joserfc. Counts what it served, so a test can see a refetch."""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import RSAKey

from gateway.tlstestpki import TestCA

AUDIENCE = "msgw-gateway"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class Issuer:
    def __init__(self, folder: Path, ca: TestCA | None = None) -> None:
        self.ca = ca or TestCA(folder / "issuer-ca")
        pair = self.ca.issue("localhost")
        self.key = RSAKey.generate_key(2048, parameters={"kid": "key-1", "use": "sig"})
        self.served: list[RSAKey] = [self.key]
        self.requests: collections.Counter[str] = collections.Counter()
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                issuer.requests[self.path] += 1
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": issuer.url, "jwks_uri": issuer.url + "/jwks"}
                elif self.path == "/jwks":
                    body = {"keys": [k.as_dict(private=False) for k in issuer.served]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(pair.cert), str(pair.key))
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.url = f"https://localhost:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def rotate(self) -> RSAKey:
        """A new key with a new kid replaces the served one (the old one is no longer published)."""
        self.key = RSAKey.generate_key(2048, parameters={"kid": f"key-{len(self.requests) + 2}-{time.time_ns()}",
                                                         "use": "sig"})
        self.served = [self.key]
        return self.key

    def claims(self, national_id: str, **over: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {"iss": self.url, "aud": [AUDIENCE, "account"], "azp": AUDIENCE, "exp": now + 300, "iat": now,
                  "nbf": now - 5, "acr": "eidas1", "scope": "openid scope_all", "preferred_username": national_id,
                  "sub": "f:psc:" + national_id}
        claims.update(over)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, national_id: str, *, key: RSAKey | None = None, alg: str = "RS256", kid: str | None = None,
              **over: Any) -> str:
        key = key or self.key
        header = {"alg": alg, "kid": kid or key.kid}
        return jwt.encode(header, self.claims(national_id, **over), key, algorithms=[alg])

    def none_token(self, national_id: str) -> str:
        """``alg: none``: an unsigned token (what an attacker forges)."""
        header = b64url(json.dumps({"alg": "none", "typ": "JWT", "kid": self.key.kid}).encode())
        return f"{header}.{b64url(json.dumps(self.claims(national_id)).encode())}."

    def hs256_with_public_key(self, national_id: str) -> str:
        """HS256 keyed with the issuer's RSA public key PEM: the algorithm-confusion attack."""
        pem = self.key.as_pem(private=False)
        header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": self.key.kid}).encode())
        payload = b64url(json.dumps(self.claims(national_id)).encode())
        signature = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{b64url(signature)}"
