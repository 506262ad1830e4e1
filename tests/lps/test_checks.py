"""Every ANS code the gateway produces itself (900, 901, 903, 904, 905, 906), each from a mail that
differs from a valid one in one place; 902 is the consumer's (see test_mdm's ACK tests)."""

from __future__ import annotations

import dataclasses
import io
import zipfile

import pytest

from gateway.lps.checks import check
from gateway.lps.incoming import read_incoming
from gateway.lps.model import LABELS, Delivered, IntegrationError
from gateway.routing.model import UnsafePayload
from tests.lps.samples import APP, AUTHOR, DOC_ID, DOCTOR, INS, ORG, OTHER_AUTHOR, OTHER_INS, cda, mail, xdm

V2 = "1.2.250.1.999.7.1.2"
SET = "1.2.250.1.999.7.2.SET1"
PATIENT = f"{INS}^^^&1.2.250.1.213.1.4.10&ISO"


def _read(data: bytes):
    incoming, package, _ = read_incoming(data, recipient=APP, return_path=DOCTOR)
    assert package is not None
    return incoming, package


def _code(data: bytes, previous=lambda _key: None) -> str:
    incoming, package = _read(data)
    with pytest.raises(IntegrationError) as info:
        check(incoming, package, previous)
    err = info.value
    assert err.label == LABELS[err.code_ans] and not err.temporary
    assert "TESTPATIENTE" not in str(err) and INS not in str(err)  # never the patient in the text
    return err.code_ans


def _delivered(unique_id: str = DOC_ID, version: int = 1, author: str = AUTHOR, org: str = ORG) -> Delivered:
    return Delivered(unique_id=unique_id, set_id=SET, version=version, author=author, patient=PATIENT,
                     organisation=org)


def _store(*items: Delivered):
    """previous(): by unique id, and by set id the latest version (what the store answers)."""
    def previous(key: str) -> Delivered | None:
        by_id = {d.unique_id: d for d in items}
        if key in by_id:
            return by_id[key]
        in_set = [d for d in items if d.set_id == key]
        return max(in_set, key=lambda d: d.version) if in_set else None
    return previous


def test_a_valid_initial_send_passes() -> None:
    incoming, package = _read(mail(cda()))
    check(incoming, package, _store())


def test_903_no_ins_in_the_cda() -> None:
    assert _code(mail(cda(ins=""))) == "903"


def test_905_ins_without_its_traits() -> None:
    assert _code(mail(cda(birth=""))) == "905"
    assert _code(mail(cda(gender=""))) == "905"


def test_904_cda_ins_differs_from_the_xdm_metadata() -> None:
    archive = xdm(cda())
    src = zipfile.ZipFile(io.BytesIO(archive))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("METADATA.XML"):
                data = data.replace(INS.encode(), OTHER_INS.encode())  # the documents (and hashes) unchanged
            dst.writestr(info, data)
    assert _code(mail(archive=out.getvalue())) == "904"


def test_a_local_patient_id_in_the_metadata_is_not_a_904() -> None:
    incoming, package = _read(mail(cda()))
    local = "IPP0042^^^&1.2.250.1.999.3&ISO"
    entry = dataclasses.replace(package.documents[0], patient_id=local)
    check(incoming, dataclasses.replace(package, patient_id=local, documents=(entry,)), _store())


def test_904_two_cdas_of_two_patients() -> None:
    """build_xdm refuses such a package; another sender's tool may not: the entry is made by hand."""
    incoming, package = _read(mail(cda()))
    other = dataclasses.replace(package.documents[0], data=cda(ins=OTHER_INS, doc="9"), patient_id="", slots={},
                                uri="DOC0002.XML")
    with pytest.raises(IntegrationError) as info:
        check(incoming, dataclasses.replace(package, patient_id="", documents=(package.documents[0], other)),
              _store())
    assert info.value.code_ans == "904"


