"""Outbound protection: for every recipient outside this gateway, choose a form that protects
the message, or refuse that recipient with the reason. Never a silent downgrade.

Per recipient, in order (the destination policy comes from `[policy]`):
1. `refuse` for the domain → refused (5.7.1).
2. encryption certificates found and valid → S/MIME: signed with the sender's key when one is
   configured, then encrypted to all such recipients in one envelope (+ the sender's own
   certificate, so the sent copy stays readable). Outside the envelope only the allow-list of
   `headers.allowed_outer_fields` (neutral Subject, fresh Message-ID, no X-*...); every
   original header is protected inside.
3. the domain allows `trust-space-tls` and is on the authorised MSSanté list → signed copy
   (every header protected inside the signature) that delivery may only send over a
   TLS-required (mutual TLS) route.
4. otherwise → refused, with what every certificate source said.
A message that the client already encrypted is passed on as it is (it is protected end to
end by someone who holds the keys), its outer headers cut down to the same allow-list (nothing
can be moved inside an envelope we cannot open); policy `refuse` still applies. The
trust-space-TLS copy is signed, not encrypted, and travels only over mutual TLS: its headers
are left as they are outside, and copied inside what is signed.
Bridged legacy mail is signed by the bridge key, under the bridge's own From (`relabel_bridged`).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from cryptography import x509

from gateway.errors import GatewayError
from gateway.pipeline import Outgoing, Refusal, WorkItem
from gateway.smime.cms_sign import sign_content
from gateway.smime.engine import encrypt_entity, encrypt_message
from gateway.smime.keyapi import SigningKey
from gateway.smime.mime import content_entity, multipart_signed
from gateway.smime.trust import check_signing_usage
from gateway.stages.bridge import bridge_address, legacy_copy, relabel_bridged
from gateway.stages.context import ProtectionContext
from gateway.stages.forms import is_encrypted
from gateway.stages.headers import (
    NEVER_COPIED,
    OUR_PREFIX,
    allowed_outer_fields,
    name_of,
    protected_entity,
    restrict_outer,
)


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


async def protect_smime(message: bytes, key: SigningKey | None, certs: list[x509.Certificate], *,
                        neutral_subject: str, sender_copy: x509.Certificate | None) -> bytes:
    """Sign (when a key is given) then encrypt, with header protection: the outer allow-list
    outside, every original header inside.

    The MIME and CMS work is CPU-bound and grows with the message: it runs in a worker thread
    so that a 50 MB result does not stall every SMTP session of the event loop."""
    def prepare() -> tuple[tuple[bytes, ...], bytes]:
        _, entity = content_entity(message)
        outer = tuple(allowed_outer_fields(message, neutral_subject=neutral_subject))
        return outer, protected_entity(message, entity)

    outer, entity = await asyncio.to_thread(prepare)
    if key is not None:
        der = await sign_content(entity, key, detached=True)
        inner = multipart_signed(outer, entity, der, "sha-256")
        return await asyncio.to_thread(encrypt_message, inner, certs, sender_copy=sender_copy)
    return await asyncio.to_thread(encrypt_entity, outer, entity, certs, sender_copy=sender_copy)


async def sign_protected(message: bytes, key: SigningKey) -> bytes:
    """The trust-space-TLS copy: signed, not encrypted, every original header copied inside the
    signed entity (protected headers, as `protect_smime` does) so that what the reader is shown —
    From, Subject, a bridge's provenance — is what the signature covers. Outside, the message's
    own fields as they are (the copy travels in clear over mutual TLS), except our `X-Msgw-*`
    statements (inside only: nobody signed the outer ones) and Bcc (never copied)."""
    check_signing_usage(key.certificate)

    def prepare() -> tuple[tuple[bytes, ...], bytes]:
        outer, entity = content_entity(message)
        shown = tuple(f for f in outer if not name_of(f).startswith(OUR_PREFIX) and name_of(f) not in NEVER_COPIED)
        return shown, protected_entity(message, entity)

    outer, entity = await asyncio.to_thread(prepare)
    der = await sign_content(entity, key, detached=True)
    return await asyncio.to_thread(multipart_signed, outer, entity, der, "sha-256")


class OutboundStage:
    """The `wrap` step for recipients that are not served by this gateway."""

    def __init__(self, ctx: ProtectionContext) -> None:
        self.ctx = ctx

    async def __call__(self, item: WorkItem) -> WorkItem:
        env = item.envelope
        remote = [r for r in env.recipients if r not in item.handled and not self.ctx.is_local(_domain(r))]
        if not remote:
            return item
        if env.listener == "dsn" and not env.sender:
            # Our own delivery reports carry identifying headers only (no Subject, no body):
            # they go to the sender as they are, or a sender we cannot protect would never learn
            # that its message failed.
            out = Outgoing(tuple(remote), item.data, form="dsn")
            return replace(item, outgoing=(*item.outgoing, out))
        policy = self.ctx.policy
        refusals: list[Refusal] = []
        allowed = []
        for rcpt in remote:
            if policy.for_domain(_domain(rcpt)) == "refuse":
                refusals.append(Refusal(rcpt, f"destination {_domain(rcpt)} is refused by policy"))
            else:
                allowed.append(rcpt)
        outgoing: list[Outgoing] = []
        if allowed and is_encrypted(item.data):
            # Encrypted by the sender: forwarded as it is, except to legacy-only readers, for whom
            # the bridge opens it (it must be encrypted to the bridge's certificate) and re-encodes.
            bridgeable = [r for r in allowed if self._legacy_only(r)]
            passing = [r for r in allowed if r not in bridgeable]
            if passing:
                data = restrict_outer(item.data, neutral_subject=policy.neutral_subject, envelope_name="smime.p7m")
                outgoing.append(Outgoing(tuple(passing), data, form="client-encrypted"))
                self._audit(item, passing, "client-encrypted")
            allowed = bridgeable
        smime: dict[str, list[x509.Certificate]] = {}
        tls_only: list[str] = []
        legacy: dict[str, list[str]] = {}
        for rcpt in allowed:
            capability = self.ctx.recipient(rcpt).capability or ""
            try:
                smime[rcpt] = await self.ctx.encryption_certificates(rcpt)
                if capability.startswith("legacy:"):
                    self._audit(item, [rcpt], "smime-not-legacy",
                                reason="recipient reads S/MIME: never downgraded to its legacy format")
                continue
            except GatewayError as exc:
                failure = exc
            domain = _domain(rcpt)
            if capability.startswith("legacy:") and self.ctx.legacy_keys(capability[7:]) is not None:
                legacy.setdefault(capability[7:], []).append(rcpt)
            elif policy.for_domain(domain) == "trust-space-tls" and self.ctx.authorised_domain(domain):
                tls_only.append(rcpt)
            else:
                refusals.append(Refusal(rcpt, f"no protection possible for {rcpt}: {failure}",
                                        status=failure.status if failure.temporary else "5.7.1",
                                        temporary=failure.temporary))
        key = None
        source = item.data
        if smime or tls_only:
            bridged = item.kind.startswith("bridged:")
            key = await (self.ctx.bridge_signing_key() if bridged else self.ctx.signing_key(env.auth_user))
            if bridged and key is not None:
                # Signed by the bridge, so sent under the bridge's own address (never the legacy author's).
                source = await asyncio.to_thread(relabel_bridged, item.data, bridge_address(key))
        for codec_name, rcpts in legacy.items():
            try:
                data = await legacy_copy(self.ctx, item, codec_name, rcpts)
            except GatewayError as exc:
                refusals.extend(Refusal(r, f"cannot bridge to {codec_name}: {exc}", status=exc.status if
                                        exc.temporary else "5.7.1", temporary=exc.temporary) for r in rcpts)
                continue
            outgoing.append(Outgoing(tuple(rcpts), data, form=f"legacy:{codec_name}"))
            self._audit(item, rcpts, f"legacy:{codec_name}", reason="no S/MIME certificate; directory capability "
                        f"legacy:{codec_name}")
        if smime:
            certs = [c for cs in smime.values() for c in cs]
            sender_copy = None
            if policy.sender_copy and env.sender:
                try:
                    own = await self.ctx.encryption_certificates(env.sender)
                    sender_copy = own[0] if own else None
                except GatewayError:
                    sender_copy = None  # no certificate of ours to encrypt a copy to: not a reason to refuse
            data = await protect_smime(source, key, certs, neutral_subject=policy.neutral_subject,
                                       sender_copy=sender_copy)
            outgoing.append(Outgoing(tuple(smime), data, form="smime"))
            for rcpt, cs in smime.items():
                self._audit(item, [rcpt], "smime", key=key, enc_serials=[format(c.serial_number, "x") for c in cs])
        if tls_only:
            data = await sign_protected(source, key) if key is not None else source
            outgoing.append(Outgoing(tuple(tls_only), data, form="trust-space-tls", require_tls=True))
            self._audit(item, tls_only, "trust-space-tls", key=key)
        for refusal in refusals:
            self._audit(item, [refusal.recipient], "refused", reason=refusal.reason)
        return replace(item, outgoing=(*item.outgoing, *outgoing), refusals=(*item.refusals, *refusals))

    def _legacy_only(self, rcpt: str) -> bool:
        capability = self.ctx.recipient(rcpt).capability or ""
        return capability.startswith("legacy:") and self.ctx.legacy_keys(capability[7:]) is not None

    def _audit(self, item: WorkItem, rcpts: list[str], decision: str, *, key: SigningKey | None = None,
               enc_serials: list[str] | None = None, reason: str | None = None) -> None:
        for rcpt in rcpts:
            self.ctx.audit(message_id=item.envelope.queue_id, sender=item.envelope.sender, recipient=rcpt,
                           decision=decision,
                           signer_serial=format(key.certificate.serial_number, "x") if key is not None else None,
                           encryption_serials=enc_serials or [], reason=reason,
                           codec=item.kind.split(":", 1)[1] if item.kind.startswith("bridged:") else None)
