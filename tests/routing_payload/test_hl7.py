"""HL7 v2 reader (ORU^R01, MDM), escapes and charsets, ACK building, MLLP framing."""

from __future__ import annotations

import base64
import datetime as dt

import pytest

from gateway.routing.hl7 import Delimiters, MLLPDecoder, build_ack, mllp_frame, parse_message, read_hl7, unescape
from gateway.routing.model import Hl7Error, MllpError, PayloadError, UnsafePayload, UnsupportedPayload

from . import fixtures as fx


def test_oru_french_profile() -> None:
    info = read_hl7(fx.oru())
    assert info.kind == "hl7v2"
    assert info.document_type.code == "ORU^R01"
    assert info.encoding == "utf-8"
    assert info.document_id == "REQ42^LABX"
    ins = info.ins
    assert ins is not None and ins.kind == "INS-NIR-TEST" and ins.value == fx.INS and ins.source.endswith("PID-3 rep 1")
    assert [p.kind for p in info.patient_ids] == ["INS-NIR-TEST", "LOCAL"]
    assert info.author is not None and info.author.id_type == "IDNAT" and info.author.rpps == fx.RPPS_AUTHOR
    by_source = {r.source: r for r in info.recipients}
    ordering = by_source["segment 3 ORC-12"]
    assert (ordering.id_type, ordering.value, ordering.rpps, ordering.role) == ("IDNAT", fx.IDNAT_DOC, fx.RPPS_DOC,
                                                                               "ordering")
    copy = by_source["segment 7 PRT-5"]
    assert copy.value == fx.IDNAT_COPY and copy.address == "berthe.copie@imaginaire.mssante.test"
    patient = by_source["segment 8 PRT-5"]
    assert patient.is_patient and patient.id_type == "ADDRESS"
    assert fx.INS not in repr(patient)
    # OBR-16 names the same prescriber as ORC-12: deduplicated
    assert sum(1 for r in info.recipients if r.value == fx.IDNAT_DOC) == 1
    assert not info.replaces and not info.cancels
    (cda,) = info.embedded
    assert cda.kind == "cda" and cda.document_type.code == "11502-2"
    assert cda.recipients[0].value == fx.IDNAT_DOC
    assert info.warnings == ()


def test_oru_correction_and_cancel() -> None:
    assert read_hl7(fx.oru(status="C")).replaces
    assert read_hl7(fx.oru(order_control="CA")).cancels


@pytest.mark.parametrize("eol", ["\r", "\n", "\r\n"])
def test_segment_separators(eol: str) -> None:
    assert read_hl7(fx.oru(eol=eol)).document_id == "REQ42^LABX"


def test_latin1_charset() -> None:
    info = read_hl7(fx.oru(charset="8859/1", encoding="iso-8859-1"))
    assert info.encoding == "iso-8859-1"
    ordering = next(r for r in info.recipients if r.role == "ordering")
    assert ordering.family == "ZÉPHYR"


def test_declared_charset_must_match() -> None:
    with pytest.raises(Hl7Error) as exc:
        read_hl7(fx.oru(charset="UNICODE UTF-8", encoding="iso-8859-1"))
    assert exc.value.where == "segment 1 MSH-18"


def test_escapes_repetitions_components_subcomponents() -> None:
    msg = parse_message(fx.oru())
    obx = msg.all("OBX")[2]
    assert msg.value(obx, 5) == "Valeur & remarque | avec ^ échappements A"
    pid = msg.first("PID")
    reps = msg.reps(pid, 3)
    assert len(reps) == 2
    assert reps[0][3] == ["ASIP-SANTE-INS-NIR", fx.INS_OID_TEST, "ISO"]
    d = Delimiters()
    assert unescape("a\\E\\b\\R\\c\\.br\\d\\H\\e\\N\\", d, "utf-8", "x") == "a\\b~c\nde"
    assert unescape("\\XC3A9\\", d, "utf-8", "x") == "é"
    assert unescape("\\XE9\\", d, "iso-8859-1", "x") == "é"
    assert unescape("no end \\F", d, "utf-8", "x") == "no end \\F"
    with pytest.raises(Hl7Error):
        unescape("\\XZZ\\", d, "utf-8", "segment 3 OBX-5")


