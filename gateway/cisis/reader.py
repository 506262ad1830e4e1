"""Read one message of the CI-SIS profile "Transmission de document(s) CDA en HL7v2" (pure code).

:func:`is_transmission` says cheaply whether a message claims the profile (MSH-21);
:func:`read_transmission` reads it into a :class:`~gateway.cisis.model.Transmission` and refuses,
with a :class:`~gateway.cisis.model.CisisError` naming the rule, what the IG says the
GESTIONNAIRE must reject. The flag *matrix* is checked apart (:mod:`gateway.cisis.matrix`).

Sources (IG ``ansforge/IG-hl7v2-volet-transmission-document-cda-r2``): ``profils-messages``
(segments, ORC-1/OBX-11/trigger coherence, PRT), ``meta-dmp-mss`` (the MetaDMPMSS codes),
``mapping-mss`` (NTE-4 ``FIN``, bodies). Error locations are written ``SEG[n]-f`` (the n-th
segment of that name, field f): :func:`error_location` turns them into an ACK's ERR-2.

Never in an error text: names, INS, addresses, bodies. Flags and rule names are not content.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator, Mapping

from gateway.cisis.model import (
    ALL_FLAGS,
    BODY_CODES,
    OPTIONAL_FLAGS,
    PATIENT_DOMAIN,
    PROFILE_ID,
    REQUIRED_FLAGS,
    Action,
    CisisError,
    Document,
    MessageHeader,
    Patient,
    Recipient,
    RecipientKind,
    Transmission,
)
from gateway.config.reader import valid_address
from gateway.routing.cda import read_cda
from gateway.routing.hl7 import Message, Segment, parse_message
from gateway.routing.model import INS_OIDS, RPPS_OID, PartyRef, PayloadError, professional_id_type

#: OBX-3.3 of the metadata OBX (table "MetaDMP/MSS", page meta-dmp-mss).
META_SYSTEM = "METADMPMSS"
_META_CODES = frozenset(ALL_FLAGS + BODY_CODES)
_TRIGGER_ACTION = {"T02": Action.INITIAL, "T10": Action.REPLACE, "T04": Action.DELETE}
_ORDER_CONTROL_ACTION = {"NW": Action.INITIAL, "RO": Action.REPLACE, "CA": Action.DELETE}
#: ORC-1 ``SC`` (status changed): not in the IG, but every V2.0 ANS ORU example uses it.
_TOLERATED_ORDER_CONTROL = "SC"
_VERSIONS = {"ORU": "2.5", "MDM": "2.6"}
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_MSH_LINE = re.compile(rb"(?:^|[\r\n\x0b])(MSH[^\r\n]*)")
_NATIONAL_TYPES = {"RPPS", "IDNPS", "ADELI", "IDNAT"}
_LOCATION = re.compile(r"^(?P<seg>[A-Z][A-Z0-9]{2})\[(?P<n>\d+)\](?:-(?P<field>\d+))?")


class Flags(Mapping[str, bool]):
    """The MetaDMPMSS flags (every name of ``ALL_FLAGS``; optional ones absent read False) and
    where each was written, so a matrix refusal can point at an OBX."""

    def __init__(self, values: Mapping[str, bool], where: Mapping[str, str]) -> None:
        self._values = {name: bool(values.get(name, False)) for name in ALL_FLAGS}
        self._where = dict(where)

    def __getitem__(self, name: str) -> bool:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def where(self, name: str) -> str:
        """``OBX[n]-5`` of the flag's OBX ('' when the flag was absent)."""
        return self._where.get(name, "")

    def __repr__(self) -> str:
        return "Flags(" + ", ".join(f"{k}={'Y' if v else 'N'}" for k, v in self._values.items()) + ")"


def error_location(where: str) -> str | None:
    """``OBX[8]-5`` → ``OBX^8^5`` (an ERR-2 ERL: segment, its occurrence, field), else None."""
    m = _LOCATION.match(where)
    if m is None:
        return None
    return "^".join(x for x in (m["seg"], m["n"], m["field"]) if x)


