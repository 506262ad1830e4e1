"""One failure of ours (the spool cannot store: here it is closed under the listeners), three
doors over real sockets: SMTP DATA, a payload mailed to the routing address, and MLLP. All three
say "retry later" the same way: 452 4.3.1 (RFC 5321 "insufficient system storage") and AE."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import smtplib
from pathlib import Path

from gateway.config import load_config
from gateway.intake.mllp import MllpListener
from gateway.intake.settings import MllpSettings
from gateway.routing.hl7 import mllp_frame
from gateway.server.smtp import SmtpServer
from tests.e2e.harness import write_config
from tests.intake import samples as s

ROUTING = "routage@msgw.test"


def _send(port: int, rcpt: str, message: bytes) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.ehlo("lis.labo-fictif.test")
        client.mail(s.LIS)
        code, text = client.rcpt(rcpt)
        assert code == 250, text
        code, text = client.data(message)
        return code, text.decode()


async def _mllp_ack(port: int, frame: bytes) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(mllp_frame(frame))
        await writer.drain()
        raw = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 10)
    finally:
        writer.close()
    msa = next(seg for seg in raw[1:-2].decode().split("\r") if seg.startswith("MSA"))
    return msa.split("|")[1]


async def test_a_spool_failure_is_the_same_temporary_answer_at_every_door(tmp_path: Path, spool, directory,
                                                                          dedup, routing) -> None:
    setup = write_config(tmp_path / "gw", sink_port=9, relay_networks='["127.0.0.0/8"]',
                         extra=f'[intake.routing]\nsmtp_address = "{ROUTING}"\nunrouted_default = "{s.UNROUTED}"\n')
    config = load_config(setup.config)
    smtp = SmtpServer(config, spool)
    mllp = MllpListener(MllpSettings(address="127.0.0.1", port=0, sender=s.LIS, timeout=5.0,
                                     allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),)),
                        spool, directory, dedup, None, 3600.0, routing=routing)
    await smtp.start()
    await mllp.start()
    try:
        spool.close()  # a real failure of the store: accept() raises SpoolError
        plain = (f"From: <{s.LIS}>\r\nTo: <dr.a@msgw.test>\r\nSubject: x\r\n\r\nhello\r\n").encode()
        payload = (f"From: <{s.LIS}>\r\nTo: <{ROUTING}>\r\nSubject: resultat\r\nMIME-Version: 1.0\r\n"
                   'Content-Type: application/octet-stream; name="r.hl7"\r\nContent-Transfer-Encoding: base64\r\n'
                   'Content-Disposition: attachment; filename="r.hl7"\r\n\r\n').encode() \
            + base64.encodebytes(s.oru(control="CTRLREPLY")).replace(b"\n", b"\r\n")
        relay = smtp.bound["relay"][1]
        data_reply = await asyncio.to_thread(_send, relay, "dr.a@msgw.test", plain)
        routed_reply = await asyncio.to_thread(_send, relay, ROUTING, payload)
        ack = await _mllp_ack(mllp.bound, s.oru(control="CTRLREPLY"))
    finally:
        await mllp.stop()
        await smtp.stop()
    assert data_reply[0] == 452 and data_reply[1].startswith("4.3.1 "), data_reply
    assert routed_reply[0] == 452 and routed_reply[1].startswith("4.3.1 "), routed_reply  # was 451
    assert ack == "AE"
    for _, text in (data_reply, routed_reply):
        assert "Traceback" not in text and s.PATIENT_FAMILY not in text
