"""Inbound unwrapping for the mailboxes this gateway serves.

For each local recipient: when the message is encrypted and we hold that mailbox's key,
decrypt it; verify every signature against the trust store (path, validity, usage, CRLs,
signer = From); deliver with our verification header. A verification header arriving from
outside is always stripped (it could be forged). Unverifiable or failing signatures are
delivered flagged or refused, as `policy.inbound_unverified` says. An encrypted message
for a mailbox whose key we do not hold is delivered as it came (its owner's client holds
the key): it is still protected end to end.
"""

from __future__ import annotations

import unicodedata
from dataclasses import replace

from gateway.errors import GatewayError
from gateway.pipeline import Outgoing, Refusal, WorkItem
from gateway.smime.engine import unwrap_message
from gateway.smime.errors import NotForUs
from gateway.smime.result import UnwrapResult
from gateway.stages.context import ProtectionContext
from gateway.stages.forms import is_encrypted
from gateway.stages.headers import BRIDGE_HEADER, VERIFICATION_HEADER, prepend_header, strip_headers


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


def _ascii(text: str) -> str:
    """Header-safe text: accents dropped (identifiers carry the exact facts), quotes escaped."""
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return plain.replace("\\", "").replace('"', "'").replace("\r", " ").replace("\n", " ")


def summary(result: UnwrapResult | None, error: GatewayError | None = None, *, note: str | None = None) -> str:
    """The verification header's value: facts, no content (identifiers of the signer only)."""
    if error is not None:
        return f"fail; reason={error.code}; detail=\"{_ascii(str(error))[:160]}\""
    if result is None or not result.signatures:
        return "none; message is not signed" + (f"; {note}" if note else "")
    sig = result.signatures[0]
    ids = ",".join(sig.identifiers) or "-"
    parts = [f"pass; signer=\"{_ascii(sig.signer_subject)}\"", f"identifiers={_ascii(ids)}", f"serial={sig.serial}",
             f"revocation={sig.revocation_status}", f"from-match={'yes' if sig.from_matched else 'no'}",
             f"layers={'+'.join(result.layers)}"]
    return ";\r\n ".join(parts)


class InboundStage:
    """The `unwrap` step for recipients served by this gateway."""

    def __init__(self, ctx: ProtectionContext) -> None:
        self.ctx = ctx

    async def __call__(self, item: WorkItem) -> WorkItem:
        data = item.data  # already sanitized (gateway.stages.bridge.sanitize runs first)
        env = item.envelope
        local = [r for r in env.recipients if r not in item.handled and self.ctx.is_local(_domain(r))]
        if not local:
            return replace(item, data=data)
        outgoing: list[Outgoing] = []
        refusals: list[Refusal] = []
        shared: tuple[UnwrapResult | None, GatewayError | None] | None = None
        encrypted = is_encrypted(data)
        for rcpt in local:
            key = await self.ctx.decryption_key(rcpt) if encrypted else None
            if encrypted and key is None:
                outgoing.append(Outgoing((rcpt,), prepend_header(
                    data, VERIFICATION_HEADER, "none; encrypted for the mailbox owner, not opened by the gateway"),
                    form="local-encrypted"))
                self._audit(item, rcpt, "local-encrypted-passthrough")
                continue
            if key is not None:
                result, error = await self._unwrap(data, [key])
            else:
                if shared is None:
                    shared = await self._unwrap(data, [])
                result, error = shared
            if isinstance(error, NotForUs):
                outgoing.append(Outgoing((rcpt,), prepend_header(
                    data, VERIFICATION_HEADER, "none; encrypted to another key, not opened by the gateway"),
                    form="local-encrypted"))
                self._audit(item, rcpt, "local-encrypted-other-key")
                continue
            if error is not None and error.temporary:
                refusals.append(Refusal(rcpt, f"verification temporarily impossible: {error}", status=error.status,
                                        temporary=True))
                continue
            verified = result is not None and result.signed and error is None
            if not verified and self.ctx.policy.inbound_unverified == "refuse":
                reason = str(error) if error else "message is not signed"
                refusals.append(Refusal(rcpt, f"signature not verified: {reason}", status="5.7.7"))
                self._audit(item, rcpt, "refused-unverified", outcome=reason)
                continue
            # On any failure the original goes (still encrypted if it was): nothing is opened half-way.
            # Strip again after unwrapping: a forged header can travel inside the signed/encrypted entity.
            body = strip_headers(result.message) if (result is not None and error is None) else data
            note = "submitted by an authenticated user" if env.auth_user else None
            if item.kind.startswith("bridged:"):
                note = f"bridged from {item.kind.split(':', 1)[1]} (see {BRIDGE_HEADER})"
            header = summary(result, error, note=note)
            outgoing.append(Outgoing((rcpt,), prepend_header(body, VERIFICATION_HEADER, header),
                                     form="local-verified" if verified else "local-flagged"))
            if verified and result is not None and env.sender:
                for sig in result.signatures:
                    self.ctx.harvest(env.sender, sig.certificate)
            self._audit(item, rcpt, "local-verified" if verified else "local-flagged",
                        signer=result.signatures[0] if verified and result else None,
                        outcome=None if verified else (error.code if error else "not-signed"))
        return replace(item, data=data, outgoing=(*item.outgoing, *outgoing), refusals=(*item.refusals, *refusals))

    async def _unwrap(self, data: bytes, keys: list) -> tuple[UnwrapResult | None, GatewayError | None]:
        try:
            return await unwrap_message(data, keys=keys, verifier=self.ctx.verifier), None
        except GatewayError as exc:
            return None, exc

    def _audit(self, item: WorkItem, rcpt: str, decision: str, *, signer=None, outcome: str | None = None) -> None:
        self.ctx.audit(message_id=item.envelope.queue_id, sender=item.envelope.sender, recipient=rcpt,
                       decision=decision, signer_serial=signer.serial if signer else None,
                       signer_identifiers=list(signer.identifiers) if signer else [], outcome=outcome)
