"""Wire the protection context from the config: keys, trust store and CRLs, directory,
certificate discovery, trust-space list, harvest store and audit trail.

Built once at start-up (token logins happen here or lazily on first use); the stages then
only see `ProtectionContext`. With no `[policy]` table the gateway stays a plain durable
relay (the relay-core tests and deployments that protect mail elsewhere).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from cryptography import x509

from gateway.audit import AuditTrail, AuditWriter, audit_path
from gateway.config import GatewayConfig, PolicyConfig
from gateway.directory.certdiscovery import CertificateDiscovery
from gateway.directory.certsources import (
    CertificateSource,
    DirectorySource,
    DnsCertSource,
    HarvestSource,
    LdapSource,
)
from gateway.directory.trustspace import TrustSpace
from gateway.errors import GatewayError, PermanentError
from gateway.logs import event
from gateway.pipeline import RELAY_STAGES, Pipeline, Refusal, Stage, WorkItem
from gateway.smime import keycheck
from gateway.smime.engine import Verifier, unwrap_message
from gateway.smime.keyapi import DecryptionKey, HashName, KeyTransportPadding, SignaturePadding, SigningKey
from gateway.smime.keystore import KeyUnavailable, load_key_async
from gateway.smime.ocsp import OcspSource
from gateway.smime.result import UnwrapResult
from gateway.smime.revocation import CrlSource, http_fetch
from gateway.smime.trust import PathCache, TrustStore, validate_recipient
from gateway.stages.bridge import LegacyInboundStage, sanitize
from gateway.stages.context import ProtectionContext, RecipientView, capability_of
from gateway.stages.inbound import InboundStage
from gateway.stages.outbound import OutboundStage
from gateway.stages.route import RCPT_CHECK_TIMEOUT, RouteStage, rcpt_decision, rcpt_refusal_reason
from gateway.storage import open_directory, open_harvest_store

log = logging.getLogger("gateway.policy")


class GatewayContext:
    """The concrete `ProtectionContext` of a running gateway."""

    def __init__(self, config: GatewayConfig) -> None:
        assert config.policy is not None and config.trust is not None
        self.config = config
        self.policy: PolicyConfig = config.policy
        trust = config.trust
        if trust.anchors is None:
            raise PermanentError("trust.anchors is needed by the protection policy")
        self.trust = TrustStore.from_directory(trust.anchors)
        self.crls = CrlSource(files=trust.crl_files, fetcher=http_fetch if trust.fetch_crls else None,
                              max_age=dt.timedelta(seconds=trust.crl_max_age))
        self.path_cache = PathCache()
        self.ocsp = OcspSource() if trust.ocsp else None
        self.verifier = Verifier(self.trust, self.crls, cache=self.path_cache, ocsp=self.ocsp)
        self.directory = open_directory(config)
        self.harvest_store = open_harvest_store(config)
        self.trust_space = TrustSpace(trust.authorised_domains_file) if trust.authorised_domains_file else None
        self.audit_trail = AuditTrail(audit_path(config))
        self.discovery = CertificateDiscovery(self._sources(), self._usable,
                                              cache_ttl=self.policy.discovery.cache_ttl,
                                              negative_ttl=self.policy.discovery.negative_ttl)
        self._keys: dict[str, GuardedKey] = {}
        self._legacy_keys: dict[str, Any] = {}
        self.audit_writer = AuditWriter(self.audit_trail)
        self._key_lock = asyncio.Lock()

    def _sources(self) -> list[CertificateSource]:
        d = self.policy.discovery
        sources: list[CertificateSource] = []
        for name in d.order:
            if name == "directory":
                sources.append(DirectorySource(self._directory_certificates))
            elif name == "harvested":
                sources.append(HarvestSource(self.harvest_store))
            elif name == "ldap" and d.ldap_url:
                sources.append(LdapSource(d.ldap_url, d.ldap_base or ""))
            elif name == "dns":
                sources.append(DnsCertSource())
        return sources

    def _directory_certificates(self, address: str) -> list[bytes]:
        entry = self.directory.address(address)
        return list(entry.certificates) if entry is not None else []

    async def _usable(self, cert: x509.Certificate, address: str) -> None:
        await validate_recipient(cert, address, trust=self.trust, crls=self.crls, cache=self.path_cache,
                                 ocsp=self.ocsp)

    # -- ProtectionContext -------------------------------------------------------------------
    def is_local(self, domain: str) -> bool:
        return self.config.is_local(domain)

    def recipient(self, address: str) -> RecipientView:
        entry = self.directory.address(address)
        if entry is None:
            return RecipientView(address, None)
        return RecipientView(address, entry.capability, entry.key_ref)

    async def encryption_certificates(self, address: str) -> list[x509.Certificate]:
        result = await self.discovery.find(address)
        return list(result.certificates)

    async def _key(self, name: str, *, signing: bool = False) -> Any:
        """The configured key `name`, loaded on first use. Any fault here is the gateway's own
        (file gone, token out, PIN refused, certificate expired, no such table): KeyUnavailable,
        temporary, so the message waits for the operator instead of bouncing; alerted in the log.

        A key already loaded whose certificate is current is answered at once (no lock: nothing
        is loaded); anything else — not loaded, not current — takes the full path below, which
        says why and reloads the files next time."""
        loaded = self._keys.get(name)
        if loaded is not None and (not signing or loaded.current()):
            return loaded
        try:
            key = await self._load(name)
            if signing:
                try:
                    _certificate_current(key.certificate)
                except KeyUnavailable:
                    self._keys.pop(name, None)  # read the files again next time: a renewal needs no restart
                    raise
        except GatewayError as exc:
            raise self._unavailable(name, exc) from None
        return key

    async def _load(self, name: str) -> GuardedKey:
        async with self._key_lock:
            if name not in self._keys:
                ref = self.config.keys.get(name)
                if ref is None:
                    raise KeyUnavailable(f"no [keys.{name}] in the configuration")
                try:
                    key = await load_key_async(ref)
                except OSError as exc:
                    raise KeyUnavailable(f"cannot read a file of the key ({exc.strerror})") from None
                self._keys[name] = GuardedKey(name, key, self._unavailable)
            return self._keys[name]

    def _unavailable(self, name: str, exc: GatewayError) -> KeyUnavailable:
        """Alert (event `key-unavailable`, the key's name) and turn `exc` into a deferral; an
        absent token is `TokenNotHere` (on a shared queue, another node may hold it)."""
        event(log, "key-unavailable", logging.ERROR, key=name, code=exc.code, reason=str(exc)[:200])
        kind = TokenNotHere if exc.code == CARD_ABSENT_CODE else KeyUnavailable
        error = kind(f"key {name} unavailable: {exc}"[:400],
                     status=exc.status if exc.temporary else KeyUnavailable.status)
        if isinstance(error, TokenNotHere):
            error.needs_key = name
        return error

    async def signing_key(self, identity: str | None) -> SigningKey | None:
        """The key of the authenticated identity; an address the client typed never chooses it."""
        name = self.policy.signing_key_name(identity)
        return await self._key(name, signing=True) if name else None

    async def decryption_key(self, address: str) -> DecryptionKey | None:
        entry = self.directory.address(address)
        if entry is None or not entry.key_ref:
            return None
        if entry.key_ref not in self.config.keys:
            # The mailbox's owner keeps the key in their own client: deliver as it came.
            return None
        return await self._key(entry.key_ref)

    def authorised_domain(self, domain: str) -> bool:
        return self.trust_space is not None and self.trust_space.is_authorised(domain)

    def audit(self, **fields: Any) -> None:
        """Queue one record for the audit writer thread (the trail fsyncs every record)."""
        self.audit_writer(**fields)

    def harvest(self, address: str, certificate: x509.Certificate) -> None:
        self.harvest_store.harvest(address, certificate)
        self.discovery.invalidate(address)

    # -- RCPT-time decision -------------------------------------------------------------------
    async def rcpt_refusal(self, address: str) -> str | None:
        """The 550 reason when a recipient certainly cannot be protected, else None.

        The decision table of the route stage (`gateway.stages.decide`), on the facts known at
        RCPT time; certificate discovery bounded by RCPT_CHECK_TIMEOUT. Only certain answers
        refuse (policy `refuse`, or no certificate anywhere and no other form); anything slow or
        temporary is decided after queueing."""
        return rcpt_refusal_reason(await rcpt_decision(self, address, timeout=RCPT_CHECK_TIMEOUT))

    # -- legacy bridging ---------------------------------------------------------------------
    def legacy_keys(self, codec: str) -> Any | None:
        legacy = self.config.legacy
        cfg = legacy.codec(codec) if legacy is not None else None
        if cfg is None:
            return None
        if codec not in self._legacy_keys:
            from gateway.legacy import codec as legacy_codecs

            if codec not in legacy_codecs.names():
                return None
            self._legacy_keys[codec] = legacy_codecs.get(codec).open_keys(cfg.keys, cfg.identity, cfg.options)
        return self._legacy_keys[codec]

    def legacy_identity(self, codec: str) -> str:
        cfg = self.config.legacy.codec(codec) if self.config.legacy is not None else None
        if cfg is None:
            raise PermanentError(f"no [legacy.{codec}] in the configuration")
        return cfg.identity

    def legacy_id(self, address: str, codec: str) -> str:
        """The directory's key_ref of a legacy address is its identity there; else the local part."""
        entry = self.directory.address(address)
        if entry is not None and entry.key_ref:
            return entry.key_ref
        return address.rpartition("@")[0]

    def bridges_from(self, listener: str, sender: str) -> bool:
        legacy = self.config.legacy
        if legacy is None:
            return False
        if listener in legacy.listeners:
            return True
        if not sender:
            return False
        capability = capability_of(self, sender)
        return capability is not None and capability.is_legacy

    async def bridge_signing_key(self) -> SigningKey | None:
        name = self.config.legacy.sign_key if self.config.legacy is not None else None
        return await self._key(name, signing=True) if name else None

    async def bridge_unwrap(self, data: bytes) -> UnwrapResult:
        name = self.config.legacy.decrypt_key if self.config.legacy is not None else None
        if not name:
            raise PermanentError("S/MIME for a legacy recipient, and no legacy.decrypt_key to open it",
                                 status="5.7.1")
        return await unwrap_message(data, keys=[await self._key(name)], verifier=self.verifier)

    def close(self) -> None:
        self.audit_writer.close()  # drains what is queued, then stops
        for closer in (self.directory.close, self.harvest_store.close):
            try:
                closer()
            except Exception as exc:  # noqa: BLE001 - closing must not hide the shutdown
                event(log, "close-failed", logging.WARNING, exc_type=type(exc).__name__)


#: `gateway.smime.pkcs11.TokenAbsent.code` (named here: the PKCS#11 package is loaded only with a token key).
CARD_ABSENT_CODE = "pkcs11-token-absent"


class TokenNotHere(KeyUnavailable):
    """The key's PKCS#11 token is not in this machine (issue 18, item 4: a CPS card lives in one
    node). Temporary as any `KeyUnavailable`; `needs_key` names the configured key, so the runner
    routes the message (`QueueStore.route_to_key`) to a node of a shared queue that holds it."""

    code = "key-token-absent"
    needs_key: str = ""


#: Token errors on a decryption that are the gateway's fault (PIN, card, configuration), not the
#: message's: they defer. Other decryption failures stay what they are (RFC 3218 generic failure).
_LOCAL_FAULTS = frozenset({"pkcs11-pin-rejected", "pkcs11-pin-unavailable", "pkcs11-pin-locked",
                           "pkcs11-key-not-found", "pkcs11-module"})


def _certificate_current(cert: x509.Certificate) -> None:
    """We do not sign with a certificate that is expired (or not yet valid): recipients would
    refuse the signature; the message waits for the renewed certificate."""
    reason = keycheck.current(cert, dt.datetime.now(dt.UTC))
    if reason is not None:
        raise KeyUnavailable(reason)


class GuardedKey:
    """A configured key as the stages see it (SigningKey and DecryptionKey): a failure that is
    the gateway's own becomes KeyUnavailable (temporary, alerted). Signing our own data can only
    fail for local reasons; a decryption fails for the message's reasons too, so only token
    faults and temporary errors are converted there."""

    def __init__(self, name: str, key: Any, unavailable: Callable[[str, GatewayError], KeyUnavailable]) -> None:
        self.name = name
        self.key = key
        self._unavailable = unavailable
        #: (certificate, notBefore, notAfter as POSIX seconds): read once per certificate object.
        self._validity: tuple[x509.Certificate, float, float] | None = None

    def current(self, now: float | None = None) -> bool:
        """Is the certificate valid at `now` (POSIX seconds; None: the clock)? What
        `keycheck.current(cert, now) is None` says, with the dates read from the certificate once
        (issue 15: reading them and the clock as datetimes cost a few µs a message). Keyed on the
        certificate object: a key that shows another certificate is read again. A False answer is
        explained by `_certificate_current`, which the caller then runs."""
        cert = self.key.certificate
        validity = self._validity
        if validity is None or validity[0] is not cert:
            validity = (cert, cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp())
            self._validity = validity
        return validity[1] <= (time.time() if now is None else now) < validity[2]

    @property
    def certificate(self) -> x509.Certificate:
        return self.key.certificate

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        return tuple(getattr(self.key, "chain", ()))

    async def sign(self, data: bytes, hash_name: HashName, padding: SignaturePadding) -> bytes:
        try:
            return await self.key.sign(data, hash_name, padding)
        except GatewayError as exc:
            raise self._unavailable(self.name, exc) from None

    async def decrypt_key(self, encrypted_key: bytes, padding: KeyTransportPadding) -> bytes:
        try:
            return await self.key.decrypt_key(encrypted_key, padding)
        except GatewayError as exc:
            if exc.temporary or exc.code in _LOCAL_FAULTS:
                raise self._unavailable(self.name, exc) from None
            raise


def build_pipeline(config: GatewayConfig) -> tuple[Pipeline, GatewayContext | None]:
    """The stages for this config: protection when `[policy]` is on, else the plain relay.

    sanitize (our own headers out) → legacy inbound (bridge legacy armor) → route (the decision
    table's plan) → inbound (local mailboxes) → outbound (one executor per form) → fail_closed."""
    if config.policy is None or not config.policy.enabled:
        return Pipeline(RELAY_STAGES), None
    ctx = GatewayContext(config)
    return Pipeline(protection_stages(ctx)), ctx


def protection_stages(ctx: ProtectionContext) -> list[Stage]:
    """The stage list under a protection policy (tests build it on their own contexts)."""
    return [sanitize, LegacyInboundStage(ctx), RouteStage(ctx), InboundStage(ctx), OutboundStage(ctx), fail_closed]


async def fail_closed(item: WorkItem) -> WorkItem:
    """The last stage under a protection policy: a recipient no stage gave a form is refused,
    never sent as it came (the pass-through `relay` is for the plain relay only)."""
    left = [r for r in item.envelope.recipients if r not in item.handled]
    if not left:
        return item
    refusals = tuple(Refusal(r, "no protection form was chosen for this recipient") for r in left)
    return replace(item, refusals=(*item.refusals, *refusals))
