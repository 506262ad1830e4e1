"""The MLLP listener over a real TCP socket: AA only once spooled, AR for bad input, AE for spool failures."""

from __future__ import annotations

import asyncio
import ipaddress
import logging

import pytest

from gateway.intake.mllp import MllpListener, control_id, server_context
from gateway.intake.settings import MllpSettings
from gateway.routing.hl7 import mllp_frame
from tests.intake import samples as s


def _settings(**kw) -> MllpSettings:
    base = {"address": "127.0.0.1", "port": 0, "sender": s.LIS, "timeout": 5.0,
            "allowed_networks": (ipaddress.ip_network("127.0.0.0/8"),)}
    base.update(kw)
    return MllpSettings(**base)


@pytest.fixture
async def listener(spool, directory, dedup, routing):
    accepted: list[str] = []
    lst = MllpListener(_settings(), spool, directory, dedup, accepted.append, 3600.0, routing=routing)
    lst.accepted = accepted  # type: ignore[attr-defined]
    await lst.start()
    yield lst
    await lst.stop()


async def _read_ack(reader: asyncio.StreamReader) -> dict[str, list[str]]:
    raw = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 10)
    assert raw.startswith(b"\x0b")
    segments = raw[1:-2].decode().split("\r")
    return {seg[:3]: seg.split("|") for seg in segments if seg}


async def _exchange(port: int, *chunks: bytes, acks: int = 1) -> list[dict[str, list[str]]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0.02)
        return [await _read_ack(reader) for _ in range(acks)]
    finally:
        writer.close()


async def test_aa_only_after_the_spool_has_it(listener, spool) -> None:
    (ack,) = await _exchange(listener.bound, mllp_frame(s.oru(control="CTRL0001")))
    assert ack["MSA"][1:3] == ["AA", "CTRL0001"]
    assert ack["MSH"][8].startswith("ACK")
    (queued,) = spool.list()
    assert [r.address for r in queued.recipients] == [s.ADDR_LOCAL] and queued.sender == s.LIS
    assert listener.accepted == [queued.id] and queued.listener == "mllp"
    assert b"application/hl7-v2" in spool.message_bytes(queued.id)


async def test_split_frames_and_two_messages_in_one_write(listener, spool) -> None:
    frame = mllp_frame(s.oru(control="CTRLSPLIT"))
    both = mllp_frame(s.oru(control="CTRLA", order="REQ50")) + mllp_frame(s.oru(control="CTRLB", order="REQ51"))
    acks = await _exchange(listener.bound, frame[:1], frame[1:40], frame[40:-1], frame[-1:], both, acks=3)
    assert [a["MSA"][1:3] for a in acks] == [["AA", "CTRLSPLIT"], ["AA", "CTRLA"], ["AA", "CTRLB"]]
    assert len(spool.list()) == 3


async def test_resend_is_acknowledged_but_not_sent_twice(listener, spool) -> None:
    frame = mllp_frame(s.oru(control="CTRLDUP"))
    acks = await _exchange(listener.bound, frame, frame, acks=2)
    assert [a["MSA"][1] for a in acks] == ["AA", "AA"]
    assert len(spool.list()) == 1
    (ack,) = await _exchange(listener.bound, mllp_frame(s.oru(control="CTRLFIX", status="C")))
    assert ack["MSA"][1] == "AA" and len(spool.list()) == 2  # a correction is sent again


async def test_ar_on_garbage_and_nothing_spooled(listener, spool) -> None:
    (garbage,) = await _exchange(listener.bound, mllp_frame(b"hello, this is not HL7"))
    assert garbage["MSA"][1] == "AR" and "ERR" in garbage
    bad_delims = s.oru(control="CTRLBAD").replace(b"MSH|^~\\&|", b"MSH|^^^^|", 1)
    (delims,) = await _exchange(listener.bound, mllp_frame(bad_delims))
    assert delims["MSA"][1] == "AR" and "MSH-2" in delims["MSA"][3]
    adt = s.oru(control="CTRLADT").replace(b"ORU^R01^ORU_R01", b"ADT^A01^ADT_A01")
    (unsupported,) = await _exchange(listener.bound, mllp_frame(adt))
    assert unsupported["MSA"][1:3] == ["AR", "CTRLADT"] and unsupported["ERR"][3].startswith("200")
    for ack in (garbage, delims, unsupported):
        text = "|".join(sum(ack.values(), []))
        assert s.PATIENT_FAMILY not in text and s.INS not in text
    assert spool.list() == []


async def test_ae_when_the_spool_fails(listener, spool) -> None:
    spool.close()  # accept now raises SpoolError: a real failure of the store
    (ack,) = await _exchange(listener.bound, mllp_frame(s.oru(control="CTRLAE")))
    assert ack["MSA"][1:3] == ["AE", "CTRLAE"]
    assert listener.accepted == []
    spool.open()
    assert spool.list() == []
    (ack,) = await _exchange(listener.bound, mllp_frame(s.oru(control="CTRLAE")))  # the LIS resends
    assert ack["MSA"][1] == "AA" and len(spool.list()) == 1


