"""HPRIM Santé reader: the record layout (HPRIM Net / HPRIM Santé 2.x) and the older "HPRIM médecin" text.

Why hand-written: no maintained Python HPRIM parser exists (libHprim is Java and unmaintained,
hprimtool is an Electron viewer), and routing needs only a few fields: the sending lab, the
prescriber(s) and copy recipients, the correction status and the patient's local ids.

Record layout (``H|...`` … ``L|...``): the ``H`` record's second field gives the delimiters in
the order component, repetition, escape, subcomponent. HPRIM writes ``~^\\&`` (``~`` separates
components), HL7-minded senders write ``^~\\&``; reading them positionally handles both. An
``A|`` line continues the previous record: its text is appended as is (records are cut at a
fixed length, so a field may be split in the middle of a word).

Text layout: each report starts with a 12-line header (1 dossier id, 2 last name, 3 first
name, 4-5 address, 6 postcode and town, 7 birth date, 8 insurance number, 9 request id,
10 request date, 11 lab code + lab name, 12 doctor code + doctor name), free text, an optional
``****LAB****`` … ``****FIN****`` block of ``RES|``/``TEX|`` lines; the file ends with
``****FINFICHIER****``. Several reports may follow one another in one file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.routing.model import (
    MARKER,
    SIGNATURE,
    DedupFacts,
    DocumentType,
    HprimError,
    IdType,
    MediaType,
    PartyRef,
    PatientId,
    PayloadFormat,
    PayloadInfo,
    decode_text,
    digest_lines,
    iana_charset,
    leading,
    payload_head,
    professional_id_type,
)

_LINE_SPLIT = re.compile(r"\r\n|\r|\n")
_RECORD_TYPE = re.compile(r"^[A-Z][A-Z0-9]{0,3}$")
_VERSION = re.compile(r"^H\d(\.\d+)?")
_DATE = re.compile(r"^(\d{2}/\d{2}/\d{2}(\d{2})?|\d{8})?$")
_INSURANCE = re.compile(r"^[0-9AB ]*$")
#: H fields (0 = record type, 1 = delimiters) at their HPRIM Santé 2.x positions.
_H_SENDER, _H_TYPE, _H_RECEIVER, _H_VERSION, _H_DATE = 4, 6, 9, 12, 13


@dataclass(frozen=True)
class _Delims:
    comp: str
    rep: str
    esc: str
    sub: str


@dataclass(frozen=True)
class _Record:
    fields: tuple[str, ...]
    line: int

    @property
    def type(self) -> str:
        return self.fields[0]

    def get(self, index: int) -> str:
        return self.fields[index] if index < len(self.fields) else ""


def read_hprim(data: bytes) -> PayloadInfo:
    """Read an HPRIM file in either layout; raise :class:`HprimError` with the line number."""
    text, encoding = decode_text(data)
    lines = _LINE_SPLIT.split(text)
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise HprimError("empty HPRIM file", "line 1")
    if "\x00" in text:
        raise HprimError("binary data in HPRIM file", f"line {text[:text.index(chr(0))].count(chr(10)) + 1}")
    first = next((i for i, line in enumerate(lines) if line.strip()), 0)
    if lines[first].startswith("H|"):
        return _read_records(lines, first, encoding)
    return _read_text_layout(lines, encoding)


# --- record layout -----------------------------------------------------------------------------

def _delimiters(h_line: str, line_no: int) -> _Delims:
    parts = h_line.split("|")
    spec = parts[1] if len(parts) > 1 else ""
    if len(spec) != 4 or len(set(spec)) != 4 or any(c.isalnum() or c in "| \t" for c in spec):
        raise HprimError("invalid delimiter definition in the H record (expected 4 distinct characters such as "
                         "~^\\& or ^~\\&)", f"line {line_no} field H-2")
    return _Delims(comp=spec[0], rep=spec[1], esc=spec[2], sub=spec[3])


def _records(lines: list[str], first: int) -> list[_Record]:
    records: list[tuple[str, int]] = []
    for index in range(first, len(lines)):
        line = lines[index]
        line_no = index + 1
        if not line.strip():
            continue
        if line.startswith("A|"):
            if not records:
                raise HprimError("continuation line A| without a previous record", f"line {line_no}")
            text, start = records[-1]
            records[-1] = (text + line[2:], start)
            continue
        records.append((line, line_no))
    result = []
    for text, line_no in records:
        fields = tuple(text.split("|"))
        if not _RECORD_TYPE.match(fields[0]) or len(fields) < 2:
            raise HprimError("invalid HPRIM record (expected TYPE|...)", f"line {line_no}")
        result.append(_Record(fields, line_no))
    return result


def _unescape(value: str, d: _Delims) -> str:
    if d.esc not in value:
        return value
    table = {"F": "|", "S": d.comp, "R": d.rep, "E": d.esc, "T": d.sub}
    out: list[str] = []
    i = 0
    while i < len(value):
        c = value[i]
        if c == d.esc and i + 2 < len(value) and value[i + 2] == d.esc and value[i + 1] in table:
            out.append(table[value[i + 1]])
            i += 3
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _components(value: str, d: _Delims) -> list[str]:
    return [_unescape(c.split(d.sub)[0], d).strip() for c in value.split(d.comp)]


def _repetitions(value: str, d: _Delims) -> list[list[str]]:
    return [_components(r, d) for r in value.split(d.rep) if r.strip()]


def _party(comps: list[str], source: str, role: str) -> PartyRef | None:
    code = comps[0] if comps else ""
    name = comps[1] if len(comps) > 1 else ""
    system = (comps[2] if len(comps) > 2 else "").upper()
    if not code and not name:
        return None
    if not code:
        return PartyRef("NAME", name, family=name, role=role, source=source)
    id_type: IdType
    if system in ("RPPS", "ADELI", "IDNAT"):
        id_type = system  # type: ignore[assignment]
    else:
        id_type = professional_id_type(code, national=False if system == "L" else None)
    return PartyRef(id_type, code, family=name, authority=system, role=role, source=source)


def _header_fields(h: _Record) -> tuple[int, list[str]]:
    """H fields aligned on the HPRIM Santé positions.

    Some senders insert an extra field before the message type (the hl7-eu synthetic sample
    does); the version field (``H2.x``) is then found further right and fields from the message
    type on are read with that offset.
    """
    offset = 0
    if not _VERSION.match(h.get(_H_VERSION)):
        for i, value in enumerate(h.fields):
            if i > 1 and _VERSION.match(value):
                offset = i - _H_VERSION
                break
    return offset, list(h.fields)


def _read_records(lines: list[str], first: int, encoding: str) -> PayloadInfo:
    records = _records(lines, first)
    h = records[0]
    d = _delimiters("|".join(h.fields), h.line)
    if records[-1].type != "L":
        raise HprimError("truncated HPRIM file: the last record is not an L record", f"line {records[-1].line}")
    offset, hf = _header_fields(h)

    def hget(i: int) -> str:
        j = i + offset if i >= _H_TYPE else i
        return hf[j] if 0 <= j < len(hf) else ""

    sender = _components(hget(_H_SENDER), d)
    msg_type = _components(hget(_H_TYPE), d)[0]
    version = _components(hget(_H_VERSION), d)[0]
    patients: list[PatientId] = []
    recipients: list[PartyRef] = []
    replaces = False
    order_ids: list[str] = []
    p_count = 0
    for rec in records[1:]:
        if rec.type == "H":
            raise HprimError("second H record in one file", f"line {rec.line}")
        if rec.type == "L" and rec is not records[-1]:
            raise HprimError("L record before the end of the file", f"line {rec.line}")
        if rec.type == "P":
            p_count += 1
            for index in (2, 3, 4):
                value = _components(rec.get(index), d)[0]
                if value:
                    patients.append(PatientId(value, "LOCAL", source=f"P[{p_count}]-{index}"))
            for comps in _repetitions(rec.get(13), d):
                party = _party(comps, f"line {rec.line} P-13", "attending")
                if party:
                    recipients.append(party)
        elif rec.type == "OBR":
            if p_count == 0:
                raise HprimError("OBR record before any P record", f"line {rec.line}")
            for comps in _repetitions(rec.get(16), d):
                party = _party(comps, f"line {rec.line} OBR-16", "prescriber")
                if party:
                    recipients.append(party)
            for comps in _repetitions(rec.get(28), d):
                party = _party(comps, f"line {rec.line} OBR-28", "copy")
                if party:
                    recipients.append(party)
            filler = _components(rec.get(3), d)
            order_ids.extend(c for c in filler[:1] if c)
            replaces = replaces or _components(rec.get(25), d)[0].upper() == "C"
        elif rec.type == "OBX":
            replaces = replaces or _components(rec.get(11), d)[0].upper() == "C"
    author = None
    if sender[0] or (len(sender) > 1 and sender[1]):
        name = sender[1] if len(sender) > 1 else ""
        author = PartyRef("NAME", name or sender[0], organisation=name or sender[0], authority=sender[0],
                          role="sender", source=f"line {h.line} H-5")
    file_name = _components(hget(2), d)[0]
    date = _components(hget(_H_DATE), d)[0]
    doc_id = ":".join(x for x in (sender[0], file_name, date) if x) or (order_ids[0] if order_ids else None)
    return PayloadInfo(
        kind="hprim",
        document_type=DocumentType(msg_type or "ORU", f"HPRIM Santé {version or '2.x'} {msg_type}".strip(), "HPRIM"),
        patient_ids=tuple(patients),
        author=author,
        recipients=_dedupe(recipients),
        document_id=doc_id,
        replaces=replaces,
        encoding=encoding,
        created=date or None,
        sender=sender[0],
        media_type="text/plain",
    )


# --- text layout ("HPRIM médecin") -----------------------------------------------------------------

def _code_and_name(line: str) -> tuple[str, str]:
    m = re.match(r"\s*(\S+)\s+(.*)$", line)
    if m:
        return m.group(1), m.group(2).strip()
    return line.strip(), ""


def _read_text_layout(lines: list[str], encoding: str) -> PayloadInfo:
    patients: list[PatientId] = []
    recipients: list[PartyRef] = []
    author: PartyRef | None = None
    document_id: str | None = None
    replaces = False
    reports = 0
    i = 0
    n = len(lines)
    while True:
        while i < n and not lines[i].strip():
            i += 1
        if i >= n:
            raise HprimError("truncated HPRIM file: no ****FINFICHIER**** line", f"line {n}")
        if lines[i].strip() == "****FINFICHIER****":
            if reports == 0:
                raise HprimError("HPRIM file without any report", f"line {i + 1}")
            if any(line.strip() for line in lines[i + 1:]):
                raise HprimError("data after ****FINFICHIER****", f"line {i + 2}")
            break
        reports += 1
        header = lines[i:i + 12]
        if len(header) < 12:
            raise HprimError("truncated HPRIM report header (12 lines expected)", f"line {n}")
        for k, line in enumerate(header):
            if line.startswith("****") or line.startswith(("RES|", "TEX|")):
                raise HprimError("HPRIM report header shorter than 12 lines", f"line {i + k + 1}")
        for k in (6, 9):
            if not _DATE.match(header[k].strip()):
                raise HprimError("invalid date in the report header (expected DD/MM/YYYY)", f"line {i + k + 1}")
        if not _INSURANCE.match(header[7].strip()):
            raise HprimError("invalid insurance number line in the report header", f"line {i + 8}")
        dossier = header[0].split()[0][:40] if header[0].split() else ""
        if dossier:
            patients.append(PatientId(dossier, "LOCAL", source=f"report {reports} line 1"))
        nir = header[7].replace(" ", "")
        if nir:
            patients.append(PatientId(nir, "NIR-INSURED", source=f"report {reports} line 8"))
        document_id = document_id or (header[8].strip() or None)
        lab_code, lab_name = _code_and_name(header[10])
        doc_code, doc_name = _code_and_name(header[11])
        if author is None and (lab_code or lab_name):
            author = PartyRef("NAME", lab_name or lab_code, organisation=lab_name or lab_code, authority=lab_code,
                              role="sender", source=f"line {i + 11}")
        if doc_code:
            id_type = professional_id_type(doc_code, national=None)
            recipients.append(PartyRef(id_type, doc_code, family=doc_name, role="prescriber",
                                       source=f"line {i + 12}"))
        elif doc_name:
            recipients.append(PartyRef("NAME", doc_name, family=doc_name, role="prescriber",
                                       source=f"line {i + 12}"))
        i += 12
        i, corrected = _report_body(lines, i)
        replaces = replaces or corrected
    return PayloadInfo(
        kind="hprim",
        document_type=DocumentType("HPRIM-MEDECIN", "HPRIM médecin lab report", "HPRIM"),
        patient_ids=tuple(patients),
        author=author,
        recipients=_dedupe(recipients),
        document_id=document_id,
        replaces=replaces,
        encoding=encoding,
        sender=author.authority if author else "",
        media_type="text/plain",
    )


def _report_body(lines: list[str], i: int) -> tuple[int, bool]:
    """Skip free text and the LAB block up to ``****FIN****``; return the next index and the correction flag."""
    n = len(lines)
    in_lab = False
    corrected = False
    while i < n:
        line = lines[i].strip()
        if line == "****LAB****":
            if in_lab:
                raise HprimError("nested ****LAB**** block", f"line {i + 1}")
            in_lab = True
        elif line == "****FIN****":
            return i + 1, corrected
        elif line == "****FINFICHIER****":
            raise HprimError("report not closed by ****FIN**** before ****FINFICHIER****", f"line {i + 1}")
        elif in_lab and line:
            if line.startswith("RES|"):
                fields = line.split("|")
                if len(fields) < 5 or not fields[1].strip():
                    raise HprimError("RES line with fewer than 4 fields or without a label", f"line {i + 1}")
                corrected = corrected or (len(fields) > 9 and fields[9].strip().upper() == "C")
            elif not line.startswith("TEX|"):
                raise HprimError("unexpected line in a ****LAB**** block (RES| or TEX| expected)", f"line {i + 1}")
        i += 1
    raise HprimError("truncated HPRIM report: no ****FIN**** line", f"line {n}")


def _dedupe(parties: list[PartyRef]) -> tuple[PartyRef, ...]:
    seen: set[tuple[str, str]] = set()
    out = []
    for p in parties:
        key = (p.id_type, p.value)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return tuple(out)


class HprimFormat(PayloadFormat):
    """HPRIM Santé: always a lab result, attached as ``text/plain`` in the file's own charset."""

    kind = "hprim"
    label = "HPRIM"
    extensions = ("hpr", "hpm", "hprim")
    attachment_stem = "resultat"

    def detect(self, data: bytes) -> int:
        """``H|`` at the start (record layout); else, in a text that is not XML, the text layout's markers."""
        start = leading(data)
        if start.startswith(b"H|"):
            return SIGNATURE
        if start.startswith(b"<"):
            return 0
        if b"****LAB****" in data or b"****FINFICHIER****" in data:
            return MARKER
        if any(line.startswith((b"RES|", b"TEX|")) for line in payload_head(data).splitlines()[:4]):
            return MARKER
        return 0

    def read(self, data: bytes, filename: str | None = None) -> PayloadInfo:
        return read_hprim(data)

    def media_type(self, info: PayloadInfo) -> MediaType:
        return "text", "plain", {"charset": iana_charset(info.encoding) or "iso-8859-1"}

    def is_lab_result(self, info: PayloadInfo) -> bool:
        return True

    def dedup_facts(self, info: PayloadInfo, data: bytes) -> DedupFacts:
        """The H and L records (file name, date and record counts of this transmission) do not count."""
        skip = (b"H|", b"L|") if info.document_type.code != "HPRIM-MEDECIN" else ()
        return DedupFacts("", digest_lines(data, skip))


FORMAT = HprimFormat()
