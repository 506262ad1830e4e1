"""Common types and the dispatcher: detection, masking, PDF, error hierarchy."""

from __future__ import annotations

import pytest

from gateway.errors import MalformedInput
from gateway.routing.model import (
    DocumentType,
    PartyRef,
    PatientId,
    PayloadError,
    PayloadInfo,
    UnsupportedPayload,
)
from gateway.routing.payload import detect_payload, read_payload

from . import fixtures as fx

PDF = b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF\n"


@pytest.mark.parametrize("data, kind", [
    (fx.hprim_net(), "hprim"), (fx.hprim_net("^~\\&"), "hprim"), (fx.hprim_medecin(), "hprim"),
    (fx.oru(), "hl7v2"), (fx.mdm(), "hl7v2"), (b"\xef\xbb\xbf" + fx.oru(), "hl7v2"), (fx.cda(), "cda"),
    (PDF, "pdf"), (b"PK\x03\x04rest", "xdm"), (b"hello world", None), (b"<html></html>", None), (b"", None),
])
def test_detect(data: bytes, kind: str | None) -> None:
    assert detect_payload(data) == kind


def test_read_payload_dispatch() -> None:
    assert read_payload(fx.hprim_medecin()).kind == "hprim"
    assert read_payload(fx.oru()).kind == "hl7v2"
    assert read_payload(fx.cda()).kind == "cda"
    pdf = read_payload(PDF)
    assert pdf.kind == "pdf" and pdf.media_type == "application/pdf"
    with pytest.raises(PayloadError, match="truncated PDF"):
        read_payload(PDF[:-7])
    with pytest.raises(UnsupportedPayload) as exc:
        read_payload(b"hello world")
    assert exc.value.where == "byte 0"


def test_filename_breaks_ties() -> None:
    # a text-layout file whose first block is not recognisable by content alone
    with pytest.raises(UnsupportedPayload):
        read_payload(b"D0001\nTESTNOM\n")
    with pytest.raises(PayloadError) as exc:
        read_payload(b"D0001\nTESTNOM\n", "resultat.hpr")
    assert exc.value.code == "payload-hprim"


def test_error_hierarchy_is_malformed_input() -> None:
    err = PayloadError("bad thing", "segment 3 OBR-16")
    assert isinstance(err, MalformedInput)
    assert str(err) == "bad thing at segment 3 OBR-16"
    assert err.where == "segment 3 OBR-16" and not err.temporary and err.status.startswith("5.")


def test_masking_in_repr() -> None:
    pid = PatientId(fx.INS, "INS-NIR-TEST", "1.2.250.1.213.1.4.10", "x")
    info = PayloadInfo(kind="cda", document_type=DocumentType("11502-2"), patient_ids=(pid,),
                       recipients=(PartyRef("ADDRESS", f"{fx.INS}@patient.test", address=f"{fx.INS}@patient.test",
                                            is_patient=True),))
    for text in (repr(info), str(info), repr(pid), str(pid), f"{info}"):
        assert fx.INS not in text
    assert "2**************" in repr(pid)
    assert info.ins is pid


def test_partyref_rpps() -> None:
    assert PartyRef("RPPS", fx.RPPS_DOC).rpps == fx.RPPS_DOC
    assert PartyRef("IDNAT", fx.IDNAT_DOC).rpps == fx.RPPS_DOC
    assert PartyRef("IDNAT", "0123456789AB").rpps is None
    assert PartyRef("LAB-CODE", "DRX").rpps is None
