"""build_mdms on invented mails (the ANS examples are in test_corpus_mdm) and read_consumer_ack."""

from __future__ import annotations

import base64
import datetime as dt
import itertools

import pytest

from gateway.lps.incoming import read_incoming
from gateway.lps.mdm import build_mdms, read_consumer_ack
from gateway.lps.model import ConsumerSettings, Delivered, IntegrationError
from gateway.routing.hl7 import Message, parse_message
from gateway.routing.model import Hl7Error
from tests.conftest import corpus_dir
from tests.lps.samples import APP, DOC_ID, DOCTOR, INS, REPLY, cda, mail

CONSUMER = ConsumerSettings(address=APP, application="DPI-X", facility="HOPITAL-X", sending_application="MSGW",
                            sending_facility="HOPITAL-X", organisation="Cardiologie^^^^^1999000001^UF^^^42")
NOW = dt.datetime(2026, 3, 2, 10, 30, 5)


def _build(data: bytes, previous=None) -> list[Message]:
    incoming, package, pdfs = read_incoming(data, recipient=APP, return_path=DOCTOR)
    assert package is not None
    ids = (f"C{n}" for n in itertools.count(1))
    mdms = build_mdms(incoming, package, pdfs, CONSUMER, now=NOW, control_id=lambda: next(ids), previous=previous)
    return [parse_message(m.data) for m in mdms]


def _obx(msg: Message, set_id: str):
    return next(s for s in msg.all("OBX") if msg.value(s, 1) == set_id)


def _flags(msg: Message) -> dict[str, str]:
    return {msg.value(s, 3): msg.value(s, 5) for s in msg.all("OBX") if msg.value(s, 2) == "CWE"}


def test_initial_send_is_a_t02() -> None:
    (msg,) = _build(mail(cda()))
    assert [s.name for s in msg.segments] == ["MSH", "EVN", "PID", "PV1", "ORC", "OBR", "TXA", "OBX", "PRT", "PRT",
                                              "PRT", "OBX", "OBX", "OBX", "OBX", "OBX"]
    msh = msg.first("MSH")
    assert msh.raw(3) == "MSGW" and msh.raw(5) == "DPI-X" and msh.raw(6) == "HOPITAL-X"
    assert msh.raw(7) == "20260302103005" and msh.raw(10) == "C1"
    assert msh.raw(9) == "MDM^T02^MDM_T02" and msh.raw(12) == "2.6" and msh.raw(17) == "FRA"
    assert msh.raw(18) == "UNICODE UTF-8" and msh.raw(21) == "1.1^CISIS_CDA_HL7_LPS"
    pid = msg.first("PID")
    assert pid.raw(3) == f"{INS}^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS"
    assert pid.raw(5) == "TESTPATIENTE^Ondine^Ondine Marie^^^^L"
    assert (pid.raw(7), pid.raw(8), pid.raw(32)) == ("19800229", "F", "VALI")
    assert pid.raw(11) == "12 rue Imaginaire^^Fictiville^^99999^FRA^H"
    assert msg.first("ORC").raw(1) == "NW" and msg.value(_obx(msg, "1"), 11) == "F"
    txa = msg.first("TXA")
    assert txa.raw(2) == "11488-4" and txa.raw(12) == DOC_ID and txa.raw(13) == "" and txa.raw(17) == "AU"
    assert base64.b64decode(msg.value(_obx(msg, "1"), 5, 5)) == cda()
    prts = {msg.value(s, 4): s for s in msg.all("PRT")}
    assert prts["SB"].raw(15) == f"^^X.400^{DOCTOR}" and msg.value(prts["SB"], 5) == "899700000011"
    assert prts["RCT"].raw(8) == CONSUMER.organisation and prts["RCT"].raw(15) == f"^^X.400^{APP}"
    assert prts["REPLY"].raw(15) == f"^^X.400^{REPLY}"
    obx2 = _obx(msg, "2")
    assert msg.value(obx2, 3, 1) == "<lps-1@cabinet.test>"
    assert msg.value(obx2, 3, 2) == "XDM/1.0/DDM+Compte rendu TESTPATIENTE Ondine"
    assert base64.b64decode(msg.value(obx2, 5, 5)).decode() == "Chère consœur, voici le CR."
    assert _flags(msg) == {"MASQUE_PS": "N", "INVISIBLE_PATIENT": "N", "INVISIBLE_REP_LEGAUX": "N",
                           "MODIF_CONF_CODE": "N"}


def test_id_with_extension_follows_the_ig() -> None:
    doc = cda().replace(b'<id root="1.2.250.1.999.7.1.1"/>', b'<id root="1.2.250.1.999.7.1" extension="X1"/>')
    (msg,) = _build(mail(doc))
    assert msg.first("TXA").raw(12) == "X1^^1.2.250.1.999.7.1^ISO"


