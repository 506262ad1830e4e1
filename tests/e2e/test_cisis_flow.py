"""msgw as the CI-SIS GESTIONNAIRE, over real sockets, with the official ANS examples.

An MLLP client stands for the SGL/RIS (the CRÉATEUR), a mutual-TLS SMTP sink for the MSSanté
operators of the doctor and of the patient's Mon espace santé, and an MLLP server for the
CRÉATEUR's business-acknowledgment listener. Every ORU and MDM example of
``ans-hl7v2/TRANS_DOC_CDA_HL7V2/V2.0`` goes in (read through ``MSGW_CORPUS``, never copied into
the repository): the technical ACK matches the example's, the MSSanté copies are read back
(the CDA byte-identical in ``IHE_XDM.ZIP``, the ``X-MSS-*`` headers, the patient copy exactly
when the flags allow it, the ``CORPSMAIL_*`` text), and the ZAMs match the example ZAMs field by
field. Then a DSN and a read MDN come back to the application mailbox and the ZAMs follow, in
order.
"""

from __future__ import annotations

import base64
import email
import email.policy
import io
import re
import smtplib
import socket
import socketserver
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from gateway.cisis.zam import parse_zam
from gateway.routing.hl7 import MLLPDecoder, build_ack, mllp_frame
from gateway.routing.xdm import read_xdm
from gateway.smime.testpki import ORG_EMAIL, PERSON_EMAIL, TestPKI
from tests.cisis.reports import mdn
from tests.cisis.test_corpus_read import EXAMPLES, FOLDER, _substituted
from tests.conftest import corpus_dir, free_port
from tests.e2e.harness import GatewayProcess, GatewaySetup, SinkHandler, msgw, wait_port, write_config
from tests.e2e.test_tls import _MutualTlsSink, _tls_sink
from tests.e2e.tlspki import TestCA
from tests.smime.support import key_toml, shared_pki, trust_toml

MAILBOX = "pfi@labo-tests.sante.test"
NIL = "DEV935997"
DOCTOR = "adam.hoda@test-ci-sis.mssante.fr"
PATIENT_BOX = "277076322082910@patient.mssante.fr"  # built from the INS (the example's PRT-15.4 has a typo)
BODY_PS = "Cher confrère, vous trouverez ci-joint le CR d’imagerie de M.Dupon"
ZAM_EXAMPLES = {"Z01": "Message_metier_reception_DMP", "Z02": "Message_metier_reception_MSS",
                "Z03": "Message_metier_lecture_MSS"}
#: Fields that differ by nature: the ZAM's own control id and timestamps; for Z01 the DMP's
#: reason (the example's DMP was closed; msgw has no DMP connector: "not performed").
VARYING = {"MSH-7", "MSH-10", "EVN-2"}


