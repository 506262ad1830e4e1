"""msgw as the profile's GESTIONNAIRE: one transmission in, its MSSanté copies queued, its
business acknowledgments owed — in the order that keeps the promises of the ACK.

Order of `Gestionnaire.submit` (called by every intake door, in an executor thread):
1. read the message and decide the plan (pure: `reader`, `plan`) — a refusal raises before
   anything is written, so nothing is sent and the ACK is ``AE`` with the rule;
2. build every copy (pure: `mssmail`), then queue each one (``spool.accept``, durable);
3. record in the ledger, in one transaction, the copies and the ZAMs owed now (``Z01`` "not
   performed" when the DMP was asked) — only then may the door answer ``AA``.
A crash between 2 and 3 leaves copies queued and no ACK: the CRÉATEUR resends, the copies go
twice (at least once, never zero). A transmission already in the ledger (same MSH-3/MSH-4/
MSH-10: an ACK lost on the way back) is acknowledged again without sending anything twice.

`plan_only` is the same reading, deciding and building without the queue or the ledger: what
``msgw payload plan`` shows.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.cisis.ledger import ZamLedger
from gateway.cisis.model import Plan, ZamEvent
from gateway.cisis.mssmail import BuiltCopy, build_copy
from gateway.cisis.plan import creator_of, plan_transmission
from gateway.cisis.reader import read_transmission
from gateway.cisis.zam import build_zam
from gateway.config.cisis import CisisSettings
from gateway.logs import event

log = logging.getLogger(__name__)

#: ERR-5 of the ``ZAM^Z01`` owed when the CRÉATEUR asked for the DMP: msgw has no DMP connector.
DMP_NOT_PERFORMED = ("DMP_NON_TRAITE", "Alimentation du DMP non réalisée : la plateforme n'a pas de "
                     "connecteur DMP", "DMPERRORCODE")


def resend_digest(data: bytes) -> str:
    """SHA-256 of the message without MSH-7 (a CRÉATEUR resending after a lost ACK may stamp a
    new time): the same document from the same MSH-10 is a resend, another one is not."""
    first, sep, rest = data.partition(b"\r")
    fields = first.split(first[3:4]) if len(first) > 3 else [first]
    if len(fields) > 6:
        fields[6] = b""
    return hashlib.sha256(first[3:4].join(fields) + sep + rest).hexdigest()[:32]


def _zam_control_id(now: dt.datetime) -> str:
    """MSH-10 of a ZAM built at intake (the ledger numbers the ones it builds ``MSGWZAM<n>``)."""
    return "MSGWZ" + now.strftime("%y%m%d%H%M%S%f")


@dataclass(frozen=True)
class Planned:
    """A plan and the messages built for it (bytes not in repr: they are health data)."""

    plan: Plan
    built: tuple[BuiltCopy, ...] = field(repr=False)


@dataclass(frozen=True)
class Submitted:
    planned: Planned
    queue_ids: tuple[str, ...]
    duplicate: bool = False


def plan_only(data: bytes, settings: CisisSettings, now: dt.datetime) -> Planned:
    """Read, decide and build without queueing: `CisisError`/`PayloadError` when refused."""
    tx = read_transmission(data)
    plan = plan_transmission(tx, settings)
    mailbox = settings.application_mailbox or ""
    built = tuple(build_copy(tx, copy, application_mailbox=mailbox, nil=settings.nil, now=now)
                  for copy in plan.copies)
    return Planned(plan, built)


class Gestionnaire:
    """The runtime side: the spool for copies, the ledger for what is owed to the CRÉATEURs."""

    def __init__(self, settings: CisisSettings, spool: Any, ledger: ZamLedger, *, lifetime: float,
                 audit: Callable[..., None] | None = None, on_owed: Callable[[], None] | None = None) -> None:
        self.settings = settings
        #: Called (from the worker thread) when ZAMs were queued at intake: wakes the ZAM sender.
        self.on_owed = on_owed
        self.spool = spool
        self.ledger = ledger
        self.lifetime = lifetime
        self.audit = audit

    def submit(self, data: bytes, *, listener: str, client: str, now: dt.datetime | None = None) -> Submitted:
        """Queue the copies of one transmission and record what is owed (blocking).

        The copies speak for the platform's application mailbox (their ``From:``, IG mapping-mss):
        that configured identity, not the door's nor anything in the message, chooses the signing
        key (``[policy.sign_with]``), so the signature names the address the reader sees."""
        now = now or dt.datetime.now(dt.UTC)
        planned = plan_only(data, self.settings, now)
        plan, tx = planned.plan, planned.plan.transmission
        digest = resend_digest(data)
        if self.ledger.known(tx.header, digest):
            event(log, "cisis-duplicate", control_id=tx.header.control_id, application=tx.header.sending_application)
            return Submitted(planned, (), duplicate=True)
        mailbox = self.settings.application_mailbox or ""
        ids: list[str] = []
        for n, built in enumerate(planned.built):
            ids.append(self.spool.accept(mailbox, built.recipients, built.data, lifetime=self.lifetime,
                                         listener=listener, client=f"{client}#{n}", auth_user=mailbox))
        owed_now: list[bytes] = []
        if tx.flag("DESTDMP"):
            owed_now.append(build_zam(ZamEvent.DMP_RECEPTION, tx.header, ok=False, error=DMP_NOT_PERFORMED,
                                      control_id=_zam_control_id(now), now=now))
        creator = creator_of(tx, self.settings)
        self.ledger.record(tx.header, creator.name if creator is not None else "", tx.flags,
                           copies=[(qid, b.message_id, r.address, r.identifier, c.kind)
                                   for qid, b, c in zip(ids, planned.built, plan.copies, strict=True)
                                   for r in c.recipients],
                           owed_now=owed_now, now=now.timestamp(), digest=digest)
        self._audit(planned, ids, mailbox)
        if owed_now and self.on_owed is not None:
            self.on_owed()
        return Submitted(planned, tuple(ids))

    def _audit(self, planned: Planned, ids: list[str], mailbox: str) -> None:
        """One record per copy recipient and per recipient left out (patient mailboxes are
        pseudonymised by the trail itself)."""
        if self.audit is None:
            return
        plan = planned.plan
        row = plan.row.name if plan.row is not None else "none"
        for qid, copy in zip(ids, plan.copies, strict=True):
            for r in copy.recipients:
                self.audit(message_id=qid, sender=mailbox, recipient=r.address, decision=f"cisis-{copy.kind}",
                           reason=f"matrix row {row}", listener="cisis")
        for r, why in plan.left_out:
            self.audit(sender=mailbox, recipient=r.address, decision="cisis-left-out", reason=why, listener="cisis")


__all__ = ["DMP_NOT_PERFORMED", "Gestionnaire", "Planned", "Submitted", "plan_only"]
