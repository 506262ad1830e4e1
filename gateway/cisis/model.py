"""What the CI-SIS "Transmission de document(s) CDA en HL7v2" profile says, as typed values.

msgw is the profile's GESTIONNAIRE (the intermediation platform, "PFI"): a CRÉATEUR (a lab's
SGL, a hospital's DPI or RIS) hands it one document per ORU^R01 / MDM^T02|T10|T04 message over
MLLP; msgw sends the MSSanté messages and answers with HL7 acknowledgments (ACK, then the
business acknowledgments ZAM^Z01|Z02|Z03).

Every module of :mod:`gateway.cisis` shares these types: the reader fills a `Transmission`, the
matrix and the planner decide a `Plan`, the mail builder turns each `CopyPlan` into MIME bytes,
the ledger remembers what ZAMs are owed (`OwedZam`). Pure data, no I/O; patient data is kept
out of ``repr`` (a stray log line must not leak an INS or a name).

Source: ``ansforge/IG-hl7v2-volet-transmission-document-cda-r2`` (pages ``profils-messages``,
``regles-gestion-mssante``, ``meta-dmp-mss``, ``mapping-mss``, ``ack-metier-zam``,
``error-codes``) and the official examples ``ansforge/hl7V2-exemples``
(``TRANS_DOC_CDA_HL7V2/V2.0``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.routing.model import PartyRef, PayloadError, PayloadInfo, mask

#: MSH-21.2 of every message of the profile (MSH-21.1 is the profile's version, "2.0", "2.1").
PROFILE_ID = "CISIS_CDA_HL7_V2"
#: The domain of the patients' Mon espace santé mailboxes: ``<INS>@patient.mssante.fr``.
PATIENT_DOMAIN = "patient.mssante.fr"

#: MetaDMPMSS Y/N flags the profile requires, each exactly once ([1..1]).
REQUIRED_FLAGS: tuple[str, ...] = (
    "MASQUE_PS", "INVISIBLE_PATIENT", "INVISIBLE_REP_LEGAUX", "CONNEXION_SECRETE", "MODIF_CONF_CODE",
    "DESTDMP", "DESTMSSANTEPS", "DESTMSSANTEPAT",
)
#: Optional Y/N flags (absent means N).
OPTIONAL_FLAGS: tuple[str, ...] = ("ACK_RECEPTION", "ACK_LECTURE_MSS")
#: Optional ED texts (base64) for the mail bodies.
BODY_CODES: tuple[str, ...] = ("CORPSMAIL_PS", "CORPSMAIL_PATIENT")
ALL_FLAGS: tuple[str, ...] = REQUIRED_FLAGS + OPTIONAL_FLAGS


class CisisError(PayloadError):
    """A profile message msgw refuses: ``rule`` names the profile rule it breaks (shown in the
    ACK's ERR segment and by ``msgw payload plan``); ``where`` the segment and field."""

    code = "cisis-refused"

    def __init__(self, what: str, where: str = "", *, rule: str = "PROFILE", hl7_error: str = "207") -> None:
        super().__init__(what, where)
        #: A short stable name of the rule: ``MATRIX``, ``ORC_OBX_MISMATCH``, ``INS_NOT_QUALIFIED``...
        self.rule = rule
        #: HL7 table 0357 code for ERR-3 (101 required field missing, 102 data type, 103 table
        #: value not found, 207 application error).
        self.hl7_error = hl7_error


class Action(enum.Enum):
    """What the CRÉATEUR asks for the document (OBX-11 of the document's OBX)."""

    INITIAL = "F"
    REPLACE = "C"
    DELETE = "D"


class RecipientKind(enum.Enum):
    """Who a ``PRT-4 = RCT`` names (drives the copy, the body and the plan's display)."""

    PS = "PS"  # a health professional (PRT-5)
    ORG = "ORG"  # an organisation (PRT-8)
    APP = "APP"  # an application mailbox (PRT-10, device)
    PATIENT = "PATIENT"  # the patient's Mon espace santé mailbox


class ZamEvent(enum.Enum):
    """The business acknowledgment events (MSH-9 ``ZAM^<event>^ZAM_Z01``)."""

    DMP_RECEPTION = "Z01"
    MSS_RECEPTION = "Z02"
    MSS_READ = "Z03"


@dataclass(frozen=True)
class MessageHeader:
    """The MSH facts an ACK or a ZAM must echo (all plain tokens, no health data)."""

    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    control_id: str  # MSH-10
    message_type: str  # "ORU" | "MDM"
    trigger: str  # "R01" | "T02" | "T10" | "T04"
    version: str  # MSH-12 ("2.5" for ORU, "2.6" for MDM)
    processing_id: str = "P"  # MSH-11
    charset: str = ""  # MSH-18 as written ("UNICODE UTF-8", "8859/15")
    profile_version: str = ""  # MSH-21.1 ("2.0", "2.1")


@dataclass(frozen=True)
class Patient:
    """PID: the INS and the identity traits. Masked in repr."""

    ins: str | None = None  # the matricule (15 characters for a NIR)
    ins_oid: str | None = None  # 1.2.250.1.213.1.4.8 | .9 | .10 (test)
    family: str = ""
    given: str = ""
    birth_date: str = ""  # YYYYMMDD
    sex: str = ""  # M | F | U
    identity_status: str = ""  # PID-32 ("VALI" = qualified identity)

    @property
    def qualified(self) -> bool:
        """A qualified INS (CI-SIS INS annex): an INS authority OID, the matricule, a validated
        identity (PID-32 ``VALI``) and the traits (birth name, first name, birth date, sex)."""
        return bool(self.ins and self.ins_oid and self.identity_status == "VALI"
                    and self.family and self.given and len(self.birth_date) >= 8 and self.sex)

    def __repr__(self) -> str:
        return (f"Patient(ins={mask(self.ins or '')!r}, oid={self.ins_oid!r}, qualified={self.qualified}, "
                f"status={self.identity_status!r})")

    __str__ = __repr__


@dataclass(frozen=True)
class Document:
    """One document of the message (an OBX of type ED carrying a CDA R2, base64)."""

    set_id: str  # OBX-1
    code: str  # OBX-3.1 (LOINC, from JDV_J07-XdsTypeCode-CISIS)
    label: str  # OBX-3.2
    status: str  # OBX-11: F | C | D
    data: bytes = field(repr=False)
    info: PayloadInfo | None = field(default=None, repr=False)  # what the CDA reader said
    where: str = ""  # "OBX[1]"

    @property
    def level(self) -> str:
        """``N1`` (non-XML body, usually a PDF) or ``N3`` (structured body), from the CDA."""
        return "N1" if self.info is not None and self.info.body == "nonxml" else "N3"


@dataclass(frozen=True)
class Recipient:
    """A ``PRT-4 = RCT`` segment: who receives a copy, and at which MSSanté address."""

    kind: RecipientKind
    address: str  # PRT-15.4, lower-cased; for a patient, ``<INS>@patient.mssante.fr``
    identifier: str = ""  # PRT-5.1 (RPPS/IDNAT or the INS), PRT-8.10, PRT-10.1
    authority: str = ""  # the identifier's OID (PRT-5.9.2 / PRT-8.6.2)
    family: str = ""
    given: str = ""
    organisation: str = ""
    where: str = ""  # "PRT[3]"
    given_address: str = ""  # PRT-15.4 as written when the address was derived (a patient's)

    def __repr__(self) -> str:
        if self.kind is RecipientKind.PATIENT:
            return f"Recipient(kind=PATIENT, address='<patient>@{PATIENT_DOMAIN}', where={self.where!r})"
        return f"Recipient(kind={self.kind.value}, address={self.address!r}, where={self.where!r})"

    __str__ = __repr__


@dataclass(frozen=True)
class Transmission:
    """One message of the profile, read and checked for shape (not yet for the flag matrix)."""

    header: MessageHeader
    patient: Patient
    documents: tuple[Document, ...]
    action: Action
    sender: PartyRef | None  # PRT-4 = SB (the author / sending professional)
    recipients: tuple[Recipient, ...]
    reply_to: str | None  # PRT-4 = REPLY, PRT-15.4
    flags: Mapping[str, bool]  # every ALL_FLAGS name → value (optional ones default to False)
    bodies: Mapping[str, str] = field(default_factory=dict, repr=False)  # CORPSMAIL_* → text
    no_reply: bool = False  # NTE-4 = FIN under DESTMSSANTEPAT → X-MSS-MES: FIN on the patient copy
    warnings: tuple[str, ...] = ()

    def flag(self, name: str) -> bool:
        return bool(self.flags.get(name, False))


@dataclass(frozen=True)
class MatrixRow:
    """One row of the IG's management matrix: each flag's allowed values, and what is sent."""

    name: str  # "PS+PATIENT", "PS", "PATIENT"
    allowed: Mapping[str, frozenset[bool]]
    to_professionals: bool
    to_patient: bool
    label: str = ""


@dataclass(frozen=True)
class CopyPlan:
    """One MSSanté message to build: for the professionals (PS, organisations, application
    mailboxes, one message) or for the patient."""

    kind: str  # "professional" | "patient"
    recipients: tuple[Recipient, ...]
    body_code: str  # "CORPSMAIL_PS" | "CORPSMAIL_PATIENT"
    read_receipt: bool  # ACK_LECTURE_MSS = Y → Disposition-Notification-To
    no_reply: bool = False  # patient copy with X-MSS-MES: FIN


@dataclass(frozen=True)
class OwedZam:
    """A business acknowledgment the CRÉATEUR will get: when, and for whom."""

    event: ZamEvent
    recipient: str | None = None  # the MSSanté address (None for the DMP)
    when: str = ""  # "next hop accepted or refused the copy", "read MDN", "now: not performed"


@dataclass(frozen=True)
class Plan:
    """What msgw does with one transmission: the copies, the recipients left out (with the
    reason) and the acknowledgments owed."""

    transmission: Transmission
    row: MatrixRow | None  # None when no MSSanté exchange was asked (DMP only)
    copies: tuple[CopyPlan, ...]
    left_out: tuple[tuple[Recipient, str], ...] = ()
    zams: tuple[OwedZam, ...] = ()
    notes: tuple[str, ...] = ()


__all__ = [
    "ALL_FLAGS", "BODY_CODES", "OPTIONAL_FLAGS", "PATIENT_DOMAIN", "PROFILE_ID", "REQUIRED_FLAGS", "Action",
    "CisisError", "CopyPlan", "Document", "MatrixRow", "MessageHeader", "OwedZam", "Patient", "Plan", "Recipient",
    "RecipientKind", "Transmission", "ZamEvent",
]