def test_906_corrupted_archive_is_906_not_a_crash() -> None:
    archive = bytearray(xdm(cda()))
    at = archive.find(b"IHE_XDM/SUBSET01/DOC0001.XML")
    at = archive.find(b"IHE_XDM/SUBSET01/DOC0001.XML", at + 1)  # the central directory entry
    archive[at - 30] ^= 0xFF  # the document's CRC in its central directory record
    with pytest.raises(IntegrationError) as info:
        read_incoming(mail(archive=bytes(archive)), recipient=APP, return_path=DOCTOR)
    assert info.value.code_ans == "906"
    with pytest.raises(IntegrationError) as info:
        read_incoming(mail(archive=b"PK\x03\x04 not a zip"), recipient=APP, return_path=DOCTOR)
    assert info.value.code_ans == "906"


def test_906_document_differs_from_its_metadata_hash() -> None:
    incoming, package = _read(mail(cda()))
    entry = dataclasses.replace(package.documents[0], data=package.documents[0].data + b" ")
    with pytest.raises(IntegrationError) as info:
        check(incoming, dataclasses.replace(package, documents=(entry,)), _store())
    assert info.value.code_ans == "906"


def test_906_archive_without_a_cda() -> None:
    incoming, package = _read(mail(cda()))
    entry = dataclasses.replace(package.documents[0], mime_type="application/pdf", uri="DOC0001.PDF")
    with pytest.raises(IntegrationError) as info:
        check(incoming, dataclasses.replace(package, documents=(entry,)), _store())
    assert info.value.code_ans == "906"


def test_a_hostile_archive_keeps_its_type() -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../IHE_XDM/SUBSET01/METADATA.XML", b"<x/>")
    with pytest.raises(UnsafePayload):
        read_incoming(mail(archive=archive.getvalue()), recipient=APP, return_path=DOCTOR)


def test_replacement_of_the_latest_delivered_version_passes() -> None:
    incoming, package = _read(mail(cda(version=2, doc="2", parent=DOC_ID), action="C"))
    check(incoming, package, _store(_delivered()))


def test_replacement_of_a_document_never_delivered_here_passes() -> None:
    """The consumer may hold it from elsewhere: it judges (and answers 900 itself if need be)."""
    incoming, package = _read(mail(cda(version=2, doc="2", parent=DOC_ID), action="C"))
    check(incoming, package, _store())


def test_900_replacement_of_a_version_that_is_no_longer_the_latest() -> None:
    v2 = _delivered(V2, 2)
    data = mail(cda(version=3, doc="3", parent=DOC_ID), action="C")  # replaces v1, but v2 was delivered
    assert _code(data, _store(_delivered(), v2)) == "900"


def test_900_replacement_without_a_newer_version() -> None:
    data = mail(cda(version=1, doc="2", parent=DOC_ID), action="C")
    assert _code(data, _store(_delivered())) == "900"


def test_900_replacement_without_a_parent() -> None:
    assert _code(mail(cda(version=2, doc="2"), action="C"), _store(_delivered())) == "900"


def test_900_deletion_of_an_older_version() -> None:
    data = mail(cda(version=1), action="D")  # deletes v1 while v2 is the delivered one
    assert _code(data, _store(_delivered(), _delivered(V2, 2))) == "900"


def test_deletion_of_the_delivered_version_passes() -> None:
    incoming, package = _read(mail(cda(version=1), action="D"))
    check(incoming, package, _store(_delivered()))


def test_901_replacement_by_another_author_of_another_organisation() -> None:
    data = mail(cda(version=2, doc="2", parent=DOC_ID, author=OTHER_AUTHOR, org="1999000099"), action="C")
    assert _code(data, _store(_delivered())) == "901"
    assert _code(mail(cda(version=1, author=OTHER_AUTHOR, org="1999000099"), action="D"),
                 _store(_delivered())) == "901"


def test_another_author_of_the_same_organisation_may_replace() -> None:
    incoming, package = _read(mail(cda(version=2, doc="2", parent=DOC_ID, author=OTHER_AUTHOR), action="C"))
    check(incoming, package, _store(_delivered()))
