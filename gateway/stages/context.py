"""What the protection stages need from the rest of the gateway, as one small protocol.

The concrete context (`gateway.stages.build`) is wired from the config: keys (soft or
PKCS#11), the trust store and CRLs, the directory, certificate discovery, the trust-space
domain list and the audit trail. Tests can build one from real keys with no server.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography import x509

from gateway.config import PolicyConfig
from gateway.directory.capability import Capability, InvalidCapability
from gateway.logs import event
from gateway.smime.engine import Verifier
from gateway.smime.keyapi import DecryptionKey, SigningKey
from gateway.smime.result import UnwrapResult

log = logging.getLogger("gateway.policy")


@dataclass(frozen=True)
class RecipientView:
    """The directory's answer for one address, reduced to what a decision needs."""

    address: str
    capability: str | None   # "smime", "legacy:<codec>", "local", "trusted-domain", or None (unknown)
    key_name: str | None = None  # for "local": the [keys.<name>] it decrypts with


class ProtectionContext(Protocol):
    policy: PolicyConfig
    verifier: Verifier

    def is_local(self, domain: str) -> bool: ...

    def recipient(self, address: str) -> RecipientView: ...

    async def encryption_certificates(self, address: str) -> list[x509.Certificate]:
        """Usable encryption certificates (validated), or raise a GatewayError saying which
        source said what (temporary when a source failed temporarily)."""
        ...

    async def signing_key(self, identity: str | None) -> SigningKey | None:
        """The key of an authenticated identity (`Envelope.auth_user`); never chosen by an address."""
        ...

    async def decryption_key(self, address: str) -> DecryptionKey | None: ...

    def authorised_domain(self, domain: str) -> bool: ...

    def audit(self, **fields: Any) -> None: ...

    def harvest(self, address: str, certificate: x509.Certificate) -> None:
        """Remember a verified signer's certificate (as mail clients do)."""
        ...

    # -- legacy bridging ---------------------------------------------------------------------
    def legacy_keys(self, codec: str) -> Any | None:
        """The key store of a legacy format the bridge speaks, or None."""
        ...

    def legacy_identity(self, codec: str) -> str:
        """The bridge's own identity in that format."""
        ...

    def legacy_id(self, address: str, codec: str) -> str:
        """A recipient's identity in that format (from the directory)."""
        ...

    def bridges_from(self, listener: str, sender: str) -> bool:
        """Is legacy-encrypted mail that arrived this way bridged (decoded and re-signed)? Only on
        the listeners configured for legacy traffic, or from a sender the directory knows as a
        legacy correspondent; anywhere else legacy armor is ordinary content."""
        ...

    async def bridge_signing_key(self) -> SigningKey | None:
        """The organisation key that signs what the bridge rebuilds as S/MIME."""
        ...

    async def bridge_unwrap(self, data: bytes) -> UnwrapResult:
        """Open and verify S/MIME encrypted to the bridge's certificate (typed refusal otherwise)."""
        ...


def capability_of(ctx: ProtectionContext, address: str) -> Capability | None:
    """The directory's capability of `address`, parsed; a value that does not parse is no
    capability (as before it was parsed: only a readable `legacy:<codec>` ever changed a
    decision), and the operator is told which kind of problem the directory holds."""
    try:
        return Capability.read(ctx.recipient(address).capability)
    except InvalidCapability as exc:
        event(log, "directory-capability-invalid", logging.WARNING, code=exc.code)
        return None
