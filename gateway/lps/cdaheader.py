"""The CDA header facts the LPS volet needs: document ids, type, patient (INS and traits, addresses),
author, authenticator, the replaced document.

Why its own module: `checks` and `mdm` read the same header (the checks must judge exactly what
the MDM will carry); `gateway.cisis.cdapdf.identity` gives the INS and the four traits, this adds
the rest. Pure: bytes in, values out; a header it cannot read is a `CdaError` with an XPath.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from gateway.cisis.cdapdf import CdaIdentity, identity
from gateway.routing.cda import NS, parse_xml
from gateway.routing.model import CdaError, mask

_N = {"h": NS}


@dataclass(frozen=True)
class Address:
    """One XAD: street, city, postal code, ISO country, XAD-7 type (H home, BDL birthplace), XAD-9 county."""

    street: str = ""
    city: str = ""
    postal_code: str = ""
    country: str = ""
    kind: str = "H"
    county: str = ""


@dataclass(frozen=True)
class Person:
    """A health professional of the header (author, legalAuthenticator)."""

    id: str = ""
    root: str = ""
    family: str = ""
    given: str = ""
    organisation_id: str = ""
    organisation_root: str = ""
    organisation_name: str = ""


@dataclass(frozen=True)
class CdaHeader:
    """What the MDM and the checks read from one CDA; patient facts masked in repr."""

    id_root: str
    id_extension: str
    set_id: str
    version: int
    type_code: str
    type_display: str
    type_system: str
    patient: CdaIdentity
    other_given: str = field(repr=False, default="")
    addresses: tuple[Address, ...] = field(repr=False, default=())
    author: Person = field(default_factory=Person)
    authenticator: Person = field(default_factory=Person)
    parent_root: str = ""
    parent_extension: str = ""

    @property
    def unique_id(self) -> str:
        """ClinicalDocument/id as one string (root.extension, or root alone)."""
        return f"{self.id_root}.{self.id_extension}" if self.id_extension else self.id_root

    @property
    def parent_id(self) -> str | None:
        if not self.parent_root:
            return None
        return f"{self.parent_root}.{self.parent_extension}" if self.parent_extension else self.parent_root

    def __repr__(self) -> str:
        return f"CdaHeader(id={self.unique_id!r}, version={self.version}, ins={mask(self.patient.ins)!r})"


def _text(elem: etree._Element | None) -> str:
    return " ".join("".join(elem.itertext()).split()) if elem is not None else ""


def _attr(root: etree._Element, path: str, name: str) -> str:
    elem = root.find(path, _N)
    return ((elem.get(name) if elem is not None else "") or "").strip()


def _person(elem: etree._Element | None) -> Person:
    """author/assignedAuthor or legalAuthenticator/assignedEntity."""
    if elem is None:
        return Person()
    pid = elem.find("h:id", _N)
    name = elem.find("h:assignedPerson/h:name", _N)
    org = elem.find("h:representedOrganization", _N)
    org_id = org.find("h:id", _N) if org is not None else None
    return Person(
        id=((pid.get("extension") if pid is not None else "") or "").strip(),
        root=((pid.get("root") if pid is not None else "") or "").strip(),
        family=_text(name.find("h:family", _N)) if name is not None else "",
        given=_text(name.find("h:given", _N)) if name is not None else "",
        organisation_id=((org_id.get("extension") if org_id is not None else "") or "").strip(),
        organisation_root=((org_id.get("root") if org_id is not None else "") or "").strip(),
        organisation_name=_text(org.find("h:name", _N)) if org is not None else "")


_COUNTRIES = {"FRANCE": "FRA"}


def _unstructured(lines: list[str]) -> Address:
    """An address given only as streetAddressLine's (as the ANS examples do): the first line is the
    street, a five-digit line the postal code, a known country name the country, the rest the city."""
    street, city, postal, country = (lines[0] if lines else ""), "", "", ""
    for line in lines[1:]:
        if line.isdigit() and len(line) == 5:
            postal = line
        elif line.upper() in _COUNTRIES:
            country = _COUNTRIES[line.upper()]
        elif not city:
            city = line
    return Address(street=street, city=city, postal_code=postal, country=country)


def _address(addr: etree._Element) -> Address:
    lines = [t for e in addr.findall("h:streetAddressLine", _N) if (t := _text(e))]
    city = _text(addr.find("h:city", _N))
    postal = _text(addr.find("h:postalCode", _N))
    country = _text(addr.find("h:country", _N))
    if not (city or postal or country):
        return _unstructured(lines)
    return Address(street=" ".join(lines), city=city, postal_code=postal,
                   country=_COUNTRIES.get(country.upper(), country))


def _addresses(role: etree._Element) -> tuple[Address, ...]:
    out = [_address(a) for a in role.findall("h:addr", _N) if not a.get("nullFlavor")]
    birth = role.find("h:patient/h:birthplace/h:place/h:addr", _N)
    if birth is not None:
        county = _text(birth.find("h:county", _N))
        if county:
            out.append(Address(kind="BDL", county=county))
    return tuple(out)


def _other_given(role: etree._Element) -> str:
    """XPN-3: the given names that are not the first given name of birth (the INS "liste des prénoms")."""
    givens = role.findall("h:patient/h:name/h:given", _N)
    first = ([g for g in givens if "BR" in (g.get("qualifier") or "").split()] or givens)[:1]
    rest = [t for g in givens if g not in first and (t := _text(g))]
    return " ".join(rest)


def read_header(data: bytes) -> CdaHeader:
    """The header of one CDA document (`CdaError` with an XPath when it has no id or type)."""
    root = parse_xml(data)
    id_root = _attr(root, "h:id", "root")
    if not id_root:
        raise CdaError("missing ClinicalDocument/id/@root", "/ClinicalDocument/id")
    type_code = _attr(root, "h:code", "code")
    if not type_code:
        raise CdaError("missing ClinicalDocument/code/@code", "/ClinicalDocument/code")
    version_text = _attr(root, "h:versionNumber", "value") or "1"
    if not version_text.isdigit():
        raise CdaError("versionNumber is not a number", "/ClinicalDocument/versionNumber/@value")
    set_root, set_ext = _attr(root, "h:setId", "root"), _attr(root, "h:setId", "extension")
    role = root.find("h:recordTarget/h:patientRole", _N)
    if role is None:
        raise CdaError("missing recordTarget/patientRole", "/ClinicalDocument/recordTarget")
    parent = "h:relatedDocument/h:parentDocument/h:id"
    return CdaHeader(
        id_root=id_root, id_extension=_attr(root, "h:id", "extension"),
        set_id=(f"{set_root}.{set_ext}" if set_ext else set_root),
        version=int(version_text), type_code=type_code, type_display=_attr(root, "h:code", "displayName"),
        type_system=_attr(root, "h:code", "codeSystem"), patient=identity(data),
        other_given=_other_given(role), addresses=_addresses(role),
        author=_person(root.find("h:author/h:assignedAuthor", _N)),
        authenticator=_person(root.find("h:legalAuthenticator/h:assignedEntity", _N)),
        parent_root=_attr(root, parent, "root"), parent_extension=_attr(root, parent, "extension"))
