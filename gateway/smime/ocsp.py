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

import datetime as dt
import urllib.request
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID

from gateway.smime.errors import CrlFetchError
from gateway.smime.revocation import http_download

OcspFetcher = Callable[[str, bytes], Awaitable[bytes]]
MAX_OCSP_RESPONSE = 64 * 1024


async def http_post_ocsp(url: str, request: bytes, timeout: float = 5.0) -> bytes:
    """POST an OCSP request (``application/ocsp-request``); CrlFetchError on failure."""
    if not url.lower().startswith("http://"):
        raise CrlFetchError("only http:// OCSP responders are asked")
    req = urllib.request.Request(url, data=request, method="POST",  # noqa: S310 - scheme checked above
                                 headers={"Content-Type": "application/ocsp-request",
                                          "Accept": "application/ocsp-response"})
    return await http_download(req, limit=MAX_OCSP_RESPONSE, what="OCSP response", timeout=timeout)


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


def _matching(answer: ocsp.OCSPResponse, request: ocsp.OCSPRequest) -> ocsp.OCSPSingleResponse | None:
    """The SingleResponse about exactly the requested certificate (serial and issuer hashes), if any."""
    for single in answer.responses:
        if (single.serial_number == request.serial_number
                and single.issuer_key_hash == request.issuer_key_hash
                and single.issuer_name_hash == request.issuer_name_hash
                and single.hash_algorithm.name == request.hash_algorithm.name):
            return single
    return None


class OcspSource:
    """Asks the responders of a chain's certificates; caches successful answers until nextUpdate.

    Why the cache is keyed by the certificate's and its issuer's SHA-256 fingerprints, not by
    (issuer name, serial): responder URLs come from certificates not yet validated (a signer's
    certificate arrives inside the message). A forged certificate copying a real one's issuer
    name and serial, with its own responder in the AIA, must not be able to put an answer in
    the cache that a later check of the real certificate would use (an old "good" for a revoked
    card). With fingerprints, whatever a forged certificate's responder says stays attached to
    that forged certificate. An answer is kept only when a SingleResponse names the requested
    CertID; the validator still checks its signature and freshness every time.
    """

    def __init__(self, fetcher: OcspFetcher | None = http_post_ocsp, *,
                 max_age: dt.timedelta = dt.timedelta(minutes=30), max_entries: int = 10_000,
                 max_responders: int = 2) -> None:
        self.fetcher = fetcher
        self.max_age = max_age
        self.max_entries = max_entries
        self.max_responders = max_responders
        self.cache: OrderedDict[tuple[bytes, bytes], _Cached] = OrderedDict()

    def _usable(self, hit: _Cached, now: dt.datetime) -> bool:
        if hit.next_update is not None and hit.next_update <= now:
            return False
        return now - hit.fetched < self.max_age

    async def _ask(self, cert: x509.Certificate, issuer: x509.Certificate,
                   now: dt.datetime) -> tuple[bytes | None, int]:
        key = (cert.fingerprint(hashes.SHA256()), issuer.fingerprint(hashes.SHA256()))
        hit = self.cache.get(key)
        if hit is not None and self._usable(hit, now):
            self.cache.move_to_end(key)
            return hit.der, 0
        urls = responders(cert)[: self.max_responders]
        if self.fetcher is None or not urls:
            return None, 0
        request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build()  # noqa: S303 - CertID
        request_der = request.public_bytes(serialization.Encoding.DER)
        failures = 0
        for url in urls:
            try:
                der = await self.fetcher(url, request_der)
                answer = ocsp.load_der_ocsp_response(der)
                if answer.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
                    raise ValueError("responder could not answer")  # tryLater, internalError, unauthorized...
                single = _matching(answer, request)
                if single is None:
                    raise ValueError("response about another certificate")
                next_update = single.next_update_utc
            except (CrlFetchError, ValueError):
                failures += 1
                continue
            self.cache[key] = _Cached(der, now, next_update)
            self.cache.move_to_end(key)
            while len(self.cache) > self.max_entries:
                self.cache.popitem(last=False)
            return der, failures
        stale_ok = hit is not None and (hit.next_update is None or hit.next_update > now)
        return (hit.der if hit is not None and stale_ok else None), failures

    async def responses_and_failures(self, chain: Sequence[x509.Certificate],
                                     now: dt.datetime | None = None) -> tuple[list[bytes], int]:
        """DER OCSP responses for the certificates of ``chain`` (leaf first) whose issuer follows
        them, and how many requests failed (a responder down makes missing revocation temporary).
        The count is returned, not kept on the shared source, so concurrent validations do not
        reset each other's."""
        now = now or dt.datetime.now(dt.UTC)
        out: list[bytes] = []
        failures = 0
        for cert, issuer in zip(chain, chain[1:], strict=False):
            if cert.issuer != issuer.subject or cert.subject == cert.issuer:
                continue
            der, failed = await self._ask(cert, issuer, now)
            failures += failed
            if der is not None:
                out.append(der)
        return out, failures


__all__ = ["OcspFetcher", "OcspSource", "http_post_ocsp", "responders"]
