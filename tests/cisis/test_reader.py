"""The profile reader on invented messages: each rule accepted and refused, with the rule name and
the place, and never a name or an INS in the error text."""

from __future__ import annotations

import pytest

from gateway.cisis.model import Action, CisisError, RecipientKind
from gateway.cisis.reader import Flags, error_location, is_transmission, read_transmission
from gateway.routing.model import PayloadError
from tests.cisis.samples import (
    INS,
    OTHER_INS,
    PS_ADDRESS,
    REPLY_ADDRESS,
    Prt,
    Spec,
    app,
    b64,
    cda_n1,
    cda_n3,
    org,
    patient,
    ps,
)
from tests.routing_payload.fixtures import cda

#: What must never show in an error: the INS, the patient's and the recipients' names, addresses.
SECRETS = (INS, OTHER_INS, "TESTNOM", "Élodie", "DESTFICTIF", "Zéphyr", PS_ADDRESS, "patient.mssante")


def refused(spec: Spec | bytes, rule: str) -> CisisError:
    data = spec if isinstance(spec, bytes) else spec.build()
    with pytest.raises(CisisError) as err:
        read_transmission(data)
    assert err.value.rule == rule, (err.value.rule, str(err.value))
    text = str(err.value)
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked into {text!r}"
    return err.value


# --- the profile test ---------------------------------------------------------------------------------------

def test_is_transmission_reads_msh_21() -> None:
    assert is_transmission(Spec().build())
    assert is_transmission(Spec(profile="2.1^OTHER~2.0^CISIS_CDA_HL7_V2").build())  # any repetition
    assert is_transmission(Spec(profile="2.0^ CISIS_CDA_HL7_V2 ").build())  # component stripped
    assert is_transmission(Spec(small_tilde=True).build())
    assert is_transmission(b"\x0b" + Spec().build() + b"\x1c\r")  # a file written with its MLLP framing
    assert not is_transmission(Spec(profile="").build())
    assert not is_transmission(Spec(profile="CISIS_CDA_HL7_V2").build())  # component 1, not 2
    for junk in (b"", b"MSH", b"MSH|", b"garbage\x00\xff", b"MSH|^~\\&|" + b"\xff" * 50, b"H|~^\\&|HPRIM"):
        assert not is_transmission(junk)


def test_not_of_the_profile_is_refused_by_read() -> None:
    err = refused(Spec(profile="2.1^OTHER"), "PROFILE")
    assert err.where == "MSH[1]-21"


# --- header and message type --------------------------------------------------------------------------------

def test_oru_header() -> None:
    tx = read_transmission(Spec().build())
    h = tx.header
    assert (h.sending_application, h.sending_facility, h.receiving_application, h.receiving_facility) == (
        "SGLFICTIF", "LABOFICTIF", "PFIFICTIVE", "ORGFICTIVE")
    assert (h.control_id, h.message_type, h.trigger, h.version, h.processing_id) == (
        "CTRLCISIS1", "ORU", "R01", "2.5", "P")
    assert h.charset == "UNICODE UTF-8" and h.profile_version == "2.1"


@pytest.mark.parametrize(("action", "trigger"), [("F", "T02"), ("C", "T10"), ("D", "T04")])
def test_mdm_triggers(action: str, trigger: str) -> None:
    tx = read_transmission(Spec(kind="MDM", action=action).build())
    assert (tx.header.message_type, tx.header.trigger, tx.header.version) == ("MDM", trigger, "2.6")
    assert tx.action is Action(action)
    assert len(tx.documents) == 1 and tx.documents[0].level == "N1"


@pytest.mark.parametrize("msg_type", ["ADT^A01^ADT_A01", "ORU^R30^ORU_R30", "MDM^T01^MDM_T01", "MDM^T11^MDM_T01",
                                      "ORM^O01", "^R01"])
def test_other_message_types_are_refused(msg_type: str) -> None:
    err = refused(Spec(message_type=msg_type), "MESSAGE_TYPE")
    assert err.hl7_error == "200" and err.where == "MSH[1]-9"


def test_wrong_version_is_refused() -> None:
    assert refused(Spec(version="2.6"), "MESSAGE_VERSION").where == "MSH[1]-12"
    assert refused(Spec(kind="MDM", version="2.5"), "MESSAGE_VERSION").hl7_error == "203"


def test_unreadable_hl7_is_a_typed_refusal() -> None:
    err = refused(Spec(charset="UNICODE UTF-8").build().replace("Élodie".encode(), b"\xe9lodie"), "HL7_SYNTAX")
    assert isinstance(err, PayloadError) and not err.temporary


