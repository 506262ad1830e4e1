"""Bridging legacy encrypted mail (Apicrypt v1, OpenPGP) to and from S/MIME.

* `sanitize`: our own headers are removed from everything that arrives, first, so that
  nothing from outside can pose as a verification or bridging verdict.
* `LegacyInboundStage` (legacy → S/MIME): a message a registered codec recognises is
  decoded with the bridge's keys; recipients who read that same legacy format get the
  original as it came (no needless re-encoding); for everyone else the decoded MIME goes on,
  marked with `X-Msgw-Bridged` (what the codec could and could not establish about the
  sender), to be signed with the gateway's organisation key and encrypted by the outbound
  stage — or delivered, flagged, to a local mailbox. A message that does not decode is a
  permanent error: its sender gets a DSN, nothing is delivered in clear.
* `legacy_copy` (S/MIME → legacy) is used by the outbound stage for recipients whose only
  capability is `legacy:<codec>`: an S/MIME message encrypted to the bridge's certificate is
  opened and verified first, the verdict travels in `X-Msgw-Bridged`, then it is encoded.

Codec calls block (key files, a gpg subprocess): they run in a thread executor.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from gateway.errors import GatewayError, PermanentError
from gateway.legacy import detect_codec
from gateway.legacy.mimeutil import neutral_attachment_names
from gateway.pipeline import Outgoing, WorkItem
from gateway.stages.context import ProtectionContext
from gateway.stages.forms import is_encrypted
from gateway.stages.headers import BRIDGE_HEADER, prepend_header, restrict_outer, strip_headers
from gateway.stages.inbound import summary


async def sanitize(item: WorkItem) -> WorkItem:
    """Remove our own headers from whatever arrived (they are only ever written by us)."""
    return replace(item, data=strip_headers(item.data))


class LegacyInboundStage:
    def __init__(self, ctx: ProtectionContext) -> None:
        self.ctx = ctx

    async def __call__(self, item: WorkItem) -> WorkItem:
        try:
            codec = detect_codec(item.data)
        except GatewayError:
            codec = None
        if codec is None:
            return item
        keys = self.ctx.legacy_keys(codec.name)
        if keys is None:
            raise PermanentError(f"message in the legacy format {codec.name}, which this gateway does not bridge",
                                 status="5.6.1")
        same = tuple(r for r in item.envelope.recipients
                     if r not in item.handled and self.ctx.recipient(r).capability == f"legacy:{codec.name}")
        identity = self.ctx.legacy_identity(codec.name)
        loop = asyncio.get_running_loop()
        decoded = await loop.run_in_executor(None, lambda: codec.decode(item.data, keys, recipient=identity))
        mime = prepend_header(strip_headers(decoded.content), BRIDGE_HEADER, f"from={decoded.provenance()}")
        for rcpt in same:
            self.ctx.audit(message_id=item.envelope.queue_id, sender=item.envelope.sender, recipient=rcpt,
                           decision=f"legacy-passthrough:{codec.name}", codec=codec.name)
        passthrough: tuple[Outgoing, ...] = ()
        if same:
            # Forwarded in the format it came in; outside, the same allow-list as every copy (its
            # Subject and attachment names cannot be moved inside an armor we do not rewrite).
            data = restrict_outer(neutral_attachment_names(item.data), neutral_subject=self.ctx.policy.neutral_subject)
            passthrough = (Outgoing(same, data, form=f"legacy:{codec.name}"),)
        return replace(item, data=mime, kind=f"bridged:{codec.name}", outgoing=(*item.outgoing, *passthrough),
                       notes=(*item.notes, f"decoded from {codec.name}"))


async def legacy_copy(ctx: ProtectionContext, item: WorkItem, codec_name: str, recipients: list[str]) -> bytes:
    """The legacy-encoded copy for `recipients` (their legacy identities come from the directory)."""
    from gateway.legacy import get

    keys = ctx.legacy_keys(codec_name)
    if keys is None:
        raise PermanentError(f"the bridge has no keys for {codec_name}", status="5.7.1")
    data = item.data
    verdict = "none; message was not S/MIME protected"
    if is_encrypted(data):
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
