"""HL7 v2 over MLLP: the way hospital and lab systems push results.

Each framed message is answered, in order, with an HL7 ACK:
- ``AA`` only after ``spool.accept`` returned for every message built from it (the same promise
  as SMTP's 250: durably queued);
- ``AR`` when the message itself is refused (malformed, unsupported type, unroutable): resending
  it unchanged will not help; MSA-3/ERR say what and where, never the content;
- ``AE`` when the failure is ours and temporary (spool or store unavailable): the sender resends.
Which of the two is `gateway.errors.is_temporary`'s answer, the one SMTP gives with 4xx/5xx.
A stream that loses MLLP sync (bytes outside a frame, a frame over ``max_frame``) gets an ``AR``
and the connection is closed, since the next frame boundary cannot be trusted.

MLLP has no authentication: connections are limited to ``allowed_networks`` (loopback by
default), TLS (1.2 minimum) is available, and with ``client_ca`` the sending system must present
a certificate from that CA (mutual TLS, as between MSSanté operators), optionally one of
``allowed_client_subjects`` (CN or RFC 4514 subject) — the way to open MLLP beyond one host.
That certificate is then checked for revocation (CRL/OCSP, hard-fail, the SMTP listeners' cache:
`gateway.server.clientcheck`) before any frame is read: a revoked or expired one, or one whose
status cannot be had now, is logged (``mllp-refused``) and the connection closed without an ACK,
as for a certificate outside ``allowed_client_subjects`` (no message was read, so none is
acknowledged; the LIS reconnects later, which is the retry a temporary refusal wants).
A message of the CI-SIS profile "Transmission de document(s) CDA en HL7v2" is acknowledged with
that profile's meanings (IG ``profils-messages``: "AE: le message contient des erreurs ; AR: le
message est rejeté pour une raison circonstancielle, il peut être réémis plus tard"): ``AE``
when it is refused (its ERR names the profile rule in ERR-5 and the place in ERR-2), ``AR``
when the failure is ours and temporary — the opposite letters of the other messages, kept as
they were for the labs already plugged in.

Logs carry the peer, MSH-10 control id, message type, sizes and decisions — never a segment's content.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
import ssl
from collections.abc import Callable
from typing import Any, NamedTuple

from gateway import tlspolicy
from gateway.cisis.model import CisisError
from gateway.cisis.reader import error_location, is_transmission
from gateway.errors import GatewayError, is_temporary
from gateway.intake.dedup import DuplicateStore
from gateway.intake.door import IntakeDoor
from gateway.intake.resolve import Directory
from gateway.intake.settings import MllpSettings, RoutingSettings
from gateway.logs import event
from gateway.ops import metrics
from gateway.routing.hl7 import MLLPDecoder, build_ack, mllp_frame
from gateway.routing.model import MllpError, PayloadError, UnsupportedPayload
from gateway.routing.payload import detect_payload
from gateway.server.clientcert import subject_allowed
from gateway.server.clientcheck import ClientChecks
from gateway.smime.ocsp import OcspSource
from gateway.smime.revocation import CrlSource, http_fetch

log = logging.getLogger(__name__)

_CONTROL_ID = re.compile(r"^[A-Za-z0-9._:-]{1,40}$")
_READ_SIZE = 65536


def control_id(frame: bytes) -> str:
    """MSH-10 when it is a plain token (safe to log), else ''."""
    first = frame.lstrip(b"\r\n")[:2048].split(b"\r", 1)[0].split(b"\n", 1)[0]
    if not first.startswith(b"MSH") or len(first) < 4:
        return ""
    fields = first.split(first[3:4])
    value = fields[9].decode("latin-1") if len(fields) > 9 else ""
    return value if _CONTROL_ID.match(value) else ""


def ack_for(error: BaseException) -> tuple[str, str, str]:
    """(ACK code, MSA-3/ERR text, HL7 table 0357 error code) for a frame that was not queued.

    Retry or refuse is `is_temporary`'s answer (SMTP's 4xx/5xx for the same error): ``AE`` asks the
    sender to resend, ``AR`` refuses the message as it is. The text says what and where for a
    refused payload, never an internal detail for a failure of ours."""
    if not is_temporary(error):
        if isinstance(error, PayloadError):
            err = "200" if isinstance(error, UnsupportedPayload) else "102"  # unsupported type / data type error
            return "AR", f"{error.what} ({error.where})" if error.where else error.what, err
        return "AR", error.reason if isinstance(error, GatewayError) else "message refused", "207"
    if isinstance(error, GatewayError):
        return "AE", "temporary failure, resend later", "207"
    return "AE", "internal error, resend later", "207"  # application internal error


def profile_ack_for(error: BaseException) -> tuple[str, str, str, str | None, tuple[str, str, str] | None]:
    """(ACK code, text, ERR-3 code, ERR-2 location, ERR-5) for a CI-SIS profile message not queued."""
    if is_temporary(error):
        text = "temporary failure, resend later" if isinstance(error, GatewayError) else "internal error, resend later"
        return "AR", text, "207", None, None
    if isinstance(error, CisisError):
        return "AE", error.what, error.hl7_error, error_location(error.where), (error.rule, error.what, "CISIS")
    if isinstance(error, PayloadError):
        err = "200" if isinstance(error, UnsupportedPayload) else "102"
        return "AE", error.what, err, error_location(error.where), None
    return "AE", error.reason if isinstance(error, GatewayError) else "message refused", "207", None, None


def server_context(settings: MllpSettings) -> ssl.SSLContext | None:
    """The MLLP listener's TLS: its `tls_policy` preset (`gateway.tlspolicy`), its pair, its client CA."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    ctx = tlspolicy.apply(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), settings.tls_policy)
    ctx.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    if settings.client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED  # no certificate or an unknown issuer: the handshake fails
        ctx.load_verify_locations(cafile=str(settings.client_ca))
    return ctx


