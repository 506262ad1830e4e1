"""HL7 v2.x reader for ORU^R01 and MDM^T0x (French CI-SIS profiles), ACK builder and MLLP framing.

Why our own small parser rather than ``hl7`` (python-hl7) or ``hl7apy``: routing reads a dozen
fields; we need the declared charset (MSH-18) applied before splitting, every escape sequence
including ``\\Xhh\\`` decoded in that charset, and errors that name the segment and field but
never the content. python-hl7 leaves charset and ``\\X`` handling to the caller and raises
generic exceptions; hl7apy validates against full message structures the French samples do not
always follow (PRT in v2.5 messages). A strict ~300-line parser is easier to audit and fuzz.

Fields used (CI-SIS "Transmission de documents CDA en HL7v2", IHE LAB):
PID-3 (INS with the ``1.2.250.1.213.1.4.x`` authorities, local ids), ORC-12 / OBR-16 ordering
provider, OBR-28 result copies to, PRT (participation ``RCT`` copies-to with MSSanté addresses in
PRT-15, ``SB`` sent-by = author), OBX ED (base64 CDA or PDF: read and returned in ``embedded``),
OBR-25 / OBX-11 result status (``C`` correction = replacement), ORC-1 ``CA`` cancellation, MDM TXA-12
document id / TXA-13 parent document.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

from gateway.routing.model import (
    DEFAULT_MAX_FRAME,
    INS_OIDS,
    RPPS_OID,
    SIGNATURE,
    DedupFacts,
    DocumentType,
    EmbeddedDocument,
    Hl7Error,
    IdType,
    MediaType,
    MllpError,
    PartyRef,
    PatientId,
    PayloadError,
    PayloadFormat,
    PayloadInfo,
    UnsafePayload,
    UnsupportedPayload,
    decode_text,
    digest_lines,
    iana_charset,
    leading,
    professional_id_type,
)
from gateway.routing.pdf import read_pdf

_SEGMENT_NAME = re.compile(r"^[A-Z][A-Z0-9]{2}$")
_SEGMENT_SPLIT = re.compile(r"\r\n|\r|\n")
_CHARSETS = {
    "UNICODE UTF-8": "utf-8", "UTF-8": "utf-8", "8859/1": "iso-8859-1", "8859/15": "iso-8859-15",
    "ASCII": "ascii", "UNICODE": "utf-8",
}
_RECIPIENT_PARTICIPATIONS = {"RCT", "OP", "RT", "PRCP"}
_SENDER_PARTICIPATIONS = {"SB", "AUT"}
_CANCEL_ORDER_CONTROLS = {"CA", "OC", "CR"}
_REPLACE_TRIGGERS = {"T08", "T10"}
_CANCEL_TRIGGERS = {"T11"}
_BATCH_SEGMENTS = {"FHS", "FTS", "BHS", "BTS"}


@dataclass(frozen=True)
class Delimiters:
    field: str = "|"
    comp: str = "^"
    rep: str = "~"
    esc: str = "\\"
    sub: str = "&"


@dataclass(frozen=True)
class Segment:
    """One segment; ``fields[n]`` is field n (for MSH, ``fields[1]`` is the field separator)."""

    name: str
    fields: tuple[str, ...]
    index: int  # 1-based position in the message

    def raw(self, n: int) -> str:
        return self.fields[n] if n < len(self.fields) else ""

    def where(self, n: int | None = None) -> str:
        return f"segment {self.index} {self.name}" + (f"-{n}" if n is not None else "")


class Message:
    """A parsed HL7 v2 message: segments plus the delimiters and charset needed to read values."""

    def __init__(self, segments: list[Segment], delims: Delimiters, charset: str) -> None:
        self.segments = segments
        self.delims = delims
        self.charset = charset

    def all(self, name: str) -> list[Segment]:
        return [s for s in self.segments if s.name == name]

    def first(self, name: str) -> Segment | None:
        return next((s for s in self.segments if s.name == name), None)

    def unescape(self, value: str, where: str) -> str:
        return unescape(value, self.delims, self.charset, where)

    def reps(self, seg: Segment, n: int) -> list[list[list[str]]]:
        """Field n as repetitions → components → subcomponents, unescaped."""
        raw = seg.raw(n)
        if seg.name == "MSH" and n in (1, 2):
            return [[[raw]]]
        d = self.delims
        where = seg.where(n)
        return [[[self.unescape(s, where) for s in c.split(d.sub)] for c in r.split(d.comp)]
                for r in raw.split(d.rep)]

    def value(self, seg: Segment | None, n: int, comp: int = 1, sub: int = 1, rep: int = 0) -> str:
        if seg is None:
            return ""
        reps = self.reps(seg, n)
        try:
            return reps[rep][comp - 1][sub - 1].strip()
        except IndexError:
            return ""


def unescape(value: str, d: Delimiters, charset: str, where: str) -> str:
    r"""Decode \F\ \S\ \T\ \R\ \E\, \Xhh..\ (bytes in the message charset) and \.br\; keep unknown ones."""
    if d.esc not in value:
        return value
    out: list[str] = []
    i = 0
    simple = {"F": d.field, "S": d.comp, "T": d.sub, "R": d.rep, "E": d.esc}
    while i < len(value):
        c = value[i]
        end = value.find(d.esc, i + 1) if c == d.esc else -1
        if c != d.esc or end < 0:
            out.append(c)
            i += 1
            continue
        code = value[i + 1:end]
        if code in simple:
            out.append(simple[code])
        elif code.startswith("X") and len(code) > 1:
            try:
                out.append(bytes.fromhex(code[1:]).decode(charset))
            except (ValueError, UnicodeDecodeError) as exc:
                raise Hl7Error("invalid \\X..\\ hex escape sequence", where) from exc
        elif code == ".br":
            out.append("\n")
        elif code in ("H", "N"):
            pass  # highlighting on/off: no text
        else:
            out.append(value[i:end + 1])  # \Cxxyy\, \Mxxyyzz\, \Zxx\: kept as written
        i = end + 1
    return "".join(out)


def _delimiters(first_line: bytes) -> Delimiters:
    if len(first_line) < 8:
        raise Hl7Error("MSH segment too short", "segment 1 MSH-2")
    fs = chr(first_line[3])
    rest = first_line[4:].decode("latin-1")
    enc = rest.split(fs, 1)[0]
    chars = fs + enc
    if (fs.isalnum() or fs in " \r\n" or len(enc) not in (4, 5) or len(set(chars)) != len(chars)
            or any(c.isalnum() or c in " \r\n" for c in enc)):
        raise Hl7Error("invalid encoding characters (MSH-1/MSH-2 must be | and 4 distinct delimiters such as ^~\\&)",
                       "segment 1 MSH-2")
    return Delimiters(field=fs, comp=enc[0], rep=enc[1], esc=enc[2], sub=enc[3])


def _charset(msh_line: bytes, d: Delimiters) -> str | None:
    parts = msh_line.split(d.field.encode("latin-1"))
    raw = parts[17].decode("latin-1").split(d.rep)[0].strip().upper() if len(parts) > 17 else ""
    if not raw:
        return None
    if raw not in _CHARSETS:
        raise Hl7Error("unsupported character set in MSH-18", "segment 1 MSH-18")
    return _CHARSETS[raw]


#: MSH-1/MSH-2 written ``|^˜\&`` with SMALL TILDE (U+02DC, UTF-8 ``CB 9C``) for the repetition
#: separator, as in the ANS ORU examples of the CI-SIS profile (a word processor's "smart" tilde).
_SMALL_TILDE_MSH = re.compile(rb"(?:^|[\r\n])MSH(?P<fs>[^A-Za-z0-9\s])\^\xcb\x9c\\&(?P=fs)")


def _normalise_tilde(data: bytes) -> bytes:
    """Read ``^˜\\&`` (U+02DC in UTF-8) as ``^~\\&``: the message then means what its writer meant.

    Narrow on purpose: only when MSH-2 is exactly ``^``, U+02DC, ``\\``, ``&``. The writer used
    U+02DC as its repetition separator everywhere (PID-11 of the ANS examples), so every U+02DC
    becomes ``~``; a literal ``~`` in the data was plain text for that writer, so it becomes the
    escape ``\\R\\`` first and still reads as ``~``.
    """
    if not _SMALL_TILDE_MSH.search(data[:4096]):
        return data
    return data.replace(b"~", b"\\R\\").replace("\u02dc".encode(), b"~")


def parse_message(data: bytes) -> Message:
    """Split one HL7 v2 message (CR, LF or CRLF segment ends; FHS/BHS batch envelopes of one message)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    framed = data.strip(b" \t\r\n")
    if framed.startswith(b"\x0b") and framed.endswith((b"\x1c", b"\x1c\r")):
        data = framed[1:].rstrip(b"\r").removesuffix(b"\x1c")  # a file written with its MLLP framing
    data = _normalise_tilde(data)
    raw_lines = [ln for ln in re.split(rb"\r\n|\r|\n", data) if ln.strip()]
    msh_positions = [i for i, ln in enumerate(raw_lines) if ln.startswith(b"MSH")]
    if not msh_positions:
        raise Hl7Error("no MSH segment: not an HL7 v2 message", "segment 1")
    for i in range(msh_positions[0]):
        if raw_lines[i][:3].decode("latin-1") not in _BATCH_SEGMENTS:
            raise Hl7Error("data before the MSH segment", f"segment {i + 1}")
    if len(msh_positions) > 1:
        raise Hl7Error("several messages in one payload (split the batch first)",
                       f"segment {msh_positions[1] + 1} MSH")
    d = _delimiters(raw_lines[msh_positions[0]])
    declared = _charset(raw_lines[msh_positions[0]], d)
    if declared:
        try:
            text = data.decode(declared)
        except UnicodeDecodeError as exc:
            raise Hl7Error(f"content is not valid {declared} as declared in MSH-18", "segment 1 MSH-18") from exc
        charset = declared
    else:
        text, charset = decode_text(data)
    segments: list[Segment] = []
    position = 0
    for line in _SEGMENT_SPLIT.split(text):
        if not line.strip():
            continue
        position += 1
        name = line[:3]
        if not _SEGMENT_NAME.match(name) or (len(line) > 3 and line[3] != d.field):
            raise Hl7Error("invalid segment name or missing field separator", f"segment {position}")
        if name in _BATCH_SEGMENTS:
            continue
        if name == "MSH":
            fields = ("MSH", d.field, *line[4:].split(d.field))
        else:
            fields = tuple(line.split(d.field))
        segments.append(Segment(name, fields, position))
    return Message(segments, d, charset)


