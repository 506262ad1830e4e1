"""Routing from content, end to end: an HPRIM file dropped by a LIS reaches the prescriber
encrypted (the HPRIM bytes identical after decryption), an ORU^R01 over MLLP gets AA and
reaches the doctor, a CDA discharge letter reaches a local mailbox with an IHE_XDM.ZIP whose
metadata names the document's hash and size, and a malformed payload gets AR."""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import json
import smtplib
import socket
import subprocess
import time
from pathlib import Path

import pytest
from lxml import etree

from gateway.routing.hl7 import MLLPDecoder, mllp_frame
from gateway.routing.xdm import read_xdm
from gateway.smime.testpki import ORG_EMAIL, PERSON_EMAIL, PERSON_RPPS, TestPKI
from tests.conftest import free_port, require_tool
from tests.e2e.harness import GatewayProcess, Sink, msgw, queue_json, wait_port
from tests.e2e.test_protection_flow import _protected_setup, submit_as_lab
from tests.smime.support import shared_pki

LOCAL_DOCTOR = "dr.local@msgw.test"
LOCAL_RPPS = "10100000002"
UNROUTED = "tri@labo-tests.sante.test"
ROUTING = "routage@labo-tests.sante.test"
INS = "299129912345678"


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return shared_pki().pki


def _hprim(code: str) -> bytes:
    lines = ["D0001", "PATIENTFICTIF", "Clemence", "1 rue Nulle Part", "", "99999 NULLEVILLE", "01/01/1999",
             "2991299123456 78", "REQ77", "25/11/2026", "LABX       Laboratoire TEST", f"{code:<10} DR Test",
             "Résultats d'examens biologiques", "Glycémie à jeun : 5.2 mmol/l", "****LAB****",
             "RES|Glycémie|GLY|N|5.2|mmol/l|4.1|5.9|N|F", "****FIN****", "****FINFICHIER****"]
    return "\r\n".join(lines).encode("iso-8859-1") + b"\r\n"


def _oru(ordering: str, control: str) -> bytes:
    segs = [f"MSH|^~\\&|LISX|LABX|GWX|ORGX|20261125100000||ORU^R01^ORU_R01|{control}|P|2.5|||||FRA|UNICODE UTF-8",
            f"PID|||{INS}^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS||PATIENTFICTIF^Clemence^^^^^L||19990101|F",
            f"ORC|NW|CMD1^CABX|R1^LABX|||||||||{ordering}^TEST^Jean^^^DR^^^ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO"
            "^D^^^IDNPS",
            f"OBR|1|CMD1^CABX|R1^LABX|11502-2^CR d'examens biologiques^LN|||20261125083000|||||||||{ordering}^TEST"
            "^Jean^^^DR^^^ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS|||||||||F",
            "OBX|1|NM|GLY^Glycemie^L||5.2|mmol/l|4.1-5.9|N|||F"]
    return ("\r".join(segs) + "\r").encode()


def _cda(recipient_idnat: str) -> bytes:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<ClinicalDocument xmlns="urn:hl7-org:v3">
  <typeId root="2.16.840.1.113883.1.3" extension="POCD_HD000040"/>
  <id root="1.2.250.9999.7" extension="LDL-42"/>
  <code code="11490-0" codeSystem="2.16.840.1.113883.6.1" displayName="Lettre de liaison"/>
  <title>Lettre de liaison</title><effectiveTime value="20261125100000+0100"/>
  <confidentialityCode code="N" codeSystem="2.16.840.1.113883.5.25"/><languageCode code="fr-FR"/>
  <setId root="1.2.250.9999.7" extension="SET42"/><versionNumber value="1"/>
  <recordTarget><patientRole><id root="1.2.250.1.213.1.4.10" extension="{INS}"/>
    <patient><name><family>PATIENTFICTIF</family></name></patient></patientRole></recordTarget>
  <author><time value="20261125100000+0100"/><assignedAuthor><id root="1.2.250.1.71.4.2.1" extension="810109999998"/>
    <assignedPerson><name><family>HOSPITALIER</family></name></assignedPerson></assignedAuthor></author>
  <informationRecipient><intendedRecipient><id root="1.2.250.1.71.4.2.1" extension="{recipient_idnat}"/>
  </intendedRecipient></informationRecipient>
  <component><structuredBody><component><section><title>Synthese</title><text>Sortie TEST</text></section>
  </component></structuredBody></component>
</ClinicalDocument>
""".encode()


def _setup(tmp_path: Path, pki: TestPKI, sink_port: int):
    drop = tmp_path / "drop"
    drop.mkdir()
    codes = tmp_path / "lab-codes.csv"
    codes.write_text(f"lab_sender,lab_code,rpps\n{ORG_EMAIL},DRJEAN,{PERSON_RPPS}\n")
    mllp_port = free_port()
    setup = _protected_setup(tmp_path / "gw", pki, sink_port)
    setup.config.write_text(setup.config.read_text() + f"""
