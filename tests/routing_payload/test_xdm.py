"""IHE XDM: build → read back (hashes, sizes, metadata), determinism, zip-slip and zip-bomb refusals."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import zipfile

import pytest
from lxml import etree

from gateway.routing.cda import read_cda
from gateway.routing.model import PartyRef, UnsafePayload, XdmError
from gateway.routing.payload import read_payload
from gateway.routing.xdm import RIM, S_TYPE, XDS_CODES, XdmDocument, build_xdm, read_xdm

from . import fixtures as fx

NOW = dt.datetime(2025, 1, 15, 10, 30, 0, tzinfo=dt.UTC)
SOURCE = "1.2.250.9999.77"


def _docs() -> list[XdmDocument]:
    letter = fx.cda(code="34133-9", label="Lettre de liaison", recipients=2)
    report = fx.cda()
    return [XdmDocument(letter, read_cda(letter)), XdmDocument(report, read_cda(report))]


def _recipients() -> list[PartyRef]:
    return [PartyRef("RPPS", fx.RPPS_DOC, family="TESTDEST", given="Zéphyr", address="z@imaginaire.mssante.test"),
            PartyRef("ADDRESS", "bal@imaginaire.mssante.test", address="bal@imaginaire.mssante.test")]


def test_build_and_read_back() -> None:
    docs = _docs()
    package = build_xdm(docs, source_id=SOURCE, now=NOW, intended_recipients=_recipients())
    with zipfile.ZipFile(io.BytesIO(package)) as zf:
        names = zf.namelist()
        assert names[:3] == ["INDEX.HTM", "README.TXT", "IHE_XDM/SUBSET01/METADATA.XML"]
        assert {i.date_time for i in zf.infolist()} == {(2025, 1, 15, 10, 30, 0)}
        index = zf.read("INDEX.HTM").decode()
        assert "IHE_XDM/SUBSET01/DOC0001.XML" in index and "TESTNOM" not in index
    read = read_xdm(package)
    assert [d.uri for d in read.documents] == ["DOC0001.XML", "DOC0002.XML"]
    for entry, doc in zip(read.documents, docs, strict=True):
        assert entry.data == doc.data
        assert entry.hash == hashlib.sha1(doc.data).hexdigest()  # noqa: S324
        assert entry.size == len(doc.data)
        assert entry.unique_id == doc.info.document_id
        assert entry.type_code == doc.info.document_type.code
        assert entry.mime_type == "text/xml"
        assert entry.creation_time == "20250115090000"  # CDA +0100 → UTC
        assert entry.patient_id == f"{fx.INS}^^^&{fx.INS_OID_TEST}&ISO"
        assert entry.slots["sourcePatientId"] == (entry.patient_id,)
        assert entry.slots["languageCode"] == ("fr-FR",)
        assert entry.format_code == XDS_CODES[doc.info.document_type.code].format_code.code
        assert entry.class_code == "10"
    assert read.source_id == SOURCE
    assert read.submission_time == "20250115103000"
    assert read.submission_unique_id.startswith(SOURCE + ".20250115103000.")
    assert read.content_type_code == "34133-9"
    assert read.patient_id == f"{fx.INS}^^^&{fx.INS_OID_TEST}&ISO"
    assert read.intended_recipients[0] == (f"|8{fx.RPPS_DOC}^TESTDEST^Zéphyr^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS"
                                           "|^^Internet^z@imaginaire.mssante.test")
    assert read.intended_recipients[1] == "||^^Internet^bal@imaginaire.mssante.test"
    assert "msgw" in read.readme
    assert fx.INS not in repr(read) and b"TESTNOM".decode() not in repr(docs[0])


def test_metadata_structure_matches_xds() -> None:
    package = build_xdm(_docs()[:1], source_id=SOURCE, now=NOW)
    with zipfile.ZipFile(io.BytesIO(package)) as zf:
        root = etree.fromstring(zf.read("IHE_XDM/SUBSET01/METADATA.XML"))
    assert etree.QName(root).localname == "SubmitObjectsRequest"
    eo = root.find(f".//{{{RIM}}}ExtrinsicObject")
    slots = {s.get("name") for s in eo.iterfind(f"{{{RIM}}}Slot")}
    assert {"URI", "hash", "size", "creationTime", "languageCode", "sourcePatientId"} <= slots
    schemes = {c.get("classificationScheme") for c in eo.iterfind(f"{{{RIM}}}Classification")}
    assert len(schemes) == 7 and S_TYPE in schemes
    assert len(root.findall(f".//{{{RIM}}}RegistryPackage")) == 1
    assoc = root.find(f".//{{{RIM}}}Association")
    assert assoc.get("targetObject") == eo.get("id")


def test_deterministic_with_fixed_clock() -> None:
    a = build_xdm(_docs(), source_id=SOURCE, now=NOW)
    b = build_xdm(_docs(), source_id=SOURCE, now=NOW)
    assert a == b
    assert build_xdm(_docs(), source_id=SOURCE, now=NOW + dt.timedelta(seconds=1)) != a


def test_read_payload_on_package() -> None:
    info = read_payload(build_xdm(_docs(), source_id=SOURCE, now=NOW, intended_recipients=_recipients()))
    assert info.kind == "xdm"
    assert [e.document_type.code for e in info.embedded] == ["34133-9", "11502-2"]
    assert [r.id_type for r in info.recipients] == ["IDNAT", "ADDRESS"]
    assert info.ins is not None and fx.INS not in repr(info)


def test_build_refusals() -> None:
    with pytest.raises(XdmError):
        build_xdm([], source_id=SOURCE, now=NOW)
    hprim = fx.hprim_net()
    with pytest.raises(XdmError, match="patient identifier"):
        build_xdm([XdmDocument(hprim, read_payload(hprim), "text/plain")], source_id=SOURCE, now=NOW)


def _zip(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return out.getvalue()


def _replace_entry(package: bytes, name: str, data: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(package)) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    entries[name] = data
    return _zip(entries)


@pytest.mark.parametrize("name", ["../evil.txt", "IHE_XDM/../../evil", "/etc/evil", "C:/evil", "..\\evil"])
def test_zip_slip_refused(name: str) -> None:
    package = _replace_entry(build_xdm(_docs(), source_id=SOURCE, now=NOW), name, b"x")
    with pytest.raises(UnsafePayload) as exc:
        read_xdm(package)
    assert exc.value.where.startswith("zip entry")


def test_zip_bomb_refused() -> None:
    bomb = _zip({"IHE_XDM/SUBSET01/METADATA.XML": b"<a/>", "big.bin": b"\0" * (20 * 1024 * 1024)})
    with pytest.raises(UnsafePayload, match="ratio"):
        read_xdm(bomb)
    with pytest.raises(UnsafePayload, match="expands"):
        read_xdm(_zip({"a": b"1" * 1000, "b": b"2" * 1000}), max_total=1500)
    with pytest.raises(UnsafePayload, match="entries"):
        read_xdm(_zip({f"f{i}": b"" for i in range(70)}))


def test_tampered_document_detected() -> None:
    package = build_xdm(_docs(), source_id=SOURCE, now=NOW)
    tampered = _replace_entry(package, "IHE_XDM/SUBSET01/DOC0002.XML", fx.cda(version=9))
    with pytest.raises(XdmError, match="hash") as exc:
        read_xdm(tampered)
    assert exc.value.where == "zip entry 'IHE_XDM/SUBSET01/DOC0002.XML'"


def test_unsafe_metadata_and_missing_parts() -> None:
    package = build_xdm(_docs(), source_id=SOURCE, now=NOW)
    evil = b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>'
    with pytest.raises(UnsafePayload):
        read_xdm(_replace_entry(package, "IHE_XDM/SUBSET01/METADATA.XML", evil))
    with pytest.raises(XdmError, match="METADATA"):
        read_xdm(_zip({"README.TXT": b"hello"}))
    with pytest.raises(XdmError, match="not a readable zip"):
        read_xdm(b"PK\x03\x04 not really a zip")


def test_entry_without_a_name_is_a_typed_error() -> None:
    """Found by atheris: zipfile's ZipInfo.is_dir() raised IndexError on an empty entry name."""
    import io
    import zipfile

    from gateway.routing.model import XdmError
    from gateway.routing.xdm import read_xdm

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(zipfile.ZipInfo("README.TXT"), b"TEST")
        zf.writestr(zipfile.ZipInfo(""), b"no name")
    with pytest.raises(XdmError, match="without a name"):
        read_xdm(buf.getvalue())
