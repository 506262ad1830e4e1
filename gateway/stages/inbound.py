"""Inbound unwrapping for the mailboxes this gateway serves.

For each local recipient: when the message is encrypted and we hold that mailbox's key,
decrypt it; verify every signature against the trust store (path, validity, usage, CRLs,
signer = the delivered From); deliver with our verification header. A verification header
arriving from outside is always stripped (it could be forged). Unverifiable or failing
signatures are delivered flagged or refused, as `policy.inbound_unverified` says. An encrypted
message for a mailbox whose key we do not hold is delivered as it came (its owner's client
holds the key): it is still protected end to end.

What the reader sees is one header block: header fields protected inside the signature or the
envelope replace the outer ones (which anyone could have written), and an outer field they
replace is kept only as `X-Msgw-Outer-<name>` for diagnosis. Weak algorithms (3DES, small
signer keys) are named in the verdict, and refused as unverified under
`policy.weak_algorithms = "refuse"`.

Recipients whose copies are identical (no key of their own, or the same key) share one copy:
a large message to many local mailboxes is held once, not once per mailbox.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, replace

from cryptography.hazmat.primitives import hashes

from gateway.errors import GatewayError
from gateway.pipeline import Local, Outgoing, Refusal, WorkItem
from gateway.smime.engine import unwrap_message
from gateway.smime.errors import NotForUs, WeakAlgorithm
from gateway.smime.keyapi import DecryptionKey
from gateway.smime.result import UnwrapResult, VerificationResult
from gateway.stages.context import ProtectionContext
from gateway.stages.forms import is_encrypted
from gateway.stages.headers import (
    BRIDGE_HEADER,
    VERIFICATION_HEADER,
    prepend_header,
    strip_headers,
)
from gateway.stages.view import view_of

#: Outer fields replaced by protected ones are kept under this prefix (only we write it).
OUTER_PREFIX = "X-Msgw-Outer-"


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
    weak = [f"weak={','.join(result.weak)}"] if result is not None and result.weak else []
    if result is None or not result.signatures:
        return "; ".join(["none; message is not signed", *([note] if note else []), *weak])
    sig = result.signatures[-1]  # the innermost: the author's, the one checked against From
    ids = ",".join(sig.identifiers) or "-"
    parts = [f"pass; signer=\"{_ascii(sig.signer_subject)}\"", f"identifiers={_ascii(ids)}", f"serial={sig.serial}",
             f"revocation={sig.revocation_status}", f"from-match={'yes' if sig.from_matched else 'no'}",
             f"layers={'+'.join(result.layers)}", *weak]
    return ";\r\n ".join(parts)


def outer_diagnosis(displaced: tuple[bytes, ...]) -> bytes:
    """The displaced outer fields renamed `X-Msgw-Outer-<name>` (value bytes kept as they came)."""
    return b"".join(OUTER_PREFIX.encode() + f.lstrip() for f in displaced)


def delivered_message(result: UnwrapResult) -> bytes:
    """The unwrapped message as the reader gets it: our own headers stripped again (a forged one
    can travel inside the signed or encrypted entity), the displaced outer fields renamed."""
    body = strip_headers(result.message)
    return outer_diagnosis(result.displaced) + body


def _key_id(key: DecryptionKey | None) -> bytes | None:
    """Mailboxes that decrypt with the same certificate get identical copies."""
    return key.certificate.fingerprint(hashes.SHA256()) if key is not None else None


@dataclass(frozen=True)
class _Verdict:
    """What every recipient of one group gets: a copy, or a refusal; and what is audited."""

    decision: str  # the audited decision ("" for a deferral: decided on a later attempt)
    data: bytes | None = None
    form: str = ""
    refusal: Refusal | None = None  # recipient left empty: filled per recipient
    signer: VerificationResult | None = None
    outcome: str | None = None


class InboundStage:
    """The `unwrap` step for recipients served by this gateway."""

    def __init__(self, ctx: ProtectionContext) -> None:
        self.ctx = ctx

    async def __call__(self, item: WorkItem) -> WorkItem:
        # Already sanitized of every X-Msgw-* field (gateway.stages.bridge.sanitize runs first); what
        # the legacy stage wrote since (X-Msgw-Bridged) is ours and stays.
        data = item.data
        env = item.envelope
        handled = item.handled
        local = [r for r in env.recipients if r not in handled and self._local(item, r)]
        if not local:
            return item  # (a copy of it was made here: the same fields, its cached readings lost)
        encrypted = is_encrypted(view_of(item))
        groups: dict[bytes | None, tuple[DecryptionKey | None, list[str]]] = {}
        for rcpt in local:
            key = await self.ctx.decryption_key(rcpt) if encrypted else None
            groups.setdefault(_key_id(key), (key, []))[1].append(rcpt)
        outgoing: list[Outgoing] = []
        refusals: list[Refusal] = []
        for key, rcpts in groups.values():
            verdict = await self._verdict(item, data, key, encrypted)
            for rcpt in rcpts if verdict.decision else ():
                self._audit(item, rcpt, verdict.decision, signer=verdict.signer, outcome=verdict.outcome)
            if verdict.refusal is not None:
                refusals.extend(replace(verdict.refusal, recipient=rcpt) for rcpt in rcpts)
            else:
                assert verdict.data is not None
                outgoing.append(Outgoing(tuple(rcpts), verdict.data, form=verdict.form))
        return replace(item, data=data, outgoing=(*item.outgoing, *outgoing), refusals=(*item.refusals, *refusals))

    def _local(self, item: WorkItem, rcpt: str) -> bool:
        """Planned `Local` by the route stage; without a plan (a pipeline built without a route
        stage), by its domain — the table's first row."""
        planned = item.planned.get(rcpt)
        return isinstance(planned, Local) if planned is not None else self.ctx.is_local(_domain(rcpt))

    async def _verdict(self, item: WorkItem, data: bytes, key: DecryptionKey | None, encrypted: bool) -> _Verdict:
        """Unwrap once for a group of recipients sharing `key` (or none) and decide their copy."""
        if encrypted and key is None:
            return _Verdict("local-encrypted-passthrough", prepend_header(
                data, VERIFICATION_HEADER, "none; encrypted for the mailbox owner, not opened by the gateway"),
                form="local-encrypted")
        result, error = await self._unwrap(data, [key] if key is not None else [])
        if isinstance(error, NotForUs):
            return _Verdict("local-encrypted-other-key", prepend_header(
                data, VERIFICATION_HEADER, "none; encrypted to another key, not opened by the gateway"),
                form="local-encrypted")
        if error is not None and error.temporary:
            # Deferred, not audited: the decision is taken on the next attempt.
            return _Verdict("", refusal=Refusal("", f"verification temporarily impossible: {error}",
                                                status=error.status, temporary=True))
        if error is None and result is not None and result.weak and self.ctx.policy.weak_algorithms == "refuse":
            error = WeakAlgorithm(f"weak algorithm refused by policy: {', '.join(result.weak)}")
        verified = result is not None and result.signed and error is None
        if not verified and self.ctx.policy.inbound_unverified == "refuse":
            reason = str(error) if error else "message is not signed"
            status = error.status if isinstance(error, WeakAlgorithm) else "5.7.7"
            return _Verdict("refused-unverified", refusal=Refusal("", f"signature not verified: {reason}",
                                                                  status=status), outcome=reason)
        # On any failure the original goes (still encrypted if it was): nothing is opened half-way.
        body = delivered_message(result) if (result is not None and error is None) else data
        note = "submitted by an authenticated user" if item.envelope.auth_user else None
        if item.kind.startswith("bridged:"):
            note = f"bridged from {item.kind.split(':', 1)[1]} (see {BRIDGE_HEADER})"
        copy = prepend_header(body, VERIFICATION_HEADER, summary(result, error, note=note))
        if verified and result is not None:
            self._harvest(result)
            weak = f"weak={','.join(result.weak)}" if result.weak else None
            return _Verdict("local-verified", copy, form="local-verified", signer=result.signatures[-1],
                            outcome=weak)
        return _Verdict("local-flagged", copy, form="local-flagged",
                        outcome=error.code if error else "not-signed")

    def _harvest(self, result: UnwrapResult) -> None:
        """File a verified signer's certificate under the delivered From it was matched with, and
        only when the certificate names that address (never the envelope sender, which the
        client typed, nor an identifier match)."""
        for sig in result.signatures:
            if sig.from_matched and sig.from_address and sig.identity.names_address(sig.from_address):
                self.ctx.harvest(sig.from_address, sig.certificate)

    async def _unwrap(self, data: bytes, keys: list) -> tuple[UnwrapResult | None, GatewayError | None]:
        try:
            return await unwrap_message(data, keys=keys, verifier=self.ctx.verifier), None
        except GatewayError as exc:
            return None, exc

    def _audit(self, item: WorkItem, rcpt: str, decision: str, *, signer: VerificationResult | None = None,
               outcome: str | None = None) -> None:
        self.ctx.audit(message_id=item.envelope.queue_id, sender=item.envelope.sender, recipient=rcpt,
                       decision=decision, signer_serial=signer.serial if signer else None,
                       signer_identifiers=list(signer.identifiers) if signer else [], outcome=outcome)
