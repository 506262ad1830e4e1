"""Invented MSSanté mails for the LPS volet: a city doctor's letter with an IHE_XDM.ZIP, sent to a
hospital's application mailbox.

Everything is made up (people, identifiers, addresses); the ANS examples stay outside the
repository (``test_corpus_mdm.py`` reads them through ``MSGW_CORPUS``). The INS is on the NIR
*test* authority. Why builders: each check needs a mail that differs from a valid one in one place::

    mail(cda())                                  # a valid initial send
    mail(cda(version=2, parent=DOC_ID), action="C", confidentiality=("INVISIBLE_PATIENT",))
    mail(cda(ins=""))                            # 903
"""

from __future__ import annotations

import datetime as dt
import io
import re
import zipfile
from email.message import EmailMessage
from email.policy import SMTP

from gateway.routing.cda import read_cda
from gateway.routing.xdm import XdmDocument, build_xdm
from tests.routing_payload.fixtures import INS, INS_OID_TEST

__all__ = ["APP", "AUTHOR", "DOC_ID", "DOCTOR", "INS", "INS_OID_TEST", "ORG", "OTHER_INS", "REPLY", "cda", "mail",
           "xdm"]

DOCTOR = "zephyr.medecinfictif@cabinet-imaginaire.mssante.test"
REPLY = "secretariat@cabinet-imaginaire.mssante.test"
APP = "dpi@hopital-imaginaire.mssante.test"
AUTHOR = "899700000011"
OTHER_AUTHOR = "899700000099"
ORG = "1999000001"
OTHER_INS = "188017512345612"
DOC_ROOT = "1.2.250.1.999.7.1"
DOC_ID = f"{DOC_ROOT}.1"
SET_ID = "1.2.250.1.999.7.2.SET1"
DMP_SCHEME = "1.2.250.1.213.1.1.4.13"  # the DMP's confidentiality codes (MASQUE_PS...)
NOW = dt.datetime(2026, 3, 2, 10, 30, tzinfo=dt.UTC)


def cda(*, ins: str = INS, ins_oid: str = INS_OID_TEST, family: str = "TESTPATIENTE", given: str = "Ondine",
        birth: str = "19800229", gender: str = "F", version: int = 1, doc: str = "1", parent: str | None = None,
        author: str = AUTHOR, org: str = ORG, code: str = "11488-4", label: str = "Compte rendu de consultation",
        set_id: bool = True) -> bytes:
    """An invented N3-ish CDA (structured body, no PDF): one patient, one author."""
    pid = f'<id root="{ins_oid}" extension="{ins}"/>' if ins else ""
    related = (f'<relatedDocument typeCode="RPLC"><parentDocument><id root="{parent}"/></parentDocument>'
               "</relatedDocument>") if parent else ""
    birth_el = f'<birthTime value="{birth}"/>' if birth else ""
    gender_el = f'<administrativeGenderCode code="{gender}" codeSystem="2.16.840.1.113883.5.1"/>' if gender else ""
    set_el = '<setId root="1.2.250.1.999.7.2" extension="SET1"/>' if set_id else ""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<ClinicalDocument xmlns="urn:hl7-org:v3">
  <realmCode code="FR"/>
  <typeId root="2.16.840.1.113883.1.3" extension="POCD_HD000040"/>
  <id root="{DOC_ROOT}.{doc}"/>
  <code code="{code}" codeSystem="2.16.840.1.113883.6.1" displayName="{label}"/>
  <title>{label}</title>
  <effectiveTime value="20260301090000+0100"/>
  <confidentialityCode code="N" codeSystem="2.16.840.1.113883.5.25"/>
  {set_el}
  <versionNumber value="{version}"/>
  <recordTarget><patientRole>
    {pid}
    <id root="1.2.250.1.999.3" extension="IPP0042"/>
    <addr><streetAddressLine>12 rue Imaginaire</streetAddressLine><city>Fictiville</city>
      <postalCode>99999</postalCode><country>FRA</country></addr>
    <patient><name><family qualifier="BR">{family}</family><given qualifier="BR">{given}</given>
      <given>{given} Marie</given></name>{gender_el}{birth_el}</patient>
  </patientRole></recordTarget>
  <author><time value="20260301090000+0100"/><assignedAuthor>
    <id root="1.2.250.1.71.4.2.1" extension="{author}"/>
    <assignedPerson><name><family>MEDECINFICTIF</family><given>Zéphyr</given></name></assignedPerson>
    <representedOrganization><id root="1.2.250.1.71.4.2.2" extension="{org}"/><name>Cabinet Imaginaire</name>
    </representedOrganization>
  </assignedAuthor></author>
  {related}
  <component><structuredBody><component><section><title>Consultation</title><text>Texte inventé.</text>
  </section></component></structuredBody></component>
