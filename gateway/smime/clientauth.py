"""TLS client certificates after the handshake: CPS card logins (SASL EXTERNAL), relay partners, LIS.

OpenSSL has already checked the chain against the listener's `client_ca`, the validity dates and
the TLS-client purpose when this runs, but never revocation: a card reported stolen this morning
still completes the handshake. This module validates the certificate again with the S/MIME
machinery (`trust.validate_path`: pyhanko-certvalidator, hard-fail: a certificate declaring a CRL
distribution point or an OCSP responder needs a fresh CRL or a good OCSP answer), checks the
usage, and reads the identifiant national of a card.

Pure parts: `national_id`, `usage_refusal`, `verdict_for` (the decision). I/O is only in the
revocation sources (`CrlSource`, `OcspSource`), which the checker asks. Verdicts are cached per
certificate fingerprint (bounded LRU, at most `VERDICT_TTL` and never past the CRL/OCSP
nextUpdate or the certificate's notAfter); a temporary verdict (a revocation source unreachable)
is never cached and never a yes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from asn1crypto import core
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import ocsp as x509_ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from gateway.smime.errors import (
    CertificateExpired,
    CertificateNotYetValid,
    CertificateRefused,
    CertificateRevoked,
    RevocationUnavailable,
    UnknownIssuer,
)
from gateway.smime.ocsp import OcspSource
from gateway.smime.revocation import CrlSource, parse_crl
from gateway.smime.trust import TrustStore, candidate_chain, validate_path

UPN_OID = ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")
CPS_UPN_DOMAIN = "@carte-cps.fr"
VERDICT_TTL = dt.timedelta(minutes=5)
#: Refusal reasons (the `reason=` of the log line; never the certificate itself).
Reason = str


@dataclass(frozen=True)
class ClientVerdict:
    """What a client certificate is worth now: "good", or the refusal reason; `temporary` when
    the answer could not be had (a revocation source down): retry later, never a yes."""

    reason: Reason
    temporary: bool = False
    #: The path (leaf first) when good.
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def ok(self) -> bool:
        return self.reason == "good"


GOOD = "good"


def national_id(cert: x509.Certificate) -> str | None:
    """The identifiant national of a CPS-shaped certificate: the CN before ``/``
    (``CN=<identifiant national>/<card id>``), else the UPN ``<id>/<card>@carte-cps.fr``; None
    for any other certificate. Letters and digits only: anything else is no identifier."""
    for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        value = str(attr.value)
        if "/" in value:
            ident = value.split("/", 1)[0]
            if ident.isascii() and ident.isalnum() and 2 <= len(ident) <= 30:
                return ident
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return None
    for other in san.get_values_for_type(x509.OtherName):
        if other.type_id != UPN_OID:
            continue
        try:
            upn = str(core.UTF8String.load(other.value).native)
        except (ValueError, TypeError):
            continue
        if upn.lower().endswith(CPS_UPN_DOMAIN) and "/" in upn:
            ident = upn.split("/", 1)[0]
            if ident.isascii() and ident.isalnum() and 2 <= len(ident) <= 30:
                return ident
    return None


def usage_refusal(cert: x509.Certificate, *, require_client_auth: bool) -> Reason | None:
    """None when the certificate may authenticate a TLS client, else the reason.

    A card login (`require_client_auth`) needs EKU clientAuth explicitly (IGC-Santé card
    authentication certificates carry it; a signature certificate, with no EKU, must not log in).
    A partner or LIS certificate follows RFC 5280: an EKU, when present, must allow clientAuth.
    A KeyUsage, when present, must allow digitalSignature (the TLS CertificateVerify)."""
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.digital_signature:
            return "no-digital-signature"
    except x509.ExtensionNotFound:
        pass
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return "no-client-auth" if require_client_auth else None
    if ExtendedKeyUsageOID.CLIENT_AUTH in eku:
        return None
    if not require_client_auth and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in eku:
        return None
    return "no-client-auth"


def verdict_for(error: CertificateRefused) -> ClientVerdict:
    """The refusal a validation error stands for (one reason per error class)."""
    if isinstance(error, CertificateRevoked):
        return ClientVerdict("revoked")
    if isinstance(error, CertificateExpired):
        return ClientVerdict("expired")
    if isinstance(error, CertificateNotYetValid):
        return ClientVerdict("not-yet-valid")
    if isinstance(error, UnknownIssuer):
        return ClientVerdict("unknown-issuer")
    if isinstance(error, RevocationUnavailable):
        return ClientVerdict("revocation-unavailable", temporary=bool(error.temporary))
    return ClientVerdict("invalid-path")


def _next_updates(crl_der: Sequence[bytes], ocsp_der: Sequence[bytes]) -> list[dt.datetime]:
    """When the revocation data this verdict rests on goes stale (the cache must not outlive it)."""
    out: list[dt.datetime] = []
    for der in crl_der:
        try:
            nu = parse_crl(der).next_update_utc
        except Exception:  # noqa: BLE001, S112 - the validator already read it; a date is optional
            continue
        if nu is not None:
            out.append(nu)
    for der in ocsp_der:
        try:
            answer = x509_ocsp.load_der_ocsp_response(der)
            out += [s.next_update_utc for s in answer.responses if s.next_update_utc is not None]
        except Exception:  # noqa: BLE001, S112 - idem
            continue
    return out


class VerdictCache:
    """Definitive verdicts per (trust, usage, certificate SHA-256), LRU-bounded, each with its
    own expiry. Shared by every listener and the MLLP door so one check serves them all."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self.entries: OrderedDict[tuple[bytes, bool, bytes], tuple[ClientVerdict, dt.datetime]] = OrderedDict()

    def get(self, key: tuple[bytes, bool, bytes], now: dt.datetime) -> ClientVerdict | None:
        hit = self.entries.get(key)
        if hit is None:
            return None
        if hit[1] <= now:
            del self.entries[key]
            return None
        self.entries.move_to_end(key)
        return hit[0]

    def put(self, key: tuple[bytes, bool, bytes], verdict: ClientVerdict, until: dt.datetime) -> None:
        self.entries[key] = (verdict, until)
        self.entries.move_to_end(key)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)


