"""Common types of the payload readers (HPRIM, HL7 v2, CDA, PDF, IHE XDM) and the dispatcher.

Why one small module: routing, the XDM builder and the CLI only need *what a payload says*
(kind, document type, author, recipients' identifiers, document id, replacement status), not
the format's details. Every reader returns a frozen :class:`PayloadInfo` and raises only
:class:`PayloadError` subclasses, which carry a location (line, segment-field, XPath, zip
entry) and never the content itself: health data must not reach logs, DSNs or ACKs.

Patient identifiers are kept inside :class:`PayloadInfo` (XDM metadata needs the INS) but are
masked in ``repr``/``str`` so that a stray ``log.info(info)`` leaks nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gateway.errors import MalformedInput

Kind = Literal["hprim", "hl7v2", "cda", "pdf", "xdm"]
IdType = Literal["RPPS", "ADELI", "IDNAT", "LAB-CODE", "NAME", "ADDRESS"]

#: OIDs of the French national patient identifier (INS) assigning authorities.
#: .8 NIR and .9 NIA are production; .10 is the NIR *test* authority (the ANS samples use it),
#: .11 the NIR demonstration authority (ANS FHIR FrCore / CI-SIS stylesheets).
INS_OIDS: dict[str, str] = {
    "1.2.250.1.213.1.4.8": "INS-NIR",
    "1.2.250.1.213.1.4.9": "INS-NIA",
    "1.2.250.1.213.1.4.10": "INS-NIR-TEST",
    "1.2.250.1.213.1.4.11": "INS-NIR-DEMO",
}
#: Identifiant national of health professionals (8 + RPPS, 0 + ADELI, 3 + structure staff id).
RPPS_OID = "1.2.250.1.71.4.2.1"
#: Structures (FINESS/SIRET-based identifiers).
STRUCTURE_OID = "1.2.250.1.71.4.2.2"

MAX_PAYLOAD_BYTES = 64 * 1024 * 1024


class PayloadError(MalformedInput):
    """A payload could not be read; ``where`` is a line, ``SEG[n]-field``, an XPath or a zip entry."""

    code = "payload-malformed"


class HprimError(PayloadError):
    code = "payload-hprim"


class Hl7Error(PayloadError):
    code = "payload-hl7"


class MllpError(Hl7Error):
    code = "payload-mllp"


class CdaError(PayloadError):
    code = "payload-cda"


class XdmError(PayloadError):
    code = "payload-xdm"


class UnsafePayload(PayloadError):
    """Input built to attack a parser (XML entities, zip bomb, path traversal): never forward it."""

    code = "payload-unsafe"


class UnsupportedPayload(PayloadError):
    """Well-formed but not something the gateway routes (an ADT message, an unknown file)."""

    code = "payload-unsupported"


def mask(value: str) -> str:
    """Show the first character only (an INS keeps its sex digit): enough for an operator, not an identity."""
    if not value:
        return ""
    return value[0] + "*" * (len(value) - 1)


@dataclass(frozen=True)
class DocumentType:
    """What the payload is: LOINC code for CDA, message type for HL7, HPRIM message type."""

    code: str
    label: str = ""
    system: str = ""  # "LOINC", "HL7v2", "HPRIM", "MIME"...


@dataclass(frozen=True)
class PatientId:
    """One patient identifier: an INS (with its authority kind) or a local id. Never printed in clear."""

    value: str
    kind: str  # one of INS_OIDS values, or "LOCAL"
    authority: str = ""  # OID or namespace
    source: str = ""

    @property
    def is_ins(self) -> bool:
        return self.kind.startswith("INS")

    def __repr__(self) -> str:
        return f"PatientId(kind={self.kind!r}, value={mask(self.value)!r}, source={self.source!r})"

    __str__ = __repr__


@dataclass(frozen=True)
class PartyRef:
    """A person or organisation named by a payload: author, prescriber, copy recipient.

    ``id_type`` says how the directory should look it up: RPPS (11 digits), ADELI, IDNAT (the
    identifiant national: ``8``+RPPS, ``0``+ADELI, ``3``+structure staff id), LAB-CODE (a code
    local to the sender, mapped by the directory per sending lab), NAME (name only), ADDRESS (a
    mail address only). ``address`` is a mail address found next to the identifier, if any.
    A party that is the patient (an HL7 PRT copy to the patient's mailbox) is masked in repr.
    """

    id_type: IdType
    value: str
    family: str = ""
    given: str = ""
    prefix: str = ""
    organisation: str = ""
    address: str | None = None
    authority: str = ""
    role: str = ""
    source: str = ""
    is_patient: bool = False

    @property
    def rpps(self) -> str | None:
        """The 11-digit RPPS when the identifier carries one (bare RPPS or ``8`` + RPPS)."""
        if self.id_type == "RPPS" and len(self.value) == 11 and self.value.isdigit():
            return self.value
        if self.id_type == "IDNAT" and len(self.value) == 12 and self.value.startswith("8") and self.value.isdigit():
            return self.value[1:]
        return None

    @property
    def display_name(self) -> str:
        return " ".join(p for p in (self.prefix, self.given, self.family) if p) or self.organisation

    def __repr__(self) -> str:
        value = mask(self.value) if self.is_patient else self.value
        address = mask(self.address or "") if self.is_patient else self.address
        name = "<patient>" if self.is_patient else self.display_name
        return (f"PartyRef(id_type={self.id_type!r}, value={value!r}, name={name!r}, address={address!r}, "
                f"role={self.role!r}, source={self.source!r})")

    __str__ = __repr__


@dataclass(frozen=True)
class PayloadInfo:
    """What a payload says, for routing and packaging. Patient identifiers are masked in repr."""

    kind: Kind
    document_type: DocumentType
    patient_ids: tuple[PatientId, ...] = field(default=(), repr=False)
    author: PartyRef | None = None
    recipients: tuple[PartyRef, ...] = ()
    document_id: str | None = None
    set_id: str | None = None
    version: int | None = None
    replaces: bool = False
    replaced_id: str | None = None
    cancels: bool = False
    encoding: str = ""
    created: str | None = None
    title: str = ""
    legal_authenticator: PartyRef | None = None
    template_ids: tuple[str, ...] = ()
    body: str | None = None  # CDA: "structured" | "nonxml"
    media_type: str = ""
    confidentiality: str = ""
    language: str = ""
    sender: str = ""  # sending application/lab as named by the payload (no identity data)
    embedded: tuple[PayloadInfo, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def ins(self) -> PatientId | None:
        """The first INS among the patient identifiers (production before test ones)."""
        for kind in ("INS-NIR", "INS-NIA", "INS-NIR-TEST", "INS-NIR-DEMO"):
            for pid in self.patient_ids:
                if pid.kind == kind:
                    return pid
        return None

    def __repr__(self) -> str:
        kinds = ",".join(p.kind for p in self.patient_ids)
        return (f"PayloadInfo(kind={self.kind!r}, document_type={self.document_type!r}, "
                f"patient_ids=<{len(self.patient_ids)} masked: {kinds}>, author={self.author!r}, "
                f"recipients={self.recipients!r}, document_id={self.document_id!r}, set_id={self.set_id!r}, "
                f"version={self.version!r}, replaces={self.replaces!r}, cancels={self.cancels!r}, "
                f"encoding={self.encoding!r}, embedded={self.embedded!r}, warnings={self.warnings!r})")

    __str__ = __repr__


def classify_ins(oid: str) -> str | None:
    return INS_OIDS.get(oid.strip())


def professional_id_type(value: str, *, national: bool | None) -> IdType:
    """Classify a professional identifier.

    ``national`` is True when the issuer is the RPPS/IDNAT authority, False when the sender says
    the code is its own (HPRIM coding system ``L``), None when nothing says (HPRIM médecin header).
    Why the value's shape decides within the national authority: the ANS samples label ``8`` +
    RPPS values "RPPS" (MDM) or "IDNPS" (ORU) interchangeably.
    """
    v = value.strip()
    if national is False:
        return "LAB-CODE"
    if v.isdigit() and len(v) == 11:
        return "RPPS"
    if v.isdigit() and len(v) == 12 and v.startswith("8"):
        return "IDNAT"
    if national is None:
        return "LAB-CODE"
    if len(v) == 9:
        return "ADELI"
    return "IDNAT"


def decode_text(data: bytes, declared: str | None = None) -> tuple[str, str]:
    """Decode bytes as UTF-8 when valid, else CP1252 when it uses its 0x80-0x9F letters, else ISO-8859-1.

    Returns (text, encoding name). A UTF-8 BOM is dropped.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if declared:
        try:
            return data.decode(declared), declared
        except (UnicodeDecodeError, LookupError):
            pass
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    if any(0x80 <= b <= 0x9F for b in data):
        try:
            return data.decode("cp1252"), "cp1252"
        except UnicodeDecodeError:
            pass
    return data.decode("iso-8859-1"), "iso-8859-1"


def detect_payload(data: bytes) -> str | None:
    """Guess the payload kind from its first bytes: "hprim", "hl7v2", "cda", "pdf", "xdm" or None."""
    head = data[:8192]
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    stripped = head.lstrip(b" \t\r\n\x0b")
    if stripped.startswith(b"%PDF-"):
        return "pdf"
    if stripped.startswith(b"PK\x03\x04"):
        return "xdm"
    if stripped[:3] in (b"MSH", b"FHS", b"BHS") and len(stripped) > 3 and not stripped[3:4].isalnum():
        return "hl7v2"
    if stripped.startswith(b"H|"):
        return "hprim"
    if stripped.startswith(b"<"):
        return "cda" if b"ClinicalDocument" in head else None
    if b"****LAB****" in data or b"****FINFICHIER****" in data:
        return "hprim"
    for line in head.splitlines()[:4]:
        if line.startswith((b"RES|", b"TEX|")):
            return "hprim"
    return None


def read_pdf(data: bytes) -> PayloadInfo:
    """A bare PDF says nothing about its recipients: check it is a PDF, the sidecar gives the rest."""
    if not data.lstrip(b" \t\r\n").startswith(b"%PDF-"):
        raise PayloadError("not a PDF document (no %PDF- header)", "byte 0")
    if b"%%EOF" not in data[-2048:]:
        raise PayloadError("truncated PDF document (no %%EOF trailer)", f"byte {len(data)}")
    return PayloadInfo(kind="pdf", document_type=DocumentType("application/pdf", "PDF document", "MIME"),
                       media_type="application/pdf")


def read_payload(data: bytes, filename: str | None = None) -> PayloadInfo:
    """Detect and read a payload; the file name only breaks ties (``.hpr``/``.hpm`` text layouts)."""
    if len(data) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"payload larger than {MAX_PAYLOAD_BYTES} bytes", "byte 0")
    kind = detect_payload(data)
    if kind is None and filename:
        ext = filename.lower().rsplit(".", 1)[-1] if "." in filename else ""
        kind = {"hpr": "hprim", "hpm": "hprim", "hprim": "hprim", "hl7": "hl7v2", "er7": "hl7v2",
                "xml": "cda", "pdf": "pdf", "zip": "xdm"}.get(ext)
    if kind == "hprim":
        from gateway.routing.hprim import read_hprim
        return read_hprim(data)
    if kind == "hl7v2":
        from gateway.routing.hl7 import read_hl7
        return read_hl7(data)
    if kind == "cda":
        from gateway.routing.cda import read_cda
        return read_cda(data)
    if kind == "pdf":
        return read_pdf(data)
    if kind == "xdm":
        from gateway.routing.xdm import read_xdm_payload
        return read_xdm_payload(data)
    raise UnsupportedPayload("unrecognised payload (not HPRIM, HL7 v2, CDA, PDF or IHE XDM)", "byte 0")
