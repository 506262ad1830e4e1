"""The MSSanté message of a CI-SIS copy (issue 13, item 2): headers, Subject and body conventions,
the IHE_XDM archive read back (CDA byte for byte, action C/D), the PDF rendering, and X-MSS-*
computed from the archive. Invented documents (tests/routing_payload/fixtures.py), plus the
official ANS CDA examples read through MSGW_CORPUS (never copied into the repository)."""

from __future__ import annotations

import base64
import datetime as dt
import email
import email.policy
import re
from email.message import EmailMessage
from pathlib import Path

import pytest

from gateway.cisis.cdapdf import identity, pdfs
from gateway.cisis.model import (
    ALL_FLAGS,
    Action,
    CopyPlan,
    Document,
    MessageHeader,
    Patient,
    Recipient,
    RecipientKind,
    Transmission,
)
from gateway.cisis.mssmail import BuiltCopy, build_copy
from gateway.routing.cda import read_cda
from gateway.routing.model import CdaError
from gateway.routing.xdm import XdmDocument, build_xdm, read_xdm
from tests.conftest import corpus_dir
from tests.routing_payload import fixtures as F

MAILBOX = "pfi@hopital-fictif.mssante.test"
NIL = "DEV000042"
NOW = dt.datetime(2026, 12, 3, 10, 30, tzinfo=dt.UTC)
REPLY = "dr.auteur@labo-fictif.mssante.test"
DOCTOR = Recipient(RecipientKind.PS, "dr.dest@cabinet-fictif.mssante.test", "801234567897", "1.2.250.1.71.4.2.1",
                   "DESTFICTIF", "Adam", where="PRT[2]")
APP = Recipient(RecipientKind.APP, "appli@hopital-b.mssante.test", "12", where="PRT[3]")
PATIENT_BOX = Recipient(RecipientKind.PATIENT, f"{F.INS}@patient.mssante.fr", F.INS, F.INS_OID_TEST,
                        where="PRT[4]")
PDF_BYTES = b"%PDF-1.4\n%%EOF\n"  # what fixtures.cda(nonxml=True) carries
TRAITS = ('<administrativeGenderCode code="F" codeSystem="2.16.840.1.113883.5.1"/>'
          '<birthTime value="19991201"/>')


def cda(*, traits: str = TRAITS, oid: str = F.INS_OID_TEST, **kw: object) -> bytes:
    """An invented CDA (fixtures.cda) with the patient's sex and birth date, and the INS under ``oid``."""
    data = F.cda(**kw).decode()  # type: ignore[arg-type]
    data = data.replace("</name></patient>", f"</name>{traits}</patient>", 1)
    data = data.replace(f'<id root="{F.INS_OID_TEST}"', f'<id root="{oid}"', 1)
    return data.encode()


def document(data: bytes, *, obx_code: str = "11502-2", status: str = "F", n: int = 1) -> Document:
    return Document(str(n), obx_code, "CR d'examens biologiques", status, data, read_cda(data), f"OBX[{n}]")


def transmission(*docs: Document, action: Action = Action.INITIAL, status: str = "VALI", ins: str = F.INS,
                 bodies: dict[str, str] | None = None, reply_to: str | None = REPLY) -> Transmission:
    header = MessageHeader("SGL_FICTIF", "LABO_FICTIF", "PFI", "HOPITAL", "CTRL1", "ORU", "R01", "2.5")
    patient = Patient(ins=ins, ins_oid=F.INS_OID_TEST, family="Testnom", given="Élodie", birth_date="19991201",
                      sex="F", identity_status=status)
    return Transmission(header, patient, docs or (document(cda()),), action, None, (DOCTOR, APP, PATIENT_BOX),
                        reply_to, {name: False for name in ALL_FLAGS}, bodies=bodies or {})