def test_replacement_and_deletion_triggers() -> None:
    (rplc,) = _build(mail(cda(version=2, doc="2", parent=DOC_ID), action="C"))
    assert rplc.first("MSH").raw(9) == "MDM^T10^MDM_T02" and rplc.first("ORC").raw(1) == "RO"
    assert rplc.first("TXA").raw(13) == DOC_ID and rplc.value(_obx(rplc, "1"), 11) == "C"
    (dele,) = _build(mail(cda(), action="D"))
    assert dele.first("MSH").raw(9) == "MDM^T04^MDM_T02" and dele.first("ORC").raw(1) == "CA"
    assert dele.value(_obx(dele, "1"), 11) == "D"


def test_confidentiality_flags_and_their_modification() -> None:
    (msg,) = _build(mail(cda(), confidentiality=("MASQUE_PS", "INVISIBLE_PATIENT")))
    assert _flags(msg) == {"MASQUE_PS": "Y", "INVISIBLE_PATIENT": "Y", "INVISIBLE_REP_LEGAUX": "N",
                           "MODIF_CONF_CODE": "N"}
    before = Delivered(DOC_ID, "S", 1, "899700000011", "p", confidentiality=("INVISIBLE_PATIENT",))
    replacement = mail(cda(version=2, doc="2", parent=DOC_ID), action="C")
    assert _flags(_build(replacement, {DOC_ID: before}.get)[0])["MODIF_CONF_CODE"] == "Y"
    same = mail(cda(version=2, doc="2", parent=DOC_ID), action="C", confidentiality=("INVISIBLE_PATIENT",))
    assert _flags(_build(same, {DOC_ID: before}.get)[0])["MODIF_CONF_CODE"] == "N"


def test_values_are_escaped() -> None:
    (msg,) = _build(mail(cda(), subject="XDM/1.0/DDM+A|B^C&D~E\\F", reply_to=None))
    assert msg.value(_obx(msg, "2"), 3, 2) == "XDM/1.0/DDM+A|B^C&D~E\\F"
    assert [msg.value(s, 4) for s in msg.all("PRT")] == ["SB", "RCT"]  # no Reply-To, no PRT REPLY


def test_one_mdm_per_cda() -> None:
    incoming, package, pdfs = read_incoming(mail(cda(), cda(doc="7")), recipient=APP, return_path=DOCTOR)
    assert package is not None
    ids = iter(["A", "B"])
    mdms = build_mdms(incoming, package, pdfs, CONSUMER, now=NOW, control_id=lambda: next(ids))
    assert [m.unique_id for m in mdms] == [DOC_ID, "1.2.250.1.999.7.1.7"]
    assert [parse_message(m.data).first("MSH").raw(10) for m in mdms] == ["A", "B"]
    assert mdms[0].trigger == "T02" and mdms[0].delivered.version == 1 and mdms[0].delivered.author == "899700000011"


def test_cda_without_ins_cannot_become_an_mdm() -> None:
    incoming, package, pdfs = read_incoming(mail(cda(ins="")), recipient=APP, return_path=DOCTOR)
    assert package is not None
    with pytest.raises(IntegrationError) as info:
        build_mdms(incoming, package, pdfs, CONSUMER, now=NOW, control_id=lambda: "1")
    assert info.value.code_ans == "903"


ACK = "MSH|^~\\&|DPI|CHU_X|PFI|CHU_X|202310030831||ACK^T02^ACK|12347|P|2.6|||AL|AL|FRA|8859/15\r"


def test_consumer_ack_accept_and_application_error() -> None:
    assert read_consumer_ack((ACK + "MSA|AA|12345\r").encode()) == ("AA", "12345", None)
    app_error = ACK + ("MSA|AE|12345\rERR||PID^1^3|207^Application error^messageErrorCondition|E|"
                       "902^Identifiant de patient inconnu^applicationErrorCode\r")
    assert read_consumer_ack(app_error.encode()) == ("AE", "12345", "902^Identifiant de patient inconnu")
    technical = ACK + "MSA|AE|12345\rERR||MSH^1^12|203^Unsupported version id^messageErrorCondition|E\r"
    assert read_consumer_ack(technical.encode()) == ("AE", "12345", "203^Unsupported version id")


def test_consumer_ack_without_msa() -> None:
    with pytest.raises(Hl7Error):
        read_consumer_ack(ACK.encode())


def test_the_ans_example_ack() -> None:
    volet = corpus_dir() / "ans-hl7v2" / "Trans_LPS_CDA_MSSante" / "TRANSMISSION_LPS_DOC_CDA_COURRIEL_FROM_MSSANTE_V1.1"
    folder = volet / "Transmission_initiale_MDM"
    assert read_consumer_ack((folder / "ack.er7").read_bytes()) == ("AA", "015", None)
