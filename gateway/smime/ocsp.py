"""OCSP responses for path validation (RFC 6960), next to the CRLs of :mod:`revocation`.

Why both: a CRL is published every few hours (IGC-Santé: daily), an OCSP responder answers with
the status of one certificate now, so a card revoked this morning is refused this morning; and
when a CRL download fails, a good OCSP answer still lets the validation conclude. The validator
(pyhanko-certvalidator, hard-fail) takes the responses we got and checks them itself: the
responder's signature and authorisation, the CertID, thisUpdate/nextUpdate freshness. This module
only asks and caches; it never decides that a certificate is good.

Requests use a SHA-1 CertID (RFC 5019 §2.1.1: what every responder accepts; the hash only names
the certificate, it protects nothing) without a nonce, so responses can be cached until their
nextUpdate. Only http:// responders from the certificate's AuthorityInformationAccess are
asked (RFC 6960 A.1: OCSP over HTTP POST). The fetcher is injectable like the CRL one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import http.client
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID

from gateway.smime.errors import CrlFetchError

OcspFetcher = Callable[[str, bytes], Awaitable[bytes]]
MAX_OCSP_RESPONSE = 64 * 1024


async def http_post_ocsp(url: str, request: bytes, timeout: float = 10.0) -> bytes:
    """POST an OCSP request (``application/ocsp-request``) in a worker thread; CrlFetchError on failure."""
    if not url.lower().startswith("http://"):
        raise CrlFetchError("only http:// OCSP responders are asked")

    def post() -> bytes:
        req = urllib.request.Request(url, data=request, method="POST",  # noqa: S310 - scheme checked above
                                     headers={"Content-Type": "application/ocsp-request",
                                              "Accept": "application/ocsp-response"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - scheme checked above
            data: bytes = resp.read(MAX_OCSP_RESPONSE + 1)
        if len(data) > MAX_OCSP_RESPONSE:
            raise CrlFetchError("OCSP response too large")
        return data

    try:
        return await asyncio.to_thread(post)
    except CrlFetchError:
        raise
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise CrlFetchError(f"OCSP request failed ({type(exc).__name__})") from None


def responders(cert: x509.Certificate) -> list[str]:
    """The http:// OCSP responder URLs of ``cert``'s AuthorityInformationAccess."""
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except (x509.ExtensionNotFound, ValueError):
        return []
    return [d.access_location.value for d in aia
            if d.access_method == AuthorityInformationAccessOID.OCSP
            and isinstance(d.access_location, x509.UniformResourceIdentifier)
            and d.access_location.value.lower().startswith("http://")]


@dataclass
class _Cached:
    der: bytes
    fetched: dt.datetime
    next_update: dt.datetime | None


class OcspSource:
    """Asks the responders of a chain's certificates; caches successful answers until nextUpdate."""

    def __init__(self, fetcher: OcspFetcher | None = http_post_ocsp, *,
                 max_age: dt.timedelta = dt.timedelta(minutes=30)) -> None:
        self.fetcher = fetcher
        self.max_age = max_age
        self.cache: dict[tuple[bytes, int], _Cached] = {}
        self.fetch_failures = 0  # during the last responses_for call (a responder down is temporary)

    def _usable(self, hit: _Cached, now: dt.datetime) -> bool:
        if hit.next_update is not None and hit.next_update <= now:
            return False
        return now - hit.fetched < self.max_age

    async def _ask(self, cert: x509.Certificate, issuer: x509.Certificate, now: dt.datetime) -> bytes | None:
        key = (issuer.fingerprint(hashes.SHA256()), cert.serial_number)
        hit = self.cache.get(key)
        if hit is not None and self._usable(hit, now):
            return hit.der
        urls = responders(cert)
        if self.fetcher is None or not urls:
            return None
        request = ocsp.OCSPRequestBuilder().add_certificate(
            cert, issuer, hashes.SHA1()).build().public_bytes(serialization.Encoding.DER)  # noqa: S303 - CertID
        for url in urls:
            try:
                der = await self.fetcher(url, request)
                answer = ocsp.load_der_ocsp_response(der)
            except (CrlFetchError, ValueError):
                self.fetch_failures += 1
                continue
            if answer.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
                self.fetch_failures += 1  # tryLater, internalError... : the responder could not say
                continue
            self.cache[key] = _Cached(der, now, answer.next_update_utc)
            return der
        return hit.der if hit is not None and (hit.next_update is None or hit.next_update > now) else None

    async def responses_for(self, chain: Sequence[x509.Certificate], now: dt.datetime | None = None) -> list[bytes]:
        """DER OCSP responses for the certificates of ``chain`` (leaf first) whose issuer follows them."""
        now = now or dt.datetime.now(dt.UTC)
        self.fetch_failures = 0
        out: list[bytes] = []
        for cert, issuer in zip(chain, chain[1:], strict=False):
            if cert.issuer != issuer.subject or cert.subject == cert.issuer:
                continue
            der = await self._ask(cert, issuer, now)
            if der is not None:
                out.append(der)
        return out


__all__ = ["OcspFetcher", "OcspSource", "http_post_ocsp", "responders"]
