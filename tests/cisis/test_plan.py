"""The plan of a transmission: which copies, who is left out and why, the ZAMs owed, and the
refusals that stop everything (nothing half-sent)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from gateway.cisis.model import (
    ALL_FLAGS,
    Action,
    CisisError,
    MessageHeader,
    Patient,
    Recipient,
    RecipientKind,
    Transmission,
    ZamEvent,
)
from gateway.cisis.plan import PATIENT, PROFESSIONAL, plan_transmission
from gateway.config.cisis import CisisSettings, CreatorSettings

INS = "299129912345678"
SETTINGS = CisisSettings(application_mailbox="pfi@hopital.mssante.test", nil="TEST0001",
                         creators=(CreatorSettings(name="sil", application="SIL-TEST", facility="LABO",
                                                   mllp_host="127.0.0.1", mllp_port=2576),))
QUALIFIED = Patient(ins=INS, ins_oid="1.2.250.1.213.1.4.10", family="INVENTE", given="CAMILLE",
                    birth_date="19991231", sex="F", identity_status="VALI")
DOCTOR = Recipient(RecipientKind.PS, "dr.invente@cabinet.mssante.test", "80000000001", where="PRT[2]")
SERVICE = Recipient(RecipientKind.ORG, "cardio@hopital.mssante.test", "UF42", where="PRT[3]")
PATIENT_BOX = Recipient(RecipientKind.PATIENT, f"{INS}@patient.mssante.fr", INS, where="PRT[4]")


def _tx(flags: Mapping[str, str], *, recipients: tuple[Recipient, ...] = (DOCTOR, SERVICE, PATIENT_BOX),
        patient: Patient = QUALIFIED, application: str = "SIL-TEST", no_reply: bool = False) -> Transmission:
    values = {name: False for name in ALL_FLAGS}
    values.update({k: v == "Y" for k, v in flags.items()})
    header = MessageHeader(application, "LABO", "MSGW", "HOPITAL", "MSG0001", "ORU", "R01", "2.5",
                           profile_version="2.1")
    return Transmission(header=header, patient=patient, documents=(), action=Action.INITIAL, sender=None,
                        recipients=recipients, reply_to=None, flags=values, no_reply=no_reply)


BOTH = {"MASQUE_PS": "N", "INVISIBLE_PATIENT": "N", "INVISIBLE_REP_LEGAUX": "N", "CONNEXION_SECRETE": "N",
        "MODIF_CONF_CODE": "N", "DESTDMP": "N", "DESTMSSANTEPS": "Y", "DESTMSSANTEPAT": "Y"}


def test_professionals_and_patient_get_one_message_each() -> None:
    plan = plan_transmission(_tx(BOTH, no_reply=True), SETTINGS)
    assert [c.kind for c in plan.copies] == [PROFESSIONAL, PATIENT]
    assert [r.address for r in plan.copies[0].recipients] == [DOCTOR.address, SERVICE.address]
    assert plan.copies[0].body_code == "CORPSMAIL_PS" and not plan.copies[0].no_reply
    assert plan.copies[1].recipients == (PATIENT_BOX,) and plan.copies[1].body_code == "CORPSMAIL_PATIENT"
    assert plan.copies[1].no_reply
    assert plan.row is not None and plan.left_out == () and plan.zams == ()


def test_patient_hidden_only_professionals_and_the_patient_left_out_with_the_flag() -> None:
    flags = {**BOTH, "INVISIBLE_PATIENT": "Y", "DESTMSSANTEPAT": "N"}
    plan = plan_transmission(_tx(flags), SETTINGS)
    assert [c.kind for c in plan.copies] == [PROFESSIONAL]
    assert [(r.kind, why.split(":")[0]) for r, why in plan.left_out] == [(RecipientKind.PATIENT,
                                                                            "INVISIBLE_PATIENT=Y")]


def test_masked_from_professionals_only_the_patient() -> None:
    flags = {**BOTH, "MASQUE_PS": "Y", "DESTMSSANTEPS": "N"}
    plan = plan_transmission(_tx(flags), SETTINGS)
    assert [c.kind for c in plan.copies] == [PATIENT]
    assert {why.split(":")[0] for _, why in plan.left_out} == {"MASQUE_PS=Y"}


def test_a_patient_copy_needs_a_qualified_ins_and_nothing_is_half_sent() -> None:
    provisional = Patient(ins=INS, ins_oid="1.2.250.1.213.1.4.10", family="INVENTE", given="CAMILLE",
                          birth_date="19991231", sex="F", identity_status="PROV")
    with pytest.raises(CisisError) as caught:
        plan_transmission(_tx(BOTH, patient=provisional), SETTINGS)
    assert caught.value.rule == "INS_NOT_QUALIFIED"
    assert INS not in str(caught.value) and "INVENTE" not in str(caught.value)


def test_asked_copies_need_their_recipients() -> None:
    with pytest.raises(CisisError) as no_patient:
        plan_transmission(_tx(BOTH, recipients=(DOCTOR,)), SETTINGS)
    assert no_patient.value.rule == "NO_PATIENT_RECIPIENT"
    with pytest.raises(CisisError) as no_pro:
        plan_transmission(_tx(BOTH, recipients=(PATIENT_BOX,)), SETTINGS)
    assert no_pro.value.rule == "NO_PROFESSIONAL_RECIPIENT"


def test_an_unlisted_combination_is_refused_by_the_matrix() -> None:
    with pytest.raises(CisisError) as caught:
        plan_transmission(_tx({**BOTH, "INVISIBLE_REP_LEGAUX": "Y"}), SETTINGS)
    assert caught.value.rule == "MATRIX"


def test_zams_owed_per_recipient_and_the_dmp_reported_not_performed() -> None:
    flags = {**BOTH, "DESTDMP": "Y", "ACK_RECEPTION": "Y", "ACK_LECTURE_MSS": "Y"}
    plan = plan_transmission(_tx(flags), SETTINGS)
    events = [(z.event, z.recipient) for z in plan.zams]
    addresses = [DOCTOR.address, SERVICE.address, PATIENT_BOX.address]
    assert events == [(ZamEvent.DMP_RECEPTION, None), *[(ZamEvent.MSS_RECEPTION, a) for a in addresses],
                      *[(ZamEvent.MSS_READ, a) for a in addresses]]
    assert all(c.read_receipt for c in plan.copies)


def test_owed_zams_without_a_creator_endpoint_are_refused() -> None:
    with pytest.raises(CisisError) as caught:
        plan_transmission(_tx({**BOTH, "ACK_RECEPTION": "Y"}, application="OTHER-SGL"), SETTINGS)
    assert caught.value.rule == "NO_RETURN_ENDPOINT"
    # nothing owed: an unknown CRÉATEUR is fine
    assert plan_transmission(_tx(BOTH, application="OTHER-SGL"), SETTINGS).copies


def test_dmp_only_is_accepted_with_its_zam_and_no_copy() -> None:
    flags = {**BOTH, "DESTDMP": "Y", "DESTMSSANTEPS": "N", "DESTMSSANTEPAT": "N"}
    plan = plan_transmission(_tx(flags), SETTINGS)
    assert plan.copies == () and plan.row is None
    assert [z.event for z in plan.zams] == [ZamEvent.DMP_RECEPTION]
    assert len(plan.left_out) == 3


def test_the_profile_must_be_served() -> None:
    with pytest.raises(CisisError) as caught:
        plan_transmission(_tx(BOTH), CisisSettings())
    assert caught.value.rule == "PROFILE_NOT_SERVED"
