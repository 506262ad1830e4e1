"""The business acknowledgments (ZAM^Z01|Z02|Z03^ZAM_Z01) msgw owes a CRÉATEUR, and the ACK it
gets back for each.

Why hand-built segments: the IG fixes every field (``profils-messages`` § "Description des
contraintes à appliquer sur les accusés métiers") and the ANS example ZAMs show the exact layout
(trailing empty OBX-12, ``ERR`` without ERR-6..8), so the CRÉATEUR's parser sees what the
Ségur test platform sends. Pure: bytes in, bytes out, no clock (``now`` is given).

Only tokens travel in a ZAM: control ids, the recipient's MSSanté address and RPPS, SMTP and
MDN error codes. Never a document, a subject or a patient name.
"""

from __future__ import annotations

import datetime as dt
import re

from gateway.cisis.model import PROFILE_ID, MessageHeader, ZamEvent
from gateway.routing.hl7 import Delimiters, parse_message
from gateway.routing.model import Hl7Error

_D = Delimiters()
_ENCODING = _D.comp + _D.rep + _D.esc + _D.sub
#: OBX-3 of the status OBX (table AckMetierZAM), per event.
_STATUS_CODE = {
    ZamEvent.DMP_RECEPTION: ("ACK_RECEPTION_DMP", "Accusé de réception DMP"),
    ZamEvent.MSS_RECEPTION: ("ACK_RECEPTION_MSS", "Accusé de réception MSSanté"),
    ZamEvent.MSS_READ: ("ACK_LECTURE_MSS", "Accusé de lecture"),
}
#: OBX-3 of the recipient OBX (Z02: who the copy was for; Z03: who read it).
_RECIPIENT_CODE = {
    ZamEvent.MSS_RECEPTION: ("DESTINATAIRE_MSS", "Destinataire MSSanté"),
    ZamEvent.MSS_READ: ("LECTEUR_MSS", "Lecteur du courriel MSSanté"),
}
#: ERR-5.3 per event (the DMP's error codes, an SMTP reply code, an MDN's 900-906 code).
ERROR_SYSTEM = {
    ZamEvent.DMP_RECEPTION: "DMPERRORCODE",
    ZamEvent.MSS_RECEPTION: "SMTPERRORCODE",
    ZamEvent.MSS_READ: "applicationErrorCondition",
}
#: ERR-3 as in the ANS example ZAM (HL7 table 0357's label for 207).
_ERR3 = "207^Application internal error^HL70357"
_LINE_BREAKS = re.compile(r"[\r\n\x0b\x1c]+")


def escape(text: str) -> str:
    """HL7 escape of the delimiters (``\\F\\`` ``\\S\\`` ``\\R\\`` ``\\T\\`` ``\\E\\``); line
    breaks and MLLP bytes become a space, so a value can never open a segment or a frame."""
    out = text.replace(_D.esc, f"{_D.esc}E{_D.esc}")
    for char, code in ((_D.field, "F"), (_D.comp, "S"), (_D.rep, "R"), (_D.sub, "T")):
        out = out.replace(char, f"{_D.esc}{code}{_D.esc}")
    return _LINE_BREAKS.sub(" ", out)


def _coded(*parts: str) -> str:
    return _D.comp.join(escape(p) for p in parts)


def _msh(event: ZamEvent, original: MessageHeader, control_id: str, now: dt.datetime) -> str:
    fields = ["MSH", _ENCODING, escape(original.receiving_application), escape(original.receiving_facility),
              escape(original.sending_application), escape(original.sending_facility), _ts(now), "",
              f"ZAM^{event.value}^ZAM_Z01", escape(control_id), escape(original.processing_id or "P"), "2.6",
              "", "", "", "", "FRA", "UNICODE UTF-8", "", "", _coded(original.profile_version or "2.1", PROFILE_ID)]
    return _D.field.join(fields)


def _ts(now: dt.datetime) -> str:
    return now.astimezone(dt.UTC).strftime("%Y%m%d%H%M%S") if now.tzinfo else now.strftime("%Y%m%d%H%M%S")


def _obx(set_id: int, value_type: str, code: tuple[str, str], sub_id: str, value: str) -> str:
    return _D.field.join(["OBX", str(set_id), value_type, _coded(*code, "AckMetierZAM"), escape(sub_id), value,
                          "", "", "", "", "", "F", ""])


def build_zam(event: ZamEvent, original: MessageHeader, *, ok: bool, recipient_address: str | None = None,
              recipient_id: str = "", error: tuple[str, str, str] | None = None, control_id: str,
              now: dt.datetime) -> bytes:
    """One ZAM (unframed, segments ended by CR) answering ``original``.

    ``error`` is ERR-5 as (code, label, coding system), required when ``ok`` is False: the IG
    makes ERR mandatory for an N, and only the caller knows the cause (no code is guessed)."""
    if event is not ZamEvent.DMP_RECEPTION and not recipient_address:
        raise ValueError(f"ZAM^{event.value} needs the MSSanté recipient's address")
    if not ok and error is None:
        raise ValueError("a negative ZAM needs its ERR-5 (code, label, system)")
    segments = [_msh(event, original, control_id, now), _D.field.join(["EVN", "", _ts(now)]),
                _obx(1, "CWE", _STATUS_CODE[event], original.control_id, "Y^^HL70136" if ok else "N^^HL70136")]
    if event is not ZamEvent.DMP_RECEPTION:
        segments.append(_obx(2, "XTN", _RECIPIENT_CODE[event], recipient_id,
                             _D.comp.join(["", "", "X.400", escape(recipient_address or "")])))
    if not ok and error is not None:
        segments.append(_D.field.join(["ERR", "", "", _ERR3, "E", _coded(*error)]))
    return ("\r".join(segments) + "\r").encode("utf-8")


def parse_zam(data: bytes) -> dict[str, str]:
    """Every non-empty field of a ZAM as ``{"MSH-9": "ZAM^Z02^ZAM_Z01", "OBX[2]-5": ..., ...}``
    (raw, still escaped; MSH numbered as HL7 does, MSH-1 the field separator), to compare a
    built ZAM with the ANS examples field by field."""
    msg = parse_message(data)
    seen: dict[str, int] = {}
    out: dict[str, str] = {}
    for seg in msg.segments:
        seen[seg.name] = seen.get(seg.name, 0) + 1
        name = seg.name if seg.name in ("MSH", "EVN") else f"{seg.name}[{seen[seg.name]}]"
        for n, value in enumerate(seg.fields):
            if n and value:
                out[f"{name}-{n}"] = value
    return out


def read_ack(data: bytes) -> tuple[str, str]:
    """(MSA-1, MSA-2) of the CRÉATEUR's ACK to a ZAM: ``("AA", <our ZAM's control id>)``."""
    msg = parse_message(data)
    msa = msg.first("MSA")
    msh = msg.segments[0]
    if not msg.value(msh, 9).upper().startswith("ACK") or msa is None:
        raise Hl7Error("the answer to a ZAM is not an HL7 ACK with an MSA segment", "MSH-9")
    return msg.value(msa, 1).upper(), msg.value(msa, 2)


__all__ = ["ERROR_SYSTEM", "build_zam", "escape", "parse_zam", "read_ack"]