def test_mdm_t02_and_t10() -> None:
    info = read_hl7(fx.mdm())
    assert info.document_type.code == "MDM^T02"
    assert info.document_id == "DOCID-77^HOPX"
    assert not info.replaces
    assert [r.value for r in info.recipients] == [fx.IDNAT_COPY]
    assert info.embedded[0].document_type.code == "11490-0"
    assert len(info.embedded[0].recipients) == 2
    repl = read_hl7(fx.mdm(trigger="T10", parent="DOCID-70^HOPX"))
    assert repl.replaces and repl.replaced_id == "DOCID-70^HOPX"


def test_embedded_unsafe_cda_is_refused() -> None:
    evil = fx.cda(doctype='<!DOCTYPE x [<!ENTITY a "aaaa">]>')
    with pytest.raises(UnsafePayload) as exc:
        read_hl7(fx.oru(cda_bytes=evil))
    assert exc.value.where.startswith("segment 5 OBX-5")


def test_embedded_broken_cda_is_a_warning() -> None:
    info = read_hl7(fx.oru(cda_bytes=b"<ClinicalDocument"))
    assert info.embedded == ()
    assert info.warnings and info.warnings[0].startswith("segment 5 OBX-5")
    bad_b64 = fx.oru().replace(b"^Base64^", b"^Base64^@@", 1)
    assert "not valid base64" in read_hl7(bad_b64).warnings[0]


def test_embedded_pdf() -> None:
    pdf = b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n%%EOF\n"
    info = read_hl7(fx.oru(cda_bytes=pdf, ed_type="AP^PDF"))
    assert info.embedded[0].kind == "pdf"
    mislabelled = read_hl7(fx.oru(cda_bytes=pdf))
    assert mislabelled.embedded == () and "declared XML is not XML" in mislabelled.warnings[0]


def test_mllp_framed_file_is_read() -> None:
    assert read_hl7(b"\x0b" + fx.oru() + b"\x1c\r").document_id == "REQ42^LABX"


@pytest.mark.parametrize("mutate, cls, where", [
    (lambda d: d.replace(b"MSH|^~\\&|", b"MSH|^^\\&|"), Hl7Error, "segment 1 MSH-2"),
    (lambda d: d.replace(b"MSH|^~\\&|", b"MSH|^~|"), Hl7Error, "segment 1 MSH-2"),
    (lambda d: d.replace(b"\rORC|", b"\rorc|"), Hl7Error, "segment 3"),
    (lambda d: d.replace(b"ORU^R01^ORU_R01", b"ADT^A01^ADT_A01"), UnsupportedPayload, "segment 1 MSH-9"),
    (lambda d: d.replace(b"ORU^R01^ORU_R01", b"ORU^R30"), UnsupportedPayload, "segment 1 MSH-9"),
    (lambda d: d.replace(b"UNICODE UTF-8", b"KLINGON"), Hl7Error, "segment 1 MSH-18"),
    (lambda d: d + d, Hl7Error, "segment 11 MSH"),
    (lambda d: b"PID|1\r" + d, Hl7Error, "segment 1"),
    (lambda d: d.replace(b"COPIEFICTIVE", b"COPIE\\X4G\\FICTIVE"), Hl7Error, "segment 7 PRT-5"),
])
def test_malformed_messages(mutate, cls, where) -> None:
    with pytest.raises(cls) as exc:
        read_hl7(mutate(fx.oru()))
    assert exc.value.where == where
    assert fx.INS not in str(exc.value)


def test_oru_without_obr() -> None:
    data = b"\r".join(s for s in fx.oru().split(b"\r") if not s.startswith(b"OBR"))
    with pytest.raises(Hl7Error) as exc:
        read_hl7(data)
    assert "OBR" in exc.value.what


# --- ACK ---------------------------------------------------------------------------------------------

NOW = dt.datetime(2025, 1, 15, 10, 30, 0, tzinfo=dt.UTC)


