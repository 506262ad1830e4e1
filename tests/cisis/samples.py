"""Invented messages of the CI-SIS profile "Transmission de document(s) CDA en HL7v2".

Everything here is made up (people, identifiers, labs, addresses); nothing is copied from the
ANS examples, which stay outside the repository (see ``test_corpus_read.py``). The INS is on the
NIR *test* authority ``1.2.250.1.213.1.4.10``.

Why a builder rather than fixed strings: each rule of the reader and of the flag matrix needs a
message that differs from a valid one in exactly one place. ``Spec()`` is a valid ORU^R01 (an
N1 CDA with its PDF and the N3 CDA of the same report, one professional and the patient as
recipients, the first row of the matrix); change one attribute, call :meth:`Spec.build`::

    Spec(kind="MDM", action="C").build()          # MDM^T10, replacement
    Spec(flags={"INVISIBLE_PATIENT": "Y"}).build()  # one flag changed, the others as default
    Spec(flags={"DESTDMP": None}).build()          # a required flag left out
    Spec(recipients=(ps(), org(), app())).build()  # professional, organisation, application
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field, replace

from gateway.cisis.model import PATIENT_DOMAIN
from tests.routing_payload.fixtures import INS, INS_OID_TEST, IPP, RPPS_AUTHOR, cda

__all__ = [
    "DEFAULT_FLAGS", "INS", "INS_OID_TEST", "OTHER_INS", "PS_ADDRESS", "REPLY_ADDRESS", "Prt", "Spec", "app",
    "b64", "cda_n1", "cda_n3", "org", "patient", "ps", "sender",
]

#: Another invented INS (a different patient), same test authority.
OTHER_INS = "188017512345612"
PS_ADDRESS = "zephyr.destfictif@imaginaire.mssante.test"
REPLY_ADDRESS = "secretariat@labo-fictif.mssante.test"
RPPS_OID = "1.2.250.1.71.4.2.1"
STRUCTURE_OID = "1.2.250.1.71.4.2.2"

#: A valid combination (first row of the IG matrix: professionals and patient), every flag set.
DEFAULT_FLAGS: dict[str, str | None] = {
    "MASQUE_PS": "N", "INVISIBLE_PATIENT": "N", "INVISIBLE_REP_LEGAUX": "N", "CONNEXION_SECRETE": "N",
    "MODIF_CONF_CODE": "N", "DESTDMP": "N", "DESTMSSANTEPS": "Y", "DESTMSSANTEPAT": "Y", "ACK_RECEPTION": "Y",
    "ACK_LECTURE_MSS": "Y",
}
_FLAG_LABELS = {
    "MASQUE_PS": "Masqué aux professionnels de Santé", "INVISIBLE_PATIENT": "Document Non Visible par le patient",
    "INVISIBLE_REP_LEGAUX": "Non visible par les représentants Légaux du patient",
    "CONNEXION_SECRETE": "Connexion Secrete", "MODIF_CONF_CODE": "Modification Confidentiality Code",
    "DESTDMP": "Destinataire DMP", "DESTMSSANTEPS": "Destinataire PS", "DESTMSSANTEPAT": "Destinataire Patient",
    "ACK_RECEPTION": "Accusé de réception", "ACK_LECTURE_MSS": "Accusé de lecture",
    "CORPSMAIL_PS": "Corps du mail pour un PS", "CORPSMAIL_PATIENT": "Corps du mail pour le patient",
}
_TRIGGERS = {"F": "T02", "C": "T10", "D": "T04"}
_ORDER_CONTROLS = {"F": "NW", "C": "RO", "D": "CA"}


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def cda_n1() -> bytes:
    """An invented CDA level 1: a PDF in ``nonXMLBody`` (the patient is ``INS`` on the test authority)."""
    return cda(nonxml=True)


def cda_n3() -> bytes:
    """The same invented report as a structured (level 3) CDA."""
    return cda()


@dataclass(frozen=True)
class Prt:
    """One PRT segment (pre-adopted from HL7 2.9): PRT-4 participation, PRT-5 person (XCN, raw),
    PRT-8 organisation (XON, raw), PRT-10 device (EI, raw), PRT-15.4 the MSSanté address."""

    participation: str
    person: str = ""
    organisation: str = ""
    device: str = ""
    address: str = ""

    def segment(self) -> str:
        telecom = f"^^X.400^{self.address}" if self.address else ""
        fields = ["PRT", "", "UC", "", f"{self.participation}^^HL70912", self.person, "", "", self.organisation, "",
                  self.device, "", "", "", "", telecom]
        return "|".join(fields).rstrip("|")


def ps(ident: str = "819900000044", family: str = "DESTFICTIF", given: str = "Zéphyr", *,
       address: str = PS_ADDRESS) -> Prt:
    """A health professional recipient (IDNAT on the RPPS authority)."""
    return Prt("RCT", f"{ident}^{family}^{given}^^^^^^ASIP-SANTE-PS&{RPPS_OID}&ISO^D^^^RPPS", address=address)


def org(ident: str = "990000123", name: str = "Service Fictif", *,
        address: str = "service.fictif@hopital-imaginaire.mssante.test") -> Prt:
    """An organisation recipient (PRT-8: name, authority, type, number)."""
    return Prt("RCT", organisation=f"{name}^^^^^ASIP-SANTE-ST&{STRUCTURE_OID}&ISO^UF^^^{ident}", address=address)


def app(ident: str = "APPFICT1", *, address: str = "appli.fictive@hopital-imaginaire.mssante.test") -> Prt:
    """An application mailbox recipient (PRT-10 device)."""
    return Prt("RCT", device=ident, address=address)


def patient(ins: str = INS, *, address: str | None = None, in_prt5: bool = True, typed: bool = True,
            oid: str = "") -> Prt:
    """The patient as a recipient: PRT-5 with the INS (typed ``INS`` in PRT-5.13, or only its
    authority in PRT-5.9 when ``oid``) and ``<INS>@patient…`` in PRT-15.4 unless ``address`` says otherwise.
    ``in_prt5=False`` gives the IG's other form: no PRT-5, the INS only in the address."""
    addr = address if address is not None else f"{ins}@{PATIENT_DOMAIN}"
    if not in_prt5:
        return Prt("RCT", address=addr)
    authority = f"&{oid}&ISO" if oid else ""
    type_code = "INS" if typed else ""
    return Prt("RCT", f"{ins}^TESTNOM^Élodie^^^^^^{authority}^L^^^{type_code}", address=addr)


