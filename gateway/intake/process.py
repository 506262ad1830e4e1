"""One payload in, the messages to queue out: read → resolve → dedup check → wrap.

Shared by the MLLP listener, the drop folders, and (for the lead) ``msgw send`` and bare
payloads over SMTP, so every door applies the same rules.

Why the result is more than a list of (recipients, bytes): each message also needs its own
envelope sender (the sender's notice goes with the null reverse-path ``<>``, like a DSN, so it
can never loop), and the duplicate store must be written only *after* the spool accepted the
messages — recorded earlier, a spool failure followed by the sender's resend would be
suppressed as a duplicate and the result lost. So :func:`intake_bytes` only *reads* the
duplicate store, and the caller calls :meth:`IntakeResult.commit` once ``spool.accept``
returned for every message (:func:`accept_all` does both).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from gateway.errors import PolicyError
from gateway.intake.dedup import DocumentKey, DuplicateStore, dedup_key
from gateway.intake.resolve import Directory, Resolution, resolve_recipients
from gateway.intake.settings import RoutingSettings, valid_address
from gateway.intake.wrap import notice_message, payload_message
from gateway.routing.model import PayloadInfo
from gateway.routing.payload import read_payload


class Unroutable(PolicyError):
    """Nobody to send the payload to and no unrouted mailbox: refused, never dropped silently."""

    code = "intake-unroutable"
    status = "5.1.1"


class Submission(NamedTuple):
    """One message the intake hands to the spool. Unpacks as ``recipients, message, envelope_sender``.

    Not `gateway.pipeline.Outgoing` (a protected copy the pipeline made, with its form): this is
    what enters the queue *before* the pipeline, with its own envelope sender (``""`` for the
    sender's notice)."""

    recipients: tuple[str, ...]
    message: bytes
    envelope_sender: str


@dataclass(frozen=True)
class IntakeResult:
    """What to queue for one payload, and what to remember once it is queued."""

    info: PayloadInfo
    resolution: Resolution
    outgoing: tuple[Submission, ...]
    suppressed: tuple[str, ...] = ()
    dedup_key: DocumentKey | None = None
    dedup_recipients: tuple[str, ...] = ()
    #: The CI-SIS plan (`gateway.cisis.model.Plan`) when the payload was a profile message.
    plan: Any = None

    def __iter__(self) -> Any:
        return iter(self.outgoing)

    def __len__(self) -> int:
        return len(self.outgoing)

    def commit(self, dedup: DuplicateStore | None, now: dt.datetime) -> None:
        """Record the sent (document, recipient) pairs: call after every message was accepted."""
        if dedup is not None and self.dedup_key is not None and self.dedup_recipients:
            dedup.record(self.dedup_key, self.dedup_recipients, now.timestamp())


def _unique(addresses: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(a.strip().lower() for a in addresses if a and a.strip()))


def intake_bytes(data: bytes, filename: str | None, *, sender: str, envelope_recipients: Sequence[str] = (),
                 directory: Directory, dedup: DuplicateStore | None, settings: RoutingSettings,
                 now: dt.datetime, info: PayloadInfo | None = None, pdfs: Sequence[bytes] = ()) -> IntakeResult:
    """Read a payload and build the messages to queue.

    Raises :class:`~gateway.routing.model.PayloadError` (malformed/unsupported, permanent),
    :class:`Unroutable` (permanent) and temporary errors from the directory or duplicate store.
    An empty ``outgoing`` means everything was already sent within the window (success).
    ``info`` is given when the caller already read the payload (a sidecar's description of a
    PDF); ``pdfs`` are PDF documents attached beside the payload (see :mod:`gateway.intake.bundle`).
    """
    if now.tzinfo is None:
        now = now.replace(tzinfo=dt.UTC)
    info = info if info is not None else read_payload(data, filename)
    unrouted = settings.unrouted_for(sender)
    resolution = resolve_recipients(info, directory, sender=sender, unrouted=unrouted, lab_codes=settings.lab_codes)
    if resolution.unresolved and unrouted is None:
        raise Unroutable("recipient not found in the directory and no unrouted mailbox configured: "
                         + "; ".join(n for n in resolution.notices))
    recipients = _unique([*resolution.addresses, *envelope_recipients])
    notices = list(resolution.notices)
    if not recipients:
        if unrouted is None:
            raise Unroutable("the payload names no recipient and no unrouted mailbox is configured")
        recipients = (unrouted.lower(),)
        notices.append(f"Aucun destinataire désigné par le document : adressé à la boîte de tri {unrouted.lower()}.")
        resolution = Resolution(addresses=recipients, resolved=resolution.resolved, unresolved=resolution.unresolved,
                                notices=tuple(notices), unrouted_used=True)
    bad = [r for r in recipients if not valid_address(r)]
    if bad:
        raise Unroutable(f"{len(bad)} envelope recipient(s) are not valid mail addresses")

    # Document id + sending facility + patient identifiers + content (hashed): an id alone is
    # unique only within its sender, and two patients' results may share it.
    key = dedup_key(info, data, sender)
    suppressed: tuple[str, ...] = ()
    if key is not None and dedup is not None and not (info.replaces or info.cancels):
        stamp = now.timestamp()
        suppressed = tuple(r for r in recipients if dedup.seen(key, r, stamp, settings.dedup_window))
        recipients = tuple(r for r in recipients if r not in suppressed)

    outgoing: list[Submission] = []
    if recipients:
        message = payload_message(data, info, sender=sender, recipients=recipients, filename=filename, now=now,
                                  xdm=settings.xdm, xdm_source_id=settings.xdm_source_id,
                                  intended=[p for p, _ in resolution.resolved],
                                  mdn_to=sender if settings.request_mdn and valid_address(sender) else None,
                                  pdfs=pdfs)
        outgoing.append(Submission(recipients, message, sender))
        if notices and settings.notify_sender and sender and valid_address(sender):
            notice_from = settings.notice_from or f"postmaster@{sender.rpartition('@')[2]}"
            outgoing.append(Submission((sender.lower(),), notice_message(notices, info, sender=notice_from, to=sender,
                                                                      now=now), ""))
    return IntakeResult(info=info, resolution=resolution, outgoing=tuple(outgoing), suppressed=suppressed,
                        dedup_key=key, dedup_recipients=recipients if key is not None else ())


def accept_all(result: IntakeResult, spool: Any, *, lifetime: float, listener: str, client: str,
               dedup: DuplicateStore | None, now: dt.datetime, skip: Iterable[int] = (),
               auth_user: str | None = None) -> list[str]:
    """Queue every outgoing message (blocking: run in an executor), then record them as sent.

    Each message's spool ``client`` is ``f"{client}#{index}"`` so a drop folder can find, after a
    crash, which of a file's messages the spool already holds (``skip`` = their indexes).
    ``SpoolError`` propagates: nothing is recorded as sent, the sender (or the next poll) retries.
    The caller wakes delivery (``on_accept``) from the event loop, not from this thread.
    ``auth_user`` is the identity the channel speaks for (the SMTP login, or the sender the
    operator configured for a drop folder or MLLP listener): it chooses the signing key.
    """
    done = set(skip)
    ids: list[str] = []
    for index, out in enumerate(result.outgoing):
        if index in done:
            continue
        ids.append(spool.accept(out.envelope_sender, out.recipients, out.message, lifetime=lifetime,
                                listener=listener, client=f"{client}#{index}", auth_user=auth_user))
    result.commit(dedup, now)
    return ids


__all__ = ["IntakeResult", "Submission", "Unroutable", "accept_all", "intake_bytes"]
