"""Invented MSSanté mails for an application mailbox, and a DPI's MLLP listener, for the consumer
transport, the reporter and the end-to-end tests (nothing copied from the ANS examples)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import Callable
from email.message import EmailMessage

from gateway.routing.cda import read_cda
from gateway.routing.hl7 import MLLPDecoder, mllp_frame, parse_message
from gateway.routing.xdm import XdmDocument, build_xdm
from tests.cisis.samples import cda_n1

DOCTOR = "adam.hoda@cabinet-fictif.mssante.test"
MAILBOX = "dpi@hopital-fictif.mssante.test"
NOW = dt.datetime(2026, 12, 3, 10, 0, tzinfo=dt.UTC)


def xdm_mail(*, cda: bytes | None = None, action: str | None = None, mdn: bool = True, xdm: bool = True,
             message_id: str = "<lettre-1@cabinet-fictif.mssante.test>", verification: str | None = None) -> bytes:
    """A doctor's letter to the DPI's mailbox with an IHE_XDM.ZIP (the CDA N1 of the samples)."""
    msg = EmailMessage()
    msg["From"] = DOCTOR
    msg["To"] = MAILBOX
    msg["Message-ID"] = message_id
    msg["Date"] = "Thu, 03 Dec 2026 10:00:00 +0000"
    msg["Subject"] = "Compte rendu fictif"
    if mdn:
        msg["Disposition-Notification-To"] = DOCTOR
    msg.set_content("Bonjour, ci-joint un compte rendu fictif.\n")
    if xdm:
        data = cda or cda_n1()
        zipped = build_xdm([XdmDocument(data, read_cda(data), action=action)], source_id="1.2.250.1.999.1",
                           now=NOW)
        msg.add_attachment(zipped, maintype="application", subtype="zip", filename="IHE_XDM.ZIP")
    raw = msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if verification is not None:
        raw = f"X-Msgw-Verification: {verification}\r\n".encode() + raw
    return raw


def ack(code: str, err: str | None = None) -> Callable[[bytes], bytes]:
    """A consumer's ACK to an MDM: MSA-1 ``code``, MSA-2 its MSH-10, an ERR with ``err`` (code^text)."""
    def answer(mdm: bytes) -> bytes:
        msg = parse_message(mdm)
        control = msg.value(msg.segments[0], 10)
        text = (f"MSH|^~\\&|DPI|HOPITAL|MSGW||20261203100000||ACK^T02^ACK|A{control}|P|2.6\r"
                f"MSA|{code}|{control}\r")
        if err:
            text += f"ERR|||207^Application internal error^HL70357|E|{err}^^L\r"
        return text.encode()
    return answer


class Dpi:
    """A DPI's MLLP listener: keeps each MDM, answers ``answer(mdm)`` (None: says nothing, keeps
    the connection open, so the sender's ACK timeout is what ends the wait)."""

    def __init__(self, answer: Callable[[bytes], bytes | None]) -> None:
        self.answer = answer
        self.received: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = MLLPDecoder()
        try:
            while chunk := await reader.read(65536):
                for msg in decoder.feed(chunk):
                    self.received.append(msg)
                    reply = self.answer(msg)
                    if reply is not None:
                        writer.write(mllp_frame(reply))
                        await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def start(self, ctx: ssl.SSLContext | None = None, port: int = 0) -> int:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", port, ssl=ctx)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
