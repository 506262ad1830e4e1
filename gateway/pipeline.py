"""The ordered processing stages between the spool and delivery (see DESIGN.md).

A stage is an async callable `WorkItem -> WorkItem`: it returns a new item (items are
immutable) or raises a `GatewayError` whose `temporary` flag decides between deferral and
bounce. Stages do no network or disk I/O themselves; the objects they need (keys, directory,
trust store) are given to them when they are built. Async because signing on a smart card
or an HSM is awaited, never blocking the event loop.

The relay core ships the four stages as pass-throughs: later work fills `classify`,
`unwrap`, `route` and `wrap` without changing the spool or delivery code.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property


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

    @cached_property
    def handled(self) -> frozenset[str]:
        """Recipients that already have a copy or a refusal. Computed once per item (items are
        immutable): stages test every recipient against it, and recomputing it per test made a
        10,000-recipient message quadratic on the event loop."""
        done = {r for o in self.outgoing for r in o.recipients} | {r.recipient for r in self.refusals}
        return frozenset(done)

    def with_note(self, note: str) -> WorkItem:
        return replace(self, notes=(*self.notes, note))


Stage = Callable[[WorkItem], Awaitable[WorkItem]]


async def classify(item: WorkItem) -> WorkItem:
    """Pass-through: plain MIME until the S/MIME, legacy and payload readers arrive."""
    return item


async def unwrap(item: WorkItem) -> WorkItem:
    """Pass-through: nothing to decrypt or verify yet."""
    return item


async def route(item: WorkItem) -> WorkItem:
    """Pass-through: every envelope recipient gets the message as it came."""
    return item


async def wrap(item: WorkItem) -> WorkItem:
    """Pass-through: one copy, unchanged, for the recipients no stage gave a form or a refusal."""
    left = tuple(r for r in item.envelope.recipients if r not in item.handled)
    if not left:
        return item
    return replace(item, outgoing=(*item.outgoing, Outgoing(left, item.data)))


DEFAULT_STAGES: tuple[Stage, ...] = (classify, unwrap, route, wrap)


class Pipeline:
    """Runs the stages in order and returns what delivery must send."""

    def __init__(self, stages: Sequence[Stage] = DEFAULT_STAGES) -> None:
        self.stages = tuple(stages)

    async def run(self, envelope: Envelope, data: bytes) -> PipelineResult:
        item = WorkItem(envelope=envelope, data=data)
        for stage in self.stages:
            item = await stage(item)
        return PipelineResult(outgoing=item.outgoing, refusals=item.refusals, notes=item.notes)
