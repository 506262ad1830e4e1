"""The ``consumer`` transport: an application mailbox's mail into a DPI, RIS or practice software as
HL7 v2.6 MDM messages over MLLP, or as ``.hl7`` files in a drop folder (CI-SIS volet "Transmission
au LPS de documents CDA provenant d'un courriel MSSanté", issue 14).

The bytes it gets are the inbound pipeline's copy for a local recipient: decrypted, the signature
verified, our ``X-Msgw-Verification`` header on top. A mail whose verification failed
(``X-Msgw-Verification: fail…``) is NOT integrated: the sender gets error 906 "signature
invalide" (the consumer must never see a document the gateway could not authenticate).

For every CDA of the ``IHE_XDM.ZIP``: `gateway.lps.checks.check` (900..906, against what the
`DeliveredStore` kept), `gateway.lps.mdm.build_mdms`, then one MDM after the other on one MLLP
connection, each waiting for its ACK (``ack_timeout``):

- ``AA`` for all: each document is recorded in the store, the recipient is delivered
  (reply ``2.6.0 integrated by the consumer``);
- ``AE``/``AR``: bounced, ``5.6.0`` and the reply text ``<code>^<label>`` (the ACK's ERR, else
  ``906^<MSA-3 text>``), which `gateway.lps.reporter` turns into the MDN;
- no answer, a refused connection, a broken stream: `DeliveryError` temporary; the spool retries
  with its backoff. A crash or a lost ACK means the MDMs are sent again: at least once.

A mail without an archive goes to the mailbox's local delivery (``no_xdm = "maildir"``) or is
bounced (``"refuse"``); never dropped. Pure work (reading, checks, building) runs off the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
import ssl
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

from gateway import tlspolicy
from gateway.config import GatewayConfig
from gateway.config.consumers import ConsumerConfig
from gateway.config.storage import StorageConfig
from gateway.delivery.nexthop import Destination, NextHopResolver
from gateway.delivery.smtp_client import RecipientResult
from gateway.errors import DeliveryError, GatewayError
from gateway.fsutil import write_atomic
from gateway.logs import event
from gateway.lps import checks, incoming, mdm
from gateway.lps.model import LABELS, ConsumerSettings, Delivered, IntegrationError, Mdm
from gateway.lps.store import DeliveredDocuments
from gateway.rawmime import header_fields
from gateway.routing.hl7 import MLLPDecoder, mllp_frame, parse_message
from gateway.storage import delivered_store, process_store

log = logging.getLogger("gateway.delivery.consumer")

Results = tuple[dict[str, RecipientResult], str]

#: `gateway.stages.headers.VERIFICATION_HEADER` (delivery never imports the pipeline's stages).
VERIFICATION_HEADER = "X-Msgw-Verification"


class HopLike(Protocol):
    """What this transport reads of `gateway.delivery.transports.Hop` (not imported: the registry
    imports this module)."""

    @property
    def config(self) -> GatewayConfig: ...
    @property
    def destination(self) -> Destination: ...
    @property
    def resolver(self) -> NextHopResolver: ...

#: The reply of a recipient whose documents the consumer acknowledged (the reporter's "processed").
INTEGRATED = "2.6.0 integrated by the consumer"
#: The status of a document the consumer or the checks refused (RFC 3463: media not supported).
REFUSED_STATUS = "5.6.0"
_ANS_REPLY = re.compile(r"(?<!\d)(9\d\d)\^([^\r\n]*)")


def ans_error(reply: str | None) -> tuple[str, str] | None:
    """(code, label) of a refusal's reply text (``… 902^Identifiant patient inconnu``), or None."""
    m = _ANS_REPLY.search(reply or "")
    return (m.group(1), m.group(2).strip() or LABELS.get(m.group(1), "")) if m else None


def consumer_tls_context(consumer: ConsumerConfig) -> ssl.SSLContext:
    """TLS 1.2+ to the consumer, its certificate checked against ``ca_file`` (system CAs if unset),
    our client certificate presented when one is configured. A DPI/RIS is no MSSanté operator
    and its certificate may be ECDSA: the broad "compatible" preset (still no weak suite)."""
    ctx = ssl.create_default_context(cafile=str(consumer.ca_file) if consumer.ca_file else None)
    tlspolicy.apply(ctx, "compatible")
    if consumer.client_cert is not None:
        ctx.load_cert_chain(str(consumer.client_cert), str(consumer.client_key) if consumer.client_key else None)
    return ctx


class ConsumerRefusal(GatewayError):
    """The consumer answered AE/AR: the ANS error to report (not a fault of the hop: the
    recipient is bounced, the others of the hop are not concerned)."""

    code = "lps-consumer-refused"
    temporary = False
    status = REFUSED_STATUS

    def __init__(self, ans_code: str, label: str) -> None:
        super().__init__(f"the consumer refused the document ({ans_code})")
        self.ans_code = ans_code
        self.label = label


