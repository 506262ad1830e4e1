"""Bridging legacy encrypted mail (Apicrypt v1, OpenPGP) to and from S/MIME.

* `sanitize`: our own headers are removed from everything that arrives, first, so that
  nothing from outside can pose as a verification or bridging verdict.
* `LegacyInboundStage` (legacy → S/MIME), only on the paths configured for legacy traffic
  (elsewhere armor is ordinary content): a message a registered codec recognises is
  decoded with the bridge's keys; recipients who read that same legacy format get the
  original as it came (no needless re-encoding; outer headers cut to the allow-list); for
  everyone else the decoded MIME goes on, marked inside with `X-Msgw-Bridged` (what the codec
  could and could not establish about the sender) and a visible bilingual banner, to be signed
  with the gateway's organisation key and encrypted by the outbound stage — or delivered,
  flagged, to a local mailbox. A message that does not decode is a permanent error: its sender
  gets a DSN, nothing is delivered in clear.
* `relabel_bridged`: what the bridge key signs goes under the bridge's own address, never the
  legacy author's (a signature must not re-label its sender, issue 11 item 5): From is the
  address of the bridge key's certificate with the author's name in the display name, Reply-To
  the author, the original From kept as `X-Original-From` — what mailing lists do for DMARC.
* `legacy_copy` (S/MIME → legacy) is used by the outbound stage for recipients whose only
  capability is `legacy:<codec>`: an S/MIME message encrypted to the bridge's certificate is
  opened and verified first, the verdict travels in `X-Msgw-Bridged` inside the encoding, then
  it is encoded; outside, the allow-list of `headers.allowed_outer_fields`.

Codec calls block (key files, a gpg subprocess): they run in a thread executor.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from email.utils import getaddresses
from typing import Any

from gateway.directory.capability import Capability
from gateway.errors import GatewayError, MalformedInput, PermanentError
from gateway.legacy import LegacyCodec, detect_codec
from gateway.legacy.mimeutil import neutral_attachment_names
from gateway.pipeline import Outgoing, WorkItem
from gateway.senders import header_fields
from gateway.smime.headers import address_field, addresses, join_raw, name_of, split_raw
from gateway.smime.identity import read_identity
from gateway.smime.keyapi import SigningKey
from gateway.smime.keystore import KeyUnavailable
from gateway.stages.banner import add_banner, banner_lines
from gateway.stages.context import ProtectionContext, capability_of
from gateway.stages.forms import is_encrypted
from gateway.stages.headers import BRIDGE_HEADER, prepend_header, restrict_outer, strip_headers
from gateway.stages.inbound import summary
from gateway.stages.view import view_of

#: After the legacy author's name in the From of a bridged copy (French and English, like the banner).
VIA = "via la passerelle / via gateway"
#: The legacy author's own fields, kept inside under these names (the bridge's From replaces them).
_KEPT_AS = {"from": "X-Original-From", "sender": "X-Original-Sender"}


async def sanitize(item: WorkItem) -> WorkItem:
    """Remove our own headers from whatever arrived (they are only ever written by us). The item
    itself when there is none (nearly always): its bytes and their view go on unchanged."""
    data = strip_headers(view_of(item))
    return item if data is item.data else replace(item, data=data)


#: Up to this size the legacy detection (a stdlib parse of the message) runs on the event loop.
DETECT_INLINE = 1 << 20


class LegacyInboundStage:
    """Legacy → S/MIME, on the paths configured for legacy traffic only.

    Anyone holding Apicrypt key files (every correspondent of the bridge) can write armor in any
    sender's name, and the bridge signs what it rebuilds with the organisation's key: so armor is
    decoded only on the listeners of `[legacy] listeners` or from an envelope sender the directory
    knows as a `legacy:<codec>` correspondent (`ctx.bridges_from`). Anywhere else it is ordinary
    content: not decoded, protected like any message (signed with the submitter's own key when it
    has one, never the bridge's); the decision is audited. What is bridged carries its provenance
    inside what gets signed: the `X-Msgw-Bridged` header (a protected header once wrapped) and a
    French/English banner at the top of the first text part."""

    def __init__(self, ctx: ProtectionContext) -> None:
        self.ctx = ctx

    async def __call__(self, item: WorkItem) -> WorkItem:
        view = view_of(item)
        try:
            # the item's one parse, shared with the later stages; a large message's in a worker
            # thread (the stdlib parse takes ~16 ms a MiB: 50 MB held the event loop 0.8 s)
            codec = (detect_codec(view) if len(view.data) <= DETECT_INLINE
                     else await asyncio.to_thread(detect_codec, view))
        except GatewayError:
            codec = None
        if codec is None:
            return item
        env = item.envelope
        if not self.ctx.bridges_from(env.listener, env.sender):
            reason = (f"{codec.name} armor on listener {env.listener or '-'} from a sender not known as a legacy "
                      "correspondent: not a legacy path, carried as ordinary content (not decoded, never signed "
                      "by the bridge key)")
            for rcpt in env.recipients:
                if rcpt not in item.handled:
                    self.ctx.audit(message_id=env.queue_id, sender=env.sender, recipient=rcpt,
                                   decision="legacy-not-bridged", codec=codec.name, reason=reason)
            return item.with_note(f"{codec.name} armor not bridged on this path")
        keys = self.ctx.legacy_keys(codec.name)
        if keys is None:
            raise PermanentError(f"message in the legacy format {codec.name}, which this gateway does not bridge",
                                 status="5.6.1")
        reads_it = Capability.legacy(codec.name)
        same = tuple(r for r in env.recipients if r not in item.handled and capability_of(self.ctx, r) == reads_it)
        identity = self.ctx.legacy_identity(codec.name)
        loop = asyncio.get_running_loop()
        mime = await loop.run_in_executor(None, _bridged, codec, item.data, keys, identity)
        # Qualified by its envelope sender only (not a legacy listener): the armor must say the same
        # author, or a known correspondent's address would carry anyone's content through the bridge.
        if not self.ctx.bridges_from(env.listener, "") and _author(mime) != env.sender.lower():
            for rcpt in env.recipients:
                if rcpt not in item.handled:
                    self.ctx.audit(message_id=env.queue_id, sender=env.sender, recipient=rcpt,
                                   decision="legacy-not-bridged", codec=codec.name,
                                   reason="the armor's From is not the legacy correspondent that sent it")
            return item.with_note(f"{codec.name} armor not bridged: author and envelope sender differ")
        for rcpt in same:
            self.ctx.audit(message_id=env.queue_id, sender=env.sender, recipient=rcpt,
                           decision=f"legacy-passthrough:{codec.name}", codec=codec.name)
        passthrough: tuple[Outgoing, ...] = ()
        if same:
            # Forwarded in the format it came in; outside, the same allow-list as every copy (its
            # Subject and attachment names cannot be moved inside an armor we do not rewrite).
            data = restrict_outer(neutral_attachment_names(item.data), neutral_subject=self.ctx.policy.neutral_subject,
                                  original=view_of(item))
            passthrough = (Outgoing(same, data, form=f"legacy:{codec.name}"),)
        return replace(item, data=mime, kind=f"bridged:{codec.name}", outgoing=(*item.outgoing, *passthrough),
                       notes=(*item.notes, f"decoded from {codec.name}"))


def _author(message: bytes) -> str | None:
    """The single From address of the decoded message, or None (none, several, unreadable)."""
    try:
        values = [v for name, v in header_fields(message) if name == "from"]
    except MalformedInput:
        return None
    addresses = [a.strip().lower() for _, a in getaddresses(values) if a.strip()]
    return addresses[0] if len(values) == 1 and len(addresses) == 1 else None


def _bridged(codec: LegacyCodec, data: bytes, keys: Any, identity: str) -> bytes:
    """Decode, then mark: the provenance banner in the text and X-Msgw-Bridged on top (both end up
    inside the signed entity). Blocking and CPU-bound: run in an executor."""
    decoded = codec.decode(data, keys, recipient=identity)
    marked = add_banner(strip_headers(decoded.content), banner_lines(codec.name, decoded.sender_authenticated))
    return prepend_header(marked, BRIDGE_HEADER, f"from={decoded.provenance()}")


def bridge_address(key: SigningKey) -> str:
    """The address the bridge signs under: the first its certificate names. A certificate naming
    none is a local configuration fault (the message waits, it is not bounced)."""
    emails = read_identity(key.certificate).emails
    if not emails:
        raise KeyUnavailable("the bridge's signing certificate names no e-mail address: bridged mail cannot be "
                             "signed under the bridge's own From")
    return emails[0]


def relabel_bridged(message: bytes, bridge: str) -> bytes:
    """The bridged message as the bridge key signs it (pure): `From: "<author> (via ...)" <bridge>`,
    `Reply-To:` the author's address (then any Reply-To the legacy message had), the original
    From/Sender kept as X-Original-From/-Sender; no Sender (From is the signer now). Every
    other field is left as it is; the outbound stage then protects them all inside."""
    fields, body = split_raw(message)
    authors = [pair for f in fields if name_of(f) == "from" for pair in addresses(f)]
    replies = authors + [pair for f in fields if name_of(f) == "reply-to" for pair in addresses(f)
                         if pair[1].lower() not in {a.lower() for _, a in authors}]
    # The author's name, else its address (" at ": a display name must not look like another address).
    shown = (authors[0][0] or authors[0][1].replace("@", " at ")) if authors else "expéditeur inconnu / unknown sender"
    kept = [_KEPT_AS[name_of(f)].encode() + b":" + f.partition(b":")[2] if name_of(f) in _KEPT_AS else f
            for f in fields if name_of(f) not in {"reply-to", "x-original-from", "x-original-sender"}]
    head = [address_field("From", [(f"{shown} ({VIA})", bridge)]), address_field("Reply-To", replies)]
    return join_raw([f for f in head if f is not None] + kept, body)


async def legacy_copy(ctx: ProtectionContext, item: WorkItem, codec_name: str, recipients: list[str]) -> bytes:
    """The legacy-encoded copy for `recipients` (their legacy identities come from the directory)."""
    from gateway.legacy import get

    keys = ctx.legacy_keys(codec_name)
    if keys is None:
        raise PermanentError(f"the bridge has no keys for {codec_name}", status="5.7.1")
    data = item.data
    verdict = "none; message was not S/MIME protected"
    if is_encrypted(view_of(item)):
        result = await ctx.bridge_unwrap(data)   # raises a typed refusal when it cannot be opened/verified
        data = strip_headers(result.message)
        verdict = " ".join(summary(result).split())
    codec = get(codec_name)
    ids = [ctx.legacy_id(r, codec_name) for r in recipients]
    identity = ctx.legacy_identity(codec_name)
    # The verdict is a statement about the content: it travels inside, with the real headers.
    data = prepend_header(data, BRIDGE_HEADER, f"to={codec_name}; smime-verification={verdict}"[:900])
    loop = asyncio.get_running_loop()
    encoded = await loop.run_in_executor(None, lambda: codec.encode(data, identity, ids, keys, protect_headers=True))
    return restrict_outer(encoded, neutral_subject=ctx.policy.neutral_subject, original=data)
