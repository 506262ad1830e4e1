"""Where encryption certificates of correspondents can be found: one small class per source.

Why separate sources: each place (our directory, certificates harvested from verified mail,
an LDAP directory, DNS CERT/SMIMEA records) fails in its own way, and the caller must be able
to say *which source said what* when no certificate is usable. A source therefore never raises
for "not found" or for "could not ask": it returns a :class:`SourceAnswer` with the candidate
certificates (unvalidated: choosing is :mod:`gateway.directory.certdiscovery`'s job), a short
note, and ``failed=True`` when the answer is unknown for a temporary reason (timeout, SERVFAIL,
LDAP server down) so that a lookup with nothing found elsewhere is retried, not bounced.

Notes carry addresses of professionals and source names only, never message content.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import sqlite3
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from gateway.errors import GatewayError

__all__ = [
    "CertificateSource", "SourceAnswer", "DirectorySource", "CertificateHarvest", "HarvestStore", "HarvestSource",
    "LdapSource",
    "DnsCertSource", "SmimeaSource", "parse_certificates", "fingerprint", "split_address",
]

#: RFC 4398 certificate types we understand.
CERT_PKIX = 1
CERT_IPKIX = 4

#: An injected HTTP fetcher for IPKIX URLs: url -> body bytes (DER or PEM certificate).
Fetcher = Callable[[str], Awaitable[bytes]]


@dataclass(frozen=True)
class SourceAnswer:
    """What one source said about one address.

    ``certificates`` are candidates only (not yet checked for validity, revocation or usage);
    ``problems`` lists candidates that could not even be parsed; ``failed`` means "the source
    could not be asked" (temporary), as opposed to an authoritative "nothing here".
    """

    source: str
    certificates: tuple[x509.Certificate, ...] = ()
    note: str = ""
    failed: bool = False
    problems: tuple[str, ...] = field(default=())


@runtime_checkable
class CertificateSource(Protocol):
    """A place to look for the encryption certificates of an address."""

    name: str

    async def find(self, address: str) -> SourceAnswer: ...


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint in hex: the identity of a certificate across sources."""
    return cert.fingerprint(hashes.SHA256()).hex()


def split_address(address: str) -> tuple[str, str]:
    """(local part, domain) of an address; ValueError when it has no usable '@'."""
    local, sep, domain = address.strip().rpartition("@")
    if not sep or not local or not domain:
        raise ValueError(f"not an address: {address!r}")
    return local, domain.lower().rstrip(".")


def parse_certificates(blobs: Iterable[bytes]) -> tuple[list[x509.Certificate], list[str]]:
    """Parse DER certificates (or DER/PEM PKCS#7 bundles, or PEM); unparsable blobs become problems.

    Why tolerant input: LDAP ``userSMIMECertificate`` and some directories hold PKCS#7 bundles,
    IPKIX URLs may serve PEM. Duplicates (same fingerprint) are dropped, order kept.
    """
    certs: list[x509.Certificate] = []
    problems: list[str] = []
    seen: set[str] = set()
    for index, blob in enumerate(blobs):
        parsed = _parse_one(bytes(blob))
        if not parsed:
            problems.append(f"candidate #{index + 1} is not a certificate")
            continue
        for cert in parsed:
            fp = fingerprint(cert)
            if fp not in seen:
                seen.add(fp)
                certs.append(cert)
    return certs, problems


def _parse_one(blob: bytes) -> list[x509.Certificate]:
    loaders: tuple[Callable[[bytes], list[x509.Certificate]], ...] = (
        lambda b: [x509.load_der_x509_certificate(b)],
        pkcs7.load_der_pkcs7_certificates,
        x509.load_pem_x509_certificates,
        pkcs7.load_pem_pkcs7_certificates,
    )
    for loader in loaders:
        try:
            return list(loader(blob))
        except ValueError:
            continue
    return []


def _count(n: int) -> str:
    return f"{n} certificate" + ("" if n == 1 else "s")


# -- (1) our own directory -----------------------------------------------------------------------

