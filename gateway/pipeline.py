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


@dataclass(frozen=True)
class Envelope:
    queue_id: str
    sender: str
    recipients: tuple[str, ...]
    auth_user: str | None = None
    listener: str = ""


@dataclass(frozen=True)
class Outgoing:
    """One copy to send: the recipients it is for, its bytes, and the protection applied."""

    recipients: tuple[str, ...]
    data: bytes
    form: str = "as-is"


@dataclass(frozen=True)
class WorkItem:
    envelope: Envelope
    data: bytes
    kind: str = "mime"
    notes: tuple[str, ...] = ()
    outgoing: tuple[Outgoing, ...] = field(default=())

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
    """Pass-through: one copy, unchanged, for all recipients not yet given a form."""
    if item.outgoing:
        return item
    return replace(item, outgoing=(Outgoing(item.envelope.recipients, item.data),))


DEFAULT_STAGES: tuple[Stage, ...] = (classify, unwrap, route, wrap)


class Pipeline:
    """Runs the stages in order and returns what delivery must send."""

    def __init__(self, stages: Sequence[Stage] = DEFAULT_STAGES) -> None:
        self.stages = tuple(stages)

    async def run(self, envelope: Envelope, data: bytes) -> tuple[Outgoing, ...]:
        item = WorkItem(envelope=envelope, data=data)
        for stage in self.stages:
            item = await stage(item)
        if not item.outgoing:
            item = await wrap(item)
        return item.outgoing
