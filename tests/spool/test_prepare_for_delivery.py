"""`prepare_for_delivery` (issue 15): the preparation recorded and the message read back in the
same transaction must be exactly what `prepare` followed by `get` gives — on both backends, with
copies shared with the message, TLS-only copies, refusals, recipients no longer linkable, foreign
recipient ids, a message deleted meanwhile, and concurrent preparations batched together."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

import pytest

from gateway.spool import NewCopy, Outcome, QueuedMessage, QueueStore, RecipientState

MESSAGE = b"From: lab@lab.example\r\nSubject: r\r\n\r\nbody\r\n"
SIGNED = b"From: lab@lab.example\r\nContent-Type: multipart/signed\r\n\r\n(pretend signed)\r\n"
RCPTS = ["a@y.example", "b@y.example", "c@y.example", "d@y.example", "e@y.example"]

Plan = Callable[[QueueStore, QueuedMessage, QueuedMessage], tuple[list[NewCopy], list[Outcome]]]


def _two_copies_and_a_bounce(spool: QueueStore, msg: QueuedMessage, other: QueuedMessage
                             ) -> tuple[list[NewCopy], list[Outcome]]:
    a, b, c, d, e = msg.recipients
    return ([NewCopy("smime", False, SIGNED, (a.id, b.id)), NewCopy("smime", True, SIGNED + b"tls", (c.id,)),
             NewCopy("as-is", False, MESSAGE, (d.id,), same_as_message=True)],
            [Outcome(e.id, RecipientState.BOUNCED, "5.7.1", "no protection possible", address=e.address)])


def _a_deferral_and_nothing_to_send(spool: QueueStore, msg: QueuedMessage, other: QueuedMessage
                                    ) -> tuple[list[NewCopy], list[Outcome]]:
    return [], [Outcome(r.id, RecipientState.DEFERRED, "4.3.0", "later", next_attempt=time.time() + 600,
                        address=r.address) for r in msg.recipients]


def _recipients_no_longer_linkable(spool: QueueStore, msg: QueuedMessage, other: QueuedMessage
                                   ) -> tuple[list[NewCopy], list[Outcome]]:
    """Delivered or bounced before the preparation lands, and another message's recipient ids."""
    a, b, c, d, e = msg.recipients
    spool.mark_delivered([a.id], status="2.0.0")
    spool.mark_bounced([b.id], error="550 no", status="5.1.1")
    return ([NewCopy("smime", False, SIGNED, (a.id, b.id, c.id, *(r.id for r in other.recipients))),
             NewCopy("smime", False, SIGNED, ())],
            [Outcome(a.id, RecipientState.BOUNCED, "5.7.1", "too late", address=a.address),
             Outcome(d.id, RecipientState.DEFERRED, "4.0.0", "later", next_attempt=time.time() + 60,
                     address=d.address)])


def _the_same_recipient_twice_and_an_empty_copy(spool: QueueStore, msg: QueuedMessage, other: QueuedMessage
                                                ) -> tuple[list[NewCopy], list[Outcome]]:
    a, b, *_ = msg.recipients
    return ([NewCopy("smime", False, b"", (a.id,)), NewCopy("smime", False, SIGNED, (a.id, b.id)),
             NewCopy("as-is", True, MESSAGE, (), same_as_message=True)], [])


PLANS = [_two_copies_and_a_bounce, _a_deferral_and_nothing_to_send, _recipients_no_longer_linkable,
         _the_same_recipient_twice_and_an_empty_copy]


def _accept(spool: QueueStore) -> tuple[QueuedMessage, QueuedMessage]:
    msg_id = spool.accept("lab@lab.example", RCPTS, MESSAGE, lifetime=3600)
    other_id = spool.accept("lab@lab.example", ["z@y.example"], MESSAGE, lifetime=3600)
    msg, other = spool.get(msg_id), spool.get(other_id)
    assert msg is not None and other is not None
    return msg, other


def _comparable(msg: QueuedMessage) -> QueuedMessage:
    """Without what two stores cannot share: ids, timestamps, generated copy file names."""
    rcpt_index = {r.id: n for n, r in enumerate(msg.recipients)}
    copy_index = {c.id: n for n, c in enumerate(msg.copies)}
    return dataclasses.replace(
        msg, id="X", received=0.0, expires=0.0,
        recipients=tuple(dataclasses.replace(r, id=rcpt_index[r.id], message_id="X", updated=0.0,
                                             next_attempt=round(r.next_attempt, -3),
                                             copy_id=None if r.copy_id is None else copy_index[r.copy_id])
                         for r in msg.recipients),
        copies=tuple(dataclasses.replace(c, id=copy_index[c.id], message_id="X", file=c.file.split("/")[0])
                     for c in msg.copies))


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.__name__.strip("_"))
def test_the_message_returned_is_what_prepare_then_get_gives(queue_store, plan: Plan) -> None:
    fast, slow = queue_store(), queue_store()
    msg, other = _accept(fast)
    copies, outcomes = plan(fast, msg, other)
    fresh = fast.prepare_for_delivery(msg.id, copies, outcomes)
    assert fresh is not None
    assert fresh == fast.get(msg.id), "exactly what the store now holds"
    assert all(fast.copy_bytes(c) == next(n.data for n in copies if n.form == c.form and n.require_tls == c.require_tls
                                          and len(n.data) == c.size) for c in fresh.copies)
    # The reference path on the same kind of store, from the same starting point.
    ref, ref_other = _accept(slow)
    ref_copies, ref_outcomes = plan(slow, ref, ref_other)
    assert slow.prepare(ref.id, ref_copies, ref_outcomes)
    again = slow.get(ref.id)
    assert again is not None
    assert _comparable(fresh) == _comparable(again)


def test_a_message_deleted_meanwhile_gives_none_and_records_nothing(queue_store) -> None:
    spool = queue_store()
    msg, _ = _accept(spool)
    assert spool.delete(msg.id)
    assert spool.prepare_for_delivery(msg.id, [NewCopy("smime", False, SIGNED, (msg.recipients[0].id,))]) is None
    assert spool.get(msg.id) is None
    assert not spool.prepare(msg.id, [NewCopy("smime", False, SIGNED, (msg.recipients[0].id,))])


def test_concurrent_preparations_each_get_their_own_message(queue_store) -> None:
    """Concurrent writers share a transaction (SQLite's group commit): each result is its own."""
    spool = queue_store()
    accepted = [_accept(spool) for _ in range(8)]
    results: dict[str, QueuedMessage | None] = {}

    def prepare(msg: QueuedMessage, other: QueuedMessage) -> None:
        copies, outcomes = _two_copies_and_a_bounce(spool, msg, other)
        results[msg.id] = spool.prepare_for_delivery(msg.id, copies, outcomes)

    threads = [threading.Thread(target=prepare, args=pair) for pair in accepted]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert set(results) == {m.id for m, _ in accepted}
    for msg_id, fresh in results.items():
        assert fresh is not None and fresh.id == msg_id and fresh == spool.get(msg_id)
        assert fresh.stage == "prepared" and len(fresh.copies) == 3
