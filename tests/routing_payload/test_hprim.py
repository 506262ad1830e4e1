"""HPRIM reader: both layouts, both delimiter orders, both encodings, continuation lines, errors."""

from __future__ import annotations

import pytest

from gateway.routing.hprim import read_hprim
from gateway.routing.model import HprimError, PayloadError

from . import fixtures as fx


@pytest.mark.parametrize("delims", ["~^\\&", "^~\\&"])
@pytest.mark.parametrize("encoding", ["iso-8859-1", "utf-8"])
@pytest.mark.parametrize("eol", ["\r\n", "\n"])
def test_record_layout_both_orders_and_encodings(delims: str, encoding: str, eol: str) -> None:
    info = read_hprim(fx.hprim_net(delims, encoding=encoding, eol=eol))
    assert info.kind == "hprim"
    assert info.document_type.code == "ORU"
    assert "H2.2" in info.document_type.label
    assert info.encoding == encoding
    assert info.author is not None and info.author.organisation == "Laboratoire Fictif"
    # the A| line split the prescriber field mid-name: it must be glued back
    assert [(r.id_type, r.value, r.family, r.role) for r in info.recipients] == [
        ("LAB-CODE", "DRX", "DR ZÉPHYR Test", "prescriber")]
    assert info.document_id == "LABX:RESULT01.HPR:202501151000"
    assert not info.replaces
    assert {p.value for p in info.patient_ids} == {fx.IPP, "LABPAT9"}


def test_record_layout_without_continuation_reads_the_same() -> None:
    a = read_hprim(fx.hprim_net(continuation=True))
    b = read_hprim(fx.hprim_net(continuation=False))
    assert a.recipients == b.recipients


def test_correction_status_marks_replacement() -> None:
    assert read_hprim(fx.hprim_net(status="C")).replaces


def test_rpps_prescriber_is_recognised() -> None:
    data = fx.hprim_net(continuation=False).replace(b"DRX~DR Z", fx.RPPS_DOC.encode() + b"~DR Z")
    data = data.replace(b"Test~L~CAB1", b"Test~RPPS~CAB1")
    info = read_hprim(data)
    assert info.recipients[0].id_type == "RPPS"
    assert info.recipients[0].rpps == fx.RPPS_DOC


@pytest.mark.parametrize("encoding", ["iso-8859-1", "utf-8"])
def test_text_layout(encoding: str) -> None:
    info = read_hprim(fx.hprim_medecin(encoding=encoding))
    assert info.kind == "hprim"
    assert info.document_type.code == "HPRIM-MEDECIN"
    assert info.encoding == encoding
    assert info.author is not None and info.author.organisation == "Laboratoire Fictif"
    assert info.author.authority == "LABX"
    assert [(r.id_type, r.value, r.family) for r in info.recipients] == [("LAB-CODE", "DRZEP", "DR ZÉPHYR Test")]
    assert info.document_id == "REQ42"
    kinds = {p.kind: p.value for p in info.patient_ids}
    assert kinds == {"LOCAL": "D0001", "NIR-INSURED": "299129912345678"}


def test_text_layout_with_rpps_doctor_and_two_reports() -> None:
    info = read_hprim(fx.hprim_medecin(doctor_code=fx.RPPS_DOC, two_reports=True, eol="\n"))
    assert [(r.id_type, r.value) for r in info.recipients] == [("RPPS", fx.RPPS_DOC)]
    assert len(info.patient_ids) == 4


def test_text_layout_correction() -> None:
    assert read_hprim(fx.hprim_medecin(status="C")).replaces


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\r\n")


@pytest.mark.parametrize("mutate, message, where", [
    (lambda d: b"\r\n".join(_lines(d)[:-2]) + b"\r\n", "not an L record", "line 7"),
    (lambda d: d.replace(b"H|~^\\&|", b"H|~~\\&|"), "delimiter", "line 1 field H-2"),
    (lambda d: d.replace(b"OBX|2|", b"OB X|2|"), "invalid HPRIM record", "line 7"),
    (lambda d: d.replace(b"C|1|L|", b"H|~^\\&|"), "second H record", "line 6"),
])
def test_record_layout_errors(mutate, message, where) -> None:
    data = mutate(fx.hprim_net())
    with pytest.raises(HprimError) as exc:
        read_hprim(data)
    assert message in exc.value.what
    assert exc.value.where == where


def test_obr_before_p_is_refused() -> None:
    lines = _lines(fx.hprim_net(continuation=False))
    data = b"\r\n".join([lines[0], lines[2], lines[1], *lines[3:]])
    with pytest.raises(HprimError) as exc:
        read_hprim(data)
    assert exc.value.where == "line 2"


@pytest.mark.parametrize("cut, message, where", [
    (-2, "no ****FINFICHIER****", "line 18"),   # FINFICHIER removed
    (-3, "no ****FIN**** line", "line 17"),     # FIN and FINFICHIER removed
    (6, "12 lines expected", "line 6"),         # header truncated
])
def test_text_layout_truncated(cut: int, message: str, where: str) -> None:
    data = b"\r\n".join(_lines(fx.hprim_medecin())[:cut])
    with pytest.raises(HprimError) as exc:
        read_hprim(data)
    assert message in exc.value.what
    assert exc.value.where == where


def test_text_layout_bad_lines() -> None:
    lines = _lines(fx.hprim_medecin())
    bad_date = b"\r\n".join(lines[:6] + [b"1999-01-01"] + lines[7:])
    with pytest.raises(HprimError) as exc:
        read_hprim(bad_date)
    assert exc.value.where == "line 7"
    junk_in_lab = b"\r\n".join(lines[:16] + [b"GARBAGE"] + lines[16:])
    with pytest.raises(HprimError) as exc:
        read_hprim(junk_in_lab)
    assert exc.value.where == "line 17"
    assert "unexpected line" in exc.value.what


def test_errors_never_contain_patient_data() -> None:
    data = fx.hprim_medecin()[:-40]
    with pytest.raises(PayloadError) as exc:
        read_hprim(data)
    text = str(exc.value)
    for secret in ("TESTNOM", "Élodie", "2991299123456", "D0001"):
        assert secret not in text
