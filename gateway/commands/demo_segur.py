"""`msgw demo`, step 7: msgw as the CI-SIS GESTIONNAIRE of a Ségur lab system (SGL).

The SGL hands an ORU^R01 with an invented CR-BIO (CDA level 1 with its PDF) over MLLP, for a
doctor and for the patient's Mon espace santé mailbox; msgw answers ``AA``, sends the doctor an
S/MIME copy and the patient's operator a trust-space (mutual TLS) copy, then the business
acknowledgments come back to the SGL's own MLLP listener: ``ZAM^Z01`` (the DMP, not performed),
``ZAM^Z02`` per copy accepted, ``ZAM^Z03`` once the doctor's client sent its read receipt.
Everything is invented and TEST: the INS is on the test authority, the keys are the TEST PKI's.
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import ssl
import sys
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from gateway.cisis.zam import parse_zam
from gateway.routing.hl7 import MLLPDecoder, build_ack, mllp_frame
from gateway.smime.engine import Verifier, unwrap_message
from gateway.smime.testpki import APPLICATION_EMAIL, ORG_EMAIL, PERSON_EMAIL, PERSON_RPPS
from gateway.tlstestpki import TestCA

APPLICATION_MAILBOX = APPLICATION_EMAIL
INS = "299129912345678"
PATIENT_BOX = f"{INS}@patient.mssante.fr"
SGL, SGL_FACILITY = "SGL-DEMO", "LABO-DEMO"
CONTROL_ID = "SEGUR0001"


class Recorder:
    """An SMTP stand-in (the patient's operator here): records what it receives."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,  # noqa: N802
                          mail_options: list[str]) -> str:
        if not (session.ssl and session.ssl.get("peercert")):
            return "530 5.7.0 client certificate required (trust space)"
        envelope.mail_from = address
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.received.append(envelope.original_content)
        return "250 2.0.0 OK"


class MllpRecorder:
    """A stand-in MLLP listener (the SGL's for ZAMs, the DPI's for MDMs): records each message
    and answers AA."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = MLLPDecoder()
        while data := await reader.read(65536):
            for frame in decoder.feed(data):
                self.received.append(frame)
                writer.write(mllp_frame(build_ack(frame, "AA")))
                await writer.drain()
        writer.close()

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()


class SegurSetup:
    """The pieces step 8 adds around the embedded default: the patient's operator (mutual TLS,
    on the trust-space list), the SGL's ZAM listener, and the config that names them."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.ca = TestCA(base / "var" / "demo-tls")
        self.patient_operator = Recorder()
        self.sgl = MllpRecorder()
        self.controller: Controller | None = None

    async def start(self, port: int) -> None:
        await self.sgl.start()
        server = self.ca.issue("mx.patient.mssante.fr")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(server.cert), str(server.key))
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.load_verify_locations(cafile=str(self.ca.ca_file))
        self.controller = Controller(self.patient_operator, hostname="127.0.0.1", port=port, tls_context=ctx,
                                     require_starttls=True)
        self.controller.start()

    def configure(self, data: dict[str, Any], port: int) -> None:
        """Add the MLLP intake, the profile, the patient's trust-space route to the default."""
        ours = self.ca.issue("msgw.localhost")
        listed = self.base / "var" / "listeblanche.txt"
        listed.write_text("patient.mssante.fr\n")
        data["trust"]["authorised_domains_file"] = str(listed)
        data["policy"]["destinations"] = {"patient.mssante.fr": "trust-space-tls"}
        data["delivery"]["routes"]["patient.mssante.fr"] = {
            "host": "localhost", "port": port, "tls": "required", "ca_file": str(self.ca.ca_file),
            "client_cert": str(ours.cert), "client_key": str(ours.key)}
        data["intake"]["mllp"] = {"address": "127.0.0.1", "port": 0, "sender": ORG_EMAIL}
        data["intake"]["cisis"] = {
            "application_mailbox": APPLICATION_MAILBOX, "nil": "DEMO-NIL",
            "creators": {"sgl": {"application": SGL, "facility": SGL_FACILITY,
                                 "mllp": f"127.0.0.1:{self.sgl.port}"}}}

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
        self.sgl.stop()


