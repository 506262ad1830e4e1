"""The inbound stage hands on the very item when no recipient is a local mailbox (issue 15: it
made an equal copy of every outbound message, whose cached readings were then made again)."""

from __future__ import annotations

from typing import Any

from gateway.pipeline import Envelope, Local, Smime, WorkItem
from gateway.stages.inbound import InboundStage


class _Remote:
    def is_local(self, domain: str) -> bool:
        return domain == "here.test"

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the stage asked {name} of a message with no local recipient")


async def test_no_local_recipient_gives_the_same_item() -> None:
    item = WorkItem(Envelope("Q1", "a@lab.test", ("b@far.test", "c@far.test")), b"Subject: x\r\n\r\nbody\r\n")
    assert await InboundStage(_Remote())(item) is item  # type: ignore[arg-type]
    planned = WorkItem(Envelope("Q2", "a@lab.test", ("d@here.test",)), b"x", plan=(("d@here.test", Smime(())),))
    assert await InboundStage(_Remote())(planned) is planned  # type: ignore[arg-type]


async def test_a_local_recipient_is_still_handled() -> None:
    item = WorkItem(Envelope("Q3", "a@lab.test", ("d@here.test",)), b"x", plan=(("d@here.test", Local()),))
    try:
        await InboundStage(_Remote())(item)  # type: ignore[arg-type]
    except AssertionError as exc:
        assert "asked" in str(exc)  # it went on to unwrap for the mailbox
    else:  # pragma: no cover
        raise AssertionError("a local recipient was not handled")