</ClinicalDocument>
""".encode()


def _add_confidentiality(zip_bytes: bytes, codes: tuple[str, ...]) -> bytes:
    """Add the DMP confidentiality codes to every DocumentEntry of METADATA.XML (documents unchanged,
    so their hash and size still match); build_xdm writes only the HL7 code (N)."""
    if not codes:
        return zip_bytes
    src = zipfile.ZipFile(io.BytesIO(zip_bytes))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.upper().endswith("METADATA.XML"):
                text = data.decode("utf-8")

                def extra(m: re.Match[str]) -> str:
                    obj = m.group(1)
                    cls = "".join(
                        f'<rim:Classification classificationScheme="urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f" '
                        f'classifiedObject="{obj}" id="{obj}-dmp{n}" nodeRepresentation="{c}">'
                        f'<rim:Slot name="codingScheme"><rim:ValueList><rim:Value>{DMP_SCHEME}</rim:Value>'
                        f'</rim:ValueList></rim:Slot></rim:Classification>' for n, c in enumerate(codes))
                    return m.group(0) + cls
                text = re.sub(r'<rim:ExtrinsicObject [^>]*?id="([^"]+)"[^>]*>', extra, text)
                data = text.encode("utf-8")
            dst.writestr(info, data)
    return out.getvalue()


def xdm(*documents: bytes, action: str | None = None, confidentiality: tuple[str, ...] = (),
        pdf: bytes | None = None) -> bytes:
    """IHE_XDM.ZIP with the CDA(s) (and a PDF entry when given)."""
    docs = [XdmDocument(data=d, info=read_cda(d), action=action) for d in documents]
    if pdf is not None:
        from gateway.routing.pdf import read_pdf
        docs.append(XdmDocument(data=pdf, info=read_pdf(pdf), mime_type="application/pdf"))
    return _add_confidentiality(build_xdm(docs, source_id="1.2.250.1.999.7", now=NOW), confidentiality)


def mail(*documents: bytes, action: str | None = None, confidentiality: tuple[str, ...] = (),
         subject: str = "XDM/1.0/DDM+Compte rendu TESTPATIENTE Ondine", body: str = "Chère consœur, voici le CR.",
         sender: str = DOCTOR, reply_to: str | None = REPLY, dnt: str | None = DOCTOR,
         message_id: str = "<lps-1@cabinet.test>",
         zip_name: str = "IHE_XDM.ZIP", zip_type: str = "application/zip", pdf: bytes | None = None,
         original_recipient: str | None = None, archive: bytes | None = None) -> bytes:
    """The decrypted MIME a doctor's client sends: text body, IHE_XDM.ZIP, optional PDF (CRLF)."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = f"Dr Zéphyr MEDECINFICTIF <{sender}>"
    msg["To"] = APP
    if reply_to:
        msg["Reply-To"] = reply_to
    msg["Subject"] = subject
    msg["Message-ID"] = message_id
    msg["Date"] = "Mon, 02 Mar 2026 10:30:00 +0100"
    if dnt:
        msg["Disposition-Notification-To"] = dnt
    if original_recipient:
        msg["Original-Recipient"] = f"rfc822;{original_recipient}"
    msg.set_content(body)
    if documents or archive is not None:
        data = archive if archive is not None else xdm(*documents, action=action, confidentiality=confidentiality)
        maintype, subtype = zip_type.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=zip_name)
    if pdf is not None:
        msg.add_attachment(pdf, maintype="application", subtype="pdf", filename="compte-rendu.pdf")
    return msg.as_bytes()
