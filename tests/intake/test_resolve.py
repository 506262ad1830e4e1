"""Recipient resolution against a real directory store."""

from __future__ import annotations

from gateway.intake.resolve import resolve_recipients
from gateway.routing.model import DocumentType, PartyRef, PayloadInfo
from gateway.routing.payload import read_payload
from tests.intake import samples as s

LAB_CODES = {("labx", "DRZEP"): s.RPPS_LABCODE}


def _info(*parties: PartyRef, embedded: tuple[PayloadInfo, ...] = (), sender: str = "LABX") -> PayloadInfo:
    return PayloadInfo(kind="hprim", document_type=DocumentType("ORU"), recipients=parties, embedded=embedded,
                       sender=sender)


def _resolve(info: PayloadInfo, directory, unrouted: str | None = s.UNROUTED):
    return resolve_recipients(info, directory, sender=s.LIS, unrouted=unrouted, lab_codes=LAB_CODES)


def test_identifiers_resolve_to_the_preferred_address(directory) -> None:
    info = _info(PartyRef("RPPS", s.RPPS_LOCAL), PartyRef("IDNAT", "8" + s.RPPS_SMIME),
                 PartyRef("ADELI", s.ADELI_DOC), PartyRef("ADDRESS", "Direct@Cabinet.test"),
                 PartyRef("LAB-CODE", "DRZEP"))
    res = _resolve(info, directory)
    # the local mailbox wins over the trusted-domain one of the same doctor
    assert res.addresses == (s.ADDR_LOCAL, s.ADDR_SMIME, s.ADDR_ADELI, "direct@cabinet.test", s.ADDR_LABCODE)
    assert not res.unresolved and not res.notices and not res.unrouted_used
    assert [p.id_type for p, _a in res.resolved] == ["RPPS", "IDNAT", "ADELI", "ADDRESS", "LAB-CODE"]


def test_unresolved_go_to_the_unrouted_mailbox_with_a_notice(directory) -> None:
    info = _info(PartyRef("RPPS", s.RPPS_UNKNOWN, family="INCONNU", source="line 12", role="prescriber"),
                 PartyRef("RPPS", s.RPPS_NOADDR), PartyRef("NAME", "DR QUIDAM", family="QUIDAM"),
                 PartyRef("LAB-CODE", "NOPE"), PartyRef("RPPS", s.RPPS_SMIME))
    res = _resolve(info, directory)
    assert res.addresses == (s.ADDR_SMIME, s.UNROUTED) and res.unrouted_used
    assert len(res.unresolved) == 4
    text = "\n".join(res.notices)
    assert s.RPPS_UNKNOWN in text and s.RPPS_NOADDR in text and "NOPE" in text and s.UNROUTED in text
    assert "QUIDAM" not in text and "INCONNU" not in text  # identifiers only, never names
    # without an unrouted mailbox nothing is invented: the caller refuses the payload
    res = _resolve(info, directory, unrouted=None)
    assert res.addresses == (s.ADDR_SMIME,) and len(res.unresolved) == 4 and not res.unrouted_used


def test_patients_are_never_recipients(directory) -> None:
    info = read_payload(s.oru())
    assert any(p.is_patient for p in info.recipients)
    res = _resolve(info, directory)
    assert res.addresses == (s.ADDR_LOCAL,)
    assert s.PATIENT_ADDRESS not in res.addresses and not res.unresolved
    patient = PartyRef("ADDRESS", s.PATIENT_ADDRESS, address=s.PATIENT_ADDRESS, is_patient=True)
    assert _resolve(_info(patient), directory).addresses == ()


def test_address_next_to_an_unknown_identifier_is_used(directory) -> None:
    res = _resolve(_info(PartyRef("IDNAT", "8" + s.RPPS_UNKNOWN, address="copie@imaginaire.mssante.test")), directory)
    assert res.addresses == ("copie@imaginaire.mssante.test",) and not res.unresolved


def test_embedded_document_recipients_are_added(directory) -> None:
    info = read_payload(s.oru(embedded=s.cda(recipients=("8" + s.RPPS_SMIME, "8" + s.RPPS_LOCAL))))
    res = _resolve(info, directory)
    assert res.addresses == (s.ADDR_LOCAL, s.ADDR_SMIME)


def test_lab_code_by_envelope_sender(directory) -> None:
    info = _info(PartyRef("LAB-CODE", "K9"), sender="")
    res = resolve_recipients(info, directory, sender=s.LIS, unrouted=None,
                             lab_codes={(s.LIS, "K9"): s.RPPS_SMIME})
    assert res.addresses == (s.ADDR_SMIME,)


def test_hprim_lab_code_from_the_file(directory) -> None:
    res = _resolve(read_payload(s.hprim_medecin("DRZEP")), directory)
    assert res.addresses == (s.ADDR_LABCODE,)
