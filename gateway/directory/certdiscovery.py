"""Certificate discovery for encryption: ask the configured sources in order, keep what is usable.

Why this shape:

- **Fail closed, with reasons.** A certificate is chosen only when the injected ``usable`` check
  (the S/MIME engine's validator: dates, revocation, key usage, address in the certificate,
  chain to the trust store) accepts it. When nothing is usable, :class:`NoCertificate` says
  which source said what and why every candidate was rejected, so the RCPT reply or the DSN
  explains the refusal (addresses of professionals only, never message content).
- **Temporary vs permanent.** If any source could not be asked (DNS SERVFAIL or timeout, LDAP
  down) or a candidate was rejected for a temporary reason (CRL unreachable), and no source gave
  a usable certificate, we raise :class:`NoCertificateTemporary` (4.4.3): the message waits in
  the spool instead of bouncing because of a transient outage.
- **First source wins.** The configured order expresses trust and freshness (our directory
  before harvested mail before LDAP before DNS); later sources are not asked once one gave a
  usable certificate.
- **Caches.** Positive results are cached for ``cache_ttl`` (never beyond the earliest notAfter
  of the chosen certificates), permanent negatives for ``negative_ttl``; temporary failures are
  not cached. :meth:`CertificateDiscovery.cached` answers from the cache without I/O, for the
  RCPT-time decision. Concurrent lookups of one address share one query.

``gateway.routing`` must not import ``gateway.smime``: the validator is injected.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

from cryptography import x509

from gateway.directory.certsources import CertificateSource, SourceAnswer, fingerprint, split_address
from gateway.errors import GatewayError, PolicyError, TemporaryError
from gateway.logs import event

__all__ = [
    "CertificateDiscovery", "DiscoveryResult", "Rejection", "NoCertificate", "NoCertificateTemporary",
    "CertificateDiscoveryError", "UsableCheck", "normalise_address",
]

log = logging.getLogger("gateway.directory.certdiscovery")

#: The injected validator: returns when `cert` may encrypt to `address`, raises GatewayError otherwise.
UsableCheck = Callable[[x509.Certificate, str], Awaitable[None]]

#: Longest exception message; SMTP reply lines are limited (RFC 5321: 512 octets). Full trace in `.trace`.
MAX_MESSAGE = 400


@dataclass(frozen=True)
class Rejection:
    """A candidate certificate that was not chosen, and why."""

    source: str
    serial: str
    fingerprint: str
    reason: str
    temporary: bool = False

    def __str__(self) -> str:
        return f"{self.source}: certificate serial {self.serial} rejected ({self.reason})"


@dataclass(frozen=True)
class DiscoveryResult:
    """The usable encryption certificates of one address, from the first source that had any."""

    address: str
    source: str
    certificates: tuple[x509.Certificate, ...]
    trace: tuple[str, ...]
    rejected: tuple[Rejection, ...]
    found_at: float
    from_cache: bool = False


class CertificateDiscoveryError(GatewayError):
    """Common base of the two "no usable certificate" errors (catch this for both)."""

    def __init__(self, message: str, *, address: str, trace: Sequence[str], rejected: Sequence[Rejection]) -> None:
        super().__init__(message)
        self.address = address
        self.trace = tuple(trace)
        self.rejected = tuple(rejected)


class NoCertificate(CertificateDiscoveryError, PolicyError):
    """No source has a usable encryption certificate for the address: refuse (5.7.1), never send in clear."""

    code = "no-certificate"
    status = "5.7.1"


class NoCertificateTemporary(CertificateDiscoveryError, TemporaryError):
    """Nothing usable found, but a source could not be asked (or a check failed temporarily): retry later."""

    code = "no-certificate-temporary"
    status = "4.4.3"


def normalise_address(address: str) -> str:
    """Address with its domain lowercased and the local part as given (SMIMEA hashes it verbatim)."""
    local, domain = split_address(address)
    return f"{local}@{domain}"


def _serial(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def _summary(address: str, trace: Sequence[str], rejected: Sequence[Rejection]) -> str:
    text = f"no usable encryption certificate for {address}: " + "; ".join([*trace, *map(str, rejected)])
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


class CertificateDiscovery:
    """Find usable encryption certificates for an address, trying `sources` in order (see module doc)."""

    def __init__(self, sources: Sequence[CertificateSource], usable: UsableCheck, *, cache_ttl: float = 3600,
                 negative_ttl: float = 300, source_timeout: float = 15.0, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.time) -> None:
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"certificate sources need distinct names: {names}")
        self.sources = tuple(sources)
        self.usable = usable
        self.cache_ttl = cache_ttl
        self.negative_ttl = negative_ttl
        self.source_timeout = source_timeout
        self.max_entries = max_entries
        self.clock = clock
        self._positive: OrderedDict[str, tuple[float, DiscoveryResult]] = OrderedDict()
        self._negative: OrderedDict[str, tuple[float, NoCertificate]] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[DiscoveryResult]] = {}

    # -- cache ---------------------------------------------------------------------------------

    @staticmethod
    def _key(address: str) -> str:
        return address.strip().lower()

    def cached(self, address: str) -> DiscoveryResult | None:
        """Answer from the caches only (no I/O): a result, None when unknown; raises a cached NoCertificate."""
        key = self._key(address)
        now = self.clock()
        hit = self._positive.get(key)
        if hit is not None:
            if hit[0] > now:
                return hit[1]  # the stored answer, already marked from_cache (frozen: shared safely)
            del self._positive[key]
        miss = self._negative.get(key)
        if miss is not None:
            if miss[0] > now:
                known = miss[1]  # a fresh exception each time: re-raising one instance grows its traceback
                raise NoCertificate(str(known), address=known.address, trace=known.trace, rejected=known.rejected)
            del self._negative[key]
        return None

    def invalidate(self, address: str) -> None:
        """Forget what we know about `address` (e.g. a new certificate was harvested or imported)."""
        key = self._key(address)
        self._positive.pop(key, None)
        self._negative.pop(key, None)

    def clear(self) -> None:
        self._positive.clear()
        self._negative.clear()

    def _store(self, cache: OrderedDict, key: str, expires: float, value: object) -> None:
        cache[key] = (expires, value)
        cache.move_to_end(key)
        while len(cache) > self.max_entries:
            cache.popitem(last=False)

    # -- lookup --------------------------------------------------------------------------------

    async def find(self, address: str) -> DiscoveryResult:
        """Usable certificates for `address`; raises NoCertificate (5.7.1) or NoCertificateTemporary (4.4.3)."""
        hit = self.cached(address)
        if hit is not None:
            return hit
        key = self._key(address)
        pending = self._inflight.get(key)
        if pending is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if pending.cancelled() and task is not None and not task.cancelling():
                    return await self.find(address)  # the first caller was cancelled, not us: ask ourselves
                raise
        try:
            normalised = normalise_address(address)
        except ValueError:
            raise NoCertificate(f"no usable encryption certificate: {address!r} is not a valid address",
                                address=address, trace=(), rejected=()) from None
        future: asyncio.Future[DiscoveryResult] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await self._discover(normalised)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: nobody else may be waiting
            raise
        else:
            future.set_result(result)
            return result
        finally:
            self._inflight.pop(key, None)

    async def _discover(self, address: str) -> DiscoveryResult:
        key = self._key(address)
        trace: list[str] = []
        rejected: list[Rejection] = []
        temporary = False
        for source in self.sources:
            answer = await self._ask(source, address)
            trace.append(answer.note or f"{source.name}: no answer")
            trace.extend(f"{source.name}: {p}" for p in answer.problems)
            temporary = temporary or answer.failed
            chosen: list[x509.Certificate] = []
            for cert in answer.certificates:
                try:
                    await self.usable(cert, address)
                except GatewayError as exc:
                    rejected.append(Rejection(source.name, _serial(cert), fingerprint(cert), str(exc), exc.temporary))
                    temporary = temporary or exc.temporary
                else:
                    chosen.append(cert)
            if chosen:
                now = self.clock()
                result = DiscoveryResult(address, source.name, tuple(chosen), tuple(trace), tuple(rejected), now)
                expires = min([now + self.cache_ttl, *(c.not_valid_after_utc.timestamp() for c in chosen)])
                # Stored as the cache will answer it (from_cache), made once here rather than on every hit.
                self._store(self._positive, key, expires, replace(result, from_cache=True))
                event(log, "certificate-found", address=address, source=source.name,
                      serials=",".join(_serial(c) for c in chosen), rejected=len(rejected))
                return result
        message = _summary(address, trace, rejected)
        event(log, "certificate-missing", logging.WARNING, address=address, temporary=temporary,
              trace=" | ".join([*trace, *map(str, rejected)]))
        if temporary:
            raise NoCertificateTemporary(message, address=address, trace=trace, rejected=rejected)
        error = NoCertificate(message, address=address, trace=trace, rejected=rejected)
        self._store(self._negative, key, self.clock() + self.negative_ttl, error)
        raise error

    async def _ask(self, source: CertificateSource, address: str) -> SourceAnswer:
        """One source's answer; a timeout or an unexpected error is a temporary failure of that source."""
        try:
            return await asyncio.wait_for(source.find(address), self.source_timeout)
        except TimeoutError:
            return SourceAnswer(source.name, note=f"{source.name}: timeout", failed=True)
        except GatewayError as exc:
            return SourceAnswer(source.name, note=f"{source.name}: {exc}", failed=exc.temporary)
        except Exception as exc:  # a source bug must not crash delivery: log it, retry later
            log.exception("certificate source %s failed", source.name)
            return SourceAnswer(source.name, note=f"{source.name}: error ({type(exc).__name__})", failed=True)