async def _read_ack(reader: asyncio.StreamReader, decoder: MLLPDecoder) -> bytes:
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            raise DeliveryError("the consumer closed the connection before its ACK", temporary=True, status="4.4.2")
        answers = decoder.feed(chunk)
        if answers:
            return answers[0]


def _verdict(ack: bytes, control_id: str | None) -> None:
    """Raise `ConsumerRefusal` for AE/AR, DeliveryError (temporary) for an answer that is not ours."""
    try:
        code, acked, error = mdm.read_consumer_ack(ack)
    except GatewayError as exc:
        raise DeliveryError(f"unreadable answer from the consumer ({exc.code})", temporary=True,
                            status="4.4.2") from None
    if code in ("AA", "CA"):
        if control_id is not None and acked and acked != control_id:
            raise DeliveryError("the consumer acknowledged another message", temporary=True, status="4.4.2")
        return
    if code in ("AE", "AR", "CE", "CR"):
        found = ans_error(error)
        raise ConsumerRefusal(*found) if found else ConsumerRefusal("906", _reason(ack, error))
    raise DeliveryError("the consumer's answer is not an ACK", temporary=True, status="4.4.2")


def _reason(ack: bytes, error: str | None) -> str:
    """The text of a refusal without an ANS code: MSA-3, else the ERR's text, else the IG label."""
    msg = parse_message(ack)
    text = msg.value(msg.first("MSA"), 3) or (error or "").partition("^")[2] or LABELS["906"]
    return " ".join(text.replace("^", " ").split())[:200]


async def send_mdms(consumer: ConsumerConfig, mdms: Sequence[Mdm], control_ids: Sequence[str]) -> None:
    """Each MDM on one MLLP connection, each ACK awaited; `ConsumerRefusal` or DeliveryError otherwise."""
    host, port = consumer.mllp_host or "", consumer.mllp_port
    writer: asyncio.StreamWriter | None = None
    ids: Sequence[str | None] = control_ids if len(control_ids) == len(mdms) else [None] * len(mdms)
    try:
        async with asyncio.timeout(consumer.ack_timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=consumer_tls_context(consumer) if consumer.tls else None,
                server_hostname=host if consumer.tls else None)
        decoder = MLLPDecoder()
        for one, control_id in zip(mdms, ids, strict=True):
            async with asyncio.timeout(consumer.ack_timeout):
                writer.write(mllp_frame(one.data))
                await writer.drain()
                _verdict(await _read_ack(reader, decoder), control_id)
    except TimeoutError:
        raise DeliveryError("no ACK from the consumer in time", temporary=True, status="4.4.2") from None
    except (OSError, ssl.SSLError) as exc:
        raise DeliveryError(f"cannot reach the consumer ({type(exc).__name__})", temporary=True,
                            status="4.4.1") from None
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 2)


def write_mdms(consumer: ConsumerConfig, mdms: Sequence[Mdm], control_ids: Sequence[str]) -> None:
    """One ``<UTC time>-<n>-<control id>.hl7`` per MDM in the drop folder (a listing is the send
    order), each written atomically (blocking)."""
    assert consumer.folder is not None
    consumer.folder.mkdir(parents=True, exist_ok=True, mode=0o750)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S%f")
    for n, one in enumerate(mdms):
        name = control_ids[n] if len(control_ids) == len(mdms) else uuid.uuid4().hex
        write_atomic(consumer.folder / f"{stamp}-{n:03d}-{name}.hl7", one.data)


def verification_failed(data: bytes) -> bool:
    """Our verification header says ``fail`` (the copy was not authenticated)."""
    try:
        fields = header_fields(data)
    except GatewayError:
        return True
    name = VERIFICATION_HEADER.lower()
    return any(v.strip().lower().startswith("fail") for n, v in fields if n == name)


def _prepare(consumer: ConsumerConfig, sender: str, data: bytes, storage: StorageConfig, store_path: Path
             ) -> tuple[list[Mdm], list[str]] | None:
    """Read, check and build (blocking, pure but for the store's lookups): the MDMs and their
    control ids, or None when the mail carries no archive. IntegrationError when refused."""
    mail, package, pdfs = incoming.read_incoming(data, recipient=consumer.address, return_path=sender)
    if package is None:
        return None
    control_ids: list[str] = []

    def control_id() -> str:
        control_ids.append(uuid.uuid4().hex[:20].upper())
        return control_ids[-1]

    settings = ConsumerSettings(address=consumer.address, application=consumer.application,
                                facility=consumer.facility, organisation=consumer.organisation)
    with _store(storage, store_path) as store:
        checks.check(mail, package, store.previous)
        # the delivered version tells a replacement's set id and whether its confidentiality changed
        mdms = mdm.build_mdms(mail, package, pdfs, settings, now=dt.datetime.now().astimezone(),
                              control_id=control_id, previous=store.previous)
    return mdms, control_ids


