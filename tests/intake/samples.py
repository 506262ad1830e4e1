"""Invented payloads for the intake tests (fictitious people, labs and identifiers only)."""

from __future__ import annotations

import base64

INS = "299129912345678"
INS_OID_TEST = "1.2.250.1.213.1.4.10"
PATIENT_FAMILY = "PATIENTFICTIF"
PATIENT_GIVEN = "Clémence"

RPPS_LOCAL = "19900000011"  # Dr Alpha: a local mailbox and a trusted-domain one
RPPS_SMIME = "19900000033"  # Dr Berthe: S/MIME
ADELI_DOC = "991234567"  # Dr Cyprien: ADELI, trusted-domain
RPPS_LABCODE = "19900000044"  # Dr Zéphyr: known to the lab by its code DRZEP
RPPS_NOADDR = "19900000055"  # Dr Nadir: in the directory without an address
RPPS_UNKNOWN = "19900000066"  # nobody

ADDR_LOCAL = "alpha.local@cabinet.test"
ADDR_TRUSTED = "alpha@imaginaire.mssante.test"
ADDR_SMIME = "berthe@imaginaire.mssante.test"
ADDR_ADELI = "cyprien@imaginaire.mssante.test"
ADDR_LABCODE = "zephyr@cabinet.test"

LIS = "lis@labo-fictif.test"
UNROUTED = "tri@labo-fictif.test"
PATIENT_ADDRESS = f"{INS}@patient.mssante.test"


def hprim_medecin(doctor_code: str = "DRZEP", *, request: str = "REQ42", status: str = "F",
                  encoding: str = "iso-8859-1") -> bytes:
    """An "HPRIM médecin" text report (12-line header, ****LAB**** block)."""
    lines = [
        "D0001", PATIENT_FAMILY, PATIENT_GIVEN, "1 rue Nulle Part", "", "99999 NULLEVILLE", "01/01/1999",
        "2991299123456 78", request, "15/01/2025", "LABX       Laboratoire Fictif", f"{doctor_code:<10} DR Test",
        "Résultats d'examens biologiques", "Glycémie à jeun : 5.2 mmol/l",
        "****LAB****", f"RES|Glycémie|GLY|N|5.2|mmol/l|4.1|5.9|N|{status}", "TEX|Contrôle dans trois mois.",
        "****FIN****", "****FINFICHIER****",
    ]
    return "\r\n".join(lines).encode(encoding) + b"\r\n"


def cda(*, recipients: tuple[str, ...] = ("8" + RPPS_SMIME,), version: int = 1, replaces: str | None = None,
        doc_id: str = "DOC1") -> bytes:
    """A CDA R2 lab report; ``recipients`` are identifiants nationaux."""
    rcpts = "".join(
        f'<informationRecipient><intendedRecipient><id root="1.2.250.1.71.4.2.1" extension="{r}"/>'
        "</intendedRecipient></informationRecipient>" for r in recipients)
    related = (f'<relatedDocument typeCode="RPLC"><parentDocument><id root="{replaces}"/></parentDocument>'
               "</relatedDocument>") if replaces else ""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<ClinicalDocument xmlns="urn:hl7-org:v3">
  <realmCode code="FR"/>
  <typeId root="2.16.840.1.113883.1.3" extension="POCD_HD000040"/>
  <templateId root="1.2.250.1.213.1.1.1.1"/>
  <id root="1.2.250.9999.1.{version}" extension="{doc_id}"/>
  <code code="11502-2" codeSystem="2.16.840.1.113883.6.1" codeSystemName="LOINC" displayName="CR d'examens"/>
  <title>CR d'examens biologiques</title>
  <effectiveTime value="20250115100000+0100"/>
  <confidentialityCode code="N" codeSystem="2.16.840.1.113883.5.25"/>
  <languageCode code="fr-FR"/>
  <setId root="1.2.250.9999.1" extension="SET1"/>
  <versionNumber value="{version}"/>
  <recordTarget><patientRole>
    <id root="{INS_OID_TEST}" extension="{INS}"/>
    <patient><name><family>{PATIENT_FAMILY}</family><given>{PATIENT_GIVEN}</given></name></patient>
  </patientRole></recordTarget>
  <author><time value="20250115100000+0100"/><assignedAuthor>
    <id root="1.2.250.1.71.4.2.1" extension="819900000099"/>
    <assignedPerson><name><family>AUTEURFICTIF</family></name></assignedPerson>
    <representedOrganization><name>Laboratoire Fictif</name></representedOrganization>
  </assignedAuthor></author>
  {rcpts}
  {related}
  <component><structuredBody><component><section><title>Résultats</title><text>Glycémie 5.2</text>
  </section></component></structuredBody></component>
</ClinicalDocument>
""".encode()


def oru(*, control: str = "CTRL0001", status: str = "F", embedded: bytes | None = None,
        ordering: str = "8" + RPPS_LOCAL, order: str = "REQ42") -> bytes:
    """An ORU^R01 with an ordering provider, a PRT copy to the patient, and optionally an embedded CDA."""
    segs = [
        f"MSH|^~\\&|LISX|LABX|GWX|ORGX|20250115100000||ORU^R01^ORU_R01|{control}|P|2.5|||||FRA|UNICODE UTF-8",
        f"PID|||{INS}^^^ASIP-SANTE-INS-NIR&{INS_OID_TEST}&ISO^INS||{PATIENT_FAMILY}^{PATIENT_GIVEN}^^^^^L||19990101|F",
        f"ORC|NW|CMD1^CABX|{order}^LABX|||||||||{ordering}^ALPHA^Test^^^DR^^^"
        "ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS",
        f"OBR|1|CMD1^CABX|{order}^LABX|11502-2^CR d'examens biologiques^LN|||20250115083000|||||||||"
        f"{ordering}^ALPHA^Test^^^DR^^^ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS|||||||||{status}",
        f"OBX|1|NM|GLY^Glycémie^L||5.2|mmol/l|4.1-5.9|N|||{status}",
        f"PRT||UC||RCT^^participation|{INS}^{PATIENT_FAMILY}^{PATIENT_GIVEN}^^^^^^{INS_OID_TEST}^L^^^INS||||||||||"
        f"^^X.400^{PATIENT_ADDRESS}",
    ]
    if embedded is not None:
        doc = base64.b64encode(embedded).decode()
        segs.append(f"OBX|2|ED|11502-2^CR^LN||^TEXT^XML^Base64^{doc}||||||{status}")
    return ("\r".join(segs) + "\r").encode("utf-8")


PDF = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"