def cda_n1() -> bytes:
    """An invented CR-BIO, CDA level 1: its PDF in the nonXMLBody (a one-line TEST PDF)."""
    pdf = base64.b64encode(b"%PDF-1.4\n% TEST msgw demo: resultat invente\n%%EOF\n").decode()
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<ClinicalDocument xmlns="urn:hl7-org:v3">
  <realmCode code="FR"/><typeId root="2.16.840.1.113883.1.3" extension="POCD_HD000040"/>
  <templateId root="1.2.250.1.213.1.1.1.1"/>
  <id root="1.2.250.9999.3" extension="CRBIO-DEMO-1"/>
  <code code="11502-2" codeSystem="2.16.840.1.113883.6.1" displayName="CR d'examens biologiques"/>
  <title>CR d'examens biologiques (demo)</title><effectiveTime value="20261203090000+0100"/>
  <confidentialityCode code="N" codeSystem="2.16.840.1.113883.5.25"/><languageCode code="fr-FR"/>
  <setId root="1.2.250.9999.3" extension="SET-DEMO"/><versionNumber value="1"/>
  <recordTarget><patientRole><id root="1.2.250.1.213.1.4.10" extension="{INS}"/>
    <patient><name><family qualifier="BR">INVENTE</family><given>CAMILLE</given></name>
    <administrativeGenderCode code="F" codeSystem="2.16.840.1.113883.5.1"/><birthTime value="19991231"/>
    </patient></patientRole></recordTarget>
  <author><time value="20261203090000+0100"/><assignedAuthor><id root="1.2.250.1.71.4.2.1" extension="810109999998"/>
    <assignedPerson><name><family>BIOLOGISTE</family></name></assignedPerson></assignedAuthor></author>
  <custodian><assignedCustodian><representedCustodianOrganization><id root="1.2.250.1.71.4.2.2" extension="LABO"/>
  </representedCustodianOrganization></assignedCustodian></custodian>
  <component><nonXMLBody><text mediaType="application/pdf" representation="B64">{pdf}</text></nonXMLBody></component>
</ClinicalDocument>
""".encode()


def sgl_oru() -> bytes:
    """The SGL's message: ORU^R01 of the profile, for the doctor and the patient, acknowledgments asked."""
    body = base64.b64encode("Résultat de biologie (TEST, patient inventé).".encode()).decode()
    flags = {"MASQUE_PS": "N", "INVISIBLE_PATIENT": "N", "INVISIBLE_REP_LEGAUX": "N", "CONNEXION_SECRETE": "N",
             "MODIF_CONF_CODE": "N", "DESTDMP": "Y", "DESTMSSANTEPS": "Y", "DESTMSSANTEPAT": "Y",
             "ACK_RECEPTION": "Y", "ACK_LECTURE_MSS": "Y"}
    segs = [f"MSH|^~\\&|{SGL}|{SGL_FACILITY}|MSGW|PFI|20261203090000||ORU^R01^ORU_R01|{CONTROL_ID}|P|2.5|||||FRA|"
            "UNICODE UTF-8|||2.1^CISIS_CDA_HL7_V2",
            "|".join(["PID", "", "", f"{INS}^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS", "",
                      "INVENTE^CAMILLE^^^^^L", "", "19991231", "F", *[""] * 23, "VALI"]),
            "PV1|1|O",
            "ORC|NW|CMD1^CAB|R1^LABO",
            "OBR|1|CMD1^CAB|R1^LABO|11502-2^CR d'examens biologiques^LN|||20261203083000||||||||||||||||||F",
            "OBX|1|ED|11502-2^CR d'examens biologiques^LN||^TEXT^XML^Base64^"
            + base64.b64encode(cda_n1()).decode() + "||||||F",
            "PRT||UC||SB^^HL70912|810109999998^BIOLOGISTE^Demo^^^^^^ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS",
            f"PRT||UC||RCT^^HL70912|8{PERSON_RPPS}^TEST-DUPONT^JEAN^^^^^^ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO^D^^^"
            f"IDNPS||||||||||^^X.400^{PERSON_EMAIL}",
            f"PRT||UC||RCT^^HL70912|{INS}^INVENTE^CAMILLE^^^^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^L^^^INS"
            f"||||||||||^^X.400^{PATIENT_BOX}"]
    segs += [f"OBX|{n}|CE|{flag}^{flag}^MetaDMPMSS||{value}^^HL70136||||||F" for n, (flag, value)
             in enumerate(flags.items(), start=2)]
    segs.append(f"OBX|{len(flags) + 2}|ED|CORPSMAIL_PS^Corps du mail pour un PS^MetaDMPMSS||^TEXT^^Base64^{body}"
                "||||||F")
    return ("\r".join(segs) + "\r").encode()