class ZamListener(socketserver.ThreadingTCPServer):
    """The CRÉATEUR's MLLP listener for business acknowledgments: records and answers AA."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _ZamHandler)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def zams(self, control_id: str | None = None) -> list[dict[str, str]]:
        with self.lock:
            parsed = [parse_zam(f) for f in self.frames]
        return [z for z in parsed if control_id is None or z.get("OBX[1]-4") == control_id]


class _ZamHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        decoder = MLLPDecoder()
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            for frame in decoder.feed(data):
                with self.server.lock:  # type: ignore[attr-defined]
                    self.server.frames.append(frame)  # type: ignore[attr-defined]
                self.request.sendall(mllp_frame(build_ack(frame, "AA")))


def mllp_send(port: int, message: bytes, timeout: float = 30.0) -> bytes:
    """One message over MLLP, its ACK back (the SGL's side)."""
    decoder = MLLPDecoder()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(mllp_frame(message))
        while True:
            chunk = sock.recv(65536)
            assert chunk, "the listener closed without an ACK"
            frames = decoder.feed(chunk)
            if frames:
                return frames[0]


def fields(segment: bytes | str) -> list[str]:
    text = segment.decode() if isinstance(segment, bytes) else segment
    return text.split("|")


def segments(message: bytes) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for seg in message.replace(b"\r\n", b"\r").replace(b"\n", b"\r").split(b"\r"):
        if seg.strip():
            out.setdefault(seg[:3].decode(), fields(seg))
    return out


@dataclass
class Cisis:
    setup: GatewaySetup
    mllp_port: int
    operator: SinkHandler
    zams: ZamListener
    seen: int = 0
    sent: dict[str, list[EmailMessage]] = field(default_factory=dict)

    def new_copies(self, count: int, timeout: float = 30.0) -> list[EmailMessage]:
        """The next ``count`` messages the operators received."""
        deadline = time.monotonic() + timeout
        while len(self.operator.snapshot()) < self.seen + count and time.monotonic() < deadline:
            time.sleep(0.05)
        got = self.operator.snapshot()[self.seen:]
        assert len(got) >= count, f"the operators got {len(got)} message(s), expected {count}"
        self.seen += len(got)
        assert len(got) == count, f"the operators got {len(got)} message(s), expected {count}"
        return [email.message_from_bytes(r.data, policy=email.policy.default) for r in got]  # type: ignore[misc]


def _config(folder: Path, pki: TestPKI, ca: TestCA, tls_port: int, zam_port: int) -> GatewaySetup:
    ours = ca.issue("msgw.test")
    listed = folder / "listeblanche.txt"
    folder.mkdir(parents=True, exist_ok=True)
    listed.write_text("test-ci-sis.mssante.fr\npatient.mssante.fr\n")
    routes = "".join(f'\n[delivery.routes."{domain}"]\nhost = "localhost"\nport = {tls_port}\ntls = "required"\n'
                     f'ca_file = "{ca.ca_file}"\nclient_cert = "{ours.cert}"\nclient_key = "{ours.key}"\n'
                     for domain in ("test-ci-sis.mssante.fr", "patient.mssante.fr"))
    delivery = f'tls = "none"\nsmarthost = "127.0.0.1:{free_port()}"\n{routes}'
    mllp_port = free_port()
    creators = "".join(f'\n[intake.cisis.creators.{name}]\napplication = "{app}"\nfacility = "{fac}"\n'
                       f'mllp = "127.0.0.1:{zam_port}"\n'
                       for name, app, fac in (("sil", "SIL-Y", "labo"), ("ris", "RIS-Y", "Organisation-Y")))
    extra = f"""
{key_toml('labo-sign', pki['org_sign'])}

{key_toml('pfi-sign', pki['app_sign'])}

{trust_toml(pki)}authorised_domains_file = "{listed}"

[policy]
default = "require-smime"
neutral_subject = "Message sécurisé"

[policy.destinations]
"test-ci-sis.mssante.fr" = "trust-space-tls"
"patient.mssante.fr" = "trust-space-tls"

[policy.sign_with]
"{ORG_EMAIL}" = "labo-sign"
"{MAILBOX}" = "pfi-sign"

[intake.mllp]
address = "127.0.0.1"
port = {mllp_port}
sender = "{ORG_EMAIL}"

[intake.routing]
unrouted_default = "tri@labo-tests.sante.test"

[intake.cisis]
application_mailbox = "{MAILBOX}"
nil = "{NIL}"
{creators}"""
    setup = write_config(folder, extra=extra, delivery=delivery)
    text = setup.config.read_text().replace('domains = ["msgw.test"]',
                                            'domains = ["msgw.test", "labo-tests.sante.test"]')
    setup.config.write_text(text)
    person_pem = folder / "person-encrypt.pem"
    person_pem.write_bytes(pki["person_encrypt"].cert.public_bytes(serialization.Encoding.PEM))
    out = msgw("directory", "add", PERSON_EMAIL, "--capability", "smime", "--cert", str(person_pem),
               "--config", str(setup.config))
    assert out.returncode == 0, out.stderr
    setup.mllp_port = mllp_port  # type: ignore[attr-defined]
    return setup


@pytest.fixture(scope="module")
def cisis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cisis]:
    folder = tmp_path_factory.mktemp("cisis")
    ca = TestCA(folder / "tls-pki")
    operator = _MutualTlsSink()
    sink = _tls_sink(ca, "localhost", operator)
    zams = ZamListener()
    setup = _config(folder / "gw", shared_pki().pki, ca, sink.port, zams.port)
    try:
        with GatewayProcess(setup):
            wait_port(setup.mllp_port)  # type: ignore[attr-defined]
            yield Cisis(setup, setup.mllp_port, operator, zams)  # type: ignore[attr-defined]
    finally:
        sink.stop()
        zams.shutdown()