# --- identifiers ---------------------------------------------------------------------------------

def _authority(components: list[list[str]], index: int) -> tuple[str, str]:
    """(namespace, OID) of an HD component written ``namespace&OID&ISO``."""
    if index >= len(components):
        return "", ""
    hd = components[index]
    namespace = hd[0].strip()
    oid = hd[1].strip() if len(hd) > 1 else ""
    if not oid and re.fullmatch(r"\d+(\.\d+)+", namespace):
        namespace, oid = "", namespace
    return namespace, oid


def _comp(components: list[list[str]], n: int) -> str:
    """Component n (1-based), first subcomponent."""
    return components[n - 1][0].strip() if n - 1 < len(components) and components[n - 1] else ""


def _is_national(namespace: str, oid: str, type_code: str) -> bool:
    ns = namespace.replace(" ", "").upper()
    return oid == RPPS_OID or "ASIP-SANTE-PS" in ns or ns in ("RPPS", "ADELI") or type_code in (
        "RPPS", "IDNPS", "ADELI", "IDNAT")


def _email(msg: Message, seg: Segment, n: int) -> str | None:
    for rep in msg.reps(seg, n):
        addr = _comp(rep, 4)
        if "@" in addr:
            return addr
    return None


def _xcn_party(c: list[list[str]], *, source: str, role: str, address: str | None = None,
               organisation: str = "") -> PartyRef | None:
    ident = _comp(c, 1)
    family, given, prefix = _comp(c, 2), _comp(c, 3), _comp(c, 6)
    namespace, oid = _authority(c, 8)
    type_code = _comp(c, 13).upper()
    if oid in INS_OIDS or type_code in ("INS", "INS-NIR", "INS-C", "NH"):
        # the patient as a recipient (copy to the patient's mailbox): routable by address only
        if address:
            return PartyRef("ADDRESS", address, address=address, role=role, source=source, is_patient=True)
        return None
    if ident:
        national = _is_national(namespace, oid, type_code)
        id_type: IdType = professional_id_type(ident, national=True if national else False)
        return PartyRef(id_type, ident, family=family, given=given, prefix=prefix, organisation=organisation,
                        address=address, authority=oid or namespace, role=role, source=source)
    if address:
        return PartyRef("ADDRESS", address, family=family, given=given, prefix=prefix, organisation=organisation,
                        address=address, role=role, source=source)
    if family or organisation:
        return PartyRef("NAME", " ".join(x for x in (given, family) if x) or organisation, family=family,
                        given=given, prefix=prefix, organisation=organisation, role=role, source=source)
    return None