async def mllp_exchange(port: int, message: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(mllp_frame(message))
    await writer.drain()
    decoder = MLLPDecoder()
    try:
        while data := await asyncio.wait_for(reader.read(65536), 20):
            if frames := decoder.feed(data):
                return frames[0]
    finally:
        writer.close()
    raise ConnectionError("the MLLP listener closed without an ACK")


def _zam_line(frame: bytes) -> str:
    z = parse_zam(frame)
    event = z["MSH-9"].split("^")[1]
    who = z.get("OBX[2]-5", "").split("^")[-1] or "DMP"
    who = "<patient>@patient.mssante.fr" if who.endswith("@patient.mssante.fr") else who
    err = f", ERR {z['ERR[1]-5'].split('^')[0]}" if "ERR[1]-5" in z else ""
    return f"ZAM^{event} {z['OBX[1]-3'].split('^')[0]}={z['OBX[1]-5'].split('^')[0]} for {who}{err}"


def _mdn(message_id: str) -> bytes:
    """The doctor's client's read receipt (RFC 8098, the MSSanté form)."""
    return ("From: <" + PERSON_EMAIL + ">\r\nTo: <" + APPLICATION_MAILBOX + ">\r\nSubject: Accusé de lecture\r\n"
            "MIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=disposition-notification; boundary="mdn"\r\n\r\n'
            "--mdn\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nLe message a été affiché.\r\n"
            "--mdn\r\nContent-Type: message/disposition-notification\r\n\r\n"
            f"Reporting-UA: cabinet-parc.sante.test; TEST\r\nFinal-Recipient: rfc822;{PERSON_EMAIL}\r\n"
            f"Original-Message-ID: {message_id}\r\n"
            "Disposition: manual-action/MDN-sent-manually; displayed\r\n\r\n--mdn--\r\n").encode()


async def segur_flow(gateway: Any, setup: SegurSetup, operator_received: list[bytes], doctor: Any,
                     verifier: Verifier, relay: tuple[str, int], wait: Any) -> bool:
    import aiosmtplib

    mllp = gateway.intake.mllp.bound
    before = len(operator_received)
    print(f"==> 7. a Ségur SGL sends an ORU^R01 (CI-SIS CDA-in-HL7v2, CR-BIO) over MLLP port {mllp}: "
          "to the doctor and to the patient's Mon espace santé", flush=True)
    ack = await mllp_exchange(mllp, sgl_oru())
    msa = next(s for s in ack.split(b"\r") if s.startswith(b"MSA")).decode()
    if not msa.startswith("MSA|AA"):
        print(f"msgw: the SGL got {msa}", file=sys.stderr)
        return False
    print(f"==>    the SGL got {msa}: the copies are queued", flush=True)
    if not await wait(lambda: len(operator_received) > before and setup.patient_operator.received):
        print("msgw: the CI-SIS copies did not arrive", file=sys.stderr)
        return False
    opened = await unwrap_message(operator_received[before], keys=[doctor], verifier=verifier)
    inner = email.message_from_bytes(opened.content, policy=email.policy.default)
    names = [p.get_filename() for p in inner.walk() if p.get_filename()]
    print(f"==>    the doctor's copy is S/MIME ({'+'.join(opened.layers)}); inside: X-MSS-CODECDA "
          f"{inner['X-MSS-CODECDA']}, X-MSS-INS {inner['X-MSS-INS']}, attachments {names}", flush=True)
    patient = email.message_from_bytes(setup.patient_operator.received[0], policy=email.policy.default)
    print(f"==>    the patient's copy went over mutual TLS to the Mon espace santé operator: "
          f"{patient.get_content_type()}, X-MSS-INS {patient['X-MSS-INS']}, X-MSS-NIL {patient['X-MSS-NIL']}",
          flush=True)
    if not await wait(lambda: len(setup.sgl.received) >= 3):
        print("msgw: the SGL did not get its reception acknowledgments", file=sys.stderr)
        return False
    await aiosmtplib.send(_mdn(str(inner["Message-ID"])), sender=PERSON_EMAIL, recipients=[APPLICATION_MAILBOX],
                          hostname=relay[0], port=relay[1], start_tls=False)
    print("==>    the doctor opens it: the client's read receipt (MDN) comes back to the platform's mailbox",
          flush=True)
    if not await wait(lambda: len(setup.sgl.received) >= 4):
        print("msgw: the SGL did not get the read acknowledgment", file=sys.stderr)
        return False
    for frame in setup.sgl.received:
        print(f"==>    SGL received {_zam_line(frame)}", flush=True)
    events = [parse_zam(z)["MSH-9"].split("^")[1] for z in setup.sgl.received]
    return events == ["Z01", "Z02", "Z02", "Z03"]


__all__ = ["INS", "MllpRecorder", "SegurSetup", "cda_n1", "segur_flow", "sgl_oru"]
