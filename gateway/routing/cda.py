"""CDA R2 reader for CI-SIS documents (CR-BIO, LDL-SES, CR-IMG…): header fields routing needs.

Why lxml with everything off: a CDA comes from outside; entity expansion (billion laughs),
external entities (file or network reads) and DTD loading are refused outright, and a document
that declares a DOCTYPE at all is rejected with :class:`UnsafePayload` before it is parsed
(CDA never needs one). Errors carry an XPath-like location built from local names, e.g.
``/ClinicalDocument/informationRecipient[2]/intendedRecipient/id[1]/@extension``.

Identifiers: ``recordTarget/patientRole/id`` roots ``1.2.250.1.213.1.4.8/.9/.10/.11`` are INS
(NIR, NIA, NIR test, NIR demo); other roots are local ids. Professionals use root
``1.2.250.1.71.4.2.1`` whose extension is the *identifiant national* (``8`` + RPPS in the ANS
samples), classified by shape.
"""

from __future__ import annotations

from lxml import etree

from gateway.routing.model import (
    INS_OIDS,
    LAB_RESULT_CODES,
    RPPS_OID,
    SIGNATURE,
    CdaError,
    DocumentType,
    IdType,
    MediaType,
    PartyRef,
    PatientId,
    PayloadError,
    PayloadFormat,
    PayloadInfo,
    UnsafePayload,
    iana_charset,
    leading,
    payload_head,
    professional_id_type,
)
from gateway.safexml import declares_dtd, parser

NS = "urn:hl7-org:v3"
_N = {"h": NS}
MAX_CDA_BYTES = 50 * 1024 * 1024


def xpath_of(elem: etree._Element) -> str:
    """Readable location: local names with [n] where siblings share the name."""
    parts: list[str] = []
    node: etree._Element | None = elem
    while node is not None:
        name = etree.QName(node).localname if isinstance(node.tag, str) else "node()"
        parent = node.getparent()
        if parent is not None:
            same = [c for c in parent if c.tag == node.tag]
            if len(same) > 1:
                name += f"[{same.index(node) + 1}]"
        parts.append(name)
        node = parent
    return "/" + "/".join(reversed(parts))


def parse_xml(data: bytes, error: type[PayloadError] = CdaError) -> etree._Element:
    """Parse untrusted XML safely; DOCTYPE/ENTITY declarations raise :class:`UnsafePayload`."""
    if len(data) > MAX_CDA_BYTES:
        raise error(f"XML document larger than {MAX_CDA_BYTES} bytes", "/")
    if declares_dtd(data):
        raise UnsafePayload("XML document declares a DOCTYPE or entities (refused)", "/")
    try:
        root = etree.fromstring(data, parser())
    except etree.XMLSyntaxError as exc:
        line = exc.lineno if exc.lineno else 0
        raise error(f"XML not well-formed ({_short(exc.msg)})", f"line {line}") from exc
    except (ValueError, etree.LxmlError) as exc:
        raise error("XML document could not be parsed", "/") from exc
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise UnsafePayload("XML document declares a DOCTYPE or entities (refused)", "/")
    for node in root.iter():
        if isinstance(node, etree._Entity):
            raise UnsafePayload("XML document uses entity references (refused)", xpath_of(node.getparent()))
    return root


def _short(msg: str | None) -> str:
    """libxml2's message without any quoted document text (it may quote content)."""
    text = (msg or "syntax error").split(",")[0]
    return text.split("'")[0].strip()[:80]


def _find(elem: etree._Element, path: str) -> etree._Element | None:
    return elem.find(path, _N)


def _findall(elem: etree._Element, path: str) -> list[etree._Element]:
    return elem.findall(path, _N)


def _attr(elem: etree._Element | None, name: str) -> str:
    return (elem.get(name) or "").strip() if elem is not None else ""


def _text(elem: etree._Element | None, path: str) -> str:
    if elem is None:
        return ""
    node = _find(elem, path)
    return " ".join("".join(node.itertext()).split()) if node is not None else ""