def test_missing_segments() -> None:
    assert refused(Spec(no_orc=True), "SEGMENT_MISSING").hl7_error == "100"
    data = Spec(kind="MDM").build()
    no_txa = b"\r".join(s for s in data.split(b"\r") if not s.startswith(b"TXA"))
    assert refused(no_txa, "SEGMENT_MISSING").where == "TXA"
    no_pid = b"\r".join(s for s in Spec().build().split(b"\r") if not s.startswith(b"PID"))
    assert refused(no_pid, "SEGMENT_MISSING").where == "PID"


# --- documents ----------------------------------------------------------------------------------------------

def test_oru_carries_the_n1_and_the_n3() -> None:
    tx = read_transmission(Spec().build())
    assert [d.level for d in tx.documents] == ["N1", "N3"]
    assert [d.data for d in tx.documents] == [cda_n1(), cda_n3()]
    assert [d.where for d in tx.documents] == ["OBX[1]", "OBX[2]"]
    assert tx.documents[0].code == "11502-2" and tx.documents[0].status == "F"
    assert tx.documents[0].info is not None and tx.documents[0].info.document_type.code == "11502-2"


def test_one_document_oru() -> None:
    tx = read_transmission(Spec(documents=(cda_n3(),)).build())
    assert [d.level for d in tx.documents] == ["N3"]


def test_document_count_and_levels() -> None:
    assert refused(Spec(documents=()), "DOCUMENT_MISSING").hl7_error == "101"
    err = refused(Spec(documents=(cda_n1(), cda_n3(), cda_n3())), "DOCUMENT_COUNT")
    assert err.where == "OBX[3]"
    assert refused(Spec(kind="MDM", documents=(cda_n1(), cda_n3())), "DOCUMENT_COUNT").where == "OBX[2]"
    assert refused(Spec(documents=(cda_n3(), cda_n3())), "DOCUMENT_LEVELS").where == "OBX[2]"


def test_base64_is_case_insensitive_and_padding_may_be_missing() -> None:
    doc = cda_n3()
    while len(doc) % 3 != 1:  # the base64 then ends with "=="
        doc += b" "
    encoded = b64(doc)
    assert encoded.endswith("==")
    tx = read_transmission(Spec(documents=(doc,), document_obx5=(f"^text^XML^BASE64^{encoded.rstrip('=')}",)).build())
    assert tx.documents[0].data == doc


def test_document_encoding_is_strict() -> None:
    bad = b64(cda_n3())
    for value in (f"^TEXT^XML^Base64^{bad[:40]}*{bad[41:]}", f"^TEXT^XML^Hex^{cda_n3().hex()}",
                  f"^TEXT^XML^^{bad}", "^TEXT^XML^Base64", f"^TEXT^XML^Base64^{bad}=="):
        err = refused(Spec(documents=(cda_n3(),), document_obx5=(value,)), "DOCUMENT_ENCODING")
        assert err.where == "OBX[1]-5" and err.hl7_error == "102"


def test_a_document_that_is_not_a_cda() -> None:
    pdf = b"%PDF-1.4\n%%EOF\n"
    err = refused(Spec(documents=(pdf,)), "DOCUMENT_NOT_CDA")
    assert err.where.startswith("OBX[1]-5") and err.hl7_error == "102"
    refused(Spec(documents=(b"<notcda/>",)), "DOCUMENT_NOT_CDA")


def test_the_cda_patient_must_be_the_pid_patient() -> None:
    other = cda_n3().replace(INS.encode(), OTHER_INS.encode())
    err = refused(Spec(documents=(other,)), "INS_MISMATCH")
    assert err.where == "OBX[1]-5"


# --- action -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("action", "orc"), [("F", "NW"), ("C", "RO"), ("D", "CA")])
def test_oru_action_and_order_control(action: str, orc: str) -> None:
    tx = read_transmission(Spec(action=action, orc=orc).build())
    assert tx.action is Action(action) and tx.warnings == ()


@pytest.mark.parametrize("action", ["F", "C", "D"])
def test_order_control_sc_is_tolerated_with_a_warning(action: str) -> None:
    tx = read_transmission(Spec(action=action, orc="SC").build())
    assert tx.action is Action(action)
    assert len(tx.warnings) == 1 and "ORC[1]-1" in tx.warnings[0] and "SC" in tx.warnings[0]