def _patient_ids(msg: Message) -> list[PatientId]:
    ids: list[PatientId] = []
    for pid in msg.all("PID"):
        for k, rep in enumerate(msg.reps(pid, 3), start=1):
            value = _comp(rep, 1)
            if not value:
                continue
            namespace, oid = _authority(rep, 3)
            kind = INS_OIDS.get(oid, "LOCAL")
            ids.append(PatientId(value, kind, authority=oid or namespace, source=f"{pid.where(3)} rep {k}"))
    return ids


# --- embedded documents ----------------------------------------------------------------------------

def _embedded(msg: Message, obx: Segment, reader: Callable[[bytes], PayloadInfo]) -> tuple[PayloadInfo | None, str]:
    """Read a base64 CDA/PDF carried in OBX-5 (type ED); return (info, warning)."""
    where = obx.where(5)
    raw = obx.raw(5).split(msg.delims.rep)[0]
    comps = raw.split(msg.delims.comp)
    if len(comps) < 5:
        return None, f"{where}: ED value without data component"
    encoding = comps[3].strip().upper()
    payload = comps[4]
    try:
        if encoding == "BASE64":
            data = base64.b64decode(re.sub(r"\s+", "", payload), validate=True)
        elif encoding == "HEX":
            data = bytes.fromhex(payload)
        else:
            data = msg.unescape(payload, where).encode("utf-8")
    except (binascii.Error, ValueError):
        return None, f"{where}: embedded document is not valid {encoding.lower() or 'data'}"
    head = data.lstrip()[:5]
    if comps[2].strip().upper() == "XML" and not head.startswith(b"<"):
        return None, f"{where}: embedded document declared XML is not XML"
    if head.startswith(b"%PDF") or head.startswith(b"<"):
        try:
            return reader(data), ""
        except UnsafePayload as exc:
            raise UnsafePayload(f"embedded document: {exc.what}", f"{where} {exc.where}".strip()) from exc
        except PayloadError as exc:
            return None, f"{where}: embedded document unreadable ({exc.what})"
    return None, ""


