"""JSON sidecars of PDFs: what they route, and the clear errors a lab integrator gets."""

from __future__ import annotations

import json

import pytest

from gateway.routing.sidecar import SidecarError, looks_like_sidecar, read_sidecar

FULL = {
    "sidecar": 1,
    "recipients": [{"rpps": "19900000033"}, {"adeli": "991234567", "name": "Dr Cyprien FICTIF"},
                   {"idnat": "819900000011"}, {"lab_code": "DRZEP"},
                   {"address": "secretariat@cabinet.test", "name": "Secrétariat"}],
    "document_id": "LABX-2026-000123",
    "document_type": {"code": "11502-2", "system": "LOINC", "label": "CR d'examens biologiques"},
    "title": "Compte rendu d'examens biologiques",
    "created": "2026-11-25T09:30:00+01:00",
    "author": {"rpps": "19900000099", "name": "Laboratoire Fictif"},
    "replaces": "LABX-2026-000122",
    "cancels": False,
}


def _read(doc: object) -> object:
    return read_sidecar(json.dumps(doc).encode())


def test_full_sidecar() -> None:
    info = _read(FULL)
    assert info.kind == "pdf" and info.document_id == "LABX-2026-000123"
    assert [(r.id_type, r.value) for r in info.recipients] == [
        ("RPPS", "19900000033"), ("ADELI", "991234567"), ("IDNAT", "819900000011"), ("LAB-CODE", "DRZEP"),
        ("ADDRESS", "secretariat@cabinet.test")]
    assert info.recipients[2].rpps == "19900000011"
    assert info.document_type.code == "11502-2" and info.document_type.system == "LOINC"
    assert info.created == "202611250930" + "00"
    assert info.replaces and info.replaced_id == "LABX-2026-000122" and not info.cancels
    assert info.author is not None and info.author.rpps == "19900000099"
    assert info.patient_ids == ()


def test_minimal_sidecar_and_bom() -> None:
    info = read_sidecar(b'\xef\xbb\xbf{"recipients": [{"address": "berthe@imaginaire.mssante.test"}]}')
    assert info.recipients[0].address == "berthe@imaginaire.mssante.test"
    assert info.document_id is None and not info.replaces


@pytest.mark.parametrize(("doc", "where", "what"), [
    ([], "$", "JSON object"),
    ({}, "$.recipients", "non-empty list"),
    ({"recipient": [{"rpps": "19900000033"}]}, "$.recipient", "unknown key 'recipient'"),
    ({"recipients": [{"rpps": "1990"}]}, "$.recipients[0].rpps", "11 digits"),
    ({"recipients": [{"rpps": "19900000033", "adeli": "991234567"}]}, "$.recipients[0]", "one identifier"),
    ({"recipients": [{"name": "Dr X"}]}, "$.recipients[0]", "needs one of"),
    ({"recipients": [{"address": "not an address"}]}, "$.recipients[0].address", "not a mail address"),
    ({"recipients": [{"rpps": "19900000033"}], "created": "hier"}, "$.created", "ISO 8601"),
    ({"recipients": [{"rpps": "19900000033"}], "sidecar": 2}, "$.sidecar", "version"),
    ({"recipients": [{"rpps": "19900000033"}], "cancels": "yes"}, "$.cancels", "true or false"),
    ({"recipients": [{"rpps": "19900000033"}], "document_type": {"label": "x"}}, "$.document_type", "'code'"),
    ({"recipients": [{"rpps": "19900000033", "notes": "PATIENTFICTIF"}]}, "$.recipients[0].notes", "unknown key"),
])
def test_bad_sidecars_say_what_and_where(doc, where, what) -> None:
    with pytest.raises(SidecarError) as err:
        _read(doc)
    assert err.value.where == where and what in err.value.what
    assert "PATIENTFICTIF" not in str(err.value)


def test_not_json_duplicate_keys_and_size() -> None:
    with pytest.raises(SidecarError, match="not valid JSON") as err:
        read_sidecar(b'{"recipients": [')
    assert err.value.where.startswith("line 1")
    with pytest.raises(SidecarError, match="twice"):
        read_sidecar(b'{"recipients": [{"rpps": "19900000033"}], "recipients": []}')
    with pytest.raises(SidecarError, match="larger"):
        read_sidecar(b"{" + b" " * 70000 + b"}")
    with pytest.raises(SidecarError, match="UTF-8"):
        read_sidecar(b'{"recipients": [{"address": "\xe9@x.test"}]}')
    with pytest.raises(SidecarError, match="nested"):
        read_sidecar(b"[" * 32000 + b"]" * 32000)


def test_keys_that_are_not_identifiers_are_not_echoed() -> None:
    with pytest.raises(SidecarError) as err:
        read_sidecar(b'{"recipients": [{"rpps": "19900000033"}], "PATIENTFICTIF Cl\\u00e9mence": 1}')
    assert "PATIENTFICTIF" not in str(err.value) and err.value.where == "$"


def test_looks_like_sidecar() -> None:
    assert looks_like_sidecar(b"anything", "resultat.JSON")
    assert looks_like_sidecar(b' {"recipients": []}')
    assert not looks_like_sidecar(b'{"other": 1}') and not looks_like_sidecar(b"H|^~\\&|")


@pytest.mark.parametrize(("raw", "where"), [
    (b'{"recipients": [{"rpps": "19900000033"}], "title": "x", "n": ' + b"9" * 5000 + b"}", "$"),  # int digits
    (b'{"recipients": [{"rpps": "19900000033"}], "title": "\\ud800"}', "$.title"),  # lone surrogate
    (b'{"recipients": [{"rpps": "19900000033"}], "document_id": "A\\u2028B"}', "$.document_id"),
    (b'{"recipients": [{"rpps": "\\u0661\\u0662\\u0663\\u0664\\u0665\\u0666\\u0667\\u0668\\u0669\\u0660\\u0661"}]}',
     "$.recipients[0].rpps"),  # Arabic-Indic digits are not an RPPS
    (b'{"recipients": [{"rpps": "19900000033"}], "created": "2026-13-45T25:61"}', "$.created"),
])
def test_review_findings_are_typed_errors(raw: bytes, where: str) -> None:
    """Found in review: these passed the reader (and crashed the message builder) or escaped untyped."""
    with pytest.raises(SidecarError) as err:
        read_sidecar(raw)
    assert err.value.where == where


def test_capitalised_or_multiline_keys_are_never_echoed() -> None:
    for key in ("DUPONT_Jean", "dupont\\n"):
        raw = b'{"recipients": [{"rpps": "19900000033"}], "' + key.encode() + b'": 1}'
        with pytest.raises(SidecarError) as err:
            read_sidecar(raw)
        assert "DUPONT" not in str(err.value) and "dupont" not in str(err.value) and err.value.where == "$"