def _record(storage: StorageConfig, store_path: Path, documents: list[Delivered]) -> None:
    with _store(storage, store_path) as store:
        store.record_all(documents)


@contextlib.contextmanager
def _store(storage: StorageConfig, store_path: Path) -> Iterator[DeliveredDocuments]:
    """The delivered-documents store for one message: on a shared store the process's own (one
    connection pool, closed at the gateway's stop: `gateway.storage.process_store`), on SQLite
    the file opened for this message and closed after it (as before)."""
    if storage.shared:
        yield process_store(("lps-delivered", storage.dsn), lambda: delivered_store(storage, store_path))
        return
    store = delivered_store(storage, store_path)
    try:
        yield store
    finally:
        store.close()


def _refused(recipients: Sequence[str], code: str, label: str) -> dict[str, RecipientResult]:
    return {r: RecipientResult(554, f"{REFUSED_STATUS} {code}^{label}") for r in recipients}


class ConsumerTransport:
    """The transport of a ``consumer:<address>`` destination (see the module docstring)."""

    def __init__(self, hop: HopLike) -> None:
        self.hop = hop

    def _consumer(self, recipients: Sequence[str]) -> ConsumerConfig:
        consumer = self.hop.config.delivery.consumer_for(recipients[0]) if recipients else None
        if consumer is None:  # the table changed under a queued mail: the operator's to fix
            raise DeliveryError(f"no consumer configured for {self.hop.destination.key}", temporary=True,
                                status="4.3.5")
        return consumer

    async def deliver(self, sender: str, recipients: Sequence[str], data: bytes) -> Results:
        consumer = self._consumer(recipients)
        remote = consumer.endpoint
        if verification_failed(data):
            event(log, "lps-refused", dest=self.hop.destination.key, code="906", reason="verification failed")
            return _refused(recipients, "906", "Signature invalide"), remote
        store_path = self.hop.config.spool.path  # the store is beside the spool (or shared)
        try:
            prepared = await asyncio.to_thread(_prepare, consumer, sender, data, self.hop.config.storage, store_path)
        except IntegrationError as exc:
            event(log, "lps-refused", dest=self.hop.destination.key, code=exc.code_ans, reason=exc.what)
            return _refused(recipients, exc.code_ans, exc.label), remote
        except GatewayError as exc:
            if exc.temporary:
                raise DeliveryError(f"cannot integrate now ({exc.code})", temporary=True, status=exc.status) from None
            event(log, "lps-refused", dest=self.hop.destination.key, code="906", reason=exc.code)
            return _refused(recipients, "906", LABELS["906"]), remote
        if prepared is None:
            return await self._without_archive(consumer, sender, recipients, data)
        mdms, control_ids = prepared
        try:
            await self._send(consumer, mdms, control_ids)
        except ConsumerRefusal as refusal:
            event(log, "lps-refused", dest=self.hop.destination.key, code=refusal.ans_code, reason="consumer ACK")
            return _refused(recipients, refusal.ans_code, refusal.label), remote
        try:
            await asyncio.to_thread(_record, self.hop.config.storage, store_path, [m.delivered for m in mdms])
        except GatewayError as exc:  # delivered already: a store fault must not send them again
            event(log, "lps-store-failed", logging.ERROR, dest=self.hop.destination.key, reason=str(exc))
        event(log, "lps-integrated", dest=self.hop.destination.key, remote=remote, mdms=len(mdms))
        return {r: RecipientResult(250, INTEGRATED) for r in recipients}, remote

    async def _send(self, consumer: ConsumerConfig, mdms: list[Mdm], control_ids: list[str]) -> None:
        if consumer.folder is None:
            await send_mdms(consumer, mdms, control_ids)
            return
        try:
            await asyncio.to_thread(write_mdms, consumer, mdms, control_ids)
        except OSError as exc:
            raise DeliveryError(f"cannot write to the consumer's folder ({type(exc).__name__})", temporary=True,
                                status="4.3.0") from None

    async def _without_archive(self, consumer: ConsumerConfig, sender: str, recipients: Sequence[str],
                               data: bytes) -> Results:
        """Item 5 of the issue: a mail without IHE_XDM.ZIP is delivered locally or refused, never dropped."""
        if consumer.no_xdm == "refuse":
            return {r: RecipientResult(554, f"{REFUSED_STATUS} no IHE_XDM.ZIP archive: this application mailbox "
                                            "integrates CDA documents only") for r in recipients}, consumer.endpoint
        return await self.hop.resolver.deliver_local(sender, list(recipients), data)


__all__ = ["INTEGRATED", "ConsumerTransport", "ans_error", "consumer_tls_context", "send_mdms",
           "verification_failed", "write_mdms"]