def _read_embedded(data: bytes) -> PayloadInfo:
    from gateway.routing.cda import read_cda
    return read_pdf(data) if data.lstrip().startswith(b"%PDF") else read_cda(data)


# --- messages ------------------------------------------------------------------------------------

def read_hl7(data: bytes) -> PayloadInfo:
    """Read an ORU^R01 or MDM^T0x message; raise :class:`Hl7Error` naming the segment and field."""
    msg = parse_message(data)
    msh = msg.segments[0]
    if msh.name != "MSH":
        raise Hl7Error("the message does not start with MSH", msh.where())
    msg_type = msg.value(msh, 9, 1).upper()
    trigger = msg.value(msh, 9, 2).upper()
    if msg_type not in ("ORU", "MDM"):
        shown = msg_type if re.fullmatch(r"[A-Z0-9]{3}", msg_type) else "(not a message code)"
        raise UnsupportedPayload(f"unsupported HL7 message type {shown} (ORU and MDM are routed)", msh.where(9))
    if msg_type == "ORU" and trigger != "R01":
        raise UnsupportedPayload("unsupported ORU trigger event (R01 is routed)", msh.where(9))
    if msg_type == "MDM" and not re.fullmatch(r"T(0[1-9]|1[01])", trigger):
        raise UnsupportedPayload("unsupported MDM trigger event", msh.where(9))
    if msg_type == "ORU" and not msg.first("OBR"):
        raise Hl7Error("ORU^R01 without an OBR segment", msh.where())
    txa = msg.first("TXA")
    if msg_type == "MDM" and txa is None:
        raise Hl7Error("MDM message without a TXA segment", msh.where())

    recipients: list[PartyRef] = []
    author: PartyRef | None = None
    for orc in msg.all("ORC"):
        for rep in msg.reps(orc, 12):
            party = _xcn_party(rep, source=orc.where(12), role="ordering")
            if party:
                recipients.append(party)
    for obr in msg.all("OBR"):
        for field_no, role in ((16, "ordering"), (28, "copy")):
            for rep in msg.reps(obr, field_no):
                party = _xcn_party(rep, source=obr.where(field_no), role=role)
                if party:
                    recipients.append(party)
    for prt in msg.all("PRT"):
        participation = msg.value(prt, 4).upper()
        address = _email(msg, prt, 15)
        org = msg.value(prt, 8)
        person = msg.reps(prt, 5)[0]
        party = _xcn_party(person, source=prt.where(5), role=participation, address=address, organisation=org)
        if participation in _RECIPIENT_PARTICIPATIONS and party:
            recipients.append(party)
        elif participation in _SENDER_PARTICIPATIONS and party and author is None and not party.is_patient:
            author = party
    if author is None:
        facility = msg.value(msh, 4) or msg.value(msh, 3)
        if facility:
            author = PartyRef("NAME", facility, organisation=facility, role="sender", source=msh.where(4))

    replaces = any(msg.value(s, 25).upper() == "C" for s in msg.all("OBR"))
    replaces = replaces or any(msg.value(s, 11).upper() == "C" for s in msg.all("OBX"))
    cancels = any(msg.value(s, 1).upper() in _CANCEL_ORDER_CONTROLS for s in msg.all("ORC"))
    replaced_id = None
    if msg_type == "MDM":
        document_id = _ei(msg, txa, 12) or msg.value(msh, 10) or None
        replaced_id = _ei(msg, txa, 13) or None
        replaces = replaces or trigger in _REPLACE_TRIGGERS
        cancels = cancels or trigger in _CANCEL_TRIGGERS
    else:
        first_obr = msg.first("OBR")
        document_id = _ei(msg, first_obr, 3) or _ei(msg, first_obr, 2) or msg.value(msh, 10) or None

    embedded: list[PayloadInfo] = []
    warnings: list[str] = []
    for obx in msg.all("OBX"):
        if msg.value(obx, 2).upper() != "ED":
            continue
        info, warning = _embedded(msg, obx, _read_embedded)
        if info is not None:
            embedded.append(info)
        if warning:
            warnings.append(warning)

    labels = {"ORU": "Observation result (ORU^R01)", "MDM": f"Medical document ({msg_type}^{trigger})"}
    return PayloadInfo(
        kind="hl7v2",
        document_type=DocumentType(f"{msg_type}^{trigger}", labels[msg_type], "HL7v2"),
        patient_ids=tuple(_patient_ids(msg)),
        author=author,
        recipients=_dedupe(recipients),
        document_id=document_id,
        replaces=replaces,
        replaced_id=replaced_id,
        cancels=cancels,
        encoding=msg.charset,
        created=msg.value(msh, 7) or None,
        sender=msg.value(msh, 3),
        media_type="application/hl7-v2",
        embedded=tuple(embedded),
        warnings=tuple(warnings),
    )