def _ii(elem: etree._Element) -> str:
    """An II as XDS writes it: root^extension, or root alone."""
    root, ext = _attr(elem, "root"), _attr(elem, "extension")
    return f"{root}^{ext}" if ext else root


def _professional(entity: etree._Element, person_path: str, org_path: str, *, role: str,
                  address: str | None = None) -> PartyRef | None:
    """A PartyRef from an assignedAuthor / intendedRecipient / assignedEntity."""
    name_el = _find(entity, person_path)
    family = _text(name_el, "h:family")
    given = _text(name_el, "h:given")
    prefix = _text(name_el, "h:prefix")
    org = _text(entity, org_path)
    ids = [i for i in _findall(entity, "h:id") if not i.get("nullFlavor") and _attr(i, "extension")]
    chosen = next((i for i in ids if _attr(i, "root") == RPPS_OID), ids[0] if ids else None)
    source = xpath_of(chosen) if chosen is not None else xpath_of(entity)
    if chosen is not None:
        ext, root = _attr(chosen, "extension"), _attr(chosen, "root")
        id_type: IdType = professional_id_type(ext, national=True if root == RPPS_OID else False)
        return PartyRef(id_type, ext, family=family, given=given, prefix=prefix, organisation=org,
                        address=address, authority=root, role=role, source=source)
    if address:
        return PartyRef("ADDRESS", address, family=family, given=given, prefix=prefix, organisation=org,
                        address=address, role=role, source=source)
    if family or given or org:
        return PartyRef("NAME", " ".join(x for x in (given, family) if x) or org, family=family, given=given,
                        prefix=prefix, organisation=org, role=role, source=source)
    return None


def _mailto(entity: etree._Element) -> str | None:
    for telecom in _findall(entity, "h:telecom"):
        value = _attr(telecom, "value")
        if value.lower().startswith("mailto:") and "@" in value:
            return value[7:].strip()
    return None


