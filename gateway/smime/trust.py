"""Trust store and path validation of a signer certificate (pyhanko-certvalidator).

The trust store is a folder of PEM/DER files: self-signed ones are trust anchors, the others
intermediates. Validation builds the path, checks validity *now* (and, ourselves, at the
signing time), revocation with CRLs in hard-fail mode (no revocation information means no),
then the usage: KU digitalSignature or nonRepudiation and, when an EKU is present,
emailProtection (IGC-Santé/CPS signature certificates carry no EKU). Each pyhanko error is
mapped to one typed refusal.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from pyhanko_certvalidator import CertificateValidator, ValidationContext
from pyhanko_certvalidator import errors as pv_errors

from gateway.smime.cms_template import check_encryption_usage as key_transport_usage
from gateway.smime.cmsutil import PARSE_ERRORS, from_asn1, to_asn1
from gateway.smime.errors import (
    CertificateExpired,
    CertificateNotYetValid,
    CertificateRefused,
    CertificateRevoked,
    KeyLoadError,
    RevocationUnavailable,
    UnknownIssuer,
    WrongKeyUsage,
)
from gateway.smime.identity import read_identity
from gateway.smime.ocsp import OcspSource
from gateway.smime.revocation import CrlSource
from gateway.smime.softkeys import load_certificates

CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class TrustStore:
    """Trust anchors and known intermediates."""

    roots: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...] = ()

    @classmethod
    def from_directory(cls, directory: str | Path) -> TrustStore:
        d = Path(directory)
        if not d.is_dir():
            raise KeyLoadError(f"trust store {d.name} is not a directory")
        certs = [cert for path in sorted(d.iterdir()) if path.suffix.lower() in (".pem", ".crt", ".cer", ".der")
                 for cert in load_certificates(path)]
        roots, inter = split_anchors(certs)
        if not roots:
            raise KeyLoadError(f"trust store {d.name} holds no root certificate")
        return cls(tuple(roots), tuple(inter))

    @property
    def all(self) -> tuple[x509.Certificate, ...]:
        return self.roots + self.intermediates


def split_anchors(certs: Iterable[x509.Certificate]) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
    """(self-signed ones: trust anchors, the others: intermediates)."""
    roots: list[x509.Certificate] = []
    others: list[x509.Certificate] = []
    for cert in certs:
        (roots if cert.issuer == cert.subject else others).append(cert)
    return roots, others


@dataclass(frozen=True)
class PathResult:
    chain: tuple[x509.Certificate, ...]  # leaf first, trust anchor last
    revocation: str  # "good": every certificate checked against a CRL


def candidate_chain(leaf: x509.Certificate, pool: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """Leaf to root by issuer name (only to know which CRLs to fetch; pyhanko decides)."""
    chain = [leaf]
    while chain[-1].issuer != chain[-1].subject and len(chain) < 10:
        nxt = next((c for c in pool if c.subject == chain[-1].issuer and c not in chain), None)
        if nxt is None:
            break
        chain.append(nxt)
    return chain


def check_signing_usage(cert: x509.Certificate) -> None:
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not (ku.digital_signature or ku.content_commitment):
            raise WrongKeyUsage("signer certificate is not for digital signature")
    except x509.ExtensionNotFound:
        pass
    _require_email_protection(cert, "signer")


def _require_email_protection(cert: x509.Certificate, role: str) -> None:
    """An EKU, when present, must allow e-mail protection (no EKU: any use, as RFC 5280 says)."""
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if ExtendedKeyUsageOID.EMAIL_PROTECTION not in eku and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku:
        raise WrongKeyUsage(f"{role} certificate is not for e-mail protection")


def check_encryption_usage(cert: x509.Certificate) -> None:
    """An encryption (key transport) certificate: RSA and keyEncipherment (the CMS builder's own
    check, `cms_template.check_encryption_usage`), and here also e-mail protection."""
    if not isinstance(cert.public_key(), rsa.RSAPublicKey):
        raise WrongKeyUsage("recipient certificate has no RSA key for key transport")
    key_transport_usage(cert)
    _require_email_protection(cert, "recipient")


async def validate_recipient(cert: x509.Certificate, address: str | None, *, trust: TrustStore, crls: CrlSource,
                             now: dt.datetime | None = None, cache: PathCache | None = None,
                             ocsp: OcspSource | None = None) -> PathResult:
    """Validate a certificate we would encrypt to: trusted path now, not revoked, usable for
    key transport, and naming `address` (when given). Raises a typed refusal otherwise."""
    check_encryption_usage(cert)
    if address and not read_identity(cert).names_address(address):
        raise CertificateRefused("certificate does not name the recipient address")
    now = now or dt.datetime.now(dt.UTC)
    candidates = candidate_chain(cert, trust.all)
    crl_der, ocsp_der, failed = await _revocation_info(candidates, crls, ocsp, now)
    key = PathCache.key([cert, *trust.all], [*crl_der, *ocsp_der], now) if cache is not None else None
    chain = cache.get(key) if cache is not None and key is not None else None
    if chain is None:
        chain = await validate_path(cert, trust, (), crl_der, now, fetch_failed=failed, ocsp_der=ocsp_der)
        if cache is not None and key is not None:
            cache.put(key, chain)
    return PathResult(chain, "good")


def _check_at(chain: Sequence[x509.Certificate], when: dt.datetime) -> None:
    for cert in chain:
        if when < cert.not_valid_before_utc:
            raise CertificateNotYetValid("a certificate of the chain was not yet valid at signing time")
        if when > cert.not_valid_after_utc:
            raise CertificateExpired("a certificate of the chain had expired at signing time")


class PathCache:
    """Successful path validations, keyed by (certificates, CRLs, minute): pyhanko takes ~4 ms.

    A new CRL (or another minute) is another key, so revocation is never answered from an
    older CRL than the one the validation would use now. Refusals are not cached.
    """

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self.entries: OrderedDict[tuple[object, ...], tuple[x509.Certificate, ...]] = OrderedDict()

    @staticmethod
    def key(certs: Sequence[x509.Certificate], crl_der: Sequence[bytes], now: dt.datetime) -> tuple[object, ...]:
        digest = hashlib.sha256()
        for item in [*(c.fingerprint(hashes.SHA256()) for c in certs), *crl_der]:
            digest.update(hashlib.sha256(item).digest())
        return (digest.digest(), now.replace(second=0, microsecond=0))

    def get(self, key: tuple[object, ...]) -> tuple[x509.Certificate, ...] | None:
        chain = self.entries.get(key)
        if chain is not None:
            self.entries.move_to_end(key)
        return chain

    def put(self, key: tuple[object, ...], chain: tuple[x509.Certificate, ...]) -> None:
        self.entries[key] = chain
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)


async def validate_signer(cert: x509.Certificate, *, trust: TrustStore, crls: CrlSource,
                          extra_certs: Sequence[x509.Certificate] = (), signing_time: dt.datetime | None = None,
                          now: dt.datetime | None = None, cache: PathCache | None = None,
                          ocsp: OcspSource | None = None) -> PathResult:
    """Validate `cert` for S/MIME signing now and at `signing_time`, or raise a typed refusal."""
    now = now or dt.datetime.now(dt.UTC)
    pool = [*extra_certs, *trust.all]
    candidates = candidate_chain(cert, pool)
    crl_der, ocsp_der, failed = await _revocation_info(candidates, crls, ocsp, now)
    key = PathCache.key([cert, *extra_certs, *trust.all], [*crl_der, *ocsp_der], now) if cache is not None else None
    chain = cache.get(key) if cache is not None and key is not None else None
    if chain is None:
        chain = await validate_path(cert, trust, extra_certs, crl_der, now, fetch_failed=failed, ocsp_der=ocsp_der)
        if cache is not None and key is not None:
            cache.put(key, chain)
    check_signing_usage(cert)
    if signing_time is not None:
        if signing_time > now + CLOCK_SKEW:
            raise CertificateRefused("signing time is in the future")
        _check_at(chain, signing_time)
    return PathResult(chain, "good")


async def _revocation_info(chain: Sequence[x509.Certificate], crls: CrlSource, ocsp: OcspSource | None,
                           now: dt.datetime) -> tuple[list[bytes], list[bytes], bool]:
    """(CRLs, OCSP responses, whether a download failed: missing revocation data is then temporary)."""
    crl_der, crl_failures = await crls.crls_and_failures(chain, now)
    ocsp_der, ocsp_failures = (await ocsp.responses_and_failures(chain, now)) if ocsp is not None else ([], 0)
    return crl_der, ocsp_der, (crl_failures + ocsp_failures) > 0


RevocationMode = Literal["hard-fail", "soft-fail"]


async def validate_path(cert: x509.Certificate, trust: TrustStore, extra_certs: Sequence[x509.Certificate],
                        crl_der: Sequence[bytes], now: dt.datetime, *, revocation_mode: RevocationMode = "hard-fail",
                        fetch_failed: bool = False, ocsp_der: Sequence[bytes] = ()) -> tuple[x509.Certificate, ...]:
    """pyhanko-certvalidator with only the CRLs and OCSP responses given (it fetches nothing); the
    path (leaf first) or a typed refusal. "hard-fail" (messages): a certificate declaring a CRL
    distribution point or an OCSP responder needs a fresh CRL or a good, fresh OCSP response
    (either suffices). "soft-fail" (start-up checks on CRL files only): missing revocation
    information is no refusal, a revocation listed in a given CRL still is."""
    try:
        ctx = ValidationContext(
            trust_roots=[to_asn1(c) for c in trust.roots],
            other_certs=[to_asn1(c) for c in [*extra_certs, *trust.intermediates]],
            crls=list(crl_der), ocsps=list(ocsp_der), revocation_mode=revocation_mode, moment=now,
            allow_fetching=False)
        validator = CertificateValidator(to_asn1(cert), validation_context=ctx)
        path = await validator.async_validate_path()
    except pv_errors.PathBuildingError:
        raise UnknownIssuer("no path from the signer certificate to a trusted root") from None
    except pv_errors.ExpiredError:
        raise CertificateExpired("a certificate of the chain has expired") from None
    except pv_errors.NotYetValidError:
        raise CertificateNotYetValid("a certificate of the chain is not yet valid") from None
    except pv_errors.RevokedError:
        raise CertificateRevoked("a certificate of the chain is revoked") from None
    except pv_errors.InsufficientRevinfoError:
        raise RevocationUnavailable("no fresh revocation information for the chain",
                                    temporary=fetch_failed) from None
    except (pv_errors.PathValidationError, pv_errors.ValidationError) as exc:
        raise CertificateRefused(f"certificate path not valid ({type(exc).__name__})") from None
    except PARSE_ERRORS as exc:
        raise CertificateRefused(f"certificate path cannot be processed ({type(exc).__name__})") from None
    return tuple(from_asn1(c) for c in reversed(list(path)))