def _example(name: str, control_id: str | None = None, flags: dict[str, str] | None = None) -> bytes:
    """The example as a CRÉATEUR would send it: placeholders replaced by the folder's CDA; a
    fresh MSH-10 where asked (the ANS examples reuse ``015`` for every message, while a real
    CRÉATEUR's control id is unique; msgw answers a same-id same-content message as a resend)."""
    data, _ = _substituted(corpus_dir() / FOLDER / name, EXAMPLES[name].cdas)
    if control_id is not None:
        data = data.replace(b"|015|P|", f"|{control_id}|P|".encode(), 1)
    lines = re.split(rb"(\r\n|\r|\n)", data)
    for n, line in enumerate(lines):
        for flag, value in (flags or {}).items():
            if line.startswith(b"OBX|") and f"|{flag}^".encode() in line:
                lines[n] = re.sub(rb"\|\|[YN]\^\^HL70136", f"||{value}^^HL70136".encode(), line)
    return b"".join(lines)


def _parts(copy: EmailMessage) -> dict[str, bytes]:
    return {p.get_filename(): p.get_payload(decode=True) for p in copy.walk() if p.get_filename()}


def _body(copy: EmailMessage) -> str:
    for part in copy.walk():
        if part.get_content_type() == "text/plain" and not part.get_filename():
            return part.get_content()
    raise AssertionError("no text body")


def _cdas(copy: EmailMessage) -> list[bytes]:
    """The documents of the copy's IHE_XDM.ZIP, as stored in the archive (checked against its metadata)."""
    zipped = _parts(copy)["IHE_XDM.ZIP"]
    package = read_xdm(zipped)
    with zipfile.ZipFile(io.BytesIO(zipped)) as z:
        stored = {n.rsplit("/", 1)[-1]: z.read(n) for n in z.namelist()}
    assert [stored[d.uri] for d in package.documents] == [d.data for d in package.documents]
    return [d.data for d in package.documents]


def _expected_documents(name: str) -> list[bytes]:
    data, documents = _substituted(corpus_dir() / FOLDER / name, EXAMPLES[name].cdas)
    if documents is not None:
        return list(documents)
    return [base64.b64decode(seg.split(b"|")[5].split(b"^")[4]) for seg in data.replace(b"\n", b"\r").split(b"\r")
            if seg.startswith(b"OBX|") and b"|ED|" in seg[:12] and b"MetaDMPMSS" not in seg]


def _ack_matches(ack: bytes, example: Path, trigger: str | None = None, control_id: str = "015") -> None:
    got, want = segments(ack), segments(example.read_bytes())
    want["MSA"][2] = control_id
    for name in ("MSH", "MSA"):
        for n, (g, w) in enumerate(zip(got[name], want[name], strict=True)):
            if (name, n) in (("MSH", 6), ("MSH", 9)):
                continue  # timestamp, control id
            if trigger and (name, n) == ("MSH", 8):
                w = f"ACK^{trigger}^ACK"
            assert g == w, f"{name}-{n}: {g!r} != {w!r}"


ORU = sorted(n for n in EXAMPLES if n.startswith("ORU/"))


@pytest.mark.parametrize("name", ORU)
def test_ans_oru_examples_go_out_as_mssante_messages(cisis: Cisis, name: str) -> None:
    _send_oru(cisis, name)