class DirectorySource:
    """Certificates the directory of correspondents holds for an address.

    Why a callable and not the store: routing must not depend on the store's shape; the lead
    passes a function over the directory store. It is called on the event loop (a local SQLite
    lookup is sub-millisecond and SQLite connections are bound to their thread).
    """

    def __init__(self, lookup: Callable[[str], Sequence[bytes]], *, name: str = "directory") -> None:
        self.lookup = lookup
        self.name = name

    async def find(self, address: str) -> SourceAnswer:
        try:
            blobs = self.lookup(address.lower())
        except (sqlite3.Error, OSError) as exc:
            return SourceAnswer(self.name, note=f"{self.name}: unavailable ({type(exc).__name__})", failed=True)
        certs, problems = parse_certificates(blobs)
        note = f"{self.name}: {_count(len(certs))}" if certs or problems else f"{self.name}: no certificate"
        return SourceAnswer(self.name, tuple(certs), note, problems=tuple(problems))


# -- (2) certificates harvested from verified signed mail ----------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS harvested (
    address     TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    der         BLOB NOT NULL,
    seen_at     REAL NOT NULL,
    not_after   REAL NOT NULL,
    PRIMARY KEY (address, fingerprint)
);
CREATE INDEX IF NOT EXISTS harvested_seen ON harvested (seen_at);
"""


class CertificateHarvest(Protocol):
    """What the inbound pipeline and `HarvestSource` need: `HarvestStore` (SQLite, one node) or
    `gateway.directory.harvest_pg.PgHarvestStore` (PostgreSQL, shared: a certificate learnt on
    one node serves every node); `gateway.storage.harvest_store` chooses."""

    def harvest(self, address: str, cert: x509.Certificate, seen_at: float | None = None) -> None: ...

    def certificates(self, address: str) -> list[bytes]: ...

    def expire(self) -> int: ...

    def count(self) -> int: ...

    def close(self) -> None: ...


class HarvestStore:
    """SQLite (WAL) store of certificates seen in signed mail whose signature VERIFIED.

    Why: mail clients learn a correspondent's encryption certificate from the signed mail they
    receive; we do the same. Only the inbound pipeline calls :meth:`harvest`, and only after a
    successful verification (signer certificate and any other certificate of the SignedData the
    signer vouches for, e.g. an encryption certificate named by SMIMEEncryptionKeyPreference).
    The discovery still validates every candidate, so a harvested certificate that expired or was
    revoked since is never chosen. One row per (address, fingerprint) keeps the newest sighting;
    rows older than ``max_age`` seconds or past the certificate's notAfter are expired (lookups
    skip them at once; :meth:`harvest` deletes them at most once a day, so the file does not grow
    without a separate job: every ``expire_every`` seconds), and at most ``max_per_address``
    newest rows are kept per address.
    """

    def __init__(self, path: str | Path, *, max_age: float = 400 * 86400, max_per_address: int = 10,
                 clock: Callable[[], float] = time.time, expire_every: float = 86400.0) -> None:
        self.path = Path(path)
        self.expire_every = expire_every
        self.max_age = max_age
        self.max_per_address = max_per_address
        self.clock = clock
        self._lock = threading.Lock()
        self._last_expire = float("-inf")
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> HarvestStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def harvest(self, address: str, cert: x509.Certificate, seen_at: float | None = None) -> None:
        """Remember `cert` for `address` (call only after the signature verified)."""
        addr = address.strip().lower()
        when = self.clock() if seen_at is None else seen_at
        not_after = cert.not_valid_after_utc.timestamp()
        der = cert.public_bytes(Encoding.DER)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO harvested (address, fingerprint, der, seen_at, not_after) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (address, fingerprint) DO UPDATE SET seen_at = max(seen_at, excluded.seen_at)",
                    (addr, fingerprint(cert), der, when, not_after))
                self._db.execute(
                    "DELETE FROM harvested WHERE address = ? AND fingerprint NOT IN "
                    "(SELECT fingerprint FROM harvested WHERE address = ? ORDER BY seen_at DESC LIMIT ?)",
                    (addr, addr, self.max_per_address))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        if math.isfinite(self.expire_every) and self.clock() - self._last_expire >= self.expire_every:
            self.expire()

    def certificates(self, address: str) -> list[bytes]:
        """DER certificates harvested for `address`, newest sighting first, expired rows excluded."""
        now = self.clock()
        with self._lock:
            rows = self._db.execute(
                "SELECT der FROM harvested WHERE address = ? AND seen_at >= ? AND not_after > ? "
                "ORDER BY seen_at DESC", (address.strip().lower(), now - self.max_age, now)).fetchall()
        return [bytes(row[0]) for row in rows]

    def expire(self) -> int:
        """Delete rows seen more than ``max_age`` ago or whose certificate expired; returns the count."""
        now = self.clock()
        with self._lock:
            self._last_expire = now
            cur = self._db.execute("DELETE FROM harvested WHERE seen_at < ? OR not_after <= ?",
                                   (now - self.max_age, now))
            return cur.rowcount

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM harvested").fetchone()[0])


class HarvestSource:
    """The :class:`HarvestStore` as a certificate source (lookups run in a worker thread)."""

    def __init__(self, store: CertificateHarvest, *, name: str = "harvested") -> None:
        self.store = store
        self.name = name

    async def find(self, address: str) -> SourceAnswer:
        try:
            blobs = await asyncio.to_thread(self.store.certificates, address)
        except sqlite3.Error as exc:
            return SourceAnswer(self.name, note=f"{self.name}: unavailable ({type(exc).__name__})", failed=True)
        certs, problems = parse_certificates(blobs)
        note = f"{self.name}: {_count(len(certs))}" if certs else f"{self.name}: no certificate"
        return SourceAnswer(self.name, tuple(certs), note, problems=tuple(problems))


# -- (3) LDAP ------------------------------------------------------------------------------------

class LdapSource:
    """An LDAP directory (``ldap3``, blocking, so run in a worker thread).

    The address is escaped with RFC 4515 rules before it goes into ``filter`` (an address such
    as ``*)(mail=*`` must not widen the search). Connection, bind and timeout problems are
    temporary failures; "no entry" and "entry without certificate" are answers.
    For ``ldaps://`` the server certificate is verified unless another ``tls`` is given.
    """

    def __init__(self, url: str, base_dn: str, bind_dn: str | None = None, password: str | None = None, *,
                 attribute: str = "userCertificate;binary", filter: str = "(mail={address})",
                 timeout: float = 5.0, size_limit: int = 10, tls: object | None = None,
                 name: str | None = None) -> None:
        if "{address}" not in filter:
            raise ValueError("LDAP filter must contain {address}")
        self.url = url
        self.base_dn = base_dn
        self.bind_dn = bind_dn
        self.password = password
        self.attribute = attribute
        self.filter = filter
        self.timeout = timeout
        self.size_limit = size_limit
        self.tls = tls
        self.name = name or f"ldap {url}"

    def search_filter(self, address: str) -> str:
        """The filter for `address`, with the value escaped (RFC 4515)."""
        from ldap3.utils.conv import escape_filter_chars

        return self.filter.replace("{address}", escape_filter_chars(address))

    async def find(self, address: str) -> SourceAnswer:
        return await asyncio.to_thread(self._find_blocking, address)

    def _find_blocking(self, address: str) -> SourceAnswer:
        import ldap3
        from ldap3.core.exceptions import LDAPException

        tls = self.tls
        if tls is None and self.url.lower().startswith("ldaps://"):
            tls = ldap3.Tls(validate=ssl.CERT_REQUIRED)
        try:
            server = ldap3.Server(self.url, connect_timeout=self.timeout, get_info=ldap3.NONE, tls=tls)
            conn = ldap3.Connection(server, user=self.bind_dn, password=self.password, read_only=True,
                                    auto_referrals=False, receive_timeout=max(1, math.ceil(self.timeout)),
                                    raise_exceptions=False)
            try:
                if not conn.bind():
                    return SourceAnswer(self.name, note=f"{self.name}: bind refused ({conn.result.get('description')})",
                                        failed=True)
                ok = conn.search(self.base_dn, self.search_filter(address), search_scope=ldap3.SUBTREE,
                                 attributes=[self.attribute], size_limit=self.size_limit,
                                 time_limit=max(1, int(self.timeout)))
                result = conn.result or {}
                entries = [e for e in (conn.response or []) if e.get("type") == "searchResEntry"]
            finally:
                conn.unbind()
        except LDAPException as exc:
            return SourceAnswer(self.name, note=f"{self.name}: unreachable ({type(exc).__name__})", failed=True)
        code = result.get("result", 0)
        if not ok and code not in (0, 4, 32):  # 4 sizeLimitExceeded (partial), 32 noSuchObject (no base)
            return SourceAnswer(self.name, note=f"{self.name}: search failed ({result.get('description')})",
                                failed=True)
        if not entries:
            return SourceAnswer(self.name, note=f"{self.name}: no entry for {address}")
        blobs = [value for entry in entries for value in self._values(entry)]
        if not blobs:
            return SourceAnswer(self.name, note=f"{self.name}: entry for {address} has no {self.attribute}")
        certs, problems = parse_certificates(blobs)
        return SourceAnswer(self.name, tuple(certs), f"{self.name}: {_count(len(certs))}", problems=tuple(problems))

    def _values(self, entry: dict) -> list[bytes]:
        wanted = self.attribute.split(";", 1)[0].lower()
        values: list[bytes] = []
        for key, raw in (entry.get("raw_attributes") or {}).items():
            if key.split(";", 1)[0].lower() == wanted:
                values.extend(bytes(v) for v in raw if isinstance(v, bytes | bytearray))
        return values


# -- (4) DNS: CERT (RFC 4398, Direct Project) and SMIMEA (RFC 8162) ------------------------------

def _dns_outcome(exc: Exception) -> tuple[str, bool]:
    """(note, temporary) for a resolver exception."""
    if isinstance(exc, dns.resolver.NXDOMAIN):
        return "NXDOMAIN", False
    if isinstance(exc, dns.resolver.NoAnswer):
        return "no record", False
    if isinstance(exc, dns.resolver.NoNameservers):
        return "SERVFAIL", True
    if isinstance(exc, dns.exception.Timeout):
        return "timeout", True
    return f"error ({type(exc).__name__})", True


_DNS_ERRORS = (dns.exception.DNSException,)


def _labels(text: str) -> list[bytes]:
    labels = [label.encode("idna" if not label.isascii() else "ascii") for label in text.split(".")]
    if any(not label or len(label) > 63 for label in labels):
        raise ValueError("label empty or too long")
    return labels


class DnsCertSource:
    """RFC 4398 CERT records, looked up as the Direct Project does.

    For ``user@example.org``: first the address-bound name ``user.example.org`` (the '@' replaced
    by '.'), and only when it yields no certificate the organisation-bound ``example.org``.
    Type PKIX (1) carries the DER certificate; type IPKIX (4) carries a URL, fetched only when a
    ``fetch`` callable is injected (the gateway must not make arbitrary HTTP requests by
    default). Other types are ignored with a note. No DNSSEC is required: every candidate is
    still validated against the trust store by the discovery.
    """

    def __init__(self, resolver: dns.asyncresolver.Resolver | None = None, *, fetch: Fetcher | None = None,
                 name: str = "dns") -> None:
        self.resolver = resolver
        self.fetch = fetch
        self.name = name

    def _resolver(self) -> dns.asyncresolver.Resolver:
        if self.resolver is None:
            self.resolver = dns.asyncresolver.Resolver()
        return self.resolver

    @staticmethod
    def names(address: str) -> list[dns.name.Name]:
        """The names to query, in order: address-bound (if representable) then org-bound."""
        local, domain = split_address(address)
        org = dns.name.Name([*_labels(domain), b""])
        try:
            return [dns.name.Name([*_labels(local), *org.labels]), org]
        except (ValueError, UnicodeError, dns.exception.DNSException):
            return [org]

    async def find(self, address: str) -> SourceAnswer:
        try:
            qnames = self.names(address)
        except (ValueError, UnicodeError, dns.exception.DNSException):
            return SourceAnswer(self.name, note=f"{self.name} CERT: {address} cannot be looked up in DNS")
        notes: list[str] = []
        problems: list[str] = []
        temporary = False
        for qname in qnames:
            certs, note, failed, bad = await self._query(qname)
            notes.append(f"{self.name} CERT {qname.to_text()}: {note}")
            problems.extend(bad)
            temporary = temporary or failed
            if certs:
                return SourceAnswer(self.name, tuple(certs), "; ".join(notes), problems=tuple(problems))
        return SourceAnswer(self.name, note="; ".join(notes), failed=temporary, problems=tuple(problems))

    async def _query(self, qname: dns.name.Name) -> tuple[list[x509.Certificate], str, bool, list[str]]:
        try:
            answer = await self._resolver().resolve(qname, "CERT", search=False)
        except _DNS_ERRORS as exc:
            note, temporary = _dns_outcome(exc)
            return [], note, temporary, []
        blobs: list[bytes] = []
        notes: list[str] = []
        failed = False
        for rdata in answer:
            ctype = rdata.certificate_type
            if ctype == CERT_PKIX:
                blobs.append(rdata.certificate)
            elif ctype == CERT_IPKIX:
                blob, note = await self._fetch(rdata.certificate)
                if blob is None:
                    notes.append(note)
                    failed = failed or note.startswith("IPKIX fetch failed")
                else:
                    blobs.append(blob)
            else:
                notes.append(f"ignored CERT type {ctype}")
        certs, problems = parse_certificates(blobs)
        summary = ", ".join([_count(len(certs)), *notes])
        return certs, summary, failed and not certs, problems

    async def _fetch(self, raw_url: bytes) -> tuple[bytes | None, str]:
        url = raw_url.decode("ascii", "replace")
        if self.fetch is None:
            return None, "IPKIX URL ignored (no fetcher configured)"
        if not url.lower().startswith(("http://", "https://")):
            return None, "IPKIX URL ignored (not http/https)"
        try:
            return await self.fetch(url), ""
        except (TimeoutError, OSError, ValueError, GatewayError) as exc:
            return None, f"IPKIX fetch failed ({type(exc).__name__})"


class SmimeaSource:
    """RFC 8162 SMIMEA records: ``<sha256(local part)[:28] hex>._smimecert.<domain>``.

    Only records with selector 0 (full certificate) and matching type 0 (no hash) carry a
    certificate we can encrypt to; usages PKIX-EE (1) and DANE-EE (3) name the end entity.
    Other records are ignored with a note. The local part is hashed as given (RFC 8162 does not
    fold case), so the discovery passes addresses with their original local part.
    """

    def __init__(self, resolver: dns.asyncresolver.Resolver | None = None, *, name: str = "smimea") -> None:
        self.resolver = resolver
        self.name = name

    @staticmethod
    def qname(address: str) -> dns.name.Name:
        local, domain = split_address(address)
        digest = hashlib.sha256(local.encode("utf-8")).digest()[:28].hex()
        return dns.name.Name([digest.encode(), b"_smimecert", *_labels(domain), b""])

    async def find(self, address: str) -> SourceAnswer:
        try:
            qname = self.qname(address)
        except (ValueError, UnicodeError, dns.exception.DNSException):
            return SourceAnswer(self.name, note=f"{self.name}: {address} cannot be looked up in DNS")
        label = f"{self.name} {qname.to_text()}"
        if self.resolver is None:
            self.resolver = dns.asyncresolver.Resolver()
        try:
            answer = await self.resolver.resolve(qname, "SMIMEA", search=False)
        except _DNS_ERRORS as exc:
            note, temporary = _dns_outcome(exc)
            return SourceAnswer(self.name, note=f"{label}: {note}", failed=temporary)
        blobs = [r.cert for r in answer if r.usage in (1, 3) and r.selector == 0 and r.mtype == 0]
        ignored = len(answer) - len(blobs)
        certs, problems = parse_certificates(blobs)
        note = f"{label}: {_count(len(certs))}" + (f", {ignored} record(s) ignored" if ignored else "")
        return SourceAnswer(self.name, tuple(certs), note, problems=tuple(problems))