def _ei(msg: Message, seg: Segment | None, n: int) -> str:
    ident = msg.value(seg, n, 1)
    namespace = msg.value(seg, n, 2)
    return f"{ident}^{namespace}" if ident and namespace else ident


def _dedupe(parties: list[PartyRef]) -> tuple[PartyRef, ...]:
    seen: set[tuple[str, str]] = set()
    out = []
    for p in parties:
        key = (p.id_type, p.value)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return tuple(out)


# --- ACK ---------------------------------------------------------------------------------------------

def _escape(text: str, d: Delimiters) -> str:
    out = text.replace(d.esc, f"{d.esc}E{d.esc}")
    for char, code in ((d.field, "F"), (d.comp, "S"), (d.rep, "R"), (d.sub, "T")):
        out = out.replace(char, f"{d.esc}{code}{d.esc}")
    return re.sub(r"[\r\n\x0b\x1c]+", " ", out)


def _components(parts: tuple[str, ...] | list[str], d: Delimiters) -> str:
    """One field of components, each escaped (a ``^`` inside a text stays text)."""
    return d.comp.join(_escape(p, d) for p in parts)


def build_ack(message_bytes: bytes, code: str, error: str | None = None, *, control_id: str | None = None,
              now: dt.datetime | None = None, error_code: str | None = None, error_location: str | None = None,
              application_error: tuple[str, str, str] | None = None) -> bytes:
    """An HL7 ACK for a received message (unframed; wrap with :func:`mllp_frame`).

    MSH-3/4 and MSH-5/6 are swapped from the original, MSA-1 is ``code``, MSA-2 the original
    MSH-10. With ``error``, MSA-3 and an ERR segment (ERR-3 HL7 table 0357 code, ERR-4 severity,
    ERR-8 user message) carry it. The text must say what and where, never patient data. When
    the original is unreadable (AR for junk), defaults are used and MSA-2 stays empty.

    ``error_location`` fills ERR-2 (ERL, components written with ``^``: ``OBX^8^5`` is field 5
    of the 8th OBX) and ``application_error`` ERR-5 (code, text, coding system: the profile rule
    a CRÉATEUR's software can act on, e.g. ``("MATRIX", "combinaison ... non prévue", "CISIS")``);
    both only with ``error``. Without them the ACK is byte-identical to what it always was.
    """
    if code not in ("AA", "AE", "AR"):
        raise ValueError("ACK code must be AA, AE or AR")
    d = Delimiters()
    fields: dict[int, str] = {}
    charset = "utf-8"
    charset_name = "UNICODE UTF-8"
    try:
        msg = parse_message(message_bytes)
        msh = msg.segments[0]
        d = msg.delims
        charset = msg.charset if msg.charset in ("utf-8", "iso-8859-1", "iso-8859-15", "ascii") else "utf-8"
        charset_name = {v: k for k, v in _CHARSETS.items() if k != "UTF-8" and k != "UNICODE"}.get(charset, "")
        fields = {n: msh.raw(n) for n in range(3, min(len(msh.fields), 20))}
    except PayloadError:
        pass
    now = now or dt.datetime.now(dt.UTC)
    trigger = fields.get(9, "").split(d.comp)
    ack_type = f"ACK{d.comp}{trigger[1]}{d.comp}ACK" if len(trigger) > 1 and trigger[1] else "ACK"
    original_id = fields.get(10, "")
    new_id = control_id or ("ACK" + now.strftime("%Y%m%d%H%M%S%f"))[:20]
    version = fields.get(12, "") or "2.5"
    msh_fields = ["MSH", d.comp + d.rep + d.esc + d.sub, fields.get(5, ""), fields.get(6, ""), fields.get(3, ""),
                  fields.get(4, ""), now.strftime("%Y%m%d%H%M%S"), "", ack_type, _escape(new_id, d),
                  fields.get(11, "") or "P", version, "", "", "", "", fields.get(17, ""), charset_name]
    segments = [d.field.join(msh_fields).rstrip(d.field)]
    msa = ["MSA", code, original_id]
    if error:
        msa.append(_escape(error, d))
    segments.append(d.field.join(msa))
    if error:
        err_code = error_code or ("207" if code == "AE" else "200")
        label = {"100": "Segment sequence error", "101": "Required field missing", "102": "Data type error",
                 "200": "Unsupported message type", "207": "Application internal error"}.get(err_code, "")
        location = _components(error_location.split("^"), d) if error_location else ""
        application = _components(application_error, d) if application_error else ""
        segments.append(d.field.join(["ERR", "", location, d.comp.join([err_code, label, "HL70357"]), "E",
                                      application, "", "", _escape(error, d)]))
    return ("\r".join(segments) + "\r").encode(charset, errors="replace")