@pytest.mark.parametrize(("action", "orc"), [("F", "RO"), ("C", "NW"), ("D", "NW"), ("F", "CA"), ("F", "XO"),
                                             ("F", "")])
def test_order_control_mismatch(action: str, orc: str) -> None:
    err = refused(Spec(action=action, orc=orc), "ORC_OBX_MISMATCH")
    assert err.where == "ORC[1]-1"


@pytest.mark.parametrize(("trigger", "action"), [("T02", "C"), ("T10", "F"), ("T04", "C"), ("T02", "D")])
def test_mdm_trigger_mismatch(trigger: str, action: str) -> None:
    err = refused(Spec(kind="MDM", trigger=trigger, action=action), "TRIGGER_OBX_MISMATCH")
    assert err.where == "OBX[1]-11"


def test_document_statuses() -> None:
    assert refused(Spec(statuses=("F", "X")), "DOCUMENT_STATUS").where == "OBX[2]-11"
    assert refused(Spec(statuses=("F", "C")), "OBX_STATUS_MISMATCH").where == "OBX[2]-11"


# --- patient ------------------------------------------------------------------------------------------------

def test_patient_from_pid() -> None:
    p = read_transmission(Spec().build()).patient
    assert (p.ins, p.ins_oid, p.family, p.given, p.birth_date, p.sex, p.identity_status) == (
        INS, "1.2.250.1.213.1.4.10", "TESTNOM", "Élodie", "19990101", "F", "VALI")
    assert p.qualified and INS not in repr(p)


def test_patient_identity_not_validated_and_no_ins() -> None:
    p = read_transmission(Spec(identity_status="PROV").build()).patient
    assert p.identity_status == "PROV" and not p.qualified
    p = read_transmission(Spec(ins=None, recipients=(ps(),)).build()).patient
    assert p.ins is None and not p.qualified


def test_patient_ins_under_a_production_authority() -> None:
    doc = cda_n3().replace(b"1.2.250.1.213.1.4.10", b"1.2.250.1.213.1.4.8")
    tx = read_transmission(Spec(documents=(doc,), ins_oid="1.2.250.1.213.1.4.8").build())
    assert tx.patient.ins_oid == "1.2.250.1.213.1.4.8"


# --- MetaDMPMSS flags ---------------------------------------------------------------------------------------

def test_flags_read_with_their_place() -> None:
    tx = read_transmission(Spec(flags={"DESTDMP": "Y", "ACK_LECTURE_MSS": "N"}).build())
    assert isinstance(tx.flags, Flags)
    assert tx.flag("DESTDMP") and tx.flag("DESTMSSANTEPS") and not tx.flag("ACK_LECTURE_MSS")
    assert tx.flags.where("MASQUE_PS") == "OBX[3]-5"
    assert error_location(tx.flags.where("MASQUE_PS")) == "OBX^3^5"


def test_optional_flags_default_to_n() -> None:
    tx = read_transmission(Spec(flags={"ACK_RECEPTION": None, "ACK_LECTURE_MSS": None}).build())
    assert tx.flags["ACK_RECEPTION"] is False and tx.flags["ACK_LECTURE_MSS"] is False
    assert isinstance(tx.flags, Flags) and tx.flags.where("ACK_RECEPTION") == ""


@pytest.mark.parametrize("flag", ["MASQUE_PS", "INVISIBLE_PATIENT", "INVISIBLE_REP_LEGAUX", "CONNEXION_SECRETE",
                                  "MODIF_CONF_CODE", "DESTDMP", "DESTMSSANTEPS", "DESTMSSANTEPAT"])
def test_a_required_flag_missing(flag: str) -> None:
    err = refused(Spec(flags={flag: None}), "FLAG_MISSING")
    assert flag in err.what and err.hl7_error == "101"


def test_a_flag_given_twice() -> None:
    extra = ("OBX|99|CE|ACK_RECEPTION^Accusé de réception^MetaDMPMSS||N^^HL70136||||||F",)
    err = refused(Spec(extra=extra), "FLAG_REPEATED")
    assert err.where == "OBX[13]-3"


@pytest.mark.parametrize("value", ["O", "YES", "", "1"])
def test_a_flag_value_other_than_y_or_n(value: str) -> None:
    err = refused(Spec(flags={"DESTMSSANTEPAT": value}), "FLAG_VALUE")
    assert err.where == "OBX[10]-5" and err.hl7_error == "103"


