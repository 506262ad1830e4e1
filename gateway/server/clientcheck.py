"""The gateway's one set of client-certificate checks (issue 17): built from the config once,
shared by every SMTP listener and the MLLP door, so a card or partner checked on one is answered
from the same verdict cache, CRL cache and OCSP cache on the others.

Revocation sources: `[trust] crl_files`, CRLs fetched from the certificate's distribution points
(`[trust] fetch_crls`, on by default), OCSP (`[trust] ocsp`). Without a `[trust]` section both
CRL fetching and OCSP are on: a client certificate that declares where its revocation status is
published is refused unless that status can be had (hard-fail), so the checks ask both.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from pathlib import Path

from cryptography import x509

from gateway.config import GatewayConfig
from gateway.smime.clientauth import ClientCertChecker, ClientVerdict, VerdictCache
from gateway.smime.ocsp import OcspSource
from gateway.smime.revocation import CrlSource, http_fetch
from gateway.smime.softkeys import load_certificates
from gateway.smime.trust import TrustStore, split_anchors

#: Async verdict on a client's DER certificate (what the SMTP handler and the MLLP door await).
ClientCheck = Callable[[bytes], Awaitable[ClientVerdict]]


def _folder_certificates(folder: Path | None) -> list[x509.Certificate]:
    if folder is None or not folder.is_dir():
        return []
    return [c for p in sorted(folder.iterdir()) if p.suffix.lower() in (".pem", ".crt", ".cer", ".der")
            for c in load_certificates(p)]


class ClientChecks:
    """Revocation sources + verdict cache, and one checker per (client_ca file, card or not)."""

    def __init__(self, anchors: list[x509.Certificate], crls: CrlSource, ocsp: OcspSource | None,
                 cache: VerdictCache | None = None) -> None:
        self.anchors = anchors
        self.crls = crls
        self.ocsp = ocsp
        self.cache = cache or VerdictCache()
        self._checkers: dict[tuple[str, bool], ClientCertChecker] = {}

    @classmethod
    def from_config(cls, config: GatewayConfig) -> ClientChecks:
        trust = config.trust
        if trust is None:
            return cls([], CrlSource(fetcher=http_fetch), OcspSource())
        crls = CrlSource(files=trust.crl_files, fetcher=http_fetch if trust.fetch_crls else None,
                         max_age=dt.timedelta(seconds=trust.crl_max_age))
        return cls(_folder_certificates(trust.anchors), crls, OcspSource() if trust.ocsp else None)

    def checker(self, client_ca: Path | None, *, card: bool = False) -> ClientCertChecker:
        """The checker of a listener whose handshake trusts `client_ca` (read once, then kept)."""
        key = (str(client_ca or ""), card)
        checker = self._checkers.get(key)
        if checker is None:
            certs = [*(load_certificates(client_ca) if client_ca is not None else []), *self.anchors]
            roots, others = split_anchors(dict.fromkeys(certs))  # the same CA twice counts once
            checker = ClientCertChecker(TrustStore(tuple(roots), tuple(others)), self.crls, self.ocsp, self.cache,
                                        require_client_auth=card)
            self._checkers[key] = checker
        return checker


__all__ = ["ClientCheck", "ClientChecks"]