async def test_out_of_sync_or_oversized_frames_get_ar_then_close(spool, directory, dedup, routing) -> None:
    lst = MllpListener(_settings(max_frame=1000), spool, directory, dedup, None, 3600.0, routing=routing)
    await lst.start()
    try:
        for payload in (mllp_frame(s.oru(embedded=s.cda())), b"junk outside a frame"):
            reader, writer = await asyncio.open_connection("127.0.0.1", lst.bound)
            writer.write(payload)
            await writer.drain()
            ack = await _read_ack(reader)
            assert ack["MSA"][1] == "AR"
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed
            writer.close()
        assert spool.list() == []
    finally:
        await lst.stop()


async def test_network_filter_and_idle_timeout(spool, directory, dedup, routing) -> None:
    lst = MllpListener(_settings(allowed_networks=(ipaddress.ip_network("10.0.0.0/8"),)), spool, directory, dedup,
                       None, 3600.0, routing=routing)
    await lst.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", lst.bound)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    finally:
        await lst.stop()
    lst = MllpListener(_settings(timeout=0.3), spool, directory, dedup, None, 3600.0, routing=routing)
    await lst.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", lst.bound)
        writer.write(b"\x0bMSH|")  # a partial frame, then silence
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    finally:
        await lst.stop()


def test_control_id_is_only_a_safe_token() -> None:
    assert control_id(s.oru(control="CTRL0001")) == "CTRL0001"
    assert control_id(s.oru(control="A B<script>")) == ""
    assert control_id(b"garbage") == ""


async def test_tls_1_2_minimum(tmp_path, spool, directory, dedup, routing) -> None:
    import ssl

    from gateway.default_setup import make_self_signed

    cert, key = make_self_signed("mllp.intake.test")
    (tmp_path / "c.pem").write_bytes(cert)
    (tmp_path / "k.pem").write_bytes(key)
    settings = _settings(tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "k.pem")
    ctx = server_context(settings)
    assert ctx is not None and ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    lst = MllpListener(settings, spool, directory, dedup, None, 3600.0, routing=routing)
    await lst.start()
    try:
        client = ssl.create_default_context(cafile=str(tmp_path / "c.pem"))
        client.check_hostname = False
        reader, writer = await asyncio.open_connection("127.0.0.1", lst.bound, ssl=client)
        assert writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
        writer.write(mllp_frame(s.oru(control="CTRLTLS")))
        ack = await _read_ack(reader)
        writer.close()
        assert ack["MSA"][1:3] == ["AA", "CTRLTLS"] and len(spool.list()) == 1
    finally:
        await lst.stop()


async def test_mutual_tls_with_allowed_subjects(tmp_path, spool, directory, dedup, routing, caplog) -> None:
    """client_ca: no certificate or one from another CA fails the handshake; a certificate from the
    CA whose subject is not allowed is closed without an ACK; the allowed LIS gets AA."""
    import ssl

    from tests.e2e.tlspki import TestCA

    ca, other = TestCA(tmp_path / "ca"), TestCA(tmp_path / "other", "TEST AC autre")
    server = ca.issue("mllp.gateway.test", client=False)
    lis, stranger, forged = ca.issue("lis.labo.test", server=False), ca.issue("autre.test", server=False), \
        other.issue("lis.labo.test", server=False)
    settings = _settings(tls_cert=server.cert, tls_key=server.key, client_ca=ca.ca_file,
                         allowed_client_subjects=("lis.labo.test",))
    lst = MllpListener(settings, spool, directory, dedup, None, 3600.0, routing=routing)
    await lst.start()

    def context(pair=None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(ca.ca_file))
        if pair is not None:
            ctx.load_cert_chain(str(pair.cert), str(pair.key))
        return ctx

    async def send(pair, control: str) -> dict[str, list[str]] | str:
        """The ACK, or the name of the error that ended the exchange."""
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", lst.bound, ssl=context(pair),
                                                           server_hostname="localhost")
        except (ssl.SSLError, ConnectionError) as exc:
            return type(exc).__name__
        try:
            writer.write(mllp_frame(s.oru(control=control)))
            await writer.drain()
            return await _read_ack(reader)  # TLS 1.3: a refused client certificate shows on this read
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError) as exc:
            return type(exc).__name__
        finally:
            writer.close()

    def refused_by_subject() -> int:
        return sum(1 for r in caplog.records if r.getMessage() == "mllp-refused"
                   and r.fields.get("reason") == "client certificate not allowed")  # type: ignore[attr-defined]

    caplog.set_level(logging.INFO, logger="gateway.intake.mllp")
    try:
        # no certificate, or the allowed subject from another CA: refused in the TLS handshake,
        # before the subject check (TLS 1.3: the client sees it as an alert or an EOF on its read)
        assert isinstance(await send(None, "CTRLNOCERT"), str)
        assert isinstance(await send(forged, "CTRLFORGED"), str)
        assert refused_by_subject() == 0
        assert isinstance(await send(stranger, "CTRLSTRANGER"), str)  # a good certificate, not allowed
        assert refused_by_subject() == 1
        assert spool.list() == []
        ack = await send(lis, "CTRLMTLS")
        assert not isinstance(ack, str) and ack["MSA"][1:3] == ["AA", "CTRLMTLS"]
        assert len(spool.list()) == 1
    finally:
        await lst.stop()
