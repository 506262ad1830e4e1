"""TLS policy presets (`tls_policy`): which protocol versions and TLS 1.2 suites a context offers.

The presets are data, so `msgw check`, the tests' TLS scan and the README read the same lists:

* ``mssante-ref2`` (default of listeners and of `required` delivery routes): TLS 1.2 with
  exactly the four suites of Référentiel #2 ECO.1.1.3 (ECDHE-RSA, AES-GCM and AES-CBC-SHA2),
  plus TLS 1.3 with OpenSSL's default suites. The suites are RSA-authenticated: a listener on
  this preset needs an RSA certificate (IGC-Santé server certificates are RSA) for TLS 1.2
  clients; `certificate_problem` says so.
* ``modern``: TLS 1.3 only.
* ``compatible``: TLS 1.2+ with the ECDHE suites of both key types, AEAD (AES-GCM,
  ChaCha20-Poly1305) then AES-CBC with SHA-2 MACs. No RSA key exchange (no forward secrecy), no
  SHA-1 MAC, no NULL/export/RC4/3DES/CAMELLIA/ARIA/DSS/PSK/SRP. Opportunistic delivery uses it.

Every preset refuses TLS < 1.2, compression and renegotiation; a server chooses the suite in
its own order. Python's `ssl` cannot choose TLS 1.3 suites (no `SSL_CTX_set_ciphersuites`
binding): TLS 1.3 gets OpenSSL's defaults, all AEAD, listed in `TLS13_DEFAULT`.

Pure: it changes a context given to it and reads a certificate object; no file, no socket.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa


@dataclass(frozen=True)
class Suite:
    """A TLS cipher suite by its OpenSSL name, its IANA name and its IANA code."""

    openssl: str
    iana: str
    code: int
    #: The certificate key type that authenticates it: "RSA", "ECDSA", or "any" (TLS 1.3).
    auth: str


def _suite(openssl: str, iana: str, code: int) -> Suite:
    auth = "ECDSA" if "-ECDSA-" in openssl else "RSA" if "-RSA-" in openssl else "any"
    return Suite(openssl, iana, code, auth)


#: OpenSSL's default TLS 1.3 suites (3.0), in its order: what every preset offers over TLS 1.3.
TLS13_DEFAULT = (
    Suite("TLS_AES_256_GCM_SHA384", "TLS_AES_256_GCM_SHA384", 0x1302, "any"),
    Suite("TLS_CHACHA20_POLY1305_SHA256", "TLS_CHACHA20_POLY1305_SHA256", 0x1303, "any"),
    Suite("TLS_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256", 0x1301, "any"),
)

#: Référentiel #2 ECO.1.1.3, in its order (mssante-interfaces.md §1.3).
REF2_SUITES = (
    _suite("ECDHE-RSA-AES256-GCM-SHA384", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", 0xC030),
    _suite("ECDHE-RSA-AES128-GCM-SHA256", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", 0xC02F),
    _suite("ECDHE-RSA-AES256-SHA384", "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384", 0xC028),
    _suite("ECDHE-RSA-AES128-SHA256", "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256", 0xC027),
)

#: Broad TLS 1.2: AEAD first (256 then 128 bits, ECDSA before RSA), then CBC with SHA-2 MACs.
COMPATIBLE_SUITES = (
    _suite("ECDHE-ECDSA-AES256-GCM-SHA384", "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", 0xC02C),
    _suite("ECDHE-RSA-AES256-GCM-SHA384", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", 0xC030),
    _suite("ECDHE-ECDSA-CHACHA20-POLY1305", "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", 0xCCA9),
    _suite("ECDHE-RSA-CHACHA20-POLY1305", "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", 0xCCA8),
    _suite("ECDHE-ECDSA-AES128-GCM-SHA256", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", 0xC02B),
    _suite("ECDHE-RSA-AES128-GCM-SHA256", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", 0xC02F),
    _suite("ECDHE-ECDSA-AES256-SHA384", "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384", 0xC024),
    _suite("ECDHE-RSA-AES256-SHA384", "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384", 0xC028),
    _suite("ECDHE-ECDSA-AES128-SHA256", "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256", 0xC023),
    _suite("ECDHE-RSA-AES128-SHA256", "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256", 0xC027),
)


@dataclass(frozen=True)
class Preset:
    name: str
    minimum: ssl.TLSVersion
    maximum: ssl.TLSVersion
    #: The TLS 1.2 suites, in the server's order of preference (empty when TLS 1.2 is off).
    tls12: tuple[Suite, ...]

    @property
    def tls13(self) -> tuple[Suite, ...]:
        return TLS13_DEFAULT if self.maximum >= ssl.TLSVersion.TLSv1_3 else ()

    @property
    def suites(self) -> tuple[Suite, ...]:
        """Every suite the preset offers, TLS 1.3 first."""
        return self.tls13 + self.tls12

    def servable(self, key_type: str) -> tuple[Suite, ...]:
        """The suites a server whose certificate key is `key_type` ("RSA", "ECDSA") can negotiate."""
        return tuple(s for s in self.suites if s.auth in ("any", key_type))


PRESETS = {
    "mssante-ref2": Preset("mssante-ref2", ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3, REF2_SUITES),
    "modern": Preset("modern", ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_3, ()),
    "compatible": Preset("compatible", ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3, COMPATIBLE_SUITES),
}
DEFAULT = "mssante-ref2"
#: What opportunistic (unauthenticated) delivery offers: broad, still no weak suite.
OPPORTUNISTIC = "compatible"


def preset(name: str) -> Preset:
    """The preset by name (the config reader already refused unknown names: KeyError is a bug)."""
    return PRESETS[name]


def apply(ctx: ssl.SSLContext, name: str) -> ssl.SSLContext:
    """Restrict `ctx` (server or client side) to the preset: versions, TLS 1.2 suites, options."""
    p = preset(name)
    ctx.minimum_version = p.minimum
    ctx.maximum_version = p.maximum
    if p.tls12:  # without TLS 1.2 (modern) the TLS 1.2 list is never used: left as it is
        ctx.set_ciphers(":".join(s.openssl for s in p.tls12))
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    return ctx


_ORDER = {ssl.TLSVersion.TLSv1_2: 2, ssl.TLSVersion.TLSv1_3: 3}


def effective_suites(ctx: ssl.SSLContext) -> list[str]:
    """The suites `ctx` can negotiate (OpenSSL names, its order), within its protocol versions:
    what `msgw check` prints, read from the context rather than from the preset tables."""
    low = _ORDER.get(ctx.minimum_version, 2)
    high = _ORDER.get(ctx.maximum_version, 3)
    names = []
    for cipher in ctx.get_ciphers():
        version = 3 if cipher["protocol"] == "TLSv1.3" else 2  # pre-1.3 suites all run over TLS 1.2
        if low <= version <= high:
            names.append(cipher["name"])
    return names


def key_type(cert: x509.Certificate) -> str:
    """"RSA", "ECDSA" (EC and EdDSA keys authenticate the ECDSA suites in TLS 1.2) or "other"."""
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA"
    if isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return "ECDSA"
    return "other"


def certificate_problem(name: str, cert: x509.Certificate) -> str | None:
    """Why a server certificate cannot serve every version of the preset, or None.

    An ECDSA certificate on mssante-ref2 still serves TLS 1.3, but a Référentiel #2 client
    (TLS 1.2, ECDHE-RSA suites only) finds no common suite."""
    p = preset(name)
    kind = key_type(cert)
    if p.tls12 and not any(s.auth == kind for s in p.tls12):
        wanted = sorted({s.auth for s in p.tls12})
        return (f"a {kind} certificate cannot serve the TLS 1.2 suites of tls_policy {name!r} "
                f"(they need {' or '.join(wanted)}): TLS 1.2 clients find no common suite")
    return None


__all__ = ["COMPATIBLE_SUITES", "DEFAULT", "OPPORTUNISTIC", "PRESETS", "REF2_SUITES", "TLS13_DEFAULT", "Preset",
           "Suite", "apply", "certificate_problem", "effective_suites", "key_type", "preset"]
