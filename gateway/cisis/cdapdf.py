"""What the MSSanté message needs from a CDA beyond `gateway.routing.cda.read_cda`: the PDF an
N1 document carries, and the patient's identity traits that make its INS "qualified".

Why here and not in the routing reader: `read_cda` answers routing's questions and keeps the
patient's name out of `PayloadInfo` on purpose; only the mail builder needs the traits (for the
``X-MSS-INS`` header and the ``XDM/1.0/DDM+`` Subject) and the rendering (the ``application/pdf``
attachment next to ``IHE_XDM.ZIP``). Pure: bytes in, values out; errors are `CdaError` with an
XPath (never the document's text).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from lxml import etree

from gateway.routing.cda import NS, parse_xml, xpath_of
from gateway.routing.model import INS_OIDS, CdaError, PayloadError, mask
from gateway.routing.pdf import read_pdf

_N = {"h": NS}
#: INS authorities that make a qualified INS (INS-NIR, INS-NIA, and the NIR *test* authority the
#: ANS test platforms use). The NIR demonstration OID (.11) never qualifies.
QUALIFYING_INS_OIDS = frozenset({"1.2.250.1.213.1.4.8", "1.2.250.1.213.1.4.9", "1.2.250.1.213.1.4.10"})


@dataclass(frozen=True)
class CdaIdentity:
    """The recordTarget's INS and the four traits (birth name, first given name, birth date, sex).
    Masked in repr: a stray log line must not carry an identity."""

    ins: str = ""
    ins_oid: str = ""
    family: str = ""
    given: str = ""
    birth_time: str = ""  # YYYYMMDD[...]
    gender: str = ""  # administrativeGenderCode/@code

    @property
    def qualified(self) -> bool:
        """Ref#2 ECO.2.4.2: the matricule, its INS OID and the four traits are all present."""
        return bool(self.ins and self.ins_oid in QUALIFYING_INS_OIDS and self.family and self.given
                    and len(self.birth_time) >= 8 and self.gender)

    def __repr__(self) -> str:
        return f"CdaIdentity(ins={mask(self.ins)!r}, oid={self.ins_oid!r}, qualified={self.qualified})"

    __str__ = __repr__


def _text(elem: etree._Element | None) -> str:
    return " ".join("".join(elem.itertext()).split()) if elem is not None else ""


def _preferred(parent: etree._Element | None, tag: str) -> str:
    """The birth-name form (``qualifier="BR"``) when given, else the first one."""
    if parent is None:
        return ""
    found = parent.findall(f"h:{tag}", _N)
    birth = [e for e in found if "BR" in (e.get("qualifier") or "").split()]
    return next((t for e in birth + found if (t := _text(e))), "")


def identity(data: bytes) -> CdaIdentity:
    """The INS (the first recordTarget id under an INS authority of `INS_OIDS`) and the traits."""
    root = parse_xml(data)
    role = root.find("h:recordTarget/h:patientRole", _N)
    if role is None:
        raise CdaError("missing recordTarget/patientRole", "/ClinicalDocument/recordTarget")
    ins, oid = "", ""
    for pid in role.findall("h:id", _N):
        root_oid = (pid.get("root") or "").strip()
        if root_oid in INS_OIDS and (pid.get("extension") or "").strip():
            ins, oid = (pid.get("extension") or "").strip(), root_oid
            break
    patient = role.find("h:patient", _N)
    name = patient.find("h:name", _N) if patient is not None else None
    birth = patient.find("h:birthTime", _N) if patient is not None else None
    gender = patient.find("h:administrativeGenderCode", _N) if patient is not None else None
    return CdaIdentity(ins=ins, ins_oid=oid, family=_preferred(name, "family"), given=_preferred(name, "given"),
                       birth_time=((birth.get("value") if birth is not None else "") or "").strip(),
                       gender=((gender.get("code") if gender is not None else "") or "").strip())


def pdfs(data: bytes) -> list[bytes]:
    """The PDF(s) of an N1 document: ``component/nonXMLBody/text`` with mediaType
    ``application/pdf`` (base64). An N3 document, or an N1 with another media type, gives none."""
    root = parse_xml(data)
    out: list[bytes] = []
    for text in root.findall("h:component/h:nonXMLBody/h:text", _N):
        if (text.get("mediaType") or "").strip().lower() != "application/pdf":
            continue
        where = xpath_of(text)
        if (text.get("representation") or "B64").strip().upper() != "B64":
            raise CdaError("a PDF body must be base64 (representation B64)", where + "/@representation")
        if text.get("compression"):
            raise CdaError("compressed nonXMLBody is not supported", where + "/@compression")
        try:
            pdf = base64.b64decode("".join((text.text or "").split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise CdaError("nonXMLBody text is not valid base64", where) from exc
        try:
            read_pdf(pdf)
        except PayloadError as exc:
            raise CdaError(f"nonXMLBody declared application/pdf holds no PDF ({exc.what})", where) from exc
        out.append(pdf)
    return out


__all__ = ["QUALIFYING_INS_OIDS", "CdaIdentity", "identity", "pdfs"]
