"""Outbound protection: carry out the route stage's plan for the recipients outside this
gateway — one small executor per form, each turning its recipients into `Outgoing` copies and
audit decisions. What each recipient gets was decided once, by the table of `decide.py`; nothing
here chooses a form, and there is never a silent downgrade.

* `ClientEncrypted`: the message as it came (protected end to end by someone who holds the
  keys), its outer headers cut down to the allow-list (nothing can be moved inside an envelope
  we cannot open), the envelope named `smime.p7m`.
* `AsIs("dsn")`: our own delivery reports (identifying headers only, no Subject, no body).
* `Legacy(codec)`: re-encoded by the bridge (`bridge.legacy_copy`); a copy the bridge cannot
  make refuses those recipients with the reason.
* `Smime`: one envelope for every S/MIME recipient (+ the sender's own certificate, so the sent
  copy stays readable), signed first (`gateway.smime.protect.protect_smime`).
* `TrustSpaceTls`: a signed copy (`gateway.smime.protect.sign_protected`) that delivery may only
  send over a TLS-required (mutual TLS) route: `require_tls` comes from the form, always.
* `Refusal`: recorded and audited.

The signing key is chosen once per message, from the authenticated identity
(`Envelope.auth_user`) only — never from an address the client typed; bridged legacy mail is
signed by the bridge key, under the bridge's own From (`relabel_bridged`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography import x509

from gateway.errors import GatewayError
from gateway.pipeline import (
    AsIs,
    ClientEncrypted,
    Decision,
    Form,
    Legacy,
    Outgoing,
    Refusal,
    Smime,
    TrustSpaceTls,
    WorkItem,
)
from gateway.rawmime import Raw, raw_data
from gateway.smime.keyapi import SigningKey
from gateway.smime.protect import protect_smime, sign_protected
from gateway.stages.bridge import bridge_address, legacy_copy, relabel_bridged
from gateway.stages.context import ProtectionContext
from gateway.stages.headers import restrict_outer
from gateway.stages.route import RouteStage
from gateway.stages.view import view_of


@dataclass
class Copies:
    """What executors made: copies to send and recipients refused."""

    outgoing: list[Outgoing] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)

    def add(self, other: Copies) -> None:
        self.outgoing.extend(other.outgoing)
        self.refusals.extend(other.refusals)


def copy_for(form: Form, recipients: Sequence[str], data: bytes) -> Outgoing:
    """The copy of `form`: its label and its transport requirement come from the form itself."""
    return Outgoing(tuple(recipients), data, form=form.name, require_tls=form.require_tls)


def audit(ctx: ProtectionContext, item: WorkItem, rcpts: Sequence[str], decision: str, *,
          key: SigningKey | None = None, enc_serials: list[str] | None = None, reason: str | None = None) -> None:
    """One audit record per recipient: the decision and its identifiers (serials, codec), no content."""
    signer = format(key.certificate.serial_number, "x") if key is not None else None  # (once, not per recipient)
    codec = item.kind.split(":", 1)[1] if item.kind.startswith("bridged:") else None
    for rcpt in rcpts:
        ctx.audit(message_id=item.envelope.queue_id, sender=item.envelope.sender, recipient=rcpt, decision=decision,
                  signer_serial=signer, encryption_serials=enc_serials or [], reason=reason, codec=codec)


class Signing:
    """The signature of one message, resolved once and only when a form signs: the key of the
    authenticated identity (or the bridge's, for bridged legacy mail) and the bytes it signs."""

    def __init__(self, ctx: ProtectionContext, item: WorkItem) -> None:
        self.ctx = ctx
        self.item = item
        self._resolved: tuple[SigningKey | None, Raw] | None = None

    async def resolve(self) -> tuple[SigningKey | None, Raw]:
        """(key, what it signs): the item's own view (its splits already made), or the bytes
        relabelled for the bridge."""
        if self._resolved is None:
            item = self.item
            bridged = item.kind.startswith("bridged:")
            key = await (self.ctx.bridge_signing_key() if bridged else self.ctx.signing_key(item.envelope.auth_user))
            source: Raw = view_of(item)
            if bridged and key is not None:
                # Signed by the bridge, so sent under the bridge's own address (never the legacy author's).
                source = await asyncio.to_thread(relabel_bridged, item.data, bridge_address(key))
            self._resolved = (key, source)
        return self._resolved


class Executor:
    """Turns the recipients planned with one kind of form into copies (and audit decisions)."""

    def __init__(self, ctx: ProtectionContext) -> None:
        self.ctx = ctx

    def audit(self, item: WorkItem, rcpts: Sequence[str], decision: str, **details: Any) -> None:
        audit(self.ctx, item, rcpts, decision, **details)

    async def __call__(self, item: WorkItem, planned: list[tuple[str, Any]], signing: Signing) -> Copies:
        raise NotImplementedError


class ClientEncryptedCopy(Executor):
    async def __call__(self, item: WorkItem, planned: list[tuple[str, Any]], signing: Signing) -> Copies:
        rcpts = [r for r, _ in planned]
        data = restrict_outer(view_of(item), neutral_subject=self.ctx.policy.neutral_subject, envelope_name="smime.p7m")
        self.audit(item, rcpts, ClientEncrypted.name)
        return Copies([copy_for(ClientEncrypted(), rcpts, data)])


class AsIsCopy(Executor):
    async def __call__(self, item: WorkItem, planned: list[tuple[str, Any]], signing: Signing) -> Copies:
        by_label: dict[AsIs, list[str]] = {}
        for rcpt, form in planned:
            by_label.setdefault(form, []).append(rcpt)
        return Copies([copy_for(form, rcpts, item.data) for form, rcpts in by_label.items()])


class LegacyCopy(Executor):
    async def __call__(self, item: WorkItem, planned: list[tuple[str, Any]], signing: Signing) -> Copies:
        by_codec: dict[str, list[str]] = {}
        for rcpt, form in planned:
            by_codec.setdefault(form.codec, []).append(rcpt)
        out = Copies()
        for codec, rcpts in by_codec.items():
            try:
                data = await legacy_copy(self.ctx, item, codec, rcpts)
            except GatewayError as exc:
                out.refusals.extend(Refusal(r, f"cannot bridge to {codec}: {exc}", status=exc.status if
                                            exc.temporary else "5.7.1", temporary=exc.temporary) for r in rcpts)
                continue
            out.outgoing.append(copy_for(Legacy(codec), rcpts, data))
            self.audit(item, rcpts, Legacy(codec).name,
                       reason=f"no S/MIME certificate; directory capability legacy:{codec}")
        return out


class SmimeCopy(Executor):
    async def __call__(self, item: WorkItem, planned: list[tuple[str, Any]], signing: Signing) -> Copies:
        for rcpt, form in planned:
            if form.over_legacy:
                self.audit(item, [rcpt], "smime-not-legacy",
                           reason="recipient reads S/MIME: never downgraded to its legacy format")
        key, source = await signing.resolve()
        certs = [c for _, form in planned for c in form.certificates]
        data = await protect_smime(source, key, certs, neutral_subject=self.ctx.policy.neutral_subject,
                                   sender_copy=await self._sender_copy(item))
        for rcpt, form in planned:
            self.audit(item, [rcpt], Smime.name, key=key,
                       enc_serials=[format(c.serial_number, "x") for c in form.certificates])
        return Copies([copy_for(planned[0][1], [r for r, _ in planned], data)])

    async def _sender_copy(self, item: WorkItem) -> x509.Certificate | None:
        """The sender's own encryption certificate, when the policy keeps a readable sent copy."""
        sender = item.envelope.sender
        if not (self.ctx.policy.sender_copy and sender):
            return None
        try:
            own = await self.ctx.encryption_certificates(sender)
        except GatewayError:
            return None  # no certificate of ours to encrypt a copy to: not a reason to refuse
        return own[0] if own else None


class TrustSpaceTlsCopy(Executor):
    async def __call__(self, item: WorkItem, planned: list[tuple[str, Any]], signing: Signing) -> Copies:
        rcpts = [r for r, _ in planned]
        key, source = await signing.resolve()
        data = await sign_protected(source, key) if key is not None else raw_data(source)
        self.audit(item, rcpts, TrustSpaceTls.name, key=key)
        return Copies([copy_for(TrustSpaceTls(), rcpts, data)])


ExecutorFactory = Callable[[ProtectionContext], Callable[[WorkItem, list[tuple[str, Any]], Signing], Awaitable[Copies]]]

#: One executor per remote form, run in this order (the order of the copies and of the audit).
#: `Local` is the inbound stage's; a `Refusal` is recorded by the stage itself.
EXECUTORS: tuple[tuple[type, ExecutorFactory], ...] = (
    (ClientEncrypted, ClientEncryptedCopy),
    (AsIs, AsIsCopy),
    (Legacy, LegacyCopy),
    (Smime, SmimeCopy),
    (TrustSpaceTls, TrustSpaceTlsCopy),
)
#: The forms that sign: the key is resolved before any copy is made (a key that is unavailable
#: defers the message before the bridge does any work).
SIGNED: tuple[type, ...] = (Smime, TrustSpaceTls)
#: The kinds of decision this stage acts on (an executor's form, or a refusal it records).
_ACTED_ON: frozenset[type] = frozenset({*(form for form, _ in EXECUTORS), Refusal})


class OutboundStage:
    """The `wrap` step for recipients that are not served by this gateway: executes the plan.

    Planned by the route stage that runs before it; recipients it did not plan (a pipeline built
    without a route stage) are planned here first, by the same table."""

    def __init__(self, ctx: ProtectionContext) -> None:
        self.ctx = ctx
        self.route = RouteStage(ctx)
        self.executors = tuple((form, factory(ctx)) for form, factory in EXECUTORS)

    async def __call__(self, item: WorkItem) -> WorkItem:
        item = await self.route(item)
        groups = self._groups(item)
        if not groups:
            return item
        signing = Signing(self.ctx, item)
        if any(form in groups for form in SIGNED):
            await signing.resolve()
        made = Copies()
        for form, execute in self.executors:
            if form in groups:
                made.add(await execute(item, groups[form], signing))
        refusals = [d for _, d in groups.get(Refusal, []) if isinstance(d, Refusal)] + made.refusals
        for refusal in refusals:
            audit(self.ctx, item, [refusal.recipient], "refused", reason=refusal.reason)
        return replace(item, outgoing=(*item.outgoing, *made.outgoing), refusals=(*item.refusals, *refusals))

    @staticmethod
    def _groups(item: WorkItem) -> dict[type, list[tuple[str, Decision]]]:
        """The plan of the recipients still without a copy or a refusal, by kind of form."""
        groups: dict[type, list[tuple[str, Decision]]] = {}
        for rcpt, decision in item.plan:
            if rcpt not in item.handled and type(decision) in _ACTED_ON:
                groups.setdefault(type(decision), []).append((rcpt, decision))
        return groups
