"""The inventory an operator watches: certificates (keys, trust anchors, TLS), how fresh the CRLs
and the MSSanté trust-space list are, and whether each PKCS#11 token is there.

One function, `inventory(config)`, used by the metrics (days left, ages as gauges) and by the
console's certificates page, so both show the same figures. It reads files (blocking: call it
in an executor from the event loop) and never raises on one bad file: that entry carries the
problem instead, so one unreadable certificate does not hide the others.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

if TYPE_CHECKING:
    from gateway.config import GatewayConfig


@dataclass(frozen=True)
class CertificateStatus:
    """One certificate the gateway relies on; `problem` says why it could not be read."""

    kind: str  # "key" (a [keys.*] certificate), "anchor" (trust folder), "tls" (a listener's, the console's)
    name: str  # the key's name, the anchor's file name, the listener's name ("console": the console's)
    subject: str = ""
    issuer: str = ""
    serial: str = ""
    not_after: datetime | None = None
    problem: str = ""

    def days_left(self, now: datetime) -> float | None:
        if self.not_after is None:
            return None
        return (self.not_after - now).total_seconds() / 86400


@dataclass(frozen=True)
class FreshnessStatus:
    """A revocation list or the trust-space list: when it was last refreshed."""

    kind: str  # "crl" or "trust-space-list"
    name: str  # file name (or URL for a fetched CRL)
    this_update: datetime | None = None  # the CRL's own thisUpdate; the file's mtime for the list
    next_update: datetime | None = None
    problem: str = ""

    def age_seconds(self, now: datetime) -> float | None:
        if self.this_update is None:
            return None
        return (now - self.this_update).total_seconds()


@dataclass(frozen=True)
class TokenStatus:
    """A PKCS#11 token a key lives on: present (slot found, token initialised) or not."""

    key: str
    uri: str  # the pkcs11: URI without its PIN attributes
    present: bool | None  # None: not checked (`inventory(..., tokens=False)`)
    problem: str = ""


@dataclass(frozen=True)
class Inventory:
    taken_at: datetime
    certificates: tuple[CertificateStatus, ...] = ()
    freshness: tuple[FreshnessStatus, ...] = ()
    tokens: tuple[TokenStatus, ...] = field(default=())


def inventory(config: GatewayConfig, *, now: datetime | None = None, tokens: bool = True) -> Inventory:
    """Everything an operator should watch in `config`, read now."""
    now = now or datetime.now(UTC)
    certs: list[CertificateStatus] = []
    for name, ref in sorted(config.keys.items()):
        if ref.cert:
            certs.append(_certificate("key", name, Path(ref.cert)))
    trust = config.trust
    if trust is not None and trust.anchors is not None and trust.anchors.is_dir():
        for path in sorted(trust.anchors.iterdir()):
            if path.is_file():
                certs.extend(_certificates("anchor", path))
    for listener in config.listeners:
        if listener.tls_cert:
            certs.append(_certificate("tls", listener.name, Path(listener.tls_cert)))
    console = config.console
    if console.enabled and console.tls_cert is not None:
        certs.append(_certificate("tls", "console", Path(console.tls_cert)))
    fresh: list[FreshnessStatus] = []
    if trust is not None:
        fresh.extend(_crl(path) for path in trust.crl_files)
        if trust.authorised_domains_file is not None:
            fresh.append(_list_file(trust.authorised_domains_file))
    found: list[TokenStatus] = []
    for name, ref in sorted(config.keys.items()):
        if ref.is_token:
            found.append(_token(name, ref.ref, ref.module) if tokens else
                         TokenStatus(key=name, uri=_public_uri(ref.ref), present=None))
    return Inventory(taken_at=now, certificates=tuple(certs), freshness=tuple(fresh), tokens=tuple(found))


def _name(value: x509.Name) -> str:
    return value.rfc4514_string()


def _status(kind: str, name: str, cert: x509.Certificate) -> CertificateStatus:
    return CertificateStatus(kind=kind, name=name, subject=_name(cert.subject), issuer=_name(cert.issuer),
                             serial=format(cert.serial_number, "x"), not_after=cert.not_valid_after_utc)


def _load_all(path: Path) -> list[x509.Certificate]:
    data = path.read_bytes()
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


def _certificate(kind: str, name: str, path: Path) -> CertificateStatus:
    try:
        return _status(kind, name, _load_all(path)[0])
    except (OSError, ValueError) as exc:
        return CertificateStatus(kind=kind, name=name, problem=_problem(exc))


def _certificates(kind: str, path: Path) -> Iterable[CertificateStatus]:
    try:
        loaded = _load_all(path)
    except (OSError, ValueError) as exc:
        return [CertificateStatus(kind=kind, name=path.name, problem=_problem(exc))]
    return [_status(kind, path.name if len(loaded) == 1 else f"{path.name}#{i}", cert)
            for i, cert in enumerate(loaded)]


def _crl(path: Path) -> FreshnessStatus:
    try:
        data = path.read_bytes()
        crl = (x509.load_pem_x509_crl(data) if b"-----BEGIN" in data else x509.load_der_x509_crl(data))
    except (OSError, ValueError) as exc:
        return FreshnessStatus(kind="crl", name=path.name, problem=_problem(exc))
    return FreshnessStatus(kind="crl", name=path.name, this_update=crl.last_update_utc,
                           next_update=crl.next_update_utc)


def _list_file(path: Path) -> FreshnessStatus:
    try:
        mtime = os.stat(path).st_mtime
    except OSError as exc:
        return FreshnessStatus(kind="trust-space-list", name=path.name, problem=_problem(exc))
    return FreshnessStatus(kind="trust-space-list", name=path.name, this_update=datetime.fromtimestamp(mtime, UTC))


def _public_uri(uri: str) -> str:
    """The URI without PIN attributes (never shown, never a metric label)."""
    parts = uri.split("?", 1)
    if len(parts) == 1:
        return uri
    kept = [p for p in parts[1].split("&") if not p.lower().startswith(("pin-value", "pin-source"))]
    return parts[0] + ("?" + "&".join(kept) if kept else "")


def _token(name: str, uri: str, module: str | None) -> TokenStatus:
    """Is the key's token in a slot? Asked on the module's own thread (python-pkcs11 modules are
    not thread-safe: `gateway.smime.pkcs11.worker`), without the PIN and without a rescan: a
    re-initialisation would drop the sessions the signing path holds, and a card reader's slot
    list follows insertions by itself (the signing path rescans when it needs the token)."""
    from gateway.errors import GatewayError
    from gateway.smime.pkcs11 import TokenAbsent, UriError
    from gateway.smime.pkcs11.presence import check_token

    public = _public_uri(uri)
    try:
        check_token(uri, module, rescan=False)
    except TokenAbsent:
        return TokenStatus(key=name, uri=public, present=False, problem="token not present")
    except UriError:  # its message may quote the URI, PIN attributes included
        return TokenStatus(key=name, uri=public, present=False, problem="invalid pkcs11 URI")
    except GatewayError as exc:
        return TokenStatus(key=name, uri=public, present=False, problem=str(exc)[:200])
    except Exception as exc:  # noqa: BLE001 - one token's fault must not hide the rest of the inventory
        return TokenStatus(key=name, uri=public, present=False, problem=_problem(exc))
    return TokenStatus(key=name, uri=public, present=True)


def _problem(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]
