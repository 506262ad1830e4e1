"""Invented test payloads (fictitious people, identifiers and labs only; nothing copied from samples)."""

from __future__ import annotations

import base64

# Invented identifiers: an INS on the NIR *test* authority, an RPPS-shaped number, a local id.
INS = "299129912345678"
INS_OID_TEST = "1.2.250.1.213.1.4.10"
IPP = "IPP778899"
RPPS_DOC = "19900000011"
IDNAT_DOC = "8" + RPPS_DOC
RPPS_AUTHOR = "19900000022"
IDNAT_COPY = "819900000033"


def hprim_net(delims: str = "~^\\&", *, status: str = "F", eol: str = "\r\n", encoding: str = "iso-8859-1",
              continuation: bool = True) -> bytes:
    """An HPRIM Santé 2.2 ORU file; ``delims`` in HPRIM (~^\\&) or HL7 (^~\\&) order."""
    c, r = delims[0], delims[1]
    obr = (f"OBR|1||{c}REQ42|GLY{c}Glycémie{c}L{r}NA{c}Sodium{c}L|R||202501150830||||N|||202501150900||"
           f"DRX{c}DR ZÉPHYR Test{c}L{c}CAB1{c}Cabinet Imaginaire{c}L|0100000000||||||||{status}")
    lines = [
        f"H|{delims}|RESULT01.HPR||LABX{c}Laboratoire Fictif||ORU|||CABX{c}Cabinet Imaginaire||P|H2.2{c}C|"
        "202501151000",
        f"P|1|{IPP}|LABPAT9||TESTNOM{c}Élodie||19990101|F||1 rue Nulle Part{c}{c}NULLEVILLE{c}{c}99999",
    ]
    if continuation:
        lines += [obr[:60], "A|" + obr[60:]]
    else:
        lines.append(obr)
    lines += [
        f"OBX|1|NM|GLY{c}Glycémie{c}L||5.2|mmol/l|4.1 - 5.9|N|||{status}",
        "C|1|L|Prélèvement à jeun",
        f"OBX|2|NM|NA{c}Sodium{c}L||140|mmol/l|136 - 145|N|||{status}",
        "L|1||1|8",
    ]
    return eol.join(lines).encode(encoding) + eol.encode()


def hprim_medecin(*, encoding: str = "iso-8859-1", doctor_code: str = "DRZEP", eol: str = "\r\n",
                  two_reports: bool = False, status: str = "F") -> bytes:
    """An "HPRIM médecin" text file (12-line header, free text, ****LAB**** block)."""
    def report(dossier: str, request: str) -> list[str]:
        return [
            dossier,
            "TESTNOM",
            "Élodie",
            "1 rue Nulle Part",
            "",
            "99999 NULLEVILLE",
            "01/01/1999",
            "2991299123456 78",
            request,
            "15/01/2025",
            "LABX       Laboratoire Fictif",
            f"{doctor_code:<10} DR ZÉPHYR Test",
            "Résultats d'examens biologiques",
            "Glycémie à jeun : 5.2 mmol/l",
            "****LAB****",
            f"RES|Glycémie|GLY|N|5.2|mmol/l|4.1|5.9|N|{status}",
            "TEX|Contrôle conseillé dans trois mois.",
            "****FIN****",
        ]
    lines = report("D0001", "REQ42")
    if two_reports:
        lines += report("D0002", "REQ43")
    lines.append("****FINFICHIER****")
    return eol.join(lines).encode(encoding) + eol.encode()


def cda(*, code: str = "11502-2", label: str = "CR d'examens biologiques", version: int = 1,
        replaces: str | None = None, recipients: int = 1, nonxml: bool = False, doctype: str = "") -> bytes:
    related = (f'<relatedDocument typeCode="RPLC"><parentDocument><id root="{replaces}"/></parentDocument>'
               "</relatedDocument>") if replaces else ""
    rcpts = ""
    for n in range(recipients):
        ident = IDNAT_DOC if n == 0 else IDNAT_COPY
        rcpts += (f"<informationRecipient><intendedRecipient><id root=\"1.2.250.1.71.4.2.1\" extension=\"{ident}\"/>"
                  f"<telecom value=\"mailto:dest{n}@imaginaire.mssante.test\"/>"
                  "<informationRecipient><name><prefix>DR</prefix><given>Zéphyr</given><family>TESTDEST"
                  f"{n}</family></name></informationRecipient></intendedRecipient></informationRecipient>")
    if nonxml:
        body = ('<component><nonXMLBody><text mediaType="application/pdf" representation="B64">'
                + base64.b64encode(b"%PDF-1.4\n%%EOF\n").decode() + "</text></nonXMLBody></component>")
    else:
        body = ("<component><structuredBody><component><section><title>Résultats</title><text>Glycémie 5.2"
                "</text></section></component></structuredBody></component>")
    return f"""<?xml version="1.0" encoding="UTF-8"?>{doctype}
<ClinicalDocument xmlns="urn:hl7-org:v3">
  <realmCode code="FR"/>
  <typeId root="2.16.840.1.113883.1.3" extension="POCD_HD000040"/>
  <templateId root="1.2.250.1.213.1.1.1.1"/>
  <templateId root="1.2.250.1.213.1.1.1.55" extension="2024.01"/>
  <id root="1.2.250.9999.1.{version}" extension="DOC{version}"/>
  <code code="{code}" codeSystem="2.16.840.1.113883.6.1" codeSystemName="LOINC" displayName="{label}"/>
  <title>{label}</title>
  <effectiveTime value="20250115100000+0100"/>
  <confidentialityCode code="N" codeSystem="2.16.840.1.113883.5.25"/>
  <languageCode code="fr-FR"/>
  <setId root="1.2.250.9999.1" extension="SET1"/>
  <versionNumber value="{version}"/>
  <recordTarget><patientRole>
    <id root="{INS_OID_TEST}" extension="{INS}"/>
    <id root="1.2.250.9999.2" extension="{IPP}"/>
    <patient><name><family>TESTNOM</family><given>Élodie</given></name></patient>
  </patientRole></recordTarget>
  <author><time value="20250115100000+0100"/><assignedAuthor>
    <id root="1.2.250.1.71.4.2.1" extension="8{RPPS_AUTHOR}"/>
    <assignedPerson><name><prefix>DR</prefix><given>Anatole</given><family>AUTEURFICTIF</family></name>
    </assignedPerson>
    <representedOrganization><name>Laboratoire Fictif</name></representedOrganization>
  </assignedAuthor></author>
  {rcpts}
  <legalAuthenticator><time value="20250115100000+0100"/><signatureCode code="S"/><assignedEntity>
    <id root="1.2.250.1.71.4.2.1" extension="8{RPPS_AUTHOR}"/>
  </assignedEntity></legalAuthenticator>
  {related}
  {body}
</ClinicalDocument>
""".encode()


