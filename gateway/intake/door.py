"""The base of every intake door: how a payload that came in (an MLLP frame, a dropped file, a
mailed attachment) becomes queued mail.

Why one base: every door does the same steps, and they must stay the same everywhere: read the
payload, resolve its recipients in the directory, check the duplicate store, wrap it as a message
(`gateway.intake.process.intake_bytes`), queue every copy with the door's spool ``listener`` name
and the identity the operator configured for the door as ``auth_user`` (it chooses the signing
key), record the duplicates only once the spool has them, then wake delivery from the event
loop. A door only adds how it receives (a socket, a folder) and how it answers (an ACK, a file
moved to ``done/`` or ``error/``, an SMTP reply); "retry or refuse" for a failure is
`gateway.errors.is_temporary`, the same answer at every door.

A message of the CI-SIS profile "Transmission de document(s) CDA en HL7v2" (MSH-21
``CISIS_CDA_HL7_V2``) is not routed by its content here: `submit` hands it to the door's
`gateway.cisis.gestionnaire.Gestionnaire` (the profile's own rules: flag matrix, MSSanté copies,
business acknowledgments), whichever door it came through.

A new door (a DPI export, another HL7 transport) is one subclass: set `listener`,
implement `start`/`stop`, call `submit` (blocking: in an executor, `run_blocking`) and `wake`;
then build it in `gateway.intake.service.IntakeService.start`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from gateway.cisis.model import CisisError
from gateway.cisis.reader import is_transmission
from gateway.errors import is_temporary
from gateway.intake.dedup import DuplicateStore
from gateway.intake.process import IntakeResult, Submission, accept_all, intake_bytes
from gateway.intake.resolve import Directory, Resolution
from gateway.intake.settings import RoutingSettings
from gateway.ops import metrics
from gateway.routing.model import DocumentType, PayloadInfo
from gateway.routing.payload import detect_payload

T = TypeVar("T")


class IntakeDoor:
    """Shared state and steps of an intake door (see the module docstring)."""

    #: The spool's ``listener`` for what this door queues (shown by `msgw queue`, in the audit trail).
    listener: str = "intake"

    def __init__(self, spool: Any, directory: Directory, dedup: DuplicateStore | None,
                 on_accept: Callable[[str], None] | None, lifetime: float, *, routing: RoutingSettings | None = None,
                 sender: str = "", auth_user: str | None = None, listener: str | None = None) -> None:
        self.spool = spool
        self.directory = directory
        self.dedup = dedup
        self.on_accept = on_accept
        self.lifetime = lifetime
        self.routing = routing or RoutingSettings()
        #: Who the payloads come from (the envelope sender, the unrouted mailbox's organisation).
        self.sender = sender
        #: The identity the door speaks for: it chooses the signing key, never the payload.
        self.auth_user = auth_user
        if listener is not None:  # one name per instance (a drop folder's own name)
            self.listener = listener
        #: The CI-SIS GESTIONNAIRE (`gateway.cisis.gestionnaire.Gestionnaire`) when the profile is served.
        self.gestionnaire: Any = None

    async def start(self) -> None:
        """Begin receiving (listen, watch); a door that only receives through another's socket has nothing to do."""

    async def stop(self) -> None:
        """Stop receiving; what is in hand is finished or left safely for the next start."""

    def submit(self, data: bytes, filename: str | None, *, client: str, now: dt.datetime | None = None,
               info: PayloadInfo | None = None, pdfs: Sequence[bytes] = (), envelope_recipients: Sequence[str] = (),
               skip: Iterable[int] = ()) -> tuple[IntakeResult, list[str]]:
        """Read, resolve, wrap and queue one payload; (what was built, the new queue ids).

        Blocking (directory, duplicate store, spool): run it with `run_blocking`. ``client`` is
        kept on each queued copy as ``client#index`` (``skip``: indexes already queued before a
        crash); ``info``/``pdfs`` when the caller bundled the payload with its PDFs or sidecar.
        Raises what `intake_bytes` and the spool raise (`GatewayError`s)."""
        now = now or dt.datetime.now(dt.UTC)
        transmission = is_transmission(data)
        try:
            if transmission:
                result, ids = self._submit_transmission(data, client=client, now=now)
            else:
                result = intake_bytes(data, filename, sender=self.sender, envelope_recipients=envelope_recipients,
                                      directory=self.directory, dedup=self.dedup, settings=self.routing, now=now,
                                      info=info, pdfs=pdfs)
                ids = accept_all(result, self.spool, lifetime=self.lifetime, listener=self.listener, client=client,
                                 dedup=self.dedup, now=now, skip=skip, auth_user=self.auth_user)
        except Exception as exc:
            fmt = "hl7v2-cisis" if transmission else (info.kind if info is not None else detect_payload(data))
            metrics.intake_document(self.listener, fmt, "deferred" if is_temporary(exc) else "refused")
            raise
        metrics.intake_document(self.listener, "hl7v2-cisis" if transmission else result.info.kind,
                                "queued" if ids else "duplicate")
        return result, ids

    def _submit_transmission(self, data: bytes, *, client: str, now: dt.datetime) -> tuple[IntakeResult, list[str]]:
        """A CI-SIS profile message: the GESTIONNAIRE's rules, never the content routing's."""
        if self.gestionnaire is None:
            raise CisisError("this gateway does not serve the CI-SIS CDA-in-HL7v2 profile (no [intake.cisis] "
                             "application_mailbox)", "MSH-21", rule="PROFILE_NOT_SERVED", hl7_error="200")
        done = self.gestionnaire.submit(data, listener=self.listener, client=client, now=now)
        plan = done.planned.plan
        docs = plan.transmission.documents
        info = docs[0].info if docs and docs[0].info is not None else PayloadInfo(
            kind="hl7v2", document_type=DocumentType(plan.transmission.header.message_type, system="HL7v2"))
        addresses = tuple(b for built in done.planned.built for b in built.recipients)
        outgoing = tuple(Submission(built.recipients, built.data, self.gestionnaire.settings.application_mailbox or "")
                         for built in done.planned.built)
        result = IntakeResult(info=info, resolution=Resolution(addresses=addresses, resolved=(), unresolved=(),
                                                               notices=()),
                              outgoing=outgoing, plan=plan)
        return result, list(done.queue_ids)

    def wake(self, ids: Iterable[str]) -> None:
        """Tell delivery about new queue ids (from the event loop, never from an executor thread)."""
        if self.on_accept is not None:
            for msg_id in ids:
                self.on_accept(msg_id)

    @staticmethod
    async def run_blocking(fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking step off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


__all__ = ["IntakeDoor"]
