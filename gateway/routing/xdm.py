"""IHE XDM packages (``IHE_XDM.ZIP``): build one from CDA/PDF documents, read one back safely.

Why: MSSanté clients integrate structured documents from the XDM attachment, whose
``METADATA.XML`` (ebRIM ``SubmitObjectsRequest``: one XDSSubmissionSet, one XDSDocumentEntry per
document) tells them the patient, type, author and hash without opening the document. The
builder is deterministic for a given clock (fixed zip timestamps, stable ids) so tests and
audits can compare bytes. The reader is for tests and inbound packages: it refuses zip bombs
(entry count, total size, compression ratio, bounded reads) and path traversal (``..``,
absolute names, drive letters) before anything is extracted; nothing touches the disk.

French code values (classCode, formatCode, healthcareFacilityTypeCode, practiceSettingCode,
contentTypeCode) live in :data:`XDS_CODES` / :data:`DEFAULT_FACILITY`, in one place: they come
from the CI-SIS value sets (JDV) and are marked *verify* where not confirmed from a primary text.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import io
import re
import uuid
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from lxml import etree

from gateway.routing.cda import parse_xml
from gateway.routing.model import (
    INS_OIDS,
    LAB_RESULT_CODES,
    RPPS_OID,
    SIGNATURE,
    DedupFacts,
    DocumentType,
    MediaType,
    PartyRef,
    PatientId,
    PayloadError,
    PayloadFormat,
    PayloadInfo,
    UnsafePayload,
    XdmError,
    leading,
    professional_id_type,
)
from gateway.routing.pdf import read_pdf

RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
LCM = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"

# XDS metadata UUIDs (IHE ITI TF-3 4.2.5; the same as in the Direct Project sample).
DOC_ENTRY_TYPE = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
SUBMISSION_SET_NODE = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
S_CLASS = "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a"
S_CONFIDENTIALITY = "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f"
S_FORMAT = "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d"
S_FACILITY = "urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1"
S_PRACTICE = "urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead"
S_TYPE = "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983"
S_DOC_AUTHOR = "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d"
S_DOC_PATIENT = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
S_DOC_UNIQUE = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
S_SET_AUTHOR = "urn:uuid:a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d"
S_SET_CONTENT = "urn:uuid:aa543740-bdda-424e-8c96-df4873be8500"
S_SET_UNIQUE = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"
S_SET_SOURCE = "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832"
S_SET_PATIENT = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"

LOINC = "2.16.840.1.113883.6.1"
CONFIDENTIALITY_SCHEME = "2.16.840.1.113883.5.25"


@dataclass(frozen=True)
class Code:
    code: str
    display: str
    scheme: str  # codingScheme OID


@dataclass(frozen=True)
class XdsCodes:
    class_code: Code
    format_code: Code
    practice_setting: Code
    content_type: Code


_CR = Code("10", "Compte rendu", "1.2.250.1.213.1.1.4.1")  # verify against CI-SIS JDV_J07-XdsClassCode
_PDF_FORMAT = Code("urn:ihe:iti:xds-sd:pdf:2008", "Document à corps non structuré en Pdf/A-1",
                   "1.3.6.1.4.1.19376.1.2.3")  # IHE XDS-SD; verify display against JDV_J10-XdsFormatCode
_CISIS_FORMAT = Code("urn:asip:ci-sis:2010", "Document à entête structurée CI-SIS",
                     "1.2.250.1.213.1.1.4.2.282")  # verify against JDV_J10-XdsFormatCode
_PS_ETAB = Code("ETABLISSEMENT", "Etablissement de santé", "1.2.250.1.213.1.1.4.9")  # verify JDV_J04
_PS_AMBU = Code("AMBULATOIRE", "Ambulatoire", "1.2.250.1.213.1.1.4.9")  # verify JDV_J04

#: The French XDS code values per document type (CDA code = LOINC typeCode), in ONE table.
#: Every value is to be verified against the CI-SIS JDV ("verify against CI-SIS JDV").
XDS_CODES: dict[str, XdsCodes] = {
    # CR-BIO: IHE XD-LAB format code (verify against CI-SIS JDV)
    "11502-2": XdsCodes(_CR, Code("urn:ihe:lab:xd-lab:2008", "CR de biologie", "1.3.6.1.4.1.19376.1.2.3"),
                        _PS_AMBU, Code("11502-2", "CR d'examens biologiques", LOINC)),
    # LDL-SES (the ANS sample uses 11490-0; 34133-9 is the generic summary note) (verify against CI-SIS JDV)
    "11490-0": XdsCodes(_CR, _CISIS_FORMAT, _PS_ETAB,
                        Code("11490-0", "Lettre de liaison à la sortie d'un établissement de soins", LOINC)),
    "34133-9": XdsCodes(_CR, _CISIS_FORMAT, _PS_ETAB, Code("34133-9", "Synthèse d'épisode de soins", LOINC)),
    "18761-7": XdsCodes(_CR, _CISIS_FORMAT, _PS_ETAB, Code("18761-7", "Note de transfert", LOINC)),
    "18748-4": XdsCodes(_CR, _CISIS_FORMAT, _PS_AMBU, Code("18748-4", "CR d'imagerie médicale", LOINC)),
}
_DEFAULT_CODES = XdsCodes(_CR, _CISIS_FORMAT, _PS_AMBU, Code("", "", LOINC))
#: The extra-metadata slot of a DocumentEntry that says what the consumer does with it, as the
#: CI-SIS HL7v2 transmission IG names it (exemples 2 and 3: « une extra-metadata « action » »):
#: ``C`` (Change: replaces the version named by relatedDocument/parentDocument/id), ``D``
#: (Deleted: the document of ClinicalDocument/id is to be deleted). The IG gives the bare name
#: ``action``, not an IHE-style URN (ITI TF-3 4.1.14), so that is the name written and read.
ACTION_SLOT = "action"
ACTIONS = ("C", "D")
#: healthcareFacilityTypeCode (JDV_J02, TRE_R02-SecteurActivite); deployments override it (verify).
DEFAULT_FACILITY = Code("SA07", "Cabinet individuel", "1.2.250.1.71.4.2.4")

MAX_ENTRIES = 64
MAX_TOTAL_BYTES = 200 * 1024 * 1024
MAX_RATIO = 100
_SUBSET = "IHE_XDM/SUBSET01/"


@dataclass(frozen=True)
class XdmDocument:
    """One document to package: its bytes and what its reader said about it (content kept out of repr)."""

    data: bytes = field(repr=False)
    info: PayloadInfo
    mime_type: str = "text/xml"
    #: The extra-metadata ``action`` of the DocumentEntry (CI-SIS "Transmission de document(s) CDA
    #: en HL7v2", exemples 2 and 3): ``C`` this document replaces its previous version, ``D`` it
    #: is to be deleted; None for an initial send (no slot written).
    action: str | None = None


@dataclass(frozen=True)
class XdmEntry:
    """One XDSDocumentEntry read back from a package, with its file content."""

    uri: str
    data: bytes = field(repr=False)
    mime_type: str
    hash: str
    size: int
    unique_id: str
    type_code: str
    class_code: str
    format_code: str
    creation_time: str
    patient_id: str = field(repr=False)
    slots: dict[str, tuple[str, ...]] = field(repr=False, default_factory=dict)
    action: str | None = None  # the extra-metadata "action" slot (C replace, D delete), None when absent
    #: every confidentialityCode of the entry (N/R/V and the DMP's MASQUE_PS, INVISIBLE_PATIENT...)
    confidentiality: tuple[str, ...] = ()


@dataclass(frozen=True)
class XdmPackage:
    submission_unique_id: str
    source_id: str
    submission_time: str
    content_type_code: str
    intended_recipients: tuple[str, ...] = field(repr=False)  # may name a patient's mailbox
    patient_id: str = field(repr=False)
    documents: tuple[XdmEntry, ...] = ()
    readme: str = ""


# --- building ----------------------------------------------------------------------------------

def _patient_cx(info: PayloadInfo) -> str:
    pid = info.ins or next((p for p in info.patient_ids if re.fullmatch(r"\d+(\.\d+)+", p.authority)), None)
    if pid is None:
        raise XdmError("no patient identifier with an OID (INS or local id) for the XDS patientId", "METADATA.XML")
    return f"{pid.value}^^^&{pid.authority or _ins_oid(pid)}&ISO"


def _ins_oid(pid: PatientId) -> str:
    return next((oid for oid, kind in INS_OIDS.items() if kind == pid.kind), "")


def _xcn(p: PartyRef) -> str:
    ident, authority = "", ""
    if p.id_type in ("RPPS", "IDNAT", "ADELI"):
        ident = "8" + p.value if p.id_type == "RPPS" else p.value
        authority = f"&{RPPS_OID}&ISO"
    parts = [ident, p.family, p.given, "", "", p.prefix, "", "", authority]
    if authority:
        parts += ["D", "", "", "IDNPS"]
    return "^".join(parts).rstrip("^")


def _recipient_value(p: PartyRef) -> str:
    xtn = f"^^Internet^{p.address}" if p.address else ""
    xcn = "" if p.id_type == "ADDRESS" else _xcn(p)
    return "|".join([p.organisation, xcn, xtn]).rstrip("|")


def _el(parent: etree._Element, tag: str, **attrs: str) -> etree._Element:
    return etree.SubElement(parent, f"{{{RIM}}}{tag}", attrs)


def _slot(parent: etree._Element, name: str, *values: str) -> None:
    slot = _el(parent, "Slot", name=name)
    vl = _el(slot, "ValueList")
    for v in values:
        _el(vl, "Value").text = v


def _name(parent: etree._Element, text: str) -> None:
    _el(_el(parent, "Name"), "LocalizedString", value=text)


def _classify(parent: etree._Element, obj: str, cid: str, scheme: str, code: Code) -> None:
    cl = _el(parent, "Classification", classificationScheme=scheme, classifiedObject=obj, id=cid,
             nodeRepresentation=code.code)
    _slot(cl, "codingScheme", code.scheme)
    _name(cl, code.display or code.code)


def _ext_id(parent: etree._Element, obj: str, eid: str, scheme: str, value: str, label: str) -> None:
    ei = _el(parent, "ExternalIdentifier", registryObject=obj, identificationScheme=scheme, value=value, id=eid)
    _name(ei, label)


def _author(parent: etree._Element, obj: str, cid: str, scheme: str, author: PartyRef | None) -> None:
    if author is None:
        return
    cl = _el(parent, "Classification", classificationScheme=scheme, classifiedObject=obj, id=cid,
             nodeRepresentation="")
    if author.id_type != "NAME" or author.family:
        _slot(cl, "authorPerson", _xcn(author))
    if author.organisation:
        _slot(cl, "authorInstitution", author.organisation)


def default_source_id(sender: str) -> str:
    """An OID for XDSSubmissionSet.sourceId when none is configured: ``2.25.<UUID of the sender>`` (X.667)."""
    return "2.25." + str(uuid.uuid5(uuid.NAMESPACE_URL, "mailto:" + sender.lower()).int)


def _uuid(*parts: str) -> str:
    return "urn:uuid:" + str(uuid.uuid5(uuid.NAMESPACE_OID, "|".join(parts)))


def build_metadata(documents: Sequence[XdmDocument], names: Sequence[str], *, source_id: str,
                   submission_unique_id: str, now: dt.datetime, intended_recipients: Sequence[PartyRef],
                   facility: Code) -> bytes:
    """The METADATA.XML SubmitObjectsRequest for ``documents`` stored under ``names`` in the subset."""
    request = etree.Element(f"{{{LCM}}}SubmitObjectsRequest", nsmap={"lcm": LCM, "rim": RIM})
    objects = _el(request, "RegistryObjectList")
    first = documents[0].info
    patient = _patient_cx(first)
    set_id = _uuid("set", submission_unique_id)
    for n, (doc, name) in enumerate(zip(documents, names, strict=True), start=1):
        info = doc.info
        if _patient_cx(info) != patient:
            raise XdmError("documents of one package must concern the same patient", f"document {n}")
        codes = XDS_CODES.get(info.document_type.code, _DEFAULT_CODES)
        fmt = _PDF_FORMAT if info.body == "nonxml" or doc.mime_type == "application/pdf" else codes.format_code
        unique = info.document_id or _uuid("doc", hashlib.sha1(doc.data).hexdigest())  # noqa: S324
        obj = _uuid("entry", unique)
        eo = _el(objects, "ExtrinsicObject", id=obj, mimeType=doc.mime_type, objectType=DOC_ENTRY_TYPE)
        _slot(eo, "URI", name)
        _slot(eo, "hash", hashlib.sha1(doc.data).hexdigest())  # noqa: S324 - XDS mandates SHA-1
        _slot(eo, "size", str(len(doc.data)))
        _slot(eo, "creationTime", _xds_time(info.created) or now.strftime("%Y%m%d%H%M%S"))
        _slot(eo, "languageCode", info.language or "fr-FR")
        _slot(eo, "sourcePatientId", patient)
        if info.legal_authenticator is not None:
            _slot(eo, "legalAuthenticator", _xcn(info.legal_authenticator))
        if doc.action is not None:
            if doc.action not in ACTIONS:
                raise ValueError(f"XDM action must be one of {ACTIONS} (or None for an initial send)")
            _slot(eo, ACTION_SLOT, doc.action)
        _name(eo, info.title or info.document_type.label or info.document_type.code)
        _author(eo, obj, f"cl{n:02d}a", S_DOC_AUTHOR, info.author)
        _classify(eo, obj, f"cl{n:02d}c", S_CLASS, codes.class_code)
        confidentiality = info.confidentiality or "N"
        _classify(eo, obj, f"cl{n:02d}f", S_CONFIDENTIALITY, Code(confidentiality, confidentiality,
                                                                 CONFIDENTIALITY_SCHEME))
        _classify(eo, obj, f"cl{n:02d}o", S_FORMAT, fmt)
        _classify(eo, obj, f"cl{n:02d}h", S_FACILITY, facility)
        _classify(eo, obj, f"cl{n:02d}p", S_PRACTICE, codes.practice_setting)
        _classify(eo, obj, f"cl{n:02d}t", S_TYPE, Code(info.document_type.code, info.document_type.label,
                                                       LOINC if info.document_type.system == "LOINC"
                                                       else info.document_type.system))
        _ext_id(eo, obj, f"ei{n:02d}p", S_DOC_PATIENT, patient, "XDSDocumentEntry.patientId")
        _ext_id(eo, obj, f"ei{n:02d}u", S_DOC_UNIQUE, unique, "XDSDocumentEntry.uniqueId")
    package = _el(objects, "RegistryPackage", id=set_id)
    _slot(package, "submissionTime", now.strftime("%Y%m%d%H%M%S"))
    if intended_recipients:
        _slot(package, "intendedRecipient", *(_recipient_value(p) for p in intended_recipients))
    _name(package, "Envoi de documents")
    _author(package, set_id, "clsa", S_SET_AUTHOR, first.author)
    content = XDS_CODES.get(first.document_type.code, _DEFAULT_CODES).content_type
    if not content.code:
        content = Code(first.document_type.code, first.document_type.label, LOINC)
    _classify(package, set_id, "clsc", S_SET_CONTENT, content)
    _ext_id(package, set_id, "eisu", S_SET_UNIQUE, submission_unique_id, "XDSSubmissionSet.uniqueId")
    _ext_id(package, set_id, "eiss", S_SET_SOURCE, source_id, "XDSSubmissionSet.sourceId")
    _ext_id(package, set_id, "eisp", S_SET_PATIENT, patient, "XDSSubmissionSet.patientId")
    _el(objects, "Classification", classifiedObject=set_id, classificationNode=SUBMISSION_SET_NODE, id="clss")
    for n, doc in enumerate(documents, start=1):
        unique = doc.info.document_id or _uuid("doc", hashlib.sha1(doc.data).hexdigest())  # noqa: S324
        assoc = _el(objects, "Association", associationType="urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember",
                    sourceObject=set_id, targetObject=_uuid("entry", unique), id=f"as{n:02d}")
        _slot(assoc, "SubmissionSetStatus", "Original")
    return etree.tostring(request, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def _xds_time(value: str | None) -> str:
    """CDA/HL7 TS (with offset) → XDS UTC time YYYYMMDDhhmmss; '' when unreadable."""
    if not value:
        return ""
    m = re.fullmatch(r"(\d{8})(\d{0,6})(?:\.\d+)?([+-]\d{4})?", value.strip())
    if not m:
        return ""
    digits = (m.group(1) + m.group(2)).ljust(14, "0")
    if not m.group(3):
        return m.group(1) + m.group(2)
    try:
        local = dt.datetime.strptime(digits, "%Y%m%d%H%M%S")
    except ValueError:
        return ""
    sign = 1 if m.group(3)[0] == "+" else -1
    offset = dt.timedelta(hours=int(m.group(3)[1:3]), minutes=int(m.group(3)[3:5]))
    return (local - sign * offset).strftime("%Y%m%d%H%M%S")


def build_xdm(documents: Sequence[XdmDocument], *, source_id: str, now: dt.datetime,
              intended_recipients: Sequence[PartyRef] = (), submission_unique_id: str | None = None,
              facility: Code = DEFAULT_FACILITY, vendor: str = "msgw", product_version: str = "0.1.0") -> bytes:
    """Build ``IHE_XDM.ZIP`` bytes; deterministic for the same documents, ids and ``now``.

    ``source_id`` is the sending organisation's OID (XDSSubmissionSet.sourceId). Without
    ``submission_unique_id`` one is derived from ``source_id``, ``now`` and the documents' hashes.
    """
    if not documents:
        raise XdmError("an XDM package needs at least one document", "METADATA.XML")
    if not re.fullmatch(r"\d+(\.\d+)*", source_id):
        raise ValueError("source_id must be an OID")
    digest = hashlib.sha256(b"".join(hashlib.sha256(d.data).digest() for d in documents)).hexdigest()
    unique = submission_unique_id or f"{source_id}.{now.strftime('%Y%m%d%H%M%S')}.{int(digest[:12], 16)}"
    names = []
    for n, doc in enumerate(documents, start=1):
        ext = "PDF" if doc.mime_type == "application/pdf" else "XML"
        names.append(f"DOC{n:04d}.{ext}")
    metadata = build_metadata(documents, names, source_id=source_id, submission_unique_id=unique, now=now,
                              intended_recipients=intended_recipients, facility=facility)
    stamp = now.timetuple()[:6]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        def add(name: str, data: bytes) -> None:
            info = zipfile.ZipInfo(name, date_time=stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            info.create_system = 3
            zf.writestr(info, data)
        add("INDEX.HTM", _index(documents, names).encode("utf-8"))
        add("README.TXT", _readme(vendor, product_version, now).encode("utf-8"))
        add(_SUBSET + "METADATA.XML", metadata)
        for doc, name in zip(documents, names, strict=True):
            add(_SUBSET + name, doc.data)
    return out.getvalue()


def _index(documents: Sequence[XdmDocument], names: Sequence[str]) -> str:
    rows = "\n".join(
        f'<li><a href="{_SUBSET}{name}">{html.escape(doc.info.title or doc.info.document_type.label or name)}</a></li>'
        for doc, name in zip(documents, names, strict=True))
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>IHE XDM</title></head><body>\n"
            f"<h1>Documents</h1>\n<ul>\n{rows}\n</ul>\n"
            f'<p><a href="README.TXT">README.TXT</a> - <a href="{_SUBSET}METADATA.XML">METADATA.XML</a></p>\n'
            "</body></html>\n")


def _readme(vendor: str, version: str, now: dt.datetime) -> str:
    return (f"IHE XDM package (ITI-32 media interchange)\r\nCreated by: {vendor} secure health messaging gateway\r\n"
            f"Version: {version}\r\nDate: {now.strftime('%Y-%m-%d %H:%M:%S')}\r\n"
            f"Contents: INDEX.HTM, README.TXT, {_SUBSET}METADATA.XML and the documents it lists.\r\n")


# --- reading -------------------------------------------------------------------------------------

_XDM_NAME = re.compile(r"^([A-Za-z0-9_]{1,16}/){0,3}[A-Za-z0-9_]{1,16}(\.[A-Za-z0-9]{1,4})?$")


def _label(name: str) -> str:
    """An entry name fit for an error message: conformant XDM names only (others may name a patient)."""
    return f"zip entry {name!r}" if _XDM_NAME.match(name) else f"zip entry of {len(name)} chars"


def _check_name(name: str) -> None:
    if not name:  # found by atheris: zipfile's is_dir() indexes name[-1]
        raise XdmError("zip entry without a name", "zip")
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm) or ".." in norm.split("/") or "\x00" in name:
        raise UnsafePayload("zip entry name escapes the package (absolute or '..')", _label(name))
    if "\\" in name:
        raise XdmError("non-conformant zip entry name (backslash separators)", _label(name))


def _read_entries(zip_bytes: bytes, max_entries: int, max_total: int) -> dict[str, bytes]:
    try:
        zf = zipfile.ZipFile(io.BytesIO(zip_bytes))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, NotImplementedError, EOFError) as exc:
        raise XdmError("not a readable zip archive", "zip") from exc
    with zf:
        infos = zf.infolist()
        if len(infos) > max_entries:
            raise UnsafePayload(f"zip archive with more than {max_entries} entries", "zip")
        total = 0
        entries: dict[str, bytes] = {}
        for info in infos:
            _check_name(info.filename)
            if info.is_dir():
                continue
            if info.flag_bits & 0x1:
                raise XdmError("encrypted zip entry", _label(info.filename))
            total += info.file_size
            if total > max_total:
                raise UnsafePayload(f"zip archive expands to more than {max_total} bytes", "zip")
            if info.file_size > 1024 * 1024 and info.file_size > MAX_RATIO * max(info.compress_size, 1):
                raise UnsafePayload("zip entry compression ratio too high (zip bomb)", _label(info.filename))
            try:
                with zf.open(info) as fh:
                    data = fh.read(info.file_size + 1)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError,
                    zlib.error) as exc:
                raise XdmError("corrupt or unsupported zip entry", _label(info.filename)) from exc
            if len(data) != info.file_size:
                raise UnsafePayload("zip entry size differs from its header", _label(info.filename))
            key = info.filename.upper()
            if key in entries:
                raise XdmError("duplicate zip entry name", _label(info.filename))
            entries[key] = data
    return entries


def _slots(elem: etree._Element) -> dict[str, tuple[str, ...]]:
    return {s.get("name", ""): tuple((v.text or "").strip() for v in s.iterfind(f"{{{RIM}}}ValueList/{{{RIM}}}Value"))
            for s in elem.iterfind(f"{{{RIM}}}Slot")}


def _classification(elem: etree._Element, scheme: str) -> str:
    for cl in elem.iter(f"{{{RIM}}}Classification"):
        if cl.get("classificationScheme") == scheme:
            return cl.get("nodeRepresentation", "")
    return ""


def _external(elem: etree._Element, scheme: str) -> str:
    for ei in elem.iterfind(f"{{{RIM}}}ExternalIdentifier"):
        if ei.get("identificationScheme") == scheme:
            return ei.get("value", "")
    return ""


def read_xdm(zip_bytes: bytes, *, max_entries: int = MAX_ENTRIES, max_total: int = MAX_TOTAL_BYTES) -> XdmPackage:
    """Parse an XDM package; verify each document's size and SHA-1 against METADATA.XML."""
    entries = _read_entries(zip_bytes, max_entries, max_total)
    meta_keys = [k for k in entries if re.search(r"(^|/)IHE_XDM/[^/]+/METADATA\.XML$", k)]
    if not meta_keys:
        raise XdmError("no IHE_XDM/SUBSETnn/METADATA.XML in the package", "zip")
    meta_key = sorted(meta_keys)[0]
    subset = meta_key[: -len("METADATA.XML")]
    prefix = meta_key[: meta_key.upper().index("IHE_XDM/")]
    root = parse_xml(entries[meta_key], XdmError)
    documents: list[XdmEntry] = []
    for eo in root.iter(f"{{{RIM}}}ExtrinsicObject"):
        slots = _slots(eo)
        uri = (slots.get("URI") or ("",))[0]
        key = (subset + uri).upper() if uri else ""
        if not uri:
            stem = (eo.get("id") or "").upper()
            key = next((k for k in entries if k.startswith(subset) and k[len(subset):].rsplit(".", 1)[0] == stem), "")
        if uri:
            _check_name(uri)
        if key not in entries:
            raise XdmError("document listed in METADATA.XML is missing from the package",
                           "METADATA.XML ExtrinsicObject " + _label(eo.get("id", "")).removeprefix("zip entry "))
        data = entries[key]
        digest = hashlib.sha1(data).hexdigest()  # noqa: S324 - XDS mandates SHA-1
        declared_hash = (slots.get("hash") or ("",))[0].lower()
        if declared_hash and declared_hash != digest:
            raise XdmError("document hash differs from METADATA.XML", _label(key))
        declared_size = (slots.get("size") or ("",))[0]
        if declared_size and declared_size != str(len(data)):
            raise XdmError("document size differs from METADATA.XML", _label(key))
        documents.append(XdmEntry(
            uri=key[len(subset):], data=data, mime_type=eo.get("mimeType", ""), hash=digest, size=len(data),
            unique_id=_external(eo, S_DOC_UNIQUE), type_code=_classification(eo, S_TYPE),
            class_code=_classification(eo, S_CLASS), format_code=_classification(eo, S_FORMAT),
            creation_time=(slots.get("creationTime") or ("",))[0], patient_id=_external(eo, S_DOC_PATIENT),
            slots=slots, action=(slots.get(ACTION_SLOT) or (None,))[0] or None,
            confidentiality=tuple(cl.get("nodeRepresentation", "") for cl in eo.iter(f"{{{RIM}}}Classification")
                                  if cl.get("classificationScheme") == S_CONFIDENTIALITY)))
    if not documents:
        raise XdmError("METADATA.XML lists no document", "METADATA.XML")
    package = next(root.iter(f"{{{RIM}}}RegistryPackage"), None)
    if package is None:
        raise XdmError("METADATA.XML has no submission set", "METADATA.XML RegistryPackage")
    pslots = _slots(package)
    set_id = package.get("id", "")
    content = ""
    for cl in root.iter(f"{{{RIM}}}Classification"):
        if cl.get("classificationScheme") == S_SET_CONTENT and cl.get("classifiedObject") == set_id:
            content = cl.get("nodeRepresentation", "")
    readme_key = next((k for k in entries if k == prefix + "README.TXT"), "")
    return XdmPackage(
        submission_unique_id=_external(package, S_SET_UNIQUE), source_id=_external(package, S_SET_SOURCE),
        submission_time=(pslots.get("submissionTime") or ("",))[0], content_type_code=content,
        intended_recipients=pslots.get("intendedRecipient", ()), patient_id=_external(package, S_SET_PATIENT),
        documents=tuple(documents),
        readme=entries[readme_key].decode("utf-8", "replace") if readme_key else "")


