"""CDA R2 reader: CI-SIS header fields, replacement versions, unsafe XML refused, XPath locations."""

from __future__ import annotations

import pytest

from gateway.routing.cda import read_cda
from gateway.routing.model import CdaError, PayloadError, UnsafePayload

from . import fixtures as fx


def test_lab_report() -> None:
    info = read_cda(fx.cda())
    assert info.kind == "cda"
    assert (info.document_type.code, info.document_type.system) == ("11502-2", "LOINC")
    assert info.document_id == "1.2.250.9999.1.1^DOC1"
    assert info.set_id == "1.2.250.9999.1^SET1" and info.version == 1 and not info.replaces
    assert info.ins is not None and info.ins.kind == "INS-NIR-TEST" and info.ins.value == fx.INS
    assert info.author is not None and info.author.rpps == fx.RPPS_AUTHOR
    assert info.author.organisation == "Laboratoire Fictif"
    (rcpt,) = info.recipients
    assert (rcpt.id_type, rcpt.value, rcpt.rpps) == ("IDNAT", fx.IDNAT_DOC, fx.RPPS_DOC)
    assert rcpt.address == "dest0@imaginaire.mssante.test"
    assert rcpt.source == "/ClinicalDocument/informationRecipient/intendedRecipient/id"
    assert info.legal_authenticator is not None and info.legal_authenticator.rpps == fx.RPPS_AUTHOR
    assert "1.2.250.1.213.1.1.1.55^2024.01" in info.template_ids
    assert info.body == "structured" and info.language == "fr-FR" and info.confidentiality == "N"


def test_discharge_letter_two_recipients() -> None:
    info = read_cda(fx.cda(code="34133-9", label="Lettre de liaison", recipients=2))
    assert info.document_type.code == "34133-9"
    assert [r.value for r in info.recipients] == [fx.IDNAT_DOC, fx.IDNAT_COPY]
    assert info.recipients[1].source == "/ClinicalDocument/informationRecipient[2]/intendedRecipient/id"


def test_replacement_version() -> None:
    info = read_cda(fx.cda(version=2, replaces="1.2.250.9999.1.1"))
    assert info.replaces and info.replaced_id == "1.2.250.9999.1.1" and info.version == 2


def test_nonxml_body() -> None:
    info = read_cda(fx.cda(nonxml=True))
    assert info.body == "nonxml" and info.media_type == "application/pdf"


def test_repr_masks_patient() -> None:
    text = repr(read_cda(fx.cda())) + str(read_cda(fx.cda()))
    assert fx.INS not in text and fx.IPP not in text and "TESTNOM" not in text


BILLION_LAUGHS = """<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>"""
XXE = '<!DOCTYPE ClinicalDocument [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'


@pytest.mark.parametrize("doctype", [BILLION_LAUGHS, XXE, '<!DOCTYPE ClinicalDocument SYSTEM "http://x.test/a.dtd">'])
def test_unsafe_xml_refused(doctype: str) -> None:
    data = fx.cda(doctype=doctype).replace(b"<title>", b"<title>&lol3;&xxe;", 1)
    with pytest.raises(UnsafePayload) as exc:
        read_cda(data)
    assert exc.value.where == "/"


def test_unsafe_xml_in_utf16_refused() -> None:
    data = fx.cda(doctype=XXE).decode().replace('encoding="UTF-8"', 'encoding="UTF-16"').encode("utf-16")
    with pytest.raises(UnsafePayload):
        read_cda(data)


@pytest.mark.parametrize("old, new, where", [
    (b'<id root="1.2.250.9999.1.1" extension="DOC1"/>', b"", "/ClinicalDocument/id/@root"),
    (b'<code code="11502-2"', b'<code nocode="11502-2"', "/ClinicalDocument/code/@code"),
    (b'<versionNumber value="1"/>', b'<versionNumber value="un"/>', "/ClinicalDocument/versionNumber/@value"),
    (b"<recordTarget>", b"<recordTargetX>", "/ClinicalDocument/recordTarget"),
    (b'<ClinicalDocument xmlns="urn:hl7-org:v3">', b"<ClinicalDocument>", "/"),
    (b"<author>", b"<authorX>", "/ClinicalDocument/author"),
])
def test_malformed_cda_locations(old: bytes, new: bytes, where: str) -> None:
    data = fx.cda().replace(old, new, 1)
    if new.endswith(b"X>"):  # rename the closing tag too so the XML stays well-formed
        tag = old[1:-1]
        data = data.replace(b"</" + tag + b">", b"</" + tag + b"X>", 1)
    with pytest.raises(CdaError) as exc:
        read_cda(data)
    assert exc.value.where == where


def test_not_well_formed_gives_line() -> None:
    data = fx.cda().replace(b"</title>", b"</titre>", 1)
    with pytest.raises(CdaError) as exc:
        read_cda(data)
    assert exc.value.where == "line 9"
    assert "TESTNOM" not in str(exc.value)


def test_recipient_without_intended_recipient() -> None:
    data = fx.cda(recipients=2)
    start = data.index(b"<intendedRecipient>", data.index(b"<informationRecipient>") + 30)
    end = data.index(b"</intendedRecipient>", start) + len(b"</intendedRecipient>")
    with pytest.raises(CdaError) as exc:
        read_cda(data[:start] + data[end:])
    assert exc.value.where == "/ClinicalDocument/informationRecipient[2]"


def test_errors_are_payload_errors() -> None:
    assert issubclass(CdaError, PayloadError) and issubclass(UnsafePayload, PayloadError)