# --- MLLP ----------------------------------------------------------------------------------------------

MLLP_START = b"\x0b"
MLLP_END = b"\x1c\x0d"


def mllp_frame(message: bytes) -> bytes:
    """Wrap one message in MLLP framing (VT … FS CR); the message must not contain VT or FS."""
    if b"\x0b" in message or b"\x1c" in message:
        raise MllpError("message contains an MLLP framing byte (0x0B or 0x1C)", "frame")
    return MLLP_START + message + MLLP_END


class MLLPDecoder:
    """Incremental MLLP decoder: feed bytes as they arrive, get complete messages back.

    Between frames only CR/LF are tolerated (some senders add a newline); anything else, a
    start byte inside a frame, a FS not followed by CR, or a frame over ``max_frame`` bytes
    raises :class:`MllpError` and the connection should be closed (the stream is out of sync).
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._in_frame = False
        self._pending_fs = False
        self._offset = 0  # bytes consumed so far, for error locations

    def feed(self, data: bytes) -> list[bytes]:
        messages: list[bytes] = []
        i, n = 0, len(data)
        while i < n:
            position = self._offset + i
            if self._pending_fs:
                if data[i] != 0x0D:
                    raise MllpError("MLLP end block 0x1C not followed by 0x0D", f"stream byte {position}")
                messages.append(bytes(self._buffer))
                self._buffer.clear()
                self._in_frame = self._pending_fs = False
                i += 1
                continue
            if not self._in_frame:
                if data[i] == 0x0B:
                    self._in_frame = True
                    self._buffer.clear()
                elif data[i] not in (0x0D, 0x0A):
                    raise MllpError("data outside an MLLP frame", f"stream byte {position}")
                i += 1
                continue
            stops = [j for j in (data.find(b"\x1c", i), data.find(b"\x0b", i)) if j >= 0]
            end = min(stops) if stops else n
            if len(self._buffer) + (end - i) > self.max_frame:
                raise MllpError(f"MLLP frame larger than {self.max_frame} bytes", f"stream byte {position}")
            self._buffer += data[i:end]
            i = end
            if end < n:
                if data[end] == 0x0B:
                    raise MllpError("MLLP start block inside a frame", f"stream byte {self._offset + end}")
                self._pending_fs = True
                i += 1
        self._offset += n
        return messages

    @property
    def idle(self) -> bool:
        """True when no partial frame is buffered (a clean place to close the connection)."""
        return not self._in_frame


# --- the format -----------------------------------------------------------------------------------

def _result_statuses(msg: Message) -> str:
    """OBR-25 result statuses of a message, e.g. "F" or "P" ('' when absent)."""
    return "".join(sorted({msg.value(obr, 25).upper() for obr in msg.all("OBR")} - {""}))


def embedded_documents(data: bytes, info: PayloadInfo) -> list[EmbeddedDocument]:
    """CDA/PDF documents carried base64 in OBX (type ED), with what their reader said.

    Why read again: :class:`PayloadInfo` keeps what a document *says*, not its bytes, and the
    XDM package and the PDF attachment need the bytes. Unreadable ones are skipped (the reader
    already reported them as warnings).
    """
    if not info.embedded:
        return []
    from gateway.routing.cda import read_cda

    out: list[EmbeddedDocument] = []
    try:
        msg = parse_message(data)
    except PayloadError:
        return []
    for obx in msg.all("OBX"):
        if msg.value(obx, 2).upper() != "ED":
            continue
        comps = obx.raw(5).split(msg.delims.rep)[0].split(msg.delims.comp)
        if len(comps) < 5 or comps[3].strip().upper() != "BASE64":
            continue
        try:
            doc = base64.b64decode(re.sub(r"\s+", "", comps[4]), validate=True)
        except (binascii.Error, ValueError):
            continue
        try:
            if doc.lstrip().startswith(b"%PDF"):
                out.append(EmbeddedDocument(doc, read_pdf(doc), "application/pdf"))
            elif doc.lstrip().startswith(b"<"):
                out.append(EmbeddedDocument(doc, read_cda(doc), "text/xml"))
        except PayloadError:
            continue
    return out


class Hl7Format(PayloadFormat):
    """HL7 v2 (ER7): ``application/hl7-v2`` (no IANA type exists; a non-text type keeps lines as they are)."""

    kind = "hl7v2"
    label = "HL7 v2"
    extensions = ("hl7", "er7")
    attachment_stem = "message"
    report_subject = "Compte rendu"

    def detect(self, data: bytes) -> int:
        start = leading(data)
        if start[:3] in (b"MSH", b"FHS", b"BHS") and len(start) > 3 and not start[3:4].isalnum():
            return SIGNATURE
        return 0

    def read(self, data: bytes, filename: str | None = None) -> PayloadInfo:
        return read_hl7(data)

    def media_type(self, info: PayloadInfo) -> MediaType:
        charset = iana_charset(info.encoding)
        return "application", "hl7-v2", {"charset": charset} if charset else {}

    def is_lab_result(self, info: PayloadInfo) -> bool:
        return info.document_type.code.startswith("ORU")

    def embedded_documents(self, data: bytes, info: PayloadInfo) -> list[EmbeddedDocument]:
        return embedded_documents(data, info)

    def dedup_facts(self, info: PayloadInfo, data: bytes) -> DedupFacts:
        """Every segment but MSH (control id, send time) counts, batch segments do not; the OBR-25
        statuses qualify the id, since a result keeps its filler order number from the
        preliminary (``P``) to the final (``F``) report."""
        try:
            msg = parse_message(data)
        except PayloadError:
            return DedupFacts("", digest_lines(data))
        digest = hashlib.sha256()
        for seg in msg.segments:
            if seg.name != "MSH":
                digest.update("\x1f".join(seg.fields).encode("utf-8", "surrogatepass") + b"\n")
        return DedupFacts(_result_statuses(msg), digest.digest())


FORMAT = Hl7Format()