def _recipient_party(value: str, n: int) -> PartyRef | None:
    parts = (value.split("|") + ["", "", ""])[:3]
    org, xcn, xtn = parts
    address = xtn.split("^")[3] if len(xtn.split("^")) > 3 and "@" in xtn.split("^")[3] else None
    comps = xcn.split("^")
    ident = comps[0]
    oid = comps[8].split("&")[1] if len(comps) > 8 and len(comps[8].split("&")) > 1 else ""
    source = f"METADATA.XML intendedRecipient[{n}]"
    if "@" in ident:
        return PartyRef("ADDRESS", ident, address=ident, organisation=org, source=source, role="intendedRecipient")
    if ident:
        return PartyRef(professional_id_type(ident, national=oid == RPPS_OID), ident,
                        family=comps[1] if len(comps) > 1 else "", given=comps[2] if len(comps) > 2 else "",
                        organisation=org, address=address, authority=oid, source=source, role="intendedRecipient")
    if address:
        return PartyRef("ADDRESS", address, address=address, organisation=org, source=source, role="intendedRecipient")
    if org:
        return PartyRef("NAME", org, organisation=org, source=source, role="intendedRecipient")
    return None


def read_xdm_payload(zip_bytes: bytes) -> PayloadInfo:
    """An inbound XDM package as a PayloadInfo: the documents it carries are in ``embedded``."""
    from gateway.routing.cda import read_cda

    package = read_xdm(zip_bytes)
    embedded: list[PayloadInfo] = []
    warnings: list[str] = []
    for entry in package.documents:
        try:
            if entry.mime_type == "application/pdf":
                embedded.append(read_pdf(entry.data))
            elif "xml" in entry.mime_type:
                embedded.append(read_cda(entry.data))
        except UnsafePayload:
            raise
        except PayloadError as exc:
            warnings.append(f"{_label(entry.uri)}: document unreadable ({exc.what})")
    recipients = tuple(p for n, v in enumerate(package.intended_recipients, start=1)
                       if (p := _recipient_party(v, n)) is not None)
    patient: tuple[PatientId, ...] = ()
    if package.patient_id:
        cx = package.patient_id.split("^")
        oid = cx[3].split("&")[1] if len(cx) > 3 and len(cx[3].split("&")) > 1 else ""
        patient = (PatientId(cx[0], INS_OIDS.get(oid, "LOCAL"), authority=oid, source="XDSSubmissionSet.patientId"),)
    return PayloadInfo(kind="xdm", document_type=DocumentType("IHE-XDM", "IHE XDM package", "IHE"),
                       patient_ids=patient, author=embedded[0].author if embedded else None, recipients=recipients,
                       document_id=package.submission_unique_id or None, media_type="application/zip",
                       embedded=tuple(embedded), warnings=tuple(warnings))


class XdmFormat(PayloadFormat):
    """An inbound IHE XDM package: attached as IHE_XDM.ZIP byte for byte, never packaged again."""

    kind = "xdm"
    label = "IHE XDM"
    extensions = ("zip",)
    attachment_stem = "IHE_XDM"
    report_subject = "Compte rendu"
    xdm_package = True

    def detect(self, data: bytes) -> int:
        return SIGNATURE if leading(data).startswith(b"PK\x03\x04") else 0

    def read(self, data: bytes, filename: str | None = None) -> PayloadInfo:
        return read_xdm_payload(data)

    def media_type(self, info: PayloadInfo) -> MediaType:
        return "application", "zip", {}

    def is_lab_result(self, info: PayloadInfo) -> bool:
        """A lab result when a document it carries is one (they are CDA or PDF: their LOINC type says)."""
        return any(e.document_type.code in LAB_RESULT_CODES for e in info.embedded)

    def attachment_name(self, ext: str) -> str:
        return "IHE_XDM.ZIP"  # the name the IHE XDM profile gives the archive

    def dedup_facts(self, info: PayloadInfo, data: bytes) -> DedupFacts:
        return DedupFacts("", hashlib.sha256(data).digest())  # binary: every byte counts


FORMAT = XdmFormat()
