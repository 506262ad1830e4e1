"""Integration outcome → the MDN (or the "courriel standard" error notice) back to the sender.

A listener of `gateway.runner.QueueService.add_outcome_listener`: for a recipient that is an
application mailbox (``[delivery.consumers]``) and a final outcome, it reads the copy the consumer
transport got (the spool still holds it when the outcome is told), and spools:

- the MDN (`gateway.lps.mdn.build_mdn`) when the mail asked for one and `mdn_allowed` (loop
  guard): ``processed`` when integrated, ``processed/Error: <code>^<label>`` when refused;
- else, on a refusal only, the error notice (`build_error_notice`); on success without a
  request, nothing.

The reply text carries the outcome (`gateway.delivery.consumer.INTEGRATED`, or ``<code>^<label>``):
a delivery into the fallback Maildir (no archive) is not an integration and gets no MDN; a
refusal without an ANS code (``no_xdm = "refuse"``) has its DSN already.

It is queued with the null envelope sender (RFC 8098 §2.1) through `Spool.accept`, so the
pipeline prepares it like any mail: the protection policy signs it with the key
``[policy.sign_with]`` names for the mailbox (the mailbox is its identity, as for the CI-SIS
gestionnaire's copies), and encrypts it to the doctor when a certificate is known. It runs in
the delivery's executor thread: blocking is fine; a fault is logged (no content) and never
breaks delivery.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from email.utils import getaddresses

from gateway.config import GatewayConfig
from gateway.delivery.consumer import INTEGRATED, ans_error
from gateway.errors import GatewayError
from gateway.logs import event
from gateway.lps import incoming, mdn
from gateway.rawmime import header_fields
from gateway.spool import QueueStore

log = logging.getLogger("gateway.lps.reporter")

#: The listener name of the queued MDNs (`msgw queue` shows where a message came from).
LISTENER = "lps-mdn"


class MdnReporter:
    """The outcome listener (see the module docstring)."""

    def __init__(self, config: GatewayConfig, spool: QueueStore, *, on_queued: Callable[[str], None] | None = None,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now().astimezone()) -> None:
        self.config = config
        self.spool = spool
        self.on_queued = on_queued
        self.clock = clock

    def __call__(self, queue_id: str, recipient: str, state: str, status: str, reply: str | None) -> None:
        consumer = self.config.delivery.consumer_for(recipient)
        if consumer is None or state not in ("delivered", "bounced"):
            return
        error = ans_error(reply) if state == "bounced" else None
        if (state == "delivered" and INTEGRATED not in (reply or "")) or (state == "bounced" and error is None):
            return
        try:
            queued = self.report(queue_id, recipient, consumer.address, error)
        except (GatewayError, ValueError, LookupError) as exc:
            event(log, "lps-mdn-failed", logging.ERROR, msg=queue_id, exc_type=type(exc).__name__,
                  code=getattr(exc, "code", ""))
            return
        if queued is not None:
            event(log, "lps-mdn-queued", msg=queue_id, queued=queued, error=error[0] if error else "")
            if self.on_queued is not None:
                self.on_queued(queued)

    def _copy(self, queue_id: str, recipient: str) -> tuple[bytes, str]:
        """The bytes the consumer transport got for this recipient, and the envelope sender."""
        msg = self.spool.get(queue_id)
        if msg is None:
            raise LookupError("message no longer in the spool")
        row = next(r for r in msg.recipients if r.address.lower() == recipient.lower() and r.copy_id is not None)
        assert row.copy_id is not None
        return self.spool.copy_bytes(msg.copy(row.copy_id)), msg.sender

    def report(self, queue_id: str, recipient: str, mailbox: str, error: tuple[str, str] | None) -> str | None:
        """Build and queue the MDN or notice for one outcome; its queue id, or None when none is owed."""
        data, sender = self._copy(queue_id, recipient)
        mail, _package, _pdfs = incoming.read_incoming(data, recipient=mailbox, return_path=sender)
        now = self.clock()
        if mdn.mdn_allowed(mail):
            out = mdn.build_mdn(data, mail, reporting_host=self.config.hostname, from_address=mailbox, now=now,
                                error=error)
        elif error is not None:
            out = mdn.build_error_notice(data, mail, from_address=mailbox, now=now, error=error)
        else:
            return None
        rcpts = _to(out)
        if not rcpts:
            raise LookupError("the notification names no recipient")
        # The mailbox speaks (as the CI-SIS gestionnaire's copies do): its [policy.sign_with] key signs.
        return self.spool.accept("", rcpts, out, lifetime=self.config.spool.max_queue_lifetime, listener=LISTENER,
                                 auth_user=mailbox)


def _to(message: bytes) -> list[str]:
    """The addresses of the built notification's To (where it was built to go)."""
    values = [v for n, v in header_fields(message) if n == "to"]
    return [addr for _name, addr in getaddresses(values) if "@" in addr]


__all__ = ["LISTENER", "MdnReporter"]