PS_COPY = CopyPlan("professional", (DOCTOR, APP), "CORPSMAIL_PS", read_receipt=True)
PATIENT_COPY = CopyPlan("patient", (PATIENT_BOX,), "CORPSMAIL_PATIENT", read_receipt=False)
PATIENT_CLOSED = CopyPlan("patient", (PATIENT_BOX,), "CORPSMAIL_PATIENT", read_receipt=False, no_reply=True)


def build(tx: Transmission | None = None, copy: CopyPlan = PS_COPY, **kw: object) -> BuiltCopy:
    return build_copy(tx or transmission(), copy, application_mailbox=MAILBOX, nil=NIL, now=NOW, **kw)  # type: ignore[arg-type]


def parsed(built: BuiltCopy) -> EmailMessage:
    msg = email.message_from_bytes(built.data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def attachments(built: BuiltCopy) -> dict[str, tuple[str, bytes]]:
    return {p.get_filename(): (p.get_content_type(), p.get_content()) for p in parsed(built).iter_attachments()}


def body(built: BuiltCopy) -> str:
    part = parsed(built).get_body(("plain",))
    assert part is not None
    return part.get_content().replace("\r\n", "\n")  # CRLF on the wire


def archive(built: BuiltCopy):
    return read_xdm(attachments(built)["IHE_XDM.ZIP"][1])


# --- the message itself ---------------------------------------------------------------------------

def test_professional_copy_headers() -> None:
    built = build()
    msg = parsed(built)
    assert msg["From"] == MAILBOX
    assert [a.addr_spec for a in msg["To"].addresses] == [DOCTOR.address, APP.address]
    assert built.recipients == (DOCTOR.address, APP.address)
    assert msg["Reply-To"] == REPLY
    assert msg["MIME-Version"] == "1.0"
    assert email.utils.parsedate_to_datetime(msg["Date"]) == NOW
    assert re.fullmatch(r"<[^<>@]+@hopital-fictif\.mssante\.test>", msg["Message-ID"].strip())
    assert msg["Message-ID"].strip() == built.message_id
    assert msg["X-MSS-NIL"] == NIL
    assert msg["Disposition-Notification-To"] == f"<{MAILBOX}>"
    assert msg["X-MSS-MES"] is None
    assert msg["Auto-Submitted"] is None  # read receipts must not be suppressed
    assert dict(built.headers) == {"Reply-To": REPLY, "Disposition-Notification-To": f"<{MAILBOX}>",
                                   "X-MSS-CODECDA": "11502-2", "X-MSS-INS": "O", "X-MSS-NIL": NIL}


def test_message_is_crlf_seven_bit_and_parses() -> None:
    built = build()
    assert built.data.isascii()
    assert b"\n" not in built.data.replace(b"\r\n", b"")
    assert all(len(line) <= 998 for line in built.data.split(b"\r\n"))
    msg = parsed(built)
    assert msg.get_content_type() == "multipart/mixed"
    assert not msg.defects and all(not p.defects for p in msg.walk())
    assert sum(1 for line in built.data.split(b"\r\n") if line.lower().startswith(b"mime-version:")) == 1


def test_caller_message_id_is_used() -> None:
    built = build(message_id="<cisis-1.ps@hopital-fictif.mssante.test>")
    assert parsed(built)["Message-ID"] == "<cisis-1.ps@hopital-fictif.mssante.test>"
    assert build(message_id="bare-2@hopital-fictif.mssante.test").message_id == "<bare-2@hopital-fictif.mssante.test>"


def test_no_read_receipt_no_reply_to_when_not_asked() -> None:
    built = build(transmission(reply_to=None), CopyPlan("professional", (DOCTOR,), "CORPSMAIL_PS", read_receipt=False))
    msg = parsed(built)
    assert msg["Disposition-Notification-To"] is None and msg["Reply-To"] is None
    assert "Disposition-Notification-To" not in dict(built.headers)


def test_subject_follows_the_ig_convention() -> None:
    subject = parsed(build())["Subject"]
    assert subject == "XDM/1.0/DDM+CR d'examens biologiques TESTNOM Élodie 01/12/1999"


def test_subject_is_the_same_for_a_replacement_and_a_deletion() -> None:
    initial = parsed(build())["Subject"]
    for action, status in ((Action.REPLACE, "C"), (Action.DELETE, "D")):
        tx = transmission(document(cda(version=2, replaces="1.2.250.9999.1.1"), status=status), action=action)
        assert parsed(build(tx))["Subject"] == initial


def test_nil_is_required_on_every_message() -> None:
    with pytest.raises(ValueError, match="X-MSS-NIL"):
        build_copy(transmission(), PS_COPY, application_mailbox=MAILBOX, nil="", now=NOW)
    with pytest.raises(ValueError, match="X-MSS-NIL"):
        build_copy(transmission(), PATIENT_COPY, application_mailbox=MAILBOX, nil="  ", now=NOW)


def test_patient_data_stays_out_of_repr_and_plan_headers() -> None:
    built = build(copy=PATIENT_COPY)
    shown = repr(built) + repr(built.headers)
    for secret in (F.INS, "TESTNOM", "Élodie", "Testnom", "1999"):
        assert secret not in shown
    assert built.recipients == (PATIENT_BOX.address,)  # the caller still gets the address


# --- patient copies -----------------------------------------------------------------------------

def test_patient_copy_closed_to_replies_has_mes_fin_and_no_reply_to() -> None:
    msg = parsed(build(copy=PATIENT_CLOSED))
    assert msg["X-MSS-MES"] == "FIN"
    assert msg["Reply-To"] is None
    assert [a.addr_spec for a in msg["To"].addresses] == [PATIENT_BOX.address]
    assert msg["X-MSS-NIL"] == NIL


def test_patient_copy_open_to_replies_keeps_reply_to() -> None:
    msg = parsed(build(copy=PATIENT_COPY))
    assert msg["X-MSS-MES"] is None
    assert msg["Reply-To"] == REPLY


def test_no_reply_on_a_professional_copy_sets_no_mes() -> None:
    msg = parsed(build(copy=CopyPlan("professional", (DOCTOR,), "CORPSMAIL_PS", False, no_reply=True)))
    assert msg["X-MSS-MES"] is None and msg["Reply-To"] == REPLY


# --- body -----------------------------------------------------------------------------------------

def test_body_comes_from_corpsmail_for_each_kind() -> None:
    tx = transmission(bodies={"CORPSMAIL_PS": "Cher confrère,\nvous trouverez ci-joint le CR.",
                              "CORPSMAIL_PATIENT": "Bonjour, ci-joint votre CR."})
    ps, patient = build(tx), build(tx, PATIENT_COPY)
    assert body(ps) == "Cher confrère,\nvous trouverez ci-joint le CR.\n"
    assert body(patient) == "Bonjour, ci-joint votre CR.\n"
    part = parsed(ps).get_body(("plain",))
    assert part is not None and part.get_content_charset() == "utf-8"
    assert part["Content-Transfer-Encoding"] == "quoted-printable"


def test_default_bodies_are_neutral_and_differ_by_kind() -> None:
    ps, patient, closed = body(build()), body(build(copy=PATIENT_COPY)), body(build(copy=PATIENT_CLOSED))
    assert "Veuillez trouver ci-joint" in ps and "CR d'examens biologiques" in ps
    assert "vous transmet un document" in patient and ps != patient
    assert "pas possible de répondre" in closed and "pas possible de répondre" not in patient
    for text in (ps, patient, closed):
        assert "TESTNOM" not in text.upper() and F.INS not in text


def test_replacement_body_says_so_after_the_creators_text() -> None:
    doc = document(cda(version=2, replaces="1.2.250.9999.1.1"), status="C")
    tx = transmission(doc, action=Action.REPLACE, bodies={"CORPSMAIL_PS": "Texte du créateur."})
    text = body(build(tx))
    assert text.startswith("Texte du créateur.\n\nCe document remplace")
    assert "1.2.250.9999.1.1" in text
    assert "Ce document remplace" in body(build(tx, PATIENT_COPY))


def test_deletion_body_says_the_document_must_be_deleted() -> None:
    tx = transmission(document(cda(), status="D"), action=Action.DELETE)
    assert "doit être supprimé" in body(build(tx))
    assert "doit être supprimé" in body(build(tx, PATIENT_COPY))
    assert "supprim" not in body(build()) and "remplace" not in body(build())


# --- the IHE_XDM archive ----------------------------------------------------------------------------

def test_archive_holds_every_cda_byte_identical_without_action_for_an_initial_send() -> None:
    n1, n3 = cda(nonxml=True), cda()
    built = build(transmission(document(n1), document(n3, n=2)))
    package = archive(built)
    assert [e.data for e in package.documents] == [n1, n3]
    assert all(e.action is None and "action" not in e.slots for e in package.documents)
    assert built.attachments[0] == "IHE_XDM.ZIP"
    assert attachments(built)["IHE_XDM.ZIP"][0] == "application/zip"


@pytest.mark.parametrize(("action", "status", "slot"), [(Action.REPLACE, "C", "C"), (Action.DELETE, "D", "D")])
def test_archive_action_for_replacement_and_deletion(action: Action, status: str, slot: str) -> None:
    n1, n3 = cda(nonxml=True, version=2, replaces="1.2.250.9999.1.1"), cda(version=2, replaces="1.2.250.9999.1.1")
    built = build(transmission(document(n1, status=status), document(n3, status=status, n=2), action=action))
    package = archive(built)
    assert [e.action for e in package.documents] == [slot, slot]
    assert [e.data for e in package.documents] == [n1, n3]


def test_xdm_action_slot_round_trip_and_refuses_unknown_values() -> None:
    data = cda()
    for action in (None, "C", "D"):
        package = read_xdm(build_xdm([XdmDocument(data, read_cda(data), action=action)], source_id="1.2.3", now=NOW))
        assert package.documents[0].action == action
    with pytest.raises(ValueError, match="action"):
        build_xdm([XdmDocument(data, read_cda(data), action="X")], source_id="1.2.3", now=NOW)


# --- X-MSS-CODECDA ------------------------------------------------------------------------------------

def test_codecda_is_the_cda_code_never_the_hl7_one() -> None:
    tx = transmission(document(cda(code="11502-2"), obx_code="18748-4"))
    assert parsed(build(tx))["X-MSS-CODECDA"] == "11502-2"


def test_codecda_lists_each_code_once_in_archive_order() -> None:
    docs = (document(cda(code="11490-0", label="Lettre de liaison"), n=1), document(cda(nonxml=True), n=2),
            document(cda(), n=3))
    msg = parsed(build(transmission(*docs)))
    assert msg.get_all("X-MSS-CODECDA") == ["11490-0,11502-2"]


# --- X-MSS-INS ------------------------------------------------------------------------------------

def test_ins_o_for_a_qualified_ins_in_every_cda() -> None:
    assert parsed(build(transmission(document(cda(nonxml=True)), document(cda(), n=2))))["X-MSS-INS"] == "O"


@pytest.mark.parametrize(("case", "tx"), [
    ("identity not validated in the PID", lambda: transmission(status="PROV")),
    ("birth date missing in the CDA",
     lambda: transmission(document(cda(traits='<administrativeGenderCode code="F"/>')))),
    ("sex missing in the CDA", lambda: transmission(document(cda(traits='<birthTime value="19991201"/>')))),
    ("INS under a non-INS OID", lambda: transmission(document(cda(oid="1.2.250.9999.3")))),
    ("INS under the demonstration OID", lambda: transmission(document(cda(oid="1.2.250.1.213.1.4.11")))),
    ("CDA INS differs from the PID", lambda: transmission(ins="199129912345699")),
    ("one CDA of two without traits", lambda: transmission(document(cda()), document(cda(traits=""), n=2))),
])
def test_ins_n_otherwise(case: str, tx) -> None:
    assert parsed(build(tx()))["X-MSS-INS"] == "N", case


def test_cda_identity_prefers_birth_names() -> None:
    data = cda().replace(b"<family>TESTNOM</family>", b'<family qualifier="SP">EPOUSE</family>'
                                                      b'<family qualifier="BR">NAISSANCE</family>')
    found = identity(data)
    assert (found.family, found.given, found.birth_time, found.gender) == ("NAISSANCE", "Élodie", "19991201", "F")
    assert found.qualified and F.INS not in repr(found) and "NAISSANCE" not in repr(found)


# --- PDF rendering ----------------------------------------------------------------------------------

def test_pdf_of_the_n1_cda_is_attached_under_a_neutral_name() -> None:
    built = build(transmission(document(cda(nonxml=True)), document(cda(), n=2)))
    found = attachments(built)
    assert built.attachments == ("IHE_XDM.ZIP", "document.pdf")
    assert found["document.pdf"] == ("application/pdf", PDF_BYTES)
    assert built.notes == ()


def test_two_n1_documents_give_numbered_pdfs() -> None:
    built = build(transmission(document(cda(nonxml=True)), document(cda(nonxml=True, version=2), n=2)))
    assert built.attachments == ("IHE_XDM.ZIP", "document-1.pdf", "document-2.pdf")


def test_no_n1_no_pdf_and_the_copy_says_so() -> None:
    built = build()
    assert built.attachments == ("IHE_XDM.ZIP",)
    assert [n for n in built.notes if "no PDF" in n]
    assert "PDF" not in body(built)


def test_a_pdf_body_that_is_not_a_pdf_is_a_located_error() -> None:
    bad = cda(nonxml=True).replace(base64.b64encode(PDF_BYTES), base64.b64encode(b"not a pdf at all"))
    with pytest.raises(CdaError) as caught:
        pdfs(bad)
    assert "nonXMLBody" in caught.value.where and "not a pdf" not in str(caught.value)
    with pytest.raises(CdaError):
        build(transmission(document(bad)))


# --- the official ANS CDA examples (MSGW_CORPUS) ------------------------------------------------------

def _ans_cda(name: str) -> bytes:
    path = corpus_dir() / "ans-hl7v2" / "TRANS_DOC_CDA_HL7V2" / "V2.0" / "ORU" / "Transmission_initiale_ORU" / name
    if not path.is_file():
        pytest.fail(f"missing corpus file {path}")
    return Path(path).read_bytes()


def test_ans_cr_bio_n1_n3_examples() -> None:
    n1, n3 = _ans_cda("CR_Bio_CDA_Niv1_v1.XML"), _ans_cda("CR_Bio_CDA_Niv3_v1.XML")
    who = identity(n1)
    header = MessageHeader("SGL", "LABO", "PFI", "HOPITAL", "C1", "ORU", "R01", "2.5")
    patient = Patient(ins=who.ins, ins_oid=who.ins_oid, family=who.family, given=who.given,
                      birth_date=who.birth_time, sex=who.gender, identity_status="VALI")
    tx = Transmission(header, patient, (document(n1), document(n3, n=2)), Action.INITIAL, None, (DOCTOR,), None,
                      {name: False for name in ALL_FLAGS})
    built = build(tx, CopyPlan("professional", (DOCTOR,), "CORPSMAIL_PS", read_receipt=True))
    msg = parsed(built)
    assert [e.data for e in archive(built).documents] == [n1, n3]
    assert msg["X-MSS-CODECDA"] == "11502-2" and msg["X-MSS-INS"] == "O"
    pdf = attachments(built)["document.pdf"][1]
    assert pdf.startswith(b"%PDF-") and pdf == pdfs(n1)[0]
    assert msg["Subject"].startswith("XDM/1.0/DDM+CR d'examens biologiques NESSI RUTH 14/07/1977")