class ClientCertChecker:
    """Checks one listener's client certificates: its trust (client_ca + `[trust]` anchors), the
    shared revocation sources and verdict cache; `require_client_auth` for card logins."""

    def __init__(self, trust: TrustStore, crls: CrlSource, ocsp: OcspSource | None, cache: VerdictCache, *,
                 require_client_auth: bool = False) -> None:
        self.trust = trust
        self.crls = crls
        self.ocsp = ocsp
        self.cache = cache
        self.require_client_auth = require_client_auth
        digest = hashlib.sha256()
        for cert in trust.all:
            digest.update(cert.fingerprint(hashes.SHA256()))
        self._trust_id = digest.digest()

    async def check(self, der: bytes, now: dt.datetime | None = None) -> ClientVerdict:
        """The verdict on the DER certificate the client presented."""
        now = now or dt.datetime.now(dt.UTC)
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            return ClientVerdict("unreadable")
        key = (self._trust_id, self.require_client_auth, cert.fingerprint(hashes.SHA256()))
        cached = self.cache.get(key, now)
        if cached is not None:
            return cached
        verdict, until = await self._validate(cert, now)
        if not verdict.temporary:
            self.cache.put(key, verdict, until)
        return verdict

    async def _validate(self, cert: x509.Certificate, now: dt.datetime) -> tuple[ClientVerdict, dt.datetime]:
        until = now + VERDICT_TTL
        refused = usage_refusal(cert, require_client_auth=self.require_client_auth)
        if refused is not None:
            return ClientVerdict(refused), until
        if not self.trust.roots:
            return ClientVerdict("unknown-issuer"), until
        chain = candidate_chain(cert, self.trust.all)
        crl_der, crl_failures = await self.crls.crls_and_failures(chain, now)
        ocsp_der, ocsp_failures = (await self.ocsp.responses_and_failures(chain, now)
                                   if self.ocsp is not None else ([], 0))
        try:
            path = await validate_path(cert, self.trust, (), crl_der, now,
                                       fetch_failed=(crl_failures + ocsp_failures) > 0, ocsp_der=ocsp_der)
        except CertificateRefused as exc:
            return verdict_for(exc), until
        until = min([until, cert.not_valid_after_utc, *_next_updates(crl_der, ocsp_der)])
        return ClientVerdict(GOOD, chain=path), until


__all__ = ["ClientCertChecker", "ClientVerdict", "VerdictCache", "national_id", "usage_refusal", "verdict_for"]
