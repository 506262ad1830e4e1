"""The ZAM sender against real MLLP listeners (plain and TLS) and a real folder."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.cisis.ledger import ZamLedger
from gateway.cisis.returns import parse_returns
from gateway.cisis.zam import parse_zam
from gateway.cisis.zamsender import ZamSender
from gateway.config.cisis import CisisSettings, CreatorSettings
from gateway.routing.hl7 import MLLPDecoder, mllp_frame, parse_message
from tests.cisis.reports import mdn
from tests.cisis.zamdata import ORIGINAL
from tests.e2e.tlspki import TestCA

DOCTOR = "adam.hoda@test-ci-sis.mssante.fr"


class Creator:
    """A CRÉATEUR's MLLP listener: records each ZAM and answers with ``answer(zam)`` (None: close)."""

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
                    if reply is None:
                        return
                    writer.write(mllp_frame(reply))
                    await writer.drain()
        finally:
            writer.close()

    async def start(self, ctx: ssl.SSLContext | None = None) -> int:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0, ssl=ctx)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def ack(code: str) -> Callable[[bytes], bytes]:
    def answer(zam: bytes) -> bytes:
        msg = parse_message(zam)
        return (f"MSH|^~\\&|SIL-Y|labo|PFI-X|Organisation-X|20240101||ACK^Z02^ACK|A1|P|2.6\r"
                f"MSA|{code}|{msg.value(msg.segments[0], 10)}\r").encode()
    return answer


def _ledger(tmp_path: Path, clock: list[float]) -> ZamLedger:
    store = ZamLedger(tmp_path / "cisis.sqlite", retry_schedule=(30.0,), lifetime=86400.0, clock=lambda: clock[0])
    store.record(ORIGINAL, "labo", {"ACK_RECEPTION": True, "ACK_LECTURE_MSS": True},
                 [("Q1", "<copy-1@pfi.test>", DOCTOR, "801234567897", "professional")])
    store.on_outcome("Q1", DOCTOR, True, "2.0.0", "250 ok")
    store.on_return(parse_returns(mdn())[0])
    return store


def _settings(creator: CreatorSettings) -> CisisSettings:
    return CisisSettings(application_mailbox="bal@pfi.test", creators=(creator,), zam_timeout=2.0)


async def _round(sender: ZamSender) -> None:
    await sender.run_once()
    await sender.drain()


async def test_aa_marks_sent_in_order(tmp_path: Path) -> None:
    clock = [1000.0]
    ledger = _ledger(tmp_path, clock)
    peer = Creator(ack("AA"))
    port = await peer.start()
    sender = ZamSender(_settings(CreatorSettings("labo", "SIL-Y", mllp_host="127.0.0.1", mllp_port=port)), ledger,
                       clock=lambda: clock[0])
    await _round(sender)
    await peer.stop()
    assert [parse_zam(z)["MSH-9"] for z in peer.received] == ["ZAM^Z02^ZAM_Z01", "ZAM^Z03^ZAM_Z01"]
    assert ledger.pending_count() == 0


@pytest.mark.parametrize("answer", [ack("AE"), lambda _zam: None], ids=["AE", "closed"])
async def test_refusal_or_close_is_retried_later_and_blocks_the_next(tmp_path: Path, answer) -> None:
    clock = [1000.0]
    ledger = _ledger(tmp_path, clock)
    peer = Creator(answer)
    port = await peer.start()
    creator = CreatorSettings("labo", "SIL-Y", mllp_host="127.0.0.1", mllp_port=port)
    sender = ZamSender(_settings(creator), ledger, clock=lambda: clock[0])
    await _round(sender)
    assert len(peer.received) == 1  # the Z03 did not overtake the refused Z02
    assert ledger.pending_count() == 2
    await _round(sender)
    assert len(peer.received) == 1  # not due before its retry time
    peer.answer = ack("AA")
    clock[0] += 31
    await _round(sender)
    await peer.stop()
    assert [parse_zam(z)["MSH-9"] for z in peer.received] == ["ZAM^Z02^ZAM_Z01"] * 2 + ["ZAM^Z03^ZAM_Z01"]
    assert ledger.pending_count() == 0


async def test_refused_connection_is_retried(tmp_path: Path, port_factory) -> None:
    clock = [1000.0]
    ledger = _ledger(tmp_path, clock)
    creator = CreatorSettings("labo", "SIL-Y", mllp_host="127.0.0.1", mllp_port=port_factory())
    await _round(ZamSender(_settings(creator), ledger, clock=lambda: clock[0]))
    assert ledger.pending_count() == 2
    assert ledger.due(clock[0]) == {}


async def test_tls_with_the_test_pki(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "ca")
    pair = ca.issue("sgl.labo.test", client=False)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(pair.cert), str(pair.key))
    clock = [1000.0]
    ledger = _ledger(tmp_path, clock)
    peer = Creator(ack("AA"))
    port = await peer.start(ctx)
    trusted = CreatorSettings("labo", "SIL-Y", mllp_host="127.0.0.1", mllp_port=port, tls=True, tls_ca=ca.ca_file)
    untrusted = CreatorSettings("labo", "SIL-Y", mllp_host="127.0.0.1", mllp_port=port, tls=True,
                                tls_ca=TestCA(tmp_path / "other", "TEST AC autre").ca_file)
    await _round(ZamSender(_settings(untrusted), ledger, clock=lambda: clock[0]))
    assert peer.received == [] and ledger.pending_count() == 2
    clock[0] += 31
    await _round(ZamSender(_settings(trusted), ledger, clock=lambda: clock[0]))
    await peer.stop()
    assert len(peer.received) == 2 and ledger.pending_count() == 0


async def test_folder_gets_one_file_per_zam(tmp_path: Path) -> None:
    clock = [1000.0]
    ledger = _ledger(tmp_path, clock)
    folder = tmp_path / "zams"
    folder.mkdir()
    await _round(ZamSender(_settings(CreatorSettings("labo", "SIL-Y", folder=folder)), ledger,
                           clock=lambda: clock[0]))
    files = sorted(folder.iterdir())
    assert [parse_zam(f.read_bytes())["MSH-9"] for f in files] == ["ZAM^Z02^ZAM_Z01", "ZAM^Z03^ZAM_Z01"]
    assert all(f.suffix == ".hl7" and not f.name.startswith(".") for f in files)
    assert ledger.pending_count() == 0
