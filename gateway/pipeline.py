"""The ordered processing stages between the spool and delivery (see DESIGN.md), and the
values they pass along.

A stage is an async callable `WorkItem -> WorkItem`: it returns a new item (items are
immutable) or raises a `GatewayError` whose `temporary` flag decides between deferral and
bounce. Stages do no network or disk I/O themselves; the objects they need (keys, directory,
trust store) are given to them when they are built. Async because signing on a smart card
or an HSM is awaited, never blocking the event loop.

Without a `[policy]` table the gateway is a plain durable relay: `RELAY_STAGES`, one
pass-through. Under a policy the stage list is built by `gateway.stages.build.build_pipeline`:
sanitize → legacy inbound → route (the decision table puts a *plan* on the item: one `Form`
or `Refusal` per recipient) → inbound (local mailboxes) → outbound (one executor per form)
→ fail_closed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import ClassVar

from cryptography import x509


@dataclass(frozen=True)
class Envelope:
    queue_id: str
    sender: str
    recipients: tuple[str, ...]
    auth_user: str | None = None
    listener: str = ""


@dataclass(frozen=True)
class Outgoing:
    """One copy to send: the recipients it is for, its bytes, and the protection applied.

    `require_tls`: this copy relies on transport security (trust-space TLS); delivery must
    refuse to send it over a destination whose TLS policy is not `required`."""

    recipients: tuple[str, ...]
    data: bytes
    form: str = "as-is"
    require_tls: bool = False


@dataclass(frozen=True)
class Refusal:
    """A recipient that no form can protect (or that policy refuses): bounced, never sent."""

    recipient: str
    reason: str
    status: str = "5.7.1"
    temporary: bool = False


# -- forms: how one recipient's copy is protected (what `gateway.stages.decide` chooses) ----

@dataclass(frozen=True)
class Smime:
    """Signed with the authenticated identity's key (when it has one), encrypted to these
    validated certificates of the recipient. `over_legacy`: the recipient also reads a legacy
    format, which S/MIME is preferred to (audited `smime-not-legacy`)."""

    certificates: tuple[x509.Certificate, ...]
    over_legacy: bool = False
    name: ClassVar[str] = "smime"
    require_tls: ClassVar[bool] = False


@dataclass(frozen=True)
class TrustSpaceTls:
    """Signed, not encrypted: protected by mutual TLS inside the MSSanté trust space. Always
    `require_tls` (a class constant, not a choice): delivery refuses any route without it."""

    name: ClassVar[str] = "trust-space-tls"
    require_tls: ClassVar[bool] = True


@dataclass(frozen=True)
class Legacy:
    """Re-encoded by the bridge in the recipient's legacy format."""

    codec: str
    require_tls: ClassVar[bool] = False

    @property
    def name(self) -> str:
        return f"legacy:{self.codec}"


@dataclass(frozen=True)
class ClientEncrypted:
    """Already encrypted by its sender's client: passed on, outer headers cut to the allow-list."""

    name: ClassVar[str] = "client-encrypted"
    require_tls: ClassVar[bool] = False


@dataclass(frozen=True)
class Local:
    """A mailbox of this gateway: opened and verified by the inbound stage."""

    name: ClassVar[str] = "local"
    require_tls: ClassVar[bool] = False


@dataclass(frozen=True)
class AsIs:
    """Sent as it came (our own delivery reports: `label` "dsn")."""

    label: str = "as-is"
    require_tls: ClassVar[bool] = False

    @property
    def name(self) -> str:
        return self.label


Form = Smime | TrustSpaceTls | Legacy | ClientEncrypted | Local | AsIs
#: What the decision table answers for one recipient.
Decision = Form | Refusal


@dataclass(frozen=True)
class PipelineResult:
    outgoing: tuple[Outgoing, ...]
    refusals: tuple[Refusal, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class WorkItem:
    envelope: Envelope
    data: bytes
    kind: str = "mime"
    notes: tuple[str, ...] = ()
    outgoing: tuple[Outgoing, ...] = field(default=())
    refusals: tuple[Refusal, ...] = field(default=())
    #: The route stage's decision per recipient, in envelope order (executed by the later stages).
    plan: tuple[tuple[str, Decision], ...] = field(default=())
    #: Readings of `data` computed once and shared by this item and every item a stage derives
    #: from it (`replace` passes the same dict on): the parsed view of `gateway.stages.view`, so
    #: the message is parsed once, not once per stage. An entry says which bytes it was read from
    #: and is checked by identity before use: a stage that replaces `data` never reads a stale one.
    derived: dict[str, object] = field(default_factory=dict, compare=False, repr=False)

    @cached_property
    def handled(self) -> frozenset[str]:
        """Recipients that already have a copy or a refusal. Computed once per item (items are
        immutable): stages test every recipient against it, and recomputing it per test made a
        10,000-recipient message quadratic on the event loop."""
        done = {r for o in self.outgoing for r in o.recipients} | {r.recipient for r in self.refusals}
        return frozenset(done)

    @cached_property
    def planned(self) -> dict[str, Decision]:
        """The plan by recipient (computed once: items are immutable)."""
        return dict(self.plan)

    def with_note(self, note: str) -> WorkItem:
        return replace(self, notes=(*self.notes, note))


Stage = Callable[[WorkItem], Awaitable[WorkItem]]


async def relay(item: WorkItem) -> WorkItem:
    """The plain relay (no `[policy]`): one copy, unchanged, for the recipients no stage gave a
    copy or a refusal."""
    left = tuple(r for r in item.envelope.recipients if r not in item.handled)
    if not left:
        return item
    return replace(item, outgoing=(*item.outgoing, Outgoing(left, item.data)))


RELAY_STAGES: tuple[Stage, ...] = (relay,)


class Pipeline:
    """Runs the stages in order and returns what delivery must send."""

    def __init__(self, stages: Sequence[Stage] = RELAY_STAGES) -> None:
        self.stages = tuple(stages)

    async def run(self, envelope: Envelope, data: bytes) -> PipelineResult:
        item = WorkItem(envelope=envelope, data=data)
        for stage in self.stages:
            item = await stage(item)
        return PipelineResult(outgoing=item.outgoing, refusals=item.refusals, notes=item.notes)
