"""CRLs for path validation: from files, or fetched over HTTP from the distribution point.

The fetcher is injectable (an async ``url -> bytes`` callable) so tests serve CRLs from a
loopback http.server and the library does no other network I/O. Fetched CRLs are cached
per URL and fetched again after `max_age` or once past their nextUpdate; a CRL past its
nextUpdate is never handed to the validator (hard-fail then refuses the path).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import http.client
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.smime.errors import CrlFetchError, KeyLoadError

CrlFetcher = Callable[[str], Awaitable[bytes]]
MAX_CRL_SIZE = 20 * 1024 * 1024


async def http_download(request: urllib.request.Request, *, limit: int, what: str, timeout: float) -> bytes:
    """Run ``request`` in a worker thread and read at most ``limit`` bytes; CrlFetchError on any
    failure (revocation data that cannot be had is a temporary condition). Shared by the CRL and
    OCSP fetchers; the callers check the URL scheme first."""
    def run() -> bytes:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 - callers check the scheme
            data: bytes = resp.read(limit + 1)
        if len(data) > limit:
            raise CrlFetchError(f"{what} too large")
        return data

    try:
        return await asyncio.to_thread(run)
    except CrlFetchError:
        raise
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise CrlFetchError(f"{what} download failed ({type(exc).__name__})") from None


async def http_fetch(url: str, timeout: float = 10.0) -> bytes:
    """Download a CRL from `url` (http or https only); raise CrlFetchError on failure."""
    if not url.lower().startswith(("http://", "https://")):
        raise CrlFetchError("only http(s) CRL distribution points are fetched")
    return await http_download(urllib.request.Request(url), limit=MAX_CRL_SIZE, what="CRL",  # noqa: S310
                               timeout=timeout)


def parse_crl(data: bytes) -> x509.CertificateRevocationList:
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError:
        raise KeyLoadError("not a CRL") from None


def distribution_points(cert: x509.Certificate) -> list[str]:
    try:
        cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except (x509.ExtensionNotFound, ValueError):
        return []
    urls = []
    for point in cdp:
        for name in point.full_name or ():
            if isinstance(name, x509.UniformResourceIdentifier) and name.value.lower().startswith("http"):
                urls.append(name.value)
    return urls


@dataclass
class _Cached:
    crl: x509.CertificateRevocationList
    fetched: dt.datetime


class CrlSource:
    """Where CRLs come from: files loaded up front, plus an optional fetcher with a cache."""

    def __init__(self, files: Iterable[str | Path] = (), fetcher: CrlFetcher | None = None,
                 max_age: dt.timedelta = dt.timedelta(hours=1)) -> None:
        self.fetcher = fetcher
        self.max_age = max_age
        self.static: list[x509.CertificateRevocationList] = []
        self.cache: dict[str, _Cached] = {}
        for f in files:
            try:
                self.static.append(parse_crl(Path(f).read_bytes()))
            except OSError as exc:
                raise KeyLoadError(f"cannot read CRL file {Path(f).name} ({exc.strerror})") from None

    @staticmethod
    def _fresh(crl: x509.CertificateRevocationList, now: dt.datetime) -> bool:
        nu = crl.next_update_utc
        return nu is None or nu > now

    async def _fetch(self, url: str, now: dt.datetime) -> tuple[x509.CertificateRevocationList | None, bool]:
        """(CRL or None, whether a download failed)."""
        hit = self.cache.get(url)
        if hit and now - hit.fetched < self.max_age and self._fresh(hit.crl, now):
            return hit.crl, False
        if self.fetcher is None:
            return None, False
        try:
            crl = parse_crl(await self.fetcher(url))
        except (CrlFetchError, KeyLoadError):
            return (hit.crl if hit and self._fresh(hit.crl, now) else None), True
        self.cache[url] = _Cached(crl, now)
        return crl, False

    async def crls_and_failures(self, chain: Sequence[x509.Certificate],
                                now: dt.datetime | None = None) -> tuple[list[bytes], int]:
        """DER CRLs covering every non-self-issued certificate of `chain` (those we can get), and
        how many downloads failed. The count is returned, not kept on this shared source, so a
        concurrent validation cannot reset it while this one waits on the network."""
        now = now or dt.datetime.now(dt.UTC)
        failures = 0
        out: list[x509.CertificateRevocationList] = []
        for cert in chain:
            if cert.issuer == cert.subject:
                continue
            local = [c for c in self.static if c.issuer == cert.issuer and self._fresh(c, now)]
            if local:
                out += local
                continue
            for url in distribution_points(cert):
                crl, failed = await self._fetch(url, now)
                failures += failed
                if crl is not None and crl.issuer == cert.issuer:
                    out.append(crl)
                    break
        unique = {c.public_bytes(serialization.Encoding.DER): None for c in out}
        return list(unique), failures