def test_lower_case_y_is_read() -> None:
    assert read_transmission(Spec(flags={"DESTDMP": "y"}).build()).flag("DESTDMP")


def test_an_unknown_metadmpmss_code() -> None:
    extra = ("OBX|99|CE|DESTFAX^Destinataire fax^MetaDMPMSS||Y^^HL70136||||||F",)
    err = refused(Spec(extra=extra), "FLAG_UNKNOWN")
    assert err.where == "OBX[13]-3" and err.hl7_error == "103"


def test_bodies_and_the_patients_no_reply() -> None:
    spec = Spec(bodies={"CORPSMAIL_PS": "Chère consœur, voici le CR.", "CORPSMAIL_PATIENT": "Bonjour, voici."},
                nte_fin=True)
    tx = read_transmission(spec.build())
    assert tx.bodies == {"CORPSMAIL_PS": "Chère consœur, voici le CR.", "CORPSMAIL_PATIENT": "Bonjour, voici."}
    assert tx.no_reply
    assert not read_transmission(Spec().build()).no_reply


def test_fin_must_follow_destmssantepat() -> None:
    extra = ("NTE|1|||FIN",)  # after the last OBX, not under DESTMSSANTEPAT
    assert not read_transmission(Spec(extra=extra).build()).no_reply


def test_body_in_the_message_charset() -> None:
    text = "Résultats joints.".encode("iso-8859-15")
    tx = read_transmission(Spec(charset="8859/15", raw_bodies={"CORPSMAIL_PS": b64(text)}).build())
    assert tx.bodies["CORPSMAIL_PS"] == "Résultats joints."


def test_a_cut_body_is_decoded_as_far_as_it_goes() -> None:
    whole = b64("Bonjour docteur")  # 20 characters
    tx = read_transmission(Spec(raw_bodies={"CORPSMAIL_PS": whole[:-2]}).build())  # 18: 13 bytes and 4 bits
    assert tx.bodies["CORPSMAIL_PS"] == "Bonjour docte"
    tx = read_transmission(Spec(raw_bodies={"CORPSMAIL_PS": whole[:-3]}).build())  # 17: a lone last character
    assert tx.bodies["CORPSMAIL_PS"] == "Bonjour doct"


def test_a_body_that_is_not_base64() -> None:
    err = refused(Spec(raw_bodies={"CORPSMAIL_PATIENT": "pas du base64 !"}), "BODY_ENCODING")
    assert err.where == "OBX[13]-5"
    text = "Bonjour".encode("utf-16")  # not UTF-8, the message's charset (MSH-18 UNICODE UTF-8)
    assert refused(Spec(raw_bodies={"CORPSMAIL_PS": b64(text)}), "BODY_ENCODING").hl7_error == "102"


def test_a_patient_ins_with_letters_matches_whatever_the_case() -> None:
    ins = "2A0129912345678"  # a Corsican NIR shape
    docs = (cda_n1().replace(INS.encode(), ins.encode()), cda_n3().replace(INS.encode(), ins.encode()))
    tx = read_transmission(Spec(ins=ins, documents=docs, recipients=(patient(ins, in_prt5=False),)).build())
    (r,) = tx.recipients
    assert r.address == "2a0129912345678@patient.mssante.fr" and r.identifier == ins and tx.warnings == ()


# --- PRT ----------------------------------------------------------------------------------------------------

def test_sender_reply_to_and_recipients() -> None:
    tx = read_transmission(Spec(recipients=(ps(), org(), app(), patient())).build())
    assert tx.sender is not None and tx.sender.id_type == "IDNAT" and tx.sender.rpps == "19900000022"
    assert tx.sender.authority == "1.2.250.1.71.4.2.1" and tx.sender.role == "SB"
    assert tx.sender.organisation == "Laboratoire Fictif"
    assert tx.reply_to == REPLY_ADDRESS
    kinds = [(r.kind, r.where) for r in tx.recipients]
    assert kinds == [(RecipientKind.PS, "PRT[2]"), (RecipientKind.ORG, "PRT[3]"), (RecipientKind.APP, "PRT[4]"),
                     (RecipientKind.PATIENT, "PRT[5]")]
    ps_, org_, app_, pat = tx.recipients
    assert (ps_.address, ps_.identifier, ps_.authority, ps_.family) == (
        PS_ADDRESS, "819900000044", "1.2.250.1.71.4.2.1", "DESTFICTIF")
    assert (org_.identifier, org_.authority, org_.organisation) == ("990000123", "1.2.250.1.71.4.2.2", "Service Fictif")
    assert (app_.identifier, app_.address) == ("APPFICT1", "appli.fictive@hopital-imaginaire.mssante.test")
    assert pat.address == f"{INS}@patient.mssante.fr" and pat.identifier == INS and pat.given_address == ""