def sender(ident: str = "8" + RPPS_AUTHOR) -> Prt:
    """The sending professional (PRT-4 = SB) and their organisation."""
    return Prt("SB", f"{ident}^AUTEURFICTIF^Anatole^^^^^^ASIP-SANTE-PS&{RPPS_OID}&ISO^D^^^RPPS",
               organisation=f"Laboratoire Fictif^^^^^ASIP-SANTE-ST&{STRUCTURE_OID}&ISO^FINEG^^^990000777")


def _default_documents() -> tuple[bytes, ...]:
    return (cda_n1(), cda_n3())


@dataclass(frozen=True)
class Spec:
    """A profile message to build; every part can be changed (see the module docstring).

    ``flags`` are merged over :data:`DEFAULT_FLAGS` (a value ``None`` leaves the OBX out; any
    string is written as is). ``statuses`` overrides OBX-11 per document (default: ``action``).
    ``orc`` overrides ORC-1 (default from ``action``; ``None`` with ``no_orc`` leaves ORC out).
    ``extra`` segments are appended as written (raw, ``|``-separated, ``^`` components).
    """

    kind: str = "ORU"  # "ORU" | "MDM"
    action: str = "F"  # F | C | D: OBX-11 of the documents, ORC-1 and the MDM trigger follow
    trigger: str | None = None
    orc: str | None = None
    no_orc: bool = False
    statuses: tuple[str, ...] | None = None
    documents: tuple[bytes, ...] | None = None  # default: (N1, N3) for ORU, (N1,) for MDM
    document_obx5: tuple[str, ...] | None = None  # raw OBX-5 per document, replacing the encoded CDA
    flags: dict[str, str | None] = field(default_factory=dict)
    bodies: dict[str, str] = field(default_factory=dict)  # CORPSMAIL_* → text (base64 UTF-8)
    raw_bodies: dict[str, str] = field(default_factory=dict)  # CORPSMAIL_* → OBX-5.5 as written
    nte_fin: bool = False
    recipients: tuple[Prt, ...] = field(default_factory=lambda: (ps(), patient()))
    sender: Prt | None = field(default_factory=sender)
    reply_to: str | None = REPLY_ADDRESS
    ins: str | None = INS
    ins_oid: str = INS_OID_TEST
    family: str = "TESTNOM"
    given: str = "Élodie"
    birth_date: str = "19990101"
    sex: str = "F"
    identity_status: str = "VALI"
    message_type: str | None = None  # MSH-9 as written, when not derived from kind/trigger
    version: str | None = None  # MSH-12 (default 2.5 for ORU, 2.6 for MDM)
    profile: str = "2.1^CISIS_CDA_HL7_V2"  # MSH-21
    small_tilde: bool = False  # MSH-2 ``^˜\\&`` (U+02DC) as in the ANS ORU examples
    charset: str = "UNICODE UTF-8"
    control_id: str = "CTRLCISIS1"
    extra: tuple[str, ...] = ()

    def with_flags(self, **flags: str | None) -> Spec:
        return replace(self, flags={**self.flags, **flags})

    def build(self) -> bytes:
        segments = [self._msh(), *self._head(), *self._body(), *self.extra]
        text = "\r".join(segments) + "\r"
        if self.small_tilde:
            text = text.replace("~", "\u02dc")
        return text.encode("utf-8" if "UTF-8" in self.charset else "iso-8859-15")

    # --- parts -------------------------------------------------------------------------------------

    def _trigger(self) -> str:
        return self.trigger or ("R01" if self.kind == "ORU" else _TRIGGERS[self.action])

    def _msh(self) -> str:
        version = self.version or ("2.5" if self.kind == "ORU" else "2.6")
        structure = "ORU_R01" if self.kind == "ORU" else "MDM_T02"
        msg_type = self.message_type or f"{self.kind}^{self._trigger()}^{structure}"
        return (f"MSH|^~\\&|SGLFICTIF|LABOFICTIF|PFIFICTIVE|ORGFICTIVE|20250115100000||{msg_type}|{self.control_id}|P|"
                f"{version}|||||FRA|{self.charset}|||{self.profile}")

    def _pid(self) -> str:
        pid3 = f"{IPP}^^^HOPX&1.2.250.9999.2&ISO^PI"
        if self.ins:
            pid3 = f"{self.ins}^^^ASIP-SANTE-INS-NIR&{self.ins_oid}&ISO^INS~" + pid3
        fields = ["PID", "", "", pid3, "", f"{self.family}^{self.given}^^^^^L", "", self.birth_date, self.sex]
        fields += [""] * (32 - len(fields)) + [self.identity_status]
        return "|".join(fields)

    def _head(self) -> list[str]:
        if self.kind == "MDM":
            return ["EVN||20250115100000", self._pid(), "PV1|1|O",
                    "TXA|1|11502-2|TEXT|20250115100000||||||||1.2.250.9999.1.1^LABOFICTIF||||||||||LA"]
        segs = [self._pid(), "PV1|1|O"]
        if not self.no_orc:
            orc = self.orc if self.orc is not None else _ORDER_CONTROLS[self.action]
            segs.append(f"ORC|{orc}|CMD1^CABX|REQ42^LABX")
        segs.append("OBR|1|CMD1^CABX|REQ42^LABX|11502-2^CR d'examens biologiques^LN|||20250115083000||||||||||||||"
                    "||||F")
        return segs

    def _documents(self) -> list[str]:
        docs = self.documents if self.documents is not None else (
            _default_documents() if self.kind == "ORU" else (cda_n1(),))
        values = self.document_obx5 or tuple(f"^TEXT^XML^Base64^{b64(d)}" for d in docs)
        statuses = self.statuses or (self.action,) * len(values)
        return [f"OBX|{n}|ED|11502-2^CR d'examens biologiques^LN||{value}||||||{status}"
                for n, (value, status) in enumerate(zip(values, statuses, strict=True), start=1)]

    def _prts(self) -> list[str]:
        prts = ([self.sender] if self.sender else []) + list(self.recipients)
        if self.reply_to:
            prts.append(Prt("REPLY", address=self.reply_to))
        return [p.segment() for p in prts]

    def _metadata(self, first: int) -> list[str]:
        segs: list[str] = []
        n = first
        flags = {**DEFAULT_FLAGS, **self.flags}
        for code, value in flags.items():
            if value is None:
                continue
            label = _FLAG_LABELS.get(code, code)
            segs.append(f"OBX|{n}|CE|{code}^{label}^MetaDMPMSS||{value}^^HL70136||||||F")
            n += 1
            if code == "DESTMSSANTEPAT" and self.nte_fin:
                segs.append("NTE|1|||FIN")
        bodies = {code: b64(text) for code, text in self.bodies.items()} | self.raw_bodies
        for code, data in bodies.items():
            segs.append(f"OBX|{n}|ED|{code}^{_FLAG_LABELS.get(code, code)}^MetaDMPMSS||^TEXT^^Base64^{data}||||||F")
            n += 1
        return segs

    def _body(self) -> list[str]:
        docs = self._documents()
        # the ANS layout: first document, the PRTs, the other document, then the metadata
        segs = [docs[0], *self._prts(), *docs[1:]] if docs else self._prts()
        return segs + self._metadata(len(docs) + 1)
