"""Every ANS example of the profile (``MSGW_CORPUS``/ans-hl7v2/TRANS_DOC_CDA_HL7V2/V2.0) is read.

The examples stay outside the repository; they are read through ``MSGW_CORPUS`` (a missing corpus
fails in CI, see ``tests/conftest.py``). Where an example carries a placeholder in OBX-5 (the
base64 of "Document medcial au format CDA niveau 1"), the CDA XML file(s) of the same folder are
put in its place, N1 for ``OBX|1``, N3 for ``OBX|2``, and must come out byte-identical. The
``…_Base64`` variants carry their own (slightly different) CDA versions: those must come out
as the bytes their OBX-5 encodes.

What the examples are known to say (checked by hand against the files): ORC-1 ``SC`` in every
ORU (tolerated, with a warning), the patient's PRT-15.4 with one digit too many (the address is
built from the INS, with a warning), CORPSMAIL_PS cut without padding in the ORU. The MDM
examples break the current IG matrix (INIT: INVISIBLE_REP_LEGAUX=Y with INVISIBLE_PATIENT=Y;
RPLC/DEL: DESTMSSANTEPS=Y, DESTMSSANTEPAT=N with INVISIBLE_PATIENT=N): the matrix refuses them,
as the IG as published says.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.cisis import matrix
from gateway.cisis.model import Action, CisisError, RecipientKind, Transmission
from gateway.cisis.reader import is_transmission, read_transmission
from tests.conftest import corpus_dir

FOLDER = "ans-hl7v2/TRANS_DOC_CDA_HL7V2/V2.0"
PLACEHOLDER = base64.b64encode(b"Document medcial au format CDA niveau 1")
PS_ADDRESS = "adam.hoda@test-ci-sis.mssante.fr"
BODY_PS = "Cher confrère, vous trouverez ci-joint le CR d’imagerie de M.Dupont"
ORU_FLAGS = dict(MASQUE_PS=False, INVISIBLE_PATIENT=False, INVISIBLE_REP_LEGAUX=False, CONNEXION_SECRETE=False,
                 MODIF_CONF_CODE=False, DESTDMP=True, DESTMSSANTEPS=True, DESTMSSANTEPAT=True)
MDM_INIT_FLAGS = dict(MASQUE_PS=False, INVISIBLE_PATIENT=True, INVISIBLE_REP_LEGAUX=True, CONNEXION_SECRETE=True,
                      MODIF_CONF_CODE=False, DESTDMP=True, DESTMSSANTEPS=True, DESTMSSANTEPAT=False,
                      ACK_RECEPTION=False, ACK_LECTURE_MSS=False)
MDM_CHANGE_FLAGS = dict(MASQUE_PS=False, INVISIBLE_PATIENT=False, INVISIBLE_REP_LEGAUX=False, CONNEXION_SECRETE=True,
                        MODIF_CONF_CODE=True, DESTDMP=True, DESTMSSANTEPS=True, DESTMSSANTEPAT=False,
                        ACK_RECEPTION=False, ACK_LECTURE_MSS=False)


@dataclass(frozen=True)
class Example:
    action: Action
    cdas: tuple[str, ...]  # the folder's CDA files, in OBX order (N1, N3)
    flags: dict[str, bool]
    row: str  # the matrix row, or "MATRIX:<the flag=value it names>"


_ORU_INIT = dict(ORU_FLAGS, ACK_RECEPTION=True, ACK_LECTURE_MSS=True)
_ORU_CHANGE = dict(ORU_FLAGS, ACK_RECEPTION=False, ACK_LECTURE_MSS=False)
_N1_N3_V2 = ("CR_Bio_CDA_Niv1_v2.XML", "CR_Bio_CDA_Niv3_v2.XML")
EXAMPLES = {
    "ORU/Transmission_initiale_ORU/message_ORU_CR_Bio_INIT_N1_N3.hl7": Example(
        Action.INITIAL, ("CR_Bio_CDA_Niv1_v1.XML", "CR_Bio_CDA_Niv3_v1.XML"), _ORU_INIT, "PS+PATIENT"),
    "ORU/Remplacement_ORU/message_ORU_CR_Bio_RPLC_N1_N3.er7": Example(
        Action.REPLACE, _N1_N3_V2, _ORU_CHANGE, "PS+PATIENT"),
    "ORU/Remplacement_ORU/message_ORU_CR_Bio_RPLC_N1_Base64_N3_Base64.er7": Example(
        Action.REPLACE, _N1_N3_V2, _ORU_CHANGE, "PS+PATIENT"),
    "ORU/Suppression_ORU/message_ORU_CR_Bio_DEL_N1_N3.er7": Example(
        Action.DELETE, _N1_N3_V2, _ORU_CHANGE, "PS+PATIENT"),
    "ORU/Suppression_ORU/message_ORU_CR_Bio_DEL_N1_Base64_N3_Base64.er7": Example(
        Action.DELETE, _N1_N3_V2, _ORU_CHANGE, "PS+PATIENT"),
    "MDM/Transmission_initiale_MDM/message_MDM_CR_Radio_INIT_N1.er7": Example(
        Action.INITIAL, ("CR_Radio_CDAN1_v1.XML",), MDM_INIT_FLAGS, "MATRIX:INVISIBLE_REP_LEGAUX=Y"),
    "MDM/Transmission_initiale_MDM/message_MDM_CR_Radio_INIT_N1_Base64.er7": Example(
        Action.INITIAL, ("CR_Radio_CDAN1_v1.XML",), MDM_INIT_FLAGS, "MATRIX:INVISIBLE_REP_LEGAUX=Y"),
    "MDM/Remplacement_MDM/message_MDM_CR_Radio_RPLC_N1.er7": Example(
        Action.REPLACE, ("CR_Radio_CDAN1_v2.XML",), MDM_CHANGE_FLAGS, "MATRIX:INVISIBLE_PATIENT=N"),
    "MDM/Suppression_MDM/message_MDM_CR_Radio_DEL_N1.er7": Example(
        Action.DELETE, ("CR_Radio_CDAN1_v2.XML",), MDM_CHANGE_FLAGS, "MATRIX:INVISIBLE_PATIENT=N"),
}


@pytest.fixture(scope="module")
def corpus() -> Path:
    return corpus_dir()


def test_every_example_is_listed(corpus: Path) -> None:
    found = {str(p.relative_to(corpus / FOLDER)) for p in (corpus / FOLDER).glob("*/*/message*")}
    assert found == set(EXAMPLES)


def _substituted(path: Path, cdas: tuple[str, ...]) -> tuple[bytes, tuple[bytes, ...] | None]:
    """The example with each placeholder replaced by its CDA (N1 in OBX|1, N3 in OBX|2), and
    the CDA bytes expected out (None for the ``_Base64`` variants: they carry their own)."""
    data = path.read_bytes()
    if PLACEHOLDER not in data:
        return data, None
    documents = tuple((path.parent / name).read_bytes() for name in cdas)
    segments = data.splitlines(keepends=True)  # the examples end their segments with CR or LF
    for i, seg in enumerate(segments):
        for n, doc in enumerate(documents, start=1):
            if seg.startswith(b"OBX|%d|ED|" % n):
                assert PLACEHOLDER in seg
                segments[i] = seg.replace(PLACEHOLDER, base64.b64encode(doc))
    out = b"".join(segments)
    assert PLACEHOLDER not in out
    return out, documents


def _read(corpus: Path, name: str) -> tuple[Transmission, tuple[bytes, ...] | None, bytes]:
    data, documents = _substituted(corpus / FOLDER / name, EXAMPLES[name].cdas)
    assert is_transmission(data)
    return read_transmission(data), documents, data


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_the_documents_come_out_byte_identical(corpus: Path, name: str) -> None:
    tx, documents, data = _read(corpus, name)
    example = EXAMPLES[name]
    assert tx.action is example.action
    assert [d.status for d in tx.documents] == [example.action.value] * len(example.cdas)
    assert [d.level for d in tx.documents] == ["N1", "N3"][:len(example.cdas)]
    if documents is not None:
        assert tuple(d.data for d in tx.documents) == documents
    else:  # the bytes the example encodes, whole
        for doc in tx.documents:
            assert base64.b64encode(doc.data) in data
    for doc in tx.documents:
        assert doc.info is not None and doc.info.ins is not None and doc.info.ins.value == tx.patient.ins


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_header_patient_and_flags(corpus: Path, name: str) -> None:
    tx, _, _ = _read(corpus, name)
    example = EXAMPLES[name]
    kind = name.split("/")[0]
    assert tx.header.message_type == kind and tx.header.version == {"ORU": "2.5", "MDM": "2.6"}[kind]
    assert tx.header.profile_version == "2.0" and tx.header.charset == "UNICODE UTF-8"
    assert tx.header.receiving_application == "PFI-X" and tx.header.control_id == "015"
    assert tx.patient.ins_oid == "1.2.250.1.213.1.4.8" and tx.patient.identity_status == "VALI"
    assert tx.patient.qualified and len(tx.patient.ins or "") == 15
    assert {f: tx.flag(f) for f in example.flags} == example.flags
    assert tx.sender is not None and tx.sender.id_type == "IDNAT" and tx.sender.rpps is not None
    assert not tx.no_reply


@pytest.mark.parametrize("name", sorted(n for n in EXAMPLES if n.startswith("ORU")))
def test_oru_recipients_reply_to_body_and_warnings(corpus: Path, name: str) -> None:
    tx, _, _ = _read(corpus, name)
    ps, pat = tx.recipients
    assert (ps.kind, ps.address, ps.identifier) == (RecipientKind.PS, PS_ADDRESS, "801234567897")
    # the patient's address is built from the INS; the example's PRT-15.4 has one digit too many
    assert pat.kind is RecipientKind.PATIENT and pat.address == f"{tx.patient.ins}@patient.mssante.fr"
    assert pat.given_address == f"{tx.patient.ins}6@patient.mssante.fr"
    assert tx.reply_to == PS_ADDRESS
    # CORPSMAIL_PS is cut in the ORU examples: what there is is decoded
    assert tx.bodies == {"CORPSMAIL_PS": BODY_PS[:-1]}
    assert len(tx.warnings) == 2
    assert "ORC-1 SC" in tx.warnings[0] and "PRT[3]-15" in tx.warnings[1]
    assert all((tx.patient.ins or "") not in w for w in tx.warnings)


@pytest.mark.parametrize("name", sorted(n for n in EXAMPLES if n.startswith("MDM")))
def test_mdm_recipient_and_body(corpus: Path, name: str) -> None:
    tx, _, _ = _read(corpus, name)
    (ps,) = tx.recipients
    assert (ps.kind, ps.address) == (RecipientKind.PS, PS_ADDRESS)
    assert tx.reply_to is None and tx.warnings == ()
    assert tx.bodies == {"CORPSMAIL_PS": BODY_PS}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_which_examples_the_matrix_accepts(corpus: Path, name: str) -> None:
    tx, _, _ = _read(corpus, name)
    expected = EXAMPLES[name].row
    if not expected.startswith("MATRIX:"):
        row = matrix.check(tx)
        assert row is not None and row.name == expected
        return
    with pytest.raises(CisisError) as err:
        matrix.check(tx)
    assert err.value.rule == "MATRIX"
    assert f"allows {expected.removeprefix('MATRIX:')} with DESTMSSANTEPS=Y, DESTMSSANTEPAT=N" in err.value.what
    assert err.value.where.startswith("OBX[")
