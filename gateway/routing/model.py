"""What the payload readers (HPRIM, HL7 v2, CDA, PDF, IHE XDM) share: types, errors, the format protocol.

Why one small module: routing, the XDM builder and the CLI only need *what a payload says*
(kind, document type, author, recipients' identifiers, document id, replacement status), not
the format's details. Every reader returns a frozen :class:`PayloadInfo` and raises only
:class:`PayloadError` subclasses, which carry a location (line, segment-field, XPath, zip
entry) and never the content itself: health data must not reach logs, DSNs or ACKs.

Patient identifiers are kept inside :class:`PayloadInfo` (XDM metadata needs the INS) but are
masked in ``repr``/``str`` so that a stray ``log.info(info)`` leaks nothing.

Why the readers import this module and nothing above it: the registry
(:mod:`gateway.routing.formats`) and the dispatcher (:mod:`gateway.routing.payload`) import
the readers; a reader importing them back would make an import cycle.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Protocol

from gateway.errors import MalformedInput

#: A payload format's name ("hprim", "hl7v2", "cda", "pdf", "xdm", or a registered format's):
#: a plain string, since formats are plug-ins (see :mod:`gateway.routing.formats`).
Kind = str
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
#: The largest MLLP frame read by default (an HL7 v2 message with an embedded PDF fits).
DEFAULT_MAX_FRAME = 16 * 1024 * 1024


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


# --- the format protocol ----------------------------------------------------------------------

#: How sure a format is that bytes are its own: 0 not at all, MARKER (a marker somewhere in the
#: text), SIGNATURE (its signature at the very start). The highest answer wins; ties go to the
#: format registered first.
MARKER = 1
SIGNATURE = 2

#: LOINC document codes that make a CDA document (or a PDF, by its sidecar) a lab result.
LAB_RESULT_CODES = frozenset({"11502-2"})

#: (maintype, subtype, parameters) of a MIME part.
MediaType = tuple[str, str, dict[str, str]]

_IANA_CHARSETS = {"cp1252": "windows-1252", "latin-1": "iso-8859-1", "utf8": "utf-8"}
_LINE_END = re.compile(rb"\r\n|\r|\n")


def payload_head(data: bytes) -> bytes:
    """The first 8 KiB without a UTF-8 BOM: what detection looks at."""
    head = data[:8192]
    return head[3:] if head.startswith(b"\xef\xbb\xbf") else head


def leading(data: bytes) -> bytes:
    """:func:`payload_head` without leading white space: where a format's signature is."""
    return payload_head(data).lstrip(b" \t\r\n\x0b")


def iana_charset(encoding: str) -> str:
    """The IANA name of a reader's encoding (``cp1252`` → ``windows-1252``), '' when unknown."""
    enc = (encoding or "").lower()
    return _IANA_CHARSETS.get(enc, enc)


def digest_lines(data: bytes, skip: tuple[bytes, ...] = ()) -> bytes:
    """SHA-256 of the non-empty lines, whatever their line ends, leaving out lines starting with ``skip``."""
    digest = hashlib.sha256()
    for line in _LINE_END.split(data):
        if line and not (skip and line.startswith(skip)):
            digest.update(line + b"\n")
    return digest.digest()


@dataclass(frozen=True)
class EmbeddedDocument:
    """A document a payload carries (a PDF or CDA in an HL7 OBX), with what its reader said."""

    data: bytes = field(repr=False)
    info: PayloadInfo
    media_type: str


@dataclass(frozen=True)
class DedupFacts:
    """What duplicate suppression needs from a format (no content: a qualifier and a digest)."""

    qualifier: str  # appended to the document id: "F" for an HL7 final result, "" when none
    digest: bytes  # SHA-256 of what the document says, without what changes when it is only sent again


class PayloadFormat(Protocol):
    """One payload format: how to recognise and read it, and how it is wrapped into mail.

    Why one object per format: detection, reading, the attachment's media type and neutral
    name, the subject family and duplicate suppression all depend on the format; with every
    answer on one object, the dispatcher and :mod:`gateway.intake.wrap` have no ``if kind ==``
    chains, and a new format is its module plus one line in :mod:`gateway.routing.formats`.
    Subclass it to inherit the defaults below; never raise from ``detect``.
    """

    #: PayloadInfo.kind of what ``read`` returns.
    kind: ClassVar[str]
    #: Name in messages ("HL7 v2").
    label: ClassVar[str]
    #: File-name extensions that name this format when the bytes do not; the first one is the
    #: attachment's when the submitted file name has none.
    extensions: ClassVar[tuple[str, ...]] = ()
    #: Neutral attachment name stem ("resultat" → resultat.hpr): never the submitted file name.
    attachment_stem: ClassVar[str] = "document"
    #: Subject family when the document is not a lab result.
    report_subject: ClassVar[str] = "Document médical"
    #: Packaged into an IHE XDM archive as itself (a CDA document).
    xdm_document: ClassVar[bool] = False
    #: Is itself an IHE XDM package: attached as IHE_XDM.ZIP and never packaged again.
    xdm_package: ClassVar[bool] = False

    def detect(self, data: bytes) -> int:
        """0 when ``data`` is not this format, else :data:`MARKER` or :data:`SIGNATURE`."""
        ...

    def read(self, data: bytes, filename: str | None = None) -> PayloadInfo:
        """What the payload says; raises :class:`PayloadError` subclasses naming a location only."""
        ...

    def media_type(self, info: PayloadInfo) -> MediaType:
        """The attachment's media type (with its charset where the receiving software needs it)."""
        return "application", "octet-stream", {}

    def is_lab_result(self, info: PayloadInfo) -> bool:
        """A lab result gets the subject "Résultat de laboratoire"."""
        return False

    def attachment_name(self, ext: str) -> str:
        """The neutral attachment name; ``ext`` is a checked extension of the submitted name, or ''."""
        return f"{self.attachment_stem}.{ext or (self.extensions[0] if self.extensions else 'bin')}"

    def embedded_documents(self, data: bytes, info: PayloadInfo) -> list[EmbeddedDocument]:
        """Documents carried inside the payload, attached (PDF) or packaged (CDA) beside it."""
        return []

    def dedup_facts(self, info: PayloadInfo, data: bytes) -> DedupFacts:
        """Default: every non-empty line counts, whatever its line end."""
        return DedupFacts("", digest_lines(data))