def read_cda(data: bytes) -> PayloadInfo:
    """Read a CDA R2 header; raise :class:`CdaError` (XPath location) or :class:`UnsafePayload`."""
    root = parse_xml(data)
    if root.tag != f"{{{NS}}}ClinicalDocument":
        raise CdaError("root element is not a ClinicalDocument in the urn:hl7-org:v3 namespace", "/")
    doc_id = _find(root, "h:id")
    if doc_id is None or not _attr(doc_id, "root"):
        raise CdaError("missing document id", "/ClinicalDocument/id/@root")
    code = _find(root, "h:code")
    if code is None or not _attr(code, "code"):
        raise CdaError("missing document type code", "/ClinicalDocument/code/@code")
    system = _attr(code, "codeSystemName") or ("LOINC" if _attr(code, "codeSystem") == "2.16.840.1.113883.6.1"
                                               else _attr(code, "codeSystem"))
    set_id_el = _find(root, "h:setId")
    version = None
    version_el = _find(root, "h:versionNumber")
    if version_el is not None and version_el.get("value") is not None:
        try:
            version = int(_attr(version_el, "value"))
        except ValueError as exc:
            raise CdaError("versionNumber is not an integer", "/ClinicalDocument/versionNumber/@value") from exc
        if version < 1:
            raise CdaError("versionNumber must be a positive integer", "/ClinicalDocument/versionNumber/@value")

    patients: list[PatientId] = []
    for target in _findall(root, "h:recordTarget"):
        for pid in _findall(target, "h:patientRole/h:id"):
            ext = _attr(pid, "extension")
            if pid.get("nullFlavor") or not ext:
                continue
            oid = _attr(pid, "root")
            patients.append(PatientId(ext, INS_OIDS.get(oid, "LOCAL"), authority=oid, source=xpath_of(pid)))
    if not _findall(root, "h:recordTarget"):
        raise CdaError("missing recordTarget", "/ClinicalDocument/recordTarget")

    author = None
    for assigned in _findall(root, "h:author/h:assignedAuthor"):
        author = _professional(assigned, "h:assignedPerson/h:name", "h:representedOrganization/h:name",
                               role="author")
        if author is None:
            device = _text(assigned, "h:assignedAuthoringDevice/h:softwareName")
            if device:
                author = PartyRef("NAME", device, organisation=_text(assigned, "h:representedOrganization/h:name"),
                                  role="author", source=xpath_of(assigned))
        if author is not None:
            break
    if not _findall(root, "h:author"):
        raise CdaError("missing author", "/ClinicalDocument/author")

    recipients: list[PartyRef] = []
    for info_rec in _findall(root, "h:informationRecipient"):
        intended = _find(info_rec, "h:intendedRecipient")
        if intended is None:
            raise CdaError("informationRecipient without intendedRecipient", xpath_of(info_rec))
        party = _professional(intended, "h:informationRecipient/h:name", "h:receivedOrganization/h:name",
                              role=_attr(info_rec, "typeCode") or "PRCP", address=_mailto(intended))
        if party is not None:
            recipients.append(party)

    legal = None
    entity = _find(root, "h:legalAuthenticator/h:assignedEntity")
    if entity is not None:
        legal = _professional(entity, "h:assignedPerson/h:name", "h:representedOrganization/h:name",
                              role="legalAuthenticator")

    replaced_id = None
    replaces = False
    for related in _findall(root, "h:relatedDocument"):
        if _attr(related, "typeCode") == "RPLC":
            replaces = True
            parent_id = _find(related, "h:parentDocument/h:id")
            if parent_id is None or not _attr(parent_id, "root"):
                raise CdaError("replaced document without id", xpath_of(related) + "/parentDocument/id/@root")
            replaced_id = _ii(parent_id)
    replaces = replaces or (version is not None and version > 1)

    body, media_type = _body(root)
    return PayloadInfo(
        kind="cda",
        document_type=DocumentType(_attr(code, "code"), _attr(code, "displayName"), system),
        patient_ids=tuple(patients),
        author=author,
        recipients=tuple(recipients),
        document_id=_ii(doc_id),
        set_id=_ii(set_id_el) if set_id_el is not None and _attr(set_id_el, "root") else None,
        version=version,
        replaces=replaces,
        replaced_id=replaced_id,
        encoding=(root.getroottree().docinfo.encoding or "utf-8").lower(),
        created=_attr(_find(root, "h:effectiveTime"), "value") or None,
        title=_text(root, "h:title"),
        legal_authenticator=legal,
        template_ids=tuple(_ii(t) for t in _findall(root, "h:templateId") if _attr(t, "root")),
        body=body,
        media_type=media_type,
        confidentiality=_attr(_find(root, "h:confidentialityCode"), "code"),
        language=_attr(_find(root, "h:languageCode"), "code"),
    )


def _body(root: etree._Element) -> tuple[str | None, str]:
    component = _find(root, "h:component")
    if component is None:
        raise CdaError("missing document body", "/ClinicalDocument/component")
    if _find(component, "h:structuredBody") is not None:
        return "structured", "text/xml"
    nonxml = _find(component, "h:nonXMLBody")
    if nonxml is not None:
        return "nonxml", _attr(_find(nonxml, "h:text"), "mediaType") or "application/octet-stream"
    raise CdaError("body is neither structuredBody nor nonXMLBody", "/ClinicalDocument/component")


class CdaFormat(PayloadFormat):
    """CDA R2: ``text/xml`` in its declared encoding; the document packaged in IHE XDM."""

    kind = "cda"
    label = "CDA"
    extensions = ("xml",)
    attachment_stem = "document"
    report_subject = "Compte rendu"
    xdm_document = True

    def detect(self, data: bytes) -> int:
        return SIGNATURE if leading(data).startswith(b"<") and b"ClinicalDocument" in payload_head(data) else 0

    def read(self, data: bytes, filename: str | None = None) -> PayloadInfo:
        return read_cda(data)

    def media_type(self, info: PayloadInfo) -> MediaType:
        return "text", "xml", {"charset": iana_charset(info.encoding) or "utf-8"}

    def is_lab_result(self, info: PayloadInfo) -> bool:
        return info.document_type.code in LAB_RESULT_CODES


FORMAT = CdaFormat()