def client_allowed(settings: MllpSettings, der: bytes | None) -> bool:
    """With ``allowed_client_subjects``, the verified client certificate must name one of them."""
    if not settings.allowed_client_subjects:
        return True
    return subject_allowed(der, settings.allowed_client_subjects)


class _Reply(NamedTuple):
    """What to acknowledge: MSA-1, MSA-3 text, ERR-3, the queued ids, ERR-2, ERR-5."""

    code: str
    error: str | None
    error_code: str | None
    ids: list[str]
    location: str | None = None
    application_error: tuple[str, str, str] | None = None


class MllpListener(IntakeDoor):
    """An asyncio MLLP server: ``await start()``, ``await stop()``; ``bound`` is the listening port."""

    listener = "mllp"

    def __init__(self, settings: MllpSettings, spool: Any, directory: Directory, dedup: DuplicateStore | None,
                 on_accept: Callable[[str], None] | None, lifetime: float, *,
                 routing: RoutingSettings | None = None, client_checks: ClientChecks | None = None) -> None:
        super().__init__(spool, directory, dedup, on_accept, lifetime, routing=routing, sender=settings.sender,
                         auth_user=settings.sender or None)
        self.settings = settings
        #: Revocation of the LIS's certificate (the gateway's shared checks; alone: fetch CRLs, ask OCSP).
        self.client_checks = client_checks
        self.bound: int | None = None
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, self.settings.address, self.settings.port,
                                                  ssl=server_context(self.settings), limit=_READ_SIZE * 2)
        sock = self._server.sockets[0] if self._server.sockets else None
        self.bound = sock.getsockname()[1] if sock is not None else None
        event(log, "mllp-listening", address=self.settings.address, port=self.bound,
              tls=self.settings.tls_cert is not None)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        peer = writer.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        try:
            if not self.settings.allows(ip):
                event(log, "mllp-refused", logging.WARNING, client=ip, reason="network not allowed")
                return
            ssl_object = writer.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
            if not client_allowed(self.settings, der):
                event(log, "mllp-refused", logging.WARNING, client=ip, reason="client certificate not allowed")
                return
            if der is not None and await self._certificate_refused(der, ip):
                return
            await self._serve(reader, writer, ip)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            event(log, "mllp-connection-lost", client=ip, reason=type(exc).__name__)
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2)

    async def _certificate_refused(self, der: bytes, ip: str) -> bool:
        """True (logged) when the LIS's verified certificate is revoked, no longer valid, or its
        status cannot be had now: OpenSSL checked the chain at the handshake, never revocation."""
        if self.settings.client_ca is None:
            return False
        if self.client_checks is None:
            self.client_checks = ClientChecks([], CrlSource(fetcher=http_fetch), OcspSource())
        verdict = await self.client_checks.checker(self.settings.client_ca).check(der)
        if verdict.ok:
            return False
        event(log, "mllp-refused", logging.WARNING, client=ip, reason=f"client certificate {verdict.reason}",
              temporary=verdict.temporary)
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ip: str) -> None:
        decoder = MLLPDecoder(max_frame=self.settings.max_frame)
        while True:
            try:
                data = await asyncio.wait_for(reader.read(_READ_SIZE), self.settings.timeout)
            except TimeoutError:
                event(log, "mllp-idle-timeout", client=ip)
                return
            if not data:
                return
            try:
                frames = decoder.feed(data)
            except MllpError as exc:
                event(log, "mllp-framing-error", logging.WARNING, client=ip, reason=exc.what, where=exc.where)
                metrics.mllp_ack("AR")
                writer.write(mllp_frame(build_ack(b"", "AR", exc.what, error_code="100")))
                await writer.drain()
                return
            for frame in frames:
                ack = await self._handle(frame, ip)
                writer.write(mllp_frame(ack))
                await writer.drain()

    async def _handle(self, frame: bytes, ip: str) -> bytes:
        reply = await self.run_blocking(self._process, frame, ip)
        metrics.mllp_ack(reply.code)
        self.wake(reply.ids)
        return build_ack(frame, reply.code, reply.error, error_code=reply.error_code,
                         error_location=reply.location, application_error=reply.application_error)

    def _process(self, frame: bytes, ip: str) -> _Reply:
        """Blocking part (parse, directory, dedup, spool): runs in an executor thread."""
        now = dt.datetime.now(dt.UTC)
        ctrl = control_id(frame)
        profile = is_transmission(frame)
        try:
            kind = detect_payload(frame)
            if kind != "hl7v2":
                metrics.intake_document(self.listener, kind, "refused")  # (submit counts the others)
                raise UnsupportedPayload("not an HL7 v2 message", "segment 1")
            result, ids = self.submit(frame, "message.hl7", client=f"mllp:{ip}", now=now)
        except Exception as exc:  # noqa: BLE001 - never an AA, never a stack trace to the sender
            if profile:
                ack, reason, err, where, app_err = profile_ack_for(exc)
                self._log_not_queued(exc, ack, ip, ctrl, len(frame))
                return _Reply(ack, reason, err, [], where, app_err)
            ack, reason, err = ack_for(exc)
            self._log_not_queued(exc, ack, ip, ctrl, len(frame))
            return _Reply(ack, reason, err, [])
        if result.plan is not None:
            event(log, "mllp-accepted", client=ip, control_id=ctrl, profile="cisis", size=len(frame),
                  copies=len(ids), row=result.plan.row.name if result.plan.row is not None else "none",
                  zams=len(result.plan.zams), queued=",".join(ids))
            return _Reply("AA", None, None, ids)
        event(log, "mllp-accepted", client=ip, control_id=ctrl, type=result.info.document_type.code,
              size=len(frame), rcpts=len(result.outgoing[0].recipients) if result.outgoing else 0,
              unresolved=len(result.resolution.unresolved), duplicates=len(result.suppressed),
              replaces=result.info.replaces, queued=",".join(ids))
        return _Reply("AA", None, None, ids)

    @staticmethod
    def _log_not_queued(exc: Exception, ack: str, ip: str, ctrl: str, size: int) -> None:
        if isinstance(exc, PayloadError):
            event(log, "mllp-rejected", logging.WARNING, client=ip, control_id=ctrl, size=size,
                  code=exc.code, reason=exc.what, where=exc.where, rule=getattr(exc, "rule", None))
        elif isinstance(exc, GatewayError):
            event(log, "mllp-not-queued", logging.ERROR if exc.temporary else logging.WARNING, client=ip,
                  control_id=ctrl, size=size, ack=ack, code=exc.code)
        else:
            event(log, "mllp-crashed", logging.ERROR, client=ip, control_id=ctrl, exc_type=type(exc).__name__)


__all__ = ["MllpListener", "ack_for", "control_id", "profile_ack_for", "server_context"]
