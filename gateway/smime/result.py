"""The records the engine returns: who signed and what was checked, and what unwrapping found.

They travel with the message through the pipeline (DESIGN.md: "never silently dropped") and
feed the audit trail, so they hold identifiers and certificate facts, never content.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from gateway.smime.identity import CertificateIdentity


@dataclass(frozen=True)
class VerificationResult:
    """A signature that verified, with a trusted path and good revocation status."""

    signer_subject: str
    identity: CertificateIdentity
    certificate: x509.Certificate = field(repr=False)
    chain: tuple[str, ...]  # subjects, signer first, trust anchor last
    signing_time: dt.datetime | None
    revocation_status: str  # "good"
    digest_algorithm: str
    signature_algorithm: str
    detached: bool
    from_address: str | None
    from_matched: bool | None  # None when there was no From to match
    reasons: tuple[str, ...]  # the checks that passed, in order
    #: weak algorithms this signature relies on ("rsa-1024"): accepted, but named so policy can refuse
    weak: tuple[str, ...] = ()

    @property
    def identifiers(self) -> tuple[str, ...]:
        return self.identity.identifiers

    @property
    def serial(self) -> str:
        return format(self.certificate.serial_number, "x")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (for --json and audit records)."""
        return {
            "valid": True, "signer_subject": self.signer_subject, "identifiers": list(self.identifiers),
            "emails": list(self.identity.emails), "rpps": self.identity.rpps, "adeli": self.identity.adeli,
            "profession": self.identity.profession, "serial": self.serial, "chain": list(self.chain),
            "signing_time": self.signing_time.isoformat() if self.signing_time else None,
            "revocation_status": self.revocation_status, "digest_algorithm": self.digest_algorithm,
            "signature_algorithm": self.signature_algorithm, "detached": self.detached,
            "from_address": self.from_address, "from_matched": self.from_matched, "reasons": list(self.reasons),
            "weak": list(self.weak),
        }


#: Content-encryption algorithms that still open but are weak: named in the verdict.
WEAK_CIPHERS = frozenset({"3des-cbc"})


@dataclass(frozen=True)
class UnwrapResult:
    """What came out of the S/MIME layers of a message, outermost layer first.

    `message` has one header block: header fields found inside the layers (protected headers)
    replace the outer fields of the same names, which are kept in `displaced` for diagnosis only.
    """

    message: bytes  # the delivered headers + the innermost MIME entity (CRLF)
    content: bytes  # the innermost MIME entity alone
    layers: tuple[str, ...]  # "signed", "signed-opaque", "enveloped", "auth-enveloped", "rfc822"
    signatures: tuple[VerificationResult, ...] = ()
    displaced: tuple[bytes, ...] = ()  # outer fields replaced by different protected ones (raw)
    ciphers: tuple[str, ...] = ()  # content encryption of each encrypted layer ("aes256-cbc", "3des-cbc")

    @property
    def weak(self) -> tuple[str, ...]:
        """Every weak algorithm met while unwrapping (ciphers, then signer keys), once each."""
        marks = [c for c in self.ciphers if c in WEAK_CIPHERS] + [w for s in self.signatures for w in s.weak]
        return tuple(dict.fromkeys(marks))

    @property
    def encrypted(self) -> bool:
        return any(layer in ("enveloped", "auth-enveloped") for layer in self.layers)

    @property
    def signed(self) -> bool:
        return bool(self.signatures)