# --- the profile test ------------------------------------------------------------------------------

def is_transmission(data: bytes) -> bool:
    """Whether MSH-21 (any repetition) names the profile (component 2 ``CISIS_CDA_HL7_V2``).

    Cheap: only the MSH line is parsed. Never raises (a message that cannot be read is not one
    of the profile: the ordinary HL7 path reports it).
    """
    try:
        m = _MSH_LINE.search(data[:65536])
        if m is None:
            return False
        msg = parse_message(m.group(1))
        msh = msg.segments[0]
        return any(msg.value(msh, 21, 2, rep=k) == PROFILE_ID for k in range(len(msg.reps(msh, 21))))
    except (PayloadError, ValueError, IndexError, LookupError):
        return False


# --- small readers -----------------------------------------------------------------------------------

def _where(msg: Message, seg: Segment, n: int | None = None) -> str:
    """``SEG[k]-n``: the k-th segment of that name (what an ERL's segment sequence counts)."""
    k = sum(1 for s in msg.segments[:msg.segments.index(seg) + 1] if s.name == seg.name)
    return f"{seg.name}[{k}]" + (f"-{n}" if n is not None else "")


def _comp(components: list[list[str]], n: int, sub: int = 1) -> str:
    """Component n, subcomponent ``sub`` (both 1-based) of one repetition, stripped."""
    try:
        return components[n - 1][sub - 1].strip()
    except IndexError:
        return ""


def _first_rep(msg: Message, seg: Segment, n: int) -> list[list[str]]:
    return msg.reps(seg, n)[0]