def _send_oru(cisis: Cisis, name: str) -> dict[str, EmailMessage]:
    """Send one ORU example and check what comes out; the copies by recipient."""
    if name in cisis.sent:
        return {str(c["To"]): c for c in cisis.sent[name]}
    initial = "Transmission_initiale" in name
    control_id = "015" if initial else f"015{ORU.index(name)}"
    ack = mllp_send(cisis.mllp_port, _example(name, control_id))
    folder = (corpus_dir() / FOLDER / name).parent
    _ack_matches(ack, folder / ("ack.hl7" if initial else "ack.er7"), control_id=control_id)
    copies = cisis.new_copies(2)
    by_to = {str(c["To"]): c for c in copies}
    assert set(by_to) == {DOCTOR, PATIENT_BOX}  # the patient copy: DESTMSSANTEPAT=Y, INS qualified
    for copy in by_to.values():
        assert copy.get_content_type() == "multipart/signed"  # trust-space TLS copy, signed by the lab
        assert copy["From"] == MAILBOX and copy["X-MSS-NIL"] == NIL
        assert copy["X-MSS-CODECDA"] == "11502-2" and copy["X-MSS-INS"] == "O"
        assert str(copy["Subject"]).startswith("XDM/1.0/DDM+")
        assert _cdas(copy) == _expected_documents(name)  # N1 and N3, byte for byte
        assert "document.pdf" in _parts(copy)
        assert (copy["Disposition-Notification-To"] is not None) is initial  # ACK_LECTURE_MSS=Y only there
        assert copy["Reply-To"] == DOCTOR
        assert copy["X-MSS-MES"] is None  # no NTE FIN in the examples
        cisis.sent.setdefault(name, []).append(copy)
    assert BODY_PS in _body(by_to[DOCTOR])
    assert BODY_PS not in _body(by_to[PATIENT_BOX])  # no CORPSMAIL_PATIENT: the neutral patient text
    action = {"Remplacement": "C", "Suppression": "D"}.get(name.split("/")[1].split("_")[0])
    assert {d.action for d in read_xdm(_parts(by_to[DOCTOR])["IHE_XDM.ZIP"]).documents} == {action}
    return by_to


MDM = sorted(n for n in EXAMPLES if n.startswith("MDM/"))
#: The one flag that moves each MDM example onto a row of the current matrix (PS only).
MDM_FIX = {"Transmission_initiale": {"INVISIBLE_REP_LEGAUX": "N"}, "Remplacement": {"INVISIBLE_PATIENT": "Y"},
           "Suppression": {"INVISIBLE_PATIENT": "Y"}}


@pytest.mark.parametrize("name", MDM)
def test_ans_mdm_examples_as_published_break_the_matrix_and_nothing_is_sent(cisis: Cisis, name: str) -> None:
    before = len(cisis.operator.snapshot())
    ack = segments(mllp_send(cisis.mllp_port, _example(name, f"M{MDM.index(name)}")))
    assert ack["MSA"][1] == "AE"
    err = ack["ERR"]
    assert err[3].startswith("207^") and err[5].split("^")[0] == "MATRIX"
    assert EXAMPLES[name].row.removeprefix("MATRIX:") in err[5]
    time.sleep(1.0)
    assert len(cisis.operator.snapshot()) == before
    cisis.seen = len(cisis.operator.snapshot())


@pytest.mark.parametrize("name", MDM)
def test_ans_mdm_examples_on_a_listed_row_go_to_the_doctor(cisis: Cisis, name: str) -> None:
    fix = MDM_FIX[name.split("/")[1].rsplit("_", 1)[0]]
    control_id = f"MF{MDM.index(name)}"
    ack = mllp_send(cisis.mllp_port, _example(name, control_id, fix))
    trigger = segments(_example(name))["MSH"][8].split("^")[1]
    _ack_matches(ack, corpus_dir() / FOLDER / "MDM/Remplacement_MDM/ack.er7", trigger, control_id)
    (copy,) = cisis.new_copies(1)
    assert copy["To"] == DOCTOR and copy["X-MSS-CODECDA"] == "18748-4"
    assert _cdas(copy) == _expected_documents(name)
    assert "Cher confrère, vous trouverez ci-joint le CR d’imagerie de M.Dupont" in _body(copy)


def _wait_zams(cisis: Cisis, control_id: str, count: int, timeout: float = 30.0) -> list[dict[str, str]]:
    deadline = time.monotonic() + timeout
    while len(cisis.zams.zams(control_id)) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    got = cisis.zams.zams(control_id)
    assert len(got) >= count, f"{len(got)} ZAM(s) for {control_id}, expected {count}"
    return got


def _same_fields(zam: dict[str, str], example: str, also_varying: set[str] = frozenset()) -> None:
    want = parse_zam((corpus_dir() / FOLDER / "ORU/Transmission_initiale_ORU" / example).read_bytes())
    keys = (set(zam) | set(want)) - VARYING - also_varying
    diff = {k: (zam.get(k), want.get(k)) for k in keys if zam.get(k) != want.get(k)}
    assert not diff, diff


