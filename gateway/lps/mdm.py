"""One HL7 v2.6 MDM per CDA of the archive, as the IG's profils-messages page and the ANS examples
(Trans_LPS_CDA_MSSante: initial T02, replacement T10, deletion T04) show; and the consumer's ACK.

Why built by hand and not with an HL7 library: the profile fixes a few dozen fields of a dozen
segments, each from one named source (CDA header, XDM metadata, mail, settings); writing them in
order keeps every field traceable to the IG table. Values are escaped (``\\F\\``, ``\\S\\``...)
except the consumer's organisation (PRT-8), which the configuration gives already HL7-encoded.
Pure: no clock, no random: ``now`` and ``control_id`` come from the caller.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from datetime import datetime

from gateway.lps.cdaheader import Address, CdaHeader, Person, read_header
from gateway.lps.model import ConsumerSettings, Delivered, IncomingMail, IntegrationError, Mdm
from gateway.routing.hl7 import parse_message
from gateway.routing.model import RPPS_OID, Hl7Error, PayloadError
from gateway.routing.xdm import LOINC, XdmEntry, XdmPackage

#: XDM action (None, C, D) → (MSH-9.2 trigger, ORC-1, OBX-11 of the document).
_EVENTS: dict[str | None, tuple[str, str, str]] = {
    None: ("T02", "NW", "F"), "C": ("T10", "RO", "C"), "D": ("T04", "CA", "D")}
#: The MetaDMPMSS flags that mirror a DMP confidentialityCode of the XDM entry, in the IG's order.
FLAGS: tuple[tuple[str, str], ...] = (
    ("MASQUE_PS", "Masqué aux professionnels de Santé"),
    ("INVISIBLE_PATIENT", "Document Non Visible par le patient"),
    ("INVISIBLE_REP_LEGAUX", "Non visible par les représentants Légaux du patient"),
)
MODIF_CONF_CODE = ("MODIF_CONF_CODE", "Modification Confidentiality Code")
DMP_CODES = frozenset(code for code, _ in FLAGS)
PROFILE = "1.1^CISIS_CDA_HL7_LPS"
#: INS authority OID → the PID-3 namespace the ANS examples and the INS annex use.
_INS_NAMESPACES = {"1.2.250.1.213.1.4.9": "ASIP-SANTE-INS-NIA"}
_CDA_KINDS = ("text/xml", "application/xml", "application/hl7-v3+xml")


def escape(text: str) -> str:
    """HL7 v2 escaping of a value with the standard delimiters (a CR/LF becomes a space)."""
    out = text.replace("\\", "\\E\\")
    for char, code in (("|", "F"), ("^", "S"), ("~", "R"), ("&", "T")):
        out = out.replace(char, f"\\{code}\\")
    return " ".join(out.splitlines()) if ("\r" in out or "\n" in out) else out


def _join(*parts: str) -> str:
    return "^".join(parts).rstrip("^")


def _segment(name: str, *fields: str) -> str:
    return "|".join((name, *fields)).rstrip("|")


def _ts(now: datetime) -> str:
    return now.strftime("%Y%m%d%H%M%S")


def _ei(root: str, extension: str) -> str:
    """TXA-12/13 as the IG says: ``ext^^root^ISO`` with an extension, the bare root without."""
    return _join(escape(extension), "", escape(root), "ISO") if extension else escape(root)


def _xcn(person: Person) -> str:
    """A professional as XCN: id^family^given^...^authority^D^^^IDNPS (IHE France datatypes)."""
    if not person.id:
        return ""
    if person.root == RPPS_OID:
        authority, id_type = f"ASIP-SANTE-PS&{RPPS_OID}&ISO", "IDNPS"
    else:
        authority, id_type = f"&{escape(person.root)}&ISO", ""
    return _join(escape(person.id), escape(person.family), escape(person.given), "", "", "", "", "",
                 authority, "D", "", "", id_type)


def _xad(addr: Address) -> str:
    return _join(escape(addr.street), "", escape(addr.city), "", escape(addr.postal_code), escape(addr.country),
                 addr.kind, "", escape(addr.county))


def _type_cwe(header: CdaHeader) -> str:
    system = "LN" if header.type_system in ("", LOINC) else escape(header.type_system)
    return _join(escape(header.type_code), escape(header.type_display), system)


def _msh(consumer: ConsumerSettings, trigger: str, now: datetime, control_id: str) -> str:
    return _segment("MSH", "^~\\&", escape(consumer.sending_application), escape(consumer.sending_facility),
                    escape(consumer.application), escape(consumer.facility), _ts(now), "",
                    f"MDM^{trigger}^MDM_T02", escape(control_id), "P", "2.6", "", "", "", "", "FRA",
                    "UNICODE UTF-8", "", "", PROFILE)


def _evn(now: datetime) -> str:
    """EVN-5 (the operator) is left empty: neither the CDA nor the configuration names one."""
    return _segment("EVN", "", _ts(now), "", "", "", _ts(now))


def _pid(header: CdaHeader) -> str:
    """PID from recordTarget; PID-18 (the visit's account number) does not exist in a CDA: empty."""
    p = header.patient
    if not p.ins:
        raise IntegrationError("903", "the CDA names no INS", "/ClinicalDocument/recordTarget/patientRole/id")
    namespace = _INS_NAMESPACES.get(p.ins_oid, "ASIP-SANTE-INS-NIR")
    fields = [""] * 32
    fields[2] = _join(escape(p.ins), "", "", f"{namespace}&{p.ins_oid}&ISO", "INS")
    fields[4] = _join(escape(p.family), escape(p.given), escape(header.other_given), "", "", "", "L")
    fields[6] = escape(p.birth_time[:8])
    fields[7] = escape(p.gender)
    fields[10] = "~".join(_xad(a) for a in header.addresses)
    fields[30] = "N"
    fields[31] = "VALI" if p.qualified else ""
    return _segment("PID", *fields)


def _txa(header: CdaHeader, now: datetime, replacing: bool) -> str:
    """TXA-4 is the time of this transmission; TXA-22 the legal authenticator (else the author)."""
    fields = [""] * 22
    fields[0], fields[1], fields[2], fields[3] = "1", escape(header.type_code), "TEXT", _ts(now)
    fields[11] = _ei(header.id_root, header.id_extension)
    if replacing and header.parent_root:
        fields[12] = _ei(header.parent_root, header.parent_extension)
    fields[16] = "AU"
    fields[21] = escape(header.authenticator.id or header.author.id)
    return _segment("TXA", *fields)


def _prt(role: str, *, person: str = "", organisation: str = "", address: str = "") -> str:
    fields = [""] * 15
    fields[1], fields[3] = "UC", f"{role}^^participation"
    fields[4], fields[7] = person, organisation
    fields[14] = f"^^X.400^{escape(address)}" if address else ""
    return _segment("PRT", *fields)


def _ed(set_id: int, identifier: str, value: str, status: str) -> str:
    return _segment("OBX", str(set_id), "ED", identifier, "", value, "", "", "", "", "", status)


def _flag(set_id: int, code: tuple[str, str], on: bool) -> str:
    return _segment("OBX", str(set_id), "CWE", f"{code[0]}^{code[1]}^MetaDMPMSS", "",
                    f"{'Y' if on else 'N'}^^expandedYes-NoIndicator", "", "", "", "", "", "F")


def dmp_codes(entry: XdmEntry) -> tuple[str, ...]:
    """The DMP confidentiality codes (MASQUE_PS, INVISIBLE_PATIENT, INVISIBLE_REP_LEGAUX) of an entry."""
    return tuple(sorted(c for c in entry.confidentiality if c in DMP_CODES))


def cda_entries(package: XdmPackage) -> list[XdmEntry]:
    """The CDA documents of the package (its PDFs are renderings, not documents for the consumer)."""
    return [e for e in package.documents if e.mime_type.lower() in _CDA_KINDS or e.uri.upper().endswith(".XML")]


def header_of(entry: XdmEntry) -> CdaHeader:
    """The CDA header, an unreadable one as 906 (the consumer cannot integrate it)."""
    try:
        return read_header(entry.data)
    except IntegrationError:
        raise
    except PayloadError as exc:
        raise IntegrationError("906", f"CDA unreadable ({exc.what})", f"{entry.uri} {exc.where}".strip()) from exc


def delivered_of(header: CdaHeader, entry: XdmEntry, set_id: str = "") -> Delivered:
    """What the store keeps; ``set_id`` is the replaced version's set when the CDA has no setId."""
    p = header.patient
    return Delivered(unique_id=header.unique_id, set_id=header.set_id or set_id or header.unique_id,
                     version=header.version,
                     author=header.author.id, patient=f"{p.ins}^^^&{p.ins_oid}&ISO",
                     organisation=header.author.organisation_id, confidentiality=dmp_codes(entry))


def _before(entry: XdmEntry, header: CdaHeader,
            previous: Callable[[str], Delivered | None] | None) -> Delivered | None:
    """The delivered version a replacement replaces (None for a first send or when unknown)."""
    if entry.action != "C" or previous is None or not header.parent_id:
        return None
    return previous(header.parent_id)


def build_mdm(mail: IncomingMail, entry: XdmEntry, consumer: ConsumerSettings, *, now: datetime,
              control_id: str, before: Delivered | None = None) -> Mdm:
    """The MDM of one CDA entry; ``before`` (the version it replaces, if delivered here) sets
    MODIF_CONF_CODE = Y when the DMP confidentiality codes changed, and gives the set id."""
    if entry.action not in _EVENTS:
        raise IntegrationError("906", "unknown XDM action", f"{entry.uri} action")
    trigger, order, status = _EVENTS[entry.action]
    header = header_of(entry)
    codes = dmp_codes(entry)
    modified = before is not None and tuple(sorted(before.confidentiality)) != codes
    document = base64.b64encode(entry.data).decode("ascii")
    body = base64.b64encode(mail.body.encode("utf-8")).decode("ascii")
    segments = [
        _msh(consumer, trigger, now, control_id), _evn(now), _pid(header), "PV1|1|N", f"ORC|{order}",
        _segment("OBR", "1", "", "", _type_cwe(header)), _txa(header, now, entry.action in ("C", "D")),
        _ed(1, _type_cwe(header), f"^text^XML^Base64^{document}", status),
        _prt("SB", person=_xcn(header.author), address=mail.sender),
        _prt("RCT", organisation=consumer.organisation, address=consumer.address),
    ]
    if mail.reply_to:
        segments.append(_prt("REPLY", address=mail.reply_to))
    segments.append(_ed(2, _join(escape(mail.message_id), escape(mail.subject)), f"^text^^Base64^{body}", "F"))
    segments += [_flag(n, flag, flag[0] in codes) for n, flag in enumerate(FLAGS, start=3)]
    segments.append(_flag(3 + len(FLAGS), MODIF_CONF_CODE, modified))
    data = ("\r".join(segments) + "\r").encode("utf-8")
    parent = header.parent_id if entry.action in ("C", "D") else None
    return Mdm(data=data, unique_id=header.unique_id, parent_id=parent, trigger=trigger,
               delivered=delivered_of(header, entry, before.set_id if before is not None else ""))


def build_mdms(mail: IncomingMail, package: XdmPackage, pdfs: Sequence[bytes], consumer: ConsumerSettings, *,
               now: datetime, control_id: Callable[[], str],
               previous: Callable[[str], Delivered | None] | None = None) -> list[Mdm]:
    """One MDM^T02/T10/T04 per CDA document of the package, in the package's order.

    ``pdfs`` (the renderings attached to the mail) are not put in the MDM: the IG's profile has no
    OBX for them (the N1 CDA carries its PDF itself). ``previous`` (the store's lookup) tells
    MODIF_CONF_CODE: Y when a replacement's DMP confidentiality codes differ from the version delivered.
    """
    del pdfs  # kept in the signature: the no-XDM fallback (PDF only) is the caller's decision
    entries = cda_entries(package)
    if not entries:
        raise IntegrationError("906", "the XDM archive holds no CDA document", "METADATA.XML")
    return [build_mdm(mail, entry, consumer, now=now, control_id=control_id(),
                      before=_before(entry, header_of(entry), previous)) for entry in entries]


def read_consumer_ack(data: bytes) -> tuple[str, str, str | None]:
    """(MSA-1, MSA-2, the error as ``code^text``: ERR-5 (application, 900-906) else ERR-3, else None;
    MSA-3's free text is not an error code: the caller reads it if it wants a reason there).

    Why ERR-5 first: the IG puts the ANS code there with ERR-3 = 207; a technical rejection has
    ERR-3 only. A message without MSA is an `Hl7Error`.
    """
    msg = parse_message(data)
    msa = msg.first("MSA")
    if msa is None:
        raise Hl7Error("acknowledgement without MSA segment", "MSA")
    error: str | None = None
    for err in msg.all("ERR"):
        for n in (5, 3):
            code = msg.value(err, n, 1)
            if code:
                error = f"{code}^{msg.value(err, n, 2)}".rstrip("^")
                break
        if error:
            break
    return msg.value(msa, 1), msg.value(msa, 2), error
