"""Is a key's certificate fit for the job the configuration gives it? Checked before mail is accepted.

A key that cannot be used must be found by `msgw check` and at `msgw serve` start-up, not by the
first message needing it (which would otherwise be accepted, then bounced). These checks take
certificates and keys already loaded and return findings; they read no file (the loader in
`gateway.startup` does) and the path validation only uses the CRLs it is given (no network).

Roles: "sign" (S/MIME signatures: keyUsage digitalSignature, EKU emailProtection when an EKU is
present), "decrypt" (key transport: an RSA key, keyEncipherment, emailProtection when an EKU is
present), "client" (TLS client authentication: EKU clientAuth when an EKU is present).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.filemodes import loose_mode
from gateway.smime.errors import (
    CertificateExpired,
    CertificateNotYetValid,
    CertificateRefused,
    CertificateRevoked,
    UnknownIssuer,
)

Severity = Literal["error", "warning"]
Role = Literal["sign", "decrypt", "client"]

#: Below this many days of validity left a certificate is an error: renewal cannot wait.
MIN_DAYS = 14
#: Below this many days it is a warning (printed by `msgw check`, logged by `msgw serve`).
WARN_DAYS = 30
CHAIN_EXPIRED = "a certificate of the chain has expired"
CHAIN_NOT_YET_VALID = "a certificate of the chain is not yet valid"


@dataclass(frozen=True)
class Finding:
    severity: Severity
    message: str


def error(message: str) -> Finding:
    return Finding("error", message)


def warning(message: str) -> Finding:
    return Finding("warning", message)


def current(cert: x509.Certificate, now: dt.datetime) -> str | None:
    """Why the certificate cannot be used at all now (expired, not yet valid), or None. Also what
    the running gateway asks before it signs (`gateway.stages.build`)."""
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < not_before:
        return f"certificate not valid before {not_before:%Y-%m-%d %H:%M} UTC"
    if now >= not_after:
        return f"certificate expired on {not_after:%Y-%m-%d}"
    return None


def validity(cert: x509.Certificate, now: dt.datetime) -> list[Finding]:
    """Valid now, and for long enough that nobody learns of the expiry from a bounce."""
    problem = current(cert, now)
    if problem is not None:
        return [error(problem)]
    not_after = cert.not_valid_after_utc
    days = (not_after - now).days
    text = f"certificate expires in {days} day{'s' if days != 1 else ''} ({not_after:%Y-%m-%d})"
    if days < MIN_DAYS:
        return [error(text)]
    if days < WARN_DAYS:
        return [warning(text)]
    return []


def _key_usage(cert: x509.Certificate) -> x509.KeyUsage | None:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None


def _eku_allows(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bool:
    """No EKU extension allows every use (RFC 5280); otherwise `oid` or anyExtendedKeyUsage."""
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return oid in eku or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in eku


def usage(cert: x509.Certificate, role: Role, *, severity: Severity = "error") -> list[Finding]:
    """What in the certificate's usages forbids `role` (empty when it fits)."""
    problems: list[str] = []
    ku = _key_usage(cert)
    if role == "sign":
        if ku is not None and not ku.digital_signature:
            problems.append("certificate key usage does not allow digitalSignature (needed to sign)")
        if not _eku_allows(cert, ExtendedKeyUsageOID.EMAIL_PROTECTION):
            problems.append("certificate extended key usage does not allow e-mail protection (needed to sign)")
    elif role == "decrypt":
        if not isinstance(cert.public_key(), rsa.RSAPublicKey):
            problems.append("certificate has no RSA key (key transport needs one to decrypt)")
        if ku is not None and not ku.key_encipherment:
            problems.append("certificate key usage does not allow keyEncipherment (needed to decrypt)")
        if not _eku_allows(cert, ExtendedKeyUsageOID.EMAIL_PROTECTION):
            problems.append("certificate extended key usage does not allow e-mail protection (needed to decrypt)")
    elif not _eku_allows(cert, ExtendedKeyUsageOID.CLIENT_AUTH):
        problems.append("certificate extended key usage does not allow TLS client authentication (clientAuth)")
    return [Finding(severity, p) for p in problems]


def file_mode(mode: int, what: str, path: str) -> Finding | None:
    """The finding for a private file (key, PIN, password) open to group or others (0600 or stricter
    is needed: `gateway.filemodes.loose_mode`, the Apicrypt key store's rule too)."""
    loose = loose_mode(mode)
    if loose is None:
        return None
    return error(f"{what} {path} is readable by group or others (mode {loose}): chmod 600 it")


async def chain(cert: x509.Certificate, extra: Sequence[x509.Certificate], roots: Sequence[x509.Certificate],
                intermediates: Sequence[x509.Certificate], crls: Sequence[bytes], now: dt.datetime,
                anchors_name: str = "the trust anchors") -> list[Finding]:
    """A path from `cert` to one of `roots`, valid now, not revoked by the given CRLs: the path
    validation of `gateway.smime.trust`, its refusals as findings.

    Soft-fail revocation: a certificate no given CRL covers is not an error here (the running
    gateway's own policy decides about fetching); one a CRL lists as revoked is."""
    from gateway.smime.trust import TrustStore, validate_path  # pyhanko: loaded only when a path is checked

    if not roots:
        return [warning(f"chain not checked: no trust anchors to check it against ({anchors_name})")]
    try:
        await validate_path(cert, TrustStore(tuple(roots), tuple(intermediates)), extra, crls, now,
                            revocation_mode="soft-fail")
    except UnknownIssuer:
        return [error(f"certificate does not chain to {anchors_name}")]
    except CertificateRevoked:
        return [error("certificate is revoked (listed in a configured CRL)")]
    except CertificateExpired:
        return [error(CHAIN_EXPIRED)]
    except CertificateNotYetValid:
        return [error(CHAIN_NOT_YET_VALID)]
    except CertificateRefused as exc:
        return [error(f"{exc}, against {anchors_name}")]
    return []