def _report(cisis: Cisis, data: bytes, sender: str) -> None:
    with smtplib.SMTP("127.0.0.1", cisis.setup.relay_port, timeout=20) as client:
        client.sendmail(sender, [MAILBOX], data)


def _dsn_for(copy: EmailMessage, recipient: str) -> bytes:
    return (f"From: MAILER-DAEMON@mx.patient.mssante.fr\r\nTo: <{MAILBOX}>\r\nSubject: Undelivered Mail\r\n"
            "MIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=delivery-status; boundary="r1"\r\n\r\n'
            "--r1\r\nContent-Type: text/plain\r\n\r\nThe mailbox does not exist.\r\n"
            "--r1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.patient.mssante.fr\r\n\r\n"
            f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
            "Diagnostic-Code: smtp; 550 5.1.1 mailbox unknown\r\n\r\n"
            "--r1\r\nContent-Type: text/rfc822-headers\r\n\r\n"
            f"From: {MAILBOX}\r\nTo: {recipient}\r\nMessage-ID: {copy['Message-ID']}\r\n\r\n"
            "--r1--\r\n").encode()


def test_zams_come_back_in_order_and_match_the_ans_examples(cisis: Cisis) -> None:
    """Runs after the ORU initial example: Z01 at once, Z02 when each copy was accepted by the
    operator, Z02 N when the patient's operator bounces later (DSN), Z03 when the doctor's
    client sends its read receipt (MDN); each field as the ANS example ZAMs."""
    name = "ORU/Transmission_initiale_ORU/message_ORU_CR_Bio_INIT_N1_N3.hl7"
    copies = _send_oru(cisis, name)
    first = _wait_zams(cisis, "015", 3)
    assert [z["MSH-9"] for z in first[:3]] == ["ZAM^Z01^ZAM_Z01", "ZAM^Z02^ZAM_Z01", "ZAM^Z02^ZAM_Z01"]
    _same_fields(first[0], ZAM_EXAMPLES["Z01"], {"ERR[1]-5"})
    assert first[0]["ERR[1]-5"].startswith("DMP_NON_TRAITE^") and first[0]["ERR[1]-5"].endswith("^DMPERRORCODE")
    receipts = {z["OBX[2]-5"].split("^")[3]: z for z in first[1:3]}
    assert set(receipts) == {DOCTOR, PATIENT_BOX}
    _same_fields(receipts[DOCTOR], ZAM_EXAMPLES["Z02"])
    # the patient's: the same but for the Mon espace santé address and the INS as its id
    _same_fields(receipts[PATIENT_BOX], ZAM_EXAMPLES["Z02"], {"OBX[2]-4", "OBX[2]-5"})
    assert receipts[PATIENT_BOX]["OBX[2]-5"] == f"^^X.400^{PATIENT_BOX}"

    _report(cisis, _dsn_for(copies[PATIENT_BOX], PATIENT_BOX), "")
    bounced = _wait_zams(cisis, "015", 4)[3]
    assert bounced["MSH-9"] == "ZAM^Z02^ZAM_Z01" and bounced["OBX[1]-5"] == "N^^HL70136"
    assert bounced["OBX[2]-5"] == f"^^X.400^{PATIENT_BOX}"
    assert bounced["ERR[1]-3"].startswith("207^") and bounced["ERR[1]-5"].startswith("550^")
    assert bounced["ERR[1]-5"].endswith("^SMTPERRORCODE")

    read = mdn(recipient=DOCTOR, message_id=str(copies[DOCTOR]["Message-ID"]))
    _report(cisis, read.replace(b"bal-applicative@pfi.test-ci-sis.mssante.fr", MAILBOX.encode()), DOCTOR)
    last = _wait_zams(cisis, "015", 5)[4]
    _same_fields(last, ZAM_EXAMPLES["Z03"])

    forged = mdn(recipient="intrus@test-ci-sis.mssante.fr", message_id=str(copies[DOCTOR]["Message-ID"]))
    _report(cisis, forged, "intrus@test-ci-sis.mssante.fr")
    time.sleep(1.5)
    assert len(cisis.zams.zams("015")) == 5, "a read receipt from someone the copy was not for made a ZAM"
