"""Invented MSSanté mails for an application mailbox, and a DPI's MLLP listener, for the consumer
transport, the reporter and the end-to-end tests (nothing copied from the ANS examples)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

from gateway.routing.hl7 import MLLPDecoder, mllp_frame, parse_message
from tests.lps.samples import APP, DOC_ID, DOCTOR, cda, mail

__all__ = ["DOCTOR", "MAILBOX", "Dpi", "ack", "replacement", "xdm_mail"]

MAILBOX = APP
DOMAIN = MAILBOX.rpartition("@")[2]


def xdm_mail(*, document: bytes | None = None, action: str | None = None, mdn: bool = True, xdm: bool = True,
             message_id: str = "<lettre-1@cabinet-imaginaire.mssante.test>", verification: str | None = None) -> bytes:
    """A doctor's letter to the DPI's mailbox with an IHE_XDM.ZIP (`tests.lps.samples`), as the inbound
    pipeline hands it over (CRLF, our verification header on top when ``verification``)."""
    docs = (document or cda(),) if xdm else ()
    raw = mail(*docs, action=action, dnt=DOCTOR if mdn else None, message_id=message_id)
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if verification is not None:
        raw = f"X-Msgw-Verification: {verification}\r\n".encode() + raw
    return raw


def replacement() -> bytes:
    """Version 2 of the sample document (XDM action C): needs version 1 delivered before."""
    return xdm_mail(document=cda(version=2, doc="2", parent=DOC_ID), action="C",
                    message_id="<lettre-2@cabinet-imaginaire.mssante.test>")


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