def oru(*, cda_bytes: bytes | None = None, status: str = "F", charset: str = "UNICODE UTF-8",
        encoding: str = "utf-8", eol: str = "\r", order_control: str = "NW", ed_type: str = "TEXT^XML") -> bytes:
    doc = base64.b64encode(cda_bytes if cda_bytes is not None else cda()).decode()
    segs = [
        f"MSH|^~\\&|LISX|LABX|GWX|ORGX|20250115100000||ORU^R01^ORU_R01|CTRL0001|P|2.5|||||FRA|{charset}|||"
        "2.1^CISIS_CDA_HL7_V2",
        f"PID|||{INS}^^^ASIP-SANTE-INS-NIR&{INS_OID_TEST}&ISO^INS~{IPP}^^^HOPX&1.2.250.9999.2&ISO^PI||"
        "TESTNOM^Élodie^^^^^L||19990101|F",
        f"ORC|{order_control}|CMD1^CABX|REQ42^LABX|||||||||{IDNAT_DOC}^ZÉPHYR^Test^^^DR^^^"
        "ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS",
        f"OBR|1|CMD1^CABX|REQ42^LABX|11502-2^CR d'examens biologiques^LN|||20250115083000|||||||||"
        f"{IDNAT_DOC}^ZÉPHYR^Test^^^DR^^^ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS|||||||||{status}",
        f"OBX|1|ED|11502-2^CR d'examens biologiques^LN||^{ed_type}^Base64^{doc}||||||{status}",
        f"PRT||UC||SB^^participation|8{RPPS_AUTHOR}^AUTEURFICTIF^Anatole^^^^^^"
        "ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS",
        f"PRT||UC||RCT^^participation|{IDNAT_COPY}^COPIEFICTIVE^Berthe^^^^^^"
        "ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS||||||||||^^X.400^berthe.copie@imaginaire.mssante.test",
        f"PRT||UC||RCT^^participation|{INS}^TESTNOM^Élodie^^^^^^{INS_OID_TEST}^L^^^INS||||||||||"
        f"^^X.400^{INS}@patient.mssante.test",
        "OBX|2|CE|DESTMSSANTEPS^Destinataire^MetaDMPMSS||Y^^expandedYes-NoIndicator||||||F",
        "OBX|3|TX|COMMENT^Commentaire^L||Valeur \\T\\ remarque \\F\\ avec \\S\\ échappements \\X41\\||||||F",
    ]
    return (eol.join(segs) + eol).encode(encoding)


def mdm(*, trigger: str = "T02", parent: str = "") -> bytes:
    doc = base64.b64encode(cda(code="11490-0", label="Lettre de liaison", recipients=2)).decode()
    segs = [
        f"MSH|^~\\&|DPIX|HOPX|GWX|ORGX|20250115100000||MDM^{trigger}^MDM_{trigger}|CTRL0002|P|2.6|||||FRA|"
        "UNICODE UTF-8",
        "EVN||20250115100000",
        f"PID|||{INS}^^^ASIP-SANTE-INS-NIR&{INS_OID_TEST}&ISO^INS||TESTNOM^Élodie||19990101|F",
        "PV1|1|O",
        f"TXA|1|11490-0|TEXT|20250115100000||||||||DOCID-77^HOPX|{parent}||||LA",
        f"OBX|1|ED|11490-0^Lettre de liaison^LN||^text^XML^Base64^{doc}||||||F",
        f"PRT||UC||RCT|{IDNAT_COPY}^COPIEFICTIVE^Berthe^^^^^^ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO^D^^^RPPS"
        "||||||||||^^X.400^berthe.copie@imaginaire.mssante.test",
    ]
    return ("\r".join(segs) + "\r").encode("utf-8")