[intake.mllp]
address = "127.0.0.1"
port = {mllp_port}
sender = "{ORG_EMAIL}"

[intake.drop.lis]
path = "{drop}"
sender = "{ORG_EMAIL}"
poll_interval = "200ms"

[intake.routing]
unrouted_default = "{UNROUTED}"
lab_codes = "{codes}"
smtp_address = "{ROUTING}"
""")
    out = msgw("directory", "add", LOCAL_DOCTOR, "--capability", "local", "--key-ref", "in-client",
               "--rpps", LOCAL_RPPS, "--config",
               str(setup.config))
    assert out.returncode == 0, out.stderr
    return setup, drop, mllp_port


def _local_mail(setup) -> list[Path]:
    """The local doctor's new mail, once some arrived (20 s at most)."""
    box = setup.maildir / LOCAL_DOCTOR / "new"
    deadline = time.monotonic() + 20
    while not (box.exists() and any(box.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.1)
    return list(box.iterdir()) if box.exists() else []


def _attachment(name: str, ctype: str, data: bytes) -> str:
    return (f"--b1\r\nContent-Type: {ctype}\r\nContent-Disposition: attachment; filename=\"{name}\"\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(data).decode().replace("\n", "\r\n"))


def _mllp(port: int, message: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(mllp_frame(message))
        decoder = MLLPDecoder()
        while True:
            chunk = sock.recv(65536)
            assert chunk, "connection closed without an ACK"
            acks = decoder.feed(chunk)
            if acks:
                return acks[0]


def _decrypt(openssl: str, pki: TestPKI, raw: bytes, folder: Path) -> email.message.EmailMessage:
    folder.mkdir(exist_ok=True)
    (folder / "in.eml").write_bytes(raw)
    person = pki["person_encrypt"]
    r = subprocess.run([openssl, "cms", "-decrypt", "-in", str(folder / "in.eml"), "-recip", str(person.cert_path),
                        "-inkey", str(person.key_path), "-out", str(folder / "s.eml")], capture_output=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([openssl, "cms", "-verify", "-in", str(folder / "s.eml"), "-noverify", "-out",
                        str(folder / "c.eml")], capture_output=True)
    assert r.returncode == 0, r.stderr
    return email.message_from_bytes((folder / "c.eml").read_bytes(), policy=email.policy.default)


def test_hprim_drop_and_oru_over_mllp_reach_the_doctor_encrypted(pki: TestPKI, tmp_path: Path) -> None:
    openssl = require_tool("openssl")
    sink = Sink().start()
    try:
        setup, drop, mllp_port = _setup(tmp_path, pki, sink.port)
        hprim = _hprim("DRJEAN")
        with GatewayProcess(setup):
            wait_port(mllp_port)
            (drop / ".result.hpr.tmp").write_bytes(hprim)
            (drop / ".result.hpr.tmp").rename(drop / "result.hpr")   # write-then-rename, as a LIS does
            ack = _mllp(mllp_port, _oru("8" + PERSON_RPPS, "CTRL-E2E-1"))
            assert b"MSA|AA|CTRL-E2E-1" in ack
            nack = _mllp(mllp_port, b"MSH|^~\\&|broken\rPID|x\r")
            assert b"MSA|AR" in nack
            got = sink.wait_for(2, timeout=30)
            deadline = time.monotonic() + 10
            while not list((drop / "done").glob("*")) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert [p.name for p in (drop / "done").iterdir()] == ["result.hpr"]
            assert not list(drop.glob("*.hpr"))
        assert all(m.recipients == [PERSON_EMAIL] and m.sender == ORG_EMAIL for m in got)
        attachments = {}
        for n, m in enumerate(got):
            assert b"PATIENTFICTIF" not in m.data and INS.encode() not in m.data
            inner = _decrypt(openssl, pki, m.data, tmp_path / f"m{n}")
            for part in inner.walk():
                if part.get_filename():
                    attachments[part.get_filename()] = part.get_payload(decode=True)
        assert attachments["resultat.hpr"] == hprim   # byte for byte after decryption
        assert b"CTRL-E2E-1" in attachments["message.hl7"]
        assert "PATIENTFICTIF" not in setup.log_file.read_text()
    finally:
        sink.stop()


def test_cda_letter_to_local_doctor_with_xdm(pki: TestPKI, tmp_path: Path) -> None:
    sink = Sink().start()
    try:
        setup, _drop, _port = _setup(tmp_path, pki, sink.port)
        letter = tmp_path / "ldl.xml"
        letter.write_bytes(_cda("8" + LOCAL_RPPS))
        with GatewayProcess(setup):
            out = msgw("send", "--config", str(setup.config), "--from", ORG_EMAIL, str(letter))
            assert out.returncode == 0, out.stderr
            files = _local_mail(setup)
            assert len(files) == 1
            assert queue_json(setup) == [] or all(m["recipients"][0]["state"] != "bounced" for m in queue_json(setup))
        msg = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
        assert "PATIENTFICTIF" not in str(msg["Subject"])
        parts = {p.get_filename(): p.get_payload(decode=True) for p in msg.walk() if p.get_filename()}
        assert parts["document.xml"] == letter.read_bytes()
        package = read_xdm(parts["IHE_XDM.ZIP"])
        assert package is not None
        import zipfile
        from io import BytesIO

        with zipfile.ZipFile(BytesIO(parts["IHE_XDM.ZIP"])) as zf:
            names = zf.namelist()
            meta = etree.fromstring(zf.read("IHE_XDM/SUBSET01/METADATA.XML"))
            doc_name = next(n for n in names if n.startswith("IHE_XDM/SUBSET01/") and not n.endswith("METADATA.XML"))
            doc = zf.read(doc_name)
        assert "INDEX.HTM" in names and "README.TXT" in names
        slots = {s.get("name"): [v.text for v in s.iter("{*}Value")] for s in meta.iter("{*}Slot")}
        assert slots["hash"] == [hashlib.sha1(doc).hexdigest()]  # noqa: S324 - XDS mandates SHA-1
        assert slots["size"] == [str(len(doc))]
        assert doc == letter.read_bytes()
    finally:
        sink.stop()


def test_payload_mailed_to_the_routing_address(pki: TestPKI, tmp_path: Path) -> None:
    openssl = require_tool("openssl")
    sink = Sink().start()
    try:
        setup, _drop, _port = _setup(tmp_path, pki, sink.port)
        hl7 = _oru("8" + PERSON_RPPS, "CTRL-SMTP-1")
        mail = (f"From: <{ORG_EMAIL}>\r\nTo: <{ROUTING}>\r\nSubject: envoi automatique\r\nMIME-Version: 1.0\r\n"
                'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n'
                "Voir la piece jointe.\r\n" + _attachment("r.hl7", "application/octet-stream", hl7)
                + "--b1--\r\n").encode()
        with GatewayProcess(setup):
            assert submit_as_lab(setup, [ROUTING], mail) == {}
            with smtplib.SMTP("127.0.0.1", setup.relay_port, timeout=20) as stranger:
                stranger.ehlo("stranger.example")
                stranger.mail("x@stranger.example")
                code, _ = stranger.rcpt(ROUTING)
                assert code == 550
            (got,) = sink.wait_for(1, timeout=30)
        assert got.recipients == [PERSON_EMAIL]
        inner = _decrypt(openssl, pki, got.data, tmp_path / "m")
        parts = {p.get_filename(): p.get_payload(decode=True) for p in inner.walk() if p.get_filename()}
        assert parts["message.hl7"] == hl7
    finally:
        sink.stop()


PDF = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"





def test_pdf_with_a_sidecar_by_mail_and_by_msgw_send(pki: TestPKI, tmp_path: Path) -> None:
    """A PDF-only system: its PDF + JSON sidecar mailed to the routing address reaches the S/MIME
    doctor (the PDF byte-identical after decryption); the same pair given to `msgw send --with`
    reaches the local doctor's mailbox."""
    openssl = require_tool("openssl")
    sink = Sink().start()
    try:
        setup, _drop, _port = _setup(tmp_path, pki, sink.port)
        sidecar = json.dumps({"recipients": [{"rpps": PERSON_RPPS}], "document_id": "PDF-SMTP-1",
                              "document_type": {"code": "11502-2", "system": "LOINC"}}).encode()
        mail = (f"From: <{ORG_EMAIL}>\r\nTo: <{ROUTING}>\r\nSubject: envoi automatique\r\nMIME-Version: 1.0\r\n"
                'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
                + _attachment("PATIENTFICTIF.pdf", "application/pdf", PDF)
                + _attachment("PATIENTFICTIF.json", "application/json", sidecar) + "--b1--\r\n").encode()
        local = tmp_path / "local.json"
        local.write_text(json.dumps({"recipients": [{"rpps": LOCAL_RPPS}], "document_id": "PDF-CLI-1"}))
        pdf_file = tmp_path / "local.pdf"
        pdf_file.write_bytes(PDF)
        with GatewayProcess(setup):
            assert submit_as_lab(setup, [ROUTING], mail) == {}
            out = msgw("send", "--config", str(setup.config), "--from", ORG_EMAIL, str(local), "--with", str(pdf_file))
            assert out.returncode == 0, out.stderr
            (got,) = sink.wait_for(1, timeout=30)
            files = _local_mail(setup)
        assert got.recipients == [PERSON_EMAIL]
        inner = _decrypt(openssl, pki, got.data, tmp_path / "m")
        assert inner["Subject"] == "Résultat de laboratoire"
        parts = {p.get_filename(): p.get_payload(decode=True) for p in inner.walk() if p.get_filename()}
        assert parts == {"document.pdf": PDF}
        assert len(files) == 1
        local_msg = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
        parts = {p.get_filename(): p.get_payload(decode=True) for p in local_msg.walk() if p.get_filename()}
        assert parts == {"document.pdf": PDF}
    finally:
        sink.stop()