def test_addresses_are_lower_cased() -> None:
    tx = read_transmission(Spec(recipients=(ps(address="Zephyr.DestFictif@Imaginaire.MSSante.test"),)).build())
    assert tx.recipients[0].address == PS_ADDRESS


@pytest.mark.parametrize(("prt", "code"), [(ps(address=""), "101"), (ps(address="pas une adresse"), "102"),
                                           (org(address="x@"), "102"), (app(address=""), "101")])
def test_a_recipient_without_a_valid_address(prt: Prt, code: str) -> None:
    err = refused(Spec(recipients=(prt,)), "RCT_ADDRESS")
    assert err.where == "PRT[2]-15" and err.hl7_error == code


def test_a_bad_reply_address() -> None:
    assert refused(Spec(reply_to="nowhere"), "REPLY_ADDRESS").where == "PRT[4]-15"  # SB, PS, patient, REPLY


@pytest.mark.parametrize("prt", [
    patient(),  # PRT-5 typed INS, PRT-15.4 <INS>@patient.mssante.fr
    patient(typed=False, oid="1.2.250.1.213.1.4.10"),  # the INS authority in PRT-5.9 instead of the type
    patient(in_prt5=False),  # no PRT-5: the INS is the address's local part (the IG's own example)
    patient(address=""),  # no address: built from the INS alone
], ids=["typed", "authority", "address-only", "ins-only"])
def test_the_patient_recipient_forms(prt: Prt) -> None:
    tx = read_transmission(Spec(recipients=(prt,)).build())
    (r,) = tx.recipients
    assert r.kind is RecipientKind.PATIENT and r.address == f"{INS}@patient.mssante.fr"
    assert tx.warnings == () and INS not in repr(r)


def test_a_patient_address_that_differs_from_the_ins_keeps_the_built_one() -> None:
    given = f"{INS}6@patient.mssante.fr"  # the ANS examples' typo: one digit too many
    tx = read_transmission(Spec(recipients=(patient(address=given),)).build())
    (r,) = tx.recipients
    assert r.address == f"{INS}@patient.mssante.fr" and r.given_address == given
    assert len(tx.warnings) == 1 and "PRT[2]-15" in tx.warnings[0] and INS not in tx.warnings[0]


def test_a_patient_copy_only_to_the_documents_patient() -> None:
    err = refused(Spec(recipients=(patient(OTHER_INS),)), "PATIENT_NOT_DOCUMENT_PATIENT")
    assert err.where == "PRT[2]"
    refused(Spec(recipients=(patient(OTHER_INS, in_prt5=False),)),
            "PATIENT_NOT_DOCUMENT_PATIENT")
    doc = cda(nonxml=True).replace(INS.encode(), b"")  # no INS anywhere: no patient copy
    refused(Spec(ins=None, documents=(doc,), recipients=(patient(),)), "PATIENT_NOT_DOCUMENT_PATIENT")


def test_a_patient_recipient_without_any_ins() -> None:
    refused(Spec(recipients=(Prt("RCT", "^TESTNOM^Élodie^^^^^^^L^^^INS"),)), "RCT_ADDRESS")


def test_no_sender_no_reply() -> None:
    tx = read_transmission(Spec(sender=None, reply_to=None).build())
    assert tx.sender is None and tx.reply_to is None


# --- the small tilde of the ANS ORU examples ----------------------------------------------------------------

def test_small_tilde_message_reads_like_the_plain_one() -> None:
    plain = read_transmission(Spec().build())
    tilde = read_transmission(Spec(small_tilde=True).build())
    assert tilde.patient == plain.patient and tilde.flags == plain.flags
    assert [d.data for d in tilde.documents] == [d.data for d in plain.documents]


# --- errors are typed and permanent -------------------------------------------------------------------------

def test_refusals_are_permanent_payload_errors() -> None:
    err = refused(Spec(flags={"DESTDMP": "X"}), "FLAG_VALUE")
    assert isinstance(err, PayloadError) and not err.temporary and err.status.startswith("5.")


def test_error_location() -> None:
    assert error_location("OBX[8]-5") == "OBX^8^5"
    assert error_location("PRT[3]") == "PRT^3"
    assert error_location("OBX MetaDMPMSS") is None