def _decode_base64(value: str, where: str, rule: str) -> bytes:
    """Strict alphabet, but a cut end is accepted: missing ``=`` padding is added, and a last
    lone character (6 bits, no whole byte) is dropped. The ANS ORU examples' CORPSMAIL_PS is cut
    that way (93 characters, no padding): what there is is decoded, as the examples intend."""
    value = value.strip()
    if not _BASE64.fullmatch(value):
        raise CisisError("OBX-5.5 is not base64", where, rule=rule, hl7_error="102")
    bare = value.rstrip("=")
    bare = bare[:len(bare) - 1] if len(bare) % 4 == 1 else bare
    try:
        return base64.b64decode(bare + "=" * (-len(bare) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CisisError("OBX-5.5 is not base64", where, rule=rule, hl7_error="102") from exc


def _ed_data(msg: Message, obx: Segment, rule: str = "DOCUMENT_ENCODING") -> bytes:
    """OBX-5 of type ED written ``^TEXT^XML^Base64^<data>``: the decoded data (component 5)."""
    where = _where(msg, obx, 5)
    rep = _first_rep(msg, obx, 5)
    if _comp(rep, 4).upper() != "BASE64" or len(rep) < 5:
        raise CisisError("OBX-5 must be ^TEXT^XML^Base64^<data> (ED, base64)", where, rule=rule, hl7_error="102")
    return _decode_base64(rep[4][0], where, rule)


def _is_meta(msg: Message, obx: Segment) -> bool:
    return (msg.value(obx, 3, 3).upper() == META_SYSTEM or msg.value(obx, 3, 1).upper() in _META_CODES)


# --- MSH -----------------------------------------------------------------------------------------------

def _header(msg: Message) -> MessageHeader:
    msh = msg.segments[0]
    msg_type, trigger = msg.value(msh, 9, 1).upper(), msg.value(msh, 9, 2).upper()
    where = _where(msg, msh, 9)
    if not ((msg_type == "ORU" and trigger == "R01") or (msg_type == "MDM" and trigger in _TRIGGER_ACTION)):
        raise CisisError("message type must be ORU^R01 or MDM^T02, MDM^T10, MDM^T04 in this profile", where,
                         rule="MESSAGE_TYPE", hl7_error="200")
    version = msg.value(msh, 12)
    if version != _VERSIONS[msg_type]:
        raise CisisError(f"{msg_type} messages of this profile are HL7 v{_VERSIONS[msg_type]}", _where(msg, msh, 12),
                         rule="MESSAGE_VERSION", hl7_error="203")
    control_id = msg.value(msh, 10)
    if not control_id:
        raise CisisError("MSH-10 (message control id) is empty", _where(msg, msh, 10), rule="MSH_FIELD",
                         hl7_error="101")
    profile_version = next((msg.value(msh, 21, 1, rep=k) for k in range(len(msg.reps(msh, 21)))
                            if msg.value(msh, 21, 2, rep=k) == PROFILE_ID), None)
    if profile_version is None:
        raise CisisError(f"MSH-21 does not name the profile {PROFILE_ID}", _where(msg, msh, 21), rule="PROFILE",
                         hl7_error="207")
    return MessageHeader(
        sending_application=msg.value(msh, 3), sending_facility=msg.value(msh, 4),
        receiving_application=msg.value(msh, 5), receiving_facility=msg.value(msh, 6), control_id=control_id,
        message_type=msg_type, trigger=trigger, version=version, processing_id=msg.value(msh, 11) or "P",
        charset=msg.value(msh, 18), profile_version=profile_version)


# --- PID -----------------------------------------------------------------------------------------------

def _patient(msg: Message) -> Patient:
    pid = msg.first("PID")
    if pid is None:
        raise CisisError("PID segment missing", "PID", rule="SEGMENT_MISSING", hl7_error="100")
    ins = ins_oid = None
    for rep in msg.reps(pid, 3):
        oid = _comp(rep, 4, 2) or (_comp(rep, 4) if re.fullmatch(r"\d+(\.\d+)+", _comp(rep, 4)) else "")
        if _comp(rep, 1) and oid in INS_OIDS:
            ins, ins_oid = _comp(rep, 1), oid
            break
    names = msg.reps(pid, 5)
    name = next((r for r in names if _comp(r, 7).upper() == "L"), names[0])
    statuses = [_comp(r, 1).upper() for r in msg.reps(pid, 32)]
    return Patient(ins=ins, ins_oid=ins_oid, family=_comp(name, 1), given=_comp(name, 2),
                   birth_date=msg.value(pid, 7)[:8], sex=msg.value(pid, 8).upper(),
                   identity_status="VALI" if "VALI" in statuses else statuses[0])


# --- documents and action ---------------------------------------------------------------------------------

def _document(msg: Message, obx: Segment, patient: Patient) -> Document:
    where = _where(msg, obx, 5)
    data = _ed_data(msg, obx)
    try:
        info = read_cda(data)
    except PayloadError as exc:
        raise CisisError(f"the document is not a CDA R2 ({exc.what})", f"{where} {exc.where}".strip(),
                         rule="DOCUMENT_NOT_CDA", hl7_error="102") from exc
    cda_ins = info.ins
    if cda_ins is not None and patient.ins is not None and cda_ins.value != patient.ins:
        raise CisisError("the CDA's recordTarget INS is not the INS of PID-3", where, rule="INS_MISMATCH",
                         hl7_error="207")
    return Document(set_id=msg.value(obx, 1), code=msg.value(obx, 3, 1), label=msg.value(obx, 3, 2),
                    status=msg.value(obx, 11).upper(), data=data, info=info, where=_where(msg, obx))


def _documents(msg: Message, kind: str, patient: Patient) -> tuple[Document, ...]:
    obxs = [s for s in msg.all("OBX") if msg.value(s, 2).upper() == "ED" and not _is_meta(msg, s)]
    limit = 2 if kind == "ORU" else 1
    if not obxs:
        raise CisisError("no document: an OBX of type ED carrying the CDA is required", "OBX",
                         rule="DOCUMENT_MISSING", hl7_error="101")
    if len(obxs) > limit:
        raise CisisError(f"{kind} carries at most {limit} document(s) in this profile", _where(msg, obxs[limit]),
                         rule="DOCUMENT_COUNT", hl7_error="207")
    docs = tuple(_document(msg, obx, patient) for obx in obxs)
    if len(docs) == 2 and docs[0].level == docs[1].level:
        raise CisisError("two documents must be the N1 and the N3 of the same report", docs[1].where,
                         rule="DOCUMENT_LEVELS", hl7_error="207")
    return docs


def _action(msg: Message, docs: tuple[Document, ...], header: MessageHeader, warnings: list[str]) -> Action:
    """OBX-11 of the documents (F, C, D), coherent with ORC-1 and the MDM trigger (profils-messages:
    "En cas d'incohérence entre ces champs, le message HL7 sera rejeté par la PFI")."""
    actions = {a.value: a for a in Action}
    for doc in docs:
        if doc.status not in actions:
            raise CisisError("OBX-11 of a document must be F, C or D", f"{doc.where}-11", rule="DOCUMENT_STATUS",
                             hl7_error="103")
    if len({d.status for d in docs}) > 1:
        raise CisisError("the documents' OBX-11 disagree", f"{docs[1].where}-11", rule="OBX_STATUS_MISMATCH",
                         hl7_error="207")
    action = actions[docs[0].status]
    if header.message_type == "MDM" and _TRIGGER_ACTION[header.trigger] is not action:
        raise CisisError(f"MDM^{header.trigger} does not match OBX-11 {action.value}", f"{docs[0].where}-11",
                         rule="TRIGGER_OBX_MISMATCH", hl7_error="207")
    orc = msg.first("ORC")
    if orc is None:
        if header.message_type == "ORU":
            raise CisisError("ORU^R01 without an ORC segment", "ORC", rule="SEGMENT_MISSING", hl7_error="100")
        return action
    control = msg.value(orc, 1).upper()
    if control == _TOLERATED_ORDER_CONTROL:
        warnings.append(f"{_where(msg, orc, 1)}: ORC-1 SC is not a value of the profile (NW, RO, CA); "
                        "read as what OBX-11 says")
    elif _ORDER_CONTROL_ACTION.get(control) is not action:
        raise CisisError(f"ORC-1 does not match OBX-11 {action.value} (NW/F, RO/C, CA/D)", _where(msg, orc, 1),
                         rule="ORC_OBX_MISMATCH", hl7_error="207")
    return action


# --- MetaDMPMSS flags and bodies ------------------------------------------------------------------------------

def _body_text(msg: Message, obx: Segment) -> str:
    """CORPSMAIL_*: base64 text, UTF-8 (the IG examples), else the message's MSH-18 charset."""
    data = _ed_data(msg, obx, "BODY_ENCODING")
    for charset in dict.fromkeys(("utf-8", msg.charset)):
        try:
            return data.decode(charset)
        except (UnicodeDecodeError, LookupError):
            continue
    raise CisisError("the mail body is neither UTF-8 nor in the MSH-18 character set", _where(msg, obx, 5),
                     rule="BODY_ENCODING", hl7_error="102")


def _flag_value(msg: Message, obx: Segment, code: str) -> bool:
    value = msg.value(obx, 5, 1).upper()
    if value not in ("Y", "N"):
        raise CisisError(f"{code} must be Y or N", _where(msg, obx, 5), rule="FLAG_VALUE", hl7_error="103")
    return value == "Y"


def _metadata(msg: Message) -> tuple[Flags, dict[str, str], bool]:
    values: dict[str, bool] = {}
    where: dict[str, str] = {}
    bodies: dict[str, str] = {}
    no_reply = False
    for i, seg in enumerate(msg.segments):
        if seg.name != "OBX" or not _is_meta(msg, seg):
            continue
        code = msg.value(seg, 3, 1).upper()
        if code not in _META_CODES:
            raise CisisError("unknown MetaDMPMSS code in OBX-3", _where(msg, seg, 3), rule="FLAG_UNKNOWN",
                             hl7_error="103")
        if code in where:
            raise CisisError(f"{code} is given more than once", _where(msg, seg, 3), rule="FLAG_REPEATED",
                             hl7_error="207")
        where[code] = _where(msg, seg, 5)
        if code in BODY_CODES:
            bodies[code] = _body_text(msg, seg)
            continue
        values[code] = _flag_value(msg, seg, code)
        if code == "DESTMSSANTEPAT":
            no_reply = _fin_follows(msg, i)
    for code in REQUIRED_FLAGS:
        if code not in values:
            raise CisisError(f"required MetaDMPMSS flag {code} is missing", "OBX", rule="FLAG_MISSING",
                             hl7_error="101")
    for code in OPTIONAL_FLAGS:
        values.setdefault(code, False)
    return Flags(values, where), bodies, no_reply


def _fin_follows(msg: Message, index: int) -> bool:
    """An NTE with NTE-4 ``FIN`` among the NTE right after the DESTMSSANTEPAT OBX (mapping-mss)."""
    for seg in msg.segments[index + 1:]:
        if seg.name != "NTE":
            return False
        if msg.value(seg, 4).upper() == "FIN":
            return True
    return False


# --- PRT: sender, recipients, reply-to -----------------------------------------------------------------------

def _address(msg: Message, prt: Segment) -> str:
    """PRT-15.4 of the first repetition that has one, lower-cased."""
    return next((_comp(r, 4).lower() for r in msg.reps(prt, 15) if _comp(r, 4)), "")


def _sender(msg: Message, prt: Segment) -> PartyRef | None:
    """PRT-4 = SB, built like :mod:`gateway.routing.hl7` builds parties (RPPS/IDNAT from PRT-5)."""
    person = _first_rep(msg, prt, 5)
    ident, type_code = _comp(person, 1), _comp(person, 13).upper()
    oid = _comp(person, 9, 2)
    organisation = msg.value(prt, 8)
    address = _address(msg, prt) or None
    if ident:
        national = oid == RPPS_OID or type_code in _NATIONAL_TYPES
        return PartyRef(professional_id_type(ident, national=national), ident, family=_comp(person, 2),
                        given=_comp(person, 3), prefix=_comp(person, 6), organisation=organisation, address=address,
                        authority=oid or _comp(person, 9), role="SB", source=_where(msg, prt, 5))
    if organisation:
        return PartyRef("NAME", organisation, organisation=organisation, address=address, role="SB",
                        source=_where(msg, prt, 8))
    return None


def _recipient_kind(msg: Message, prt: Segment, address: str) -> RecipientKind:
    person = _first_rep(msg, prt, 5)
    if (_comp(person, 13).upper() == "INS" or _comp(person, 9, 2) in INS_OIDS
            or address.rpartition("@")[2] == PATIENT_DOMAIN):
        return RecipientKind.PATIENT
    if not _comp(person, 1) and msg.value(prt, 8):
        return RecipientKind.ORG
    if not _comp(person, 1) and msg.value(prt, 10):
        return RecipientKind.APP
    return RecipientKind.PS


def _patient_recipient(msg: Message, prt: Segment, address: str, patient: Patient,
                       warnings: list[str]) -> Recipient:
    """The patient's Mon espace santé mailbox: ``<INS>@patient.mssante.fr`` built from the INS of
    PRT-5 (or the address's local part), and only for the patient of the document."""
    person = _first_rep(msg, prt, 5)
    typed = _comp(person, 13).upper() == "INS" or _comp(person, 9, 2) in INS_OIDS
    # an INS-NIR may hold letters (2A/2B, Corsica) and addresses are lower-cased: compare upper-case
    ins = (_comp(person, 1) if typed and _comp(person, 1) else address.partition("@")[0]).upper()
    where = _where(msg, prt)
    if not ins:
        raise CisisError("a patient recipient needs the INS (PRT-5) or its address (PRT-15.4)", f"{where}-5",
                         rule="RCT_ADDRESS", hl7_error="101")
    if patient.ins is None or ins != patient.ins.upper():
        raise CisisError("a patient copy may only go to the patient of the document (PRT-5 / PRT-15.4 vs PID-3)",
                         where, rule="PATIENT_NOT_DOCUMENT_PATIENT", hl7_error="207")
    built = f"{ins}@{PATIENT_DOMAIN}".lower()
    given = ""
    if address and address != built:
        given = address
        warnings.append(f"{where}-15: the patient's address differs from the one built from the INS; "
                        "the built one is used")
    authority = _comp(person, 9, 2) or patient.ins_oid or ""
    return Recipient(RecipientKind.PATIENT, built, identifier=ins, authority=authority, family=_comp(person, 2),
                     given=_comp(person, 3), where=where, given_address=given)


def _recipient(msg: Message, prt: Segment, patient: Patient, warnings: list[str]) -> Recipient:
    address = _address(msg, prt)
    kind = _recipient_kind(msg, prt, address)
    if kind is RecipientKind.PATIENT:
        return _patient_recipient(msg, prt, address, patient, warnings)
    if not address or not valid_address(address):
        raise CisisError("PRT-15.4 must be the recipient's MSSanté address", _where(msg, prt, 15),
                         rule="RCT_ADDRESS", hl7_error="101" if not address else "102")
    person, organisation = _first_rep(msg, prt, 5), _first_rep(msg, prt, 8)
    identifier, authority = {
        RecipientKind.PS: (_comp(person, 1), _comp(person, 9, 2)),
        RecipientKind.ORG: (_comp(organisation, 10), _comp(organisation, 6, 2)),
        RecipientKind.APP: (msg.value(prt, 10), ""),
    }[kind]
    return Recipient(kind, address, identifier=identifier, authority=authority, family=_comp(person, 2),
                     given=_comp(person, 3), organisation=_comp(organisation, 1), where=_where(msg, prt))


def _participants(msg: Message, patient: Patient,
                  warnings: list[str]) -> tuple[PartyRef | None, tuple[Recipient, ...], str | None]:
    sender: PartyRef | None = None
    recipients: list[Recipient] = []
    reply_to: str | None = None
    for prt in msg.all("PRT"):
        participation = msg.value(prt, 4).upper()
        if participation == "SB" and sender is None:
            sender = _sender(msg, prt)
        elif participation == "RCT":
            recipients.append(_recipient(msg, prt, patient, warnings))
        elif participation == "REPLY" and reply_to is None:
            reply_to = _address(msg, prt)
            if not valid_address(reply_to):
                raise CisisError("PRT-15.4 of the REPLY participation must be a mail address", _where(msg, prt, 15),
                                 rule="REPLY_ADDRESS", hl7_error="102")
    return sender, tuple(recipients), reply_to


# --- the message --------------------------------------------------------------------------------------------

def read_transmission(data: bytes) -> Transmission:
    """Read and check one message of the profile; raise :class:`CisisError` naming the rule.

    Pure and CPU-bound (base64 and the CDA parser): run it off the event loop.
    """
    try:
        msg = parse_message(data)
    except PayloadError as exc:
        raise CisisError(exc.what, exc.where, rule="HL7_SYNTAX", hl7_error="102") from exc
    if msg.segments[0].name != "MSH":
        raise CisisError("the message does not start with MSH", "MSH", rule="HL7_SYNTAX", hl7_error="100")
    header = _header(msg)
    if header.message_type == "MDM" and msg.first("TXA") is None:
        raise CisisError("MDM message without a TXA segment", "TXA", rule="SEGMENT_MISSING", hl7_error="100")
    warnings: list[str] = []
    patient = _patient(msg)
    documents = _documents(msg, header.message_type, patient)
    action = _action(msg, documents, header, warnings)
    flags, bodies, no_reply = _metadata(msg)
    sender, recipients, reply_to = _participants(msg, patient, warnings)
    return Transmission(header=header, patient=patient, documents=documents, action=action, sender=sender,
                        recipients=recipients, reply_to=reply_to, flags=flags, bodies=bodies, no_reply=no_reply,
                        warnings=tuple(warnings))


__all__ = ["META_SYSTEM", "Flags", "error_location", "is_transmission", "read_transmission"]