def test_ack_aa() -> None:
    ack = build_ack(fx.oru(), "AA", now=NOW, control_id="ACK1")
    segs = ack.decode().rstrip("\r").split("\r")
    msh = segs[0].split("|")
    assert msh[2:6] == ["GWX", "ORGX", "LISX", "LABX"]  # sender/receiver swapped
    assert msh[6] == "20250115103000"
    assert msh[8] == "ACK^R01^ACK"
    assert msh[9] == "ACK1"
    assert msh[11] == "2.5"
    assert msh[17] == "UNICODE UTF-8"
    assert segs[1] == "MSA|AA|CTRL0001"
    assert len(segs) == 2
    parsed = parse_message(ack)
    assert parsed.value(parsed.first("MSA"), 2) == "CTRL0001"


def test_ack_error_escapes_and_err_segment() -> None:
    ack = build_ack(fx.oru(), "AE", "spool full | retry ^ later", now=NOW, control_id="ACK2")
    msg = parse_message(ack)
    msa = msg.first("MSA")
    assert msg.value(msa, 1) == "AE" and msg.value(msa, 2) == "CTRL0001"
    err = msg.first("ERR")
    assert err is not None
    assert msg.value(err, 3, 1) == "207" and msg.value(err, 4) == "E"
    assert msg.value(err, 8) == "spool full | retry ^ later"


def test_ack_for_junk_is_ar_without_control_id() -> None:
    ack = build_ack(b"garbage", "AR", "not an HL7 message", now=NOW, control_id="ACK3")
    msg = parse_message(ack)
    assert msg.value(msg.first("MSA"), 1) == "AR"
    assert msg.value(msg.first("MSA"), 2) == ""
    assert msg.value(msg.first("ERR"), 3) == "200"
    with pytest.raises(ValueError):
        build_ack(fx.oru(), "XX")


def test_ack_latin1() -> None:
    ack = build_ack(fx.oru(charset="8859/1", encoding="iso-8859-1"), "AE", "échec", now=NOW)
    assert "échec".encode("iso-8859-1") in ack
    assert b"|8859/1" in ack


# --- MLLP ------------------------------------------------------------------------------------------

def test_mllp_round_trip_across_split_chunks() -> None:
    m1, m2 = fx.oru(), fx.mdm()
    stream = mllp_frame(m1) + b"\r\n" + mllp_frame(m2)
    for size in (1, 2, 3, 7, 1000, len(stream)):
        dec = MLLPDecoder()
        out: list[bytes] = []
        for i in range(0, len(stream), size):
            out += dec.feed(stream[i:i + size])
        assert out == [m1, m2]
        assert dec.idle


def test_mllp_split_between_fs_and_cr() -> None:
    framed = mllp_frame(b"MSH|^~\\&|A")
    dec = MLLPDecoder()
    assert dec.feed(framed[:-1]) == []
    assert not dec.idle
    assert dec.feed(framed[-1:]) == [b"MSH|^~\\&|A"]


@pytest.mark.parametrize("stream, where", [
    (b"junk" + mllp_frame(b"MSH|x"), "stream byte 0"),
    (b"\x0bMSH\x0bMSH\x1c\r", "stream byte 4"),
    (b"\x0bMSH\x1cX", "stream byte 5"),
])
def test_mllp_errors(stream: bytes, where: str) -> None:
    with pytest.raises(MllpError) as exc:
        MLLPDecoder().feed(stream)
    assert exc.value.where == where
    assert isinstance(exc.value, PayloadError)


def test_mllp_frame_too_large() -> None:
    dec = MLLPDecoder(max_frame=10)
    dec.feed(b"\x0b12345")
    with pytest.raises(MllpError, match="larger than 10"):
        dec.feed(b"678901")
    with pytest.raises(MllpError):
        mllp_frame(b"bad\x1cbyte")


def test_embedded_base64_is_really_base64() -> None:
    assert base64.b64decode(fx.oru().split(b"^Base64^")[1].split(b"|")[0])[:5] == b"<?xml"
