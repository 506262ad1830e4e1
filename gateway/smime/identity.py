"""Who a certificate names: addresses and French health identifiers (RPPS, ADELI, FINESS, SIRET).

Routing matches people, not only addresses, so this reads (per ../shared/specs/french-health.md
and the public IGC-Santé samples): e-mail addresses (SAN rfc822Name, subject emailAddress),
UPNs (``<identifiant national>/<card id>@carte-cps.fr``), the *identifiant national* of a card
certificate from the CN before the ``/`` (type digit ``8`` + RPPS, ``0`` + ADELI, ``3`` +
structure id + internal id for establishment staff), the profession from ``title``, and
organisation ids from the ``OU`` (type digit of the ANS nomenclature TRE_G07: ``1`` FINESS,
``2`` SIREN, ``3`` SIRET, ``4`` RPPS cabinet id, ``0`` ADELI cabinet id, ``5``/``6`` FINESS EJ/EG).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from asn1crypto import core
from cryptography import x509
from cryptography.x509.oid import NameOID, ObjectIdentifier

UPN_OID = ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")
_CARD_CN = re.compile(r"^(?P<type>\d)(?P<id>[0-9A-Za-z]+)/(?P<card>[0-9A-Za-z]+)$")
#: Type digit of a structure identifier (ANS nomenclature TRE_G07 TypeIdentifiantStructure,
#: OID 1.2.250.1.71.1.2.14) -> (kind, expected length or None when not fixed).
_STRUCTURE_KINDS: dict[str, tuple[str, int | None]] = {
    "0": ("adeli-cabinet", None), "1": ("finess", 9), "2": ("siren", 9), "3": ("siret", 14),
    "4": ("rpps-cabinet", 11), "5": ("finess-ej", 9), "6": ("finess-eg", 9)}


@dataclass(frozen=True)
class CertificateIdentity:
    """Identity facts read from one certificate (no validation: see trust.py for that)."""

    subject: str
    common_name: str | None
    emails: tuple[str, ...]
    upns: tuple[str, ...]
    national_id: str | None = None
    national_id_type: str | None = None  # "rpps", "adeli", "structure-staff"
    rpps: str | None = None
    adeli: str | None = None
    card_id: str | None = None
    profession: str | None = None
    given_name: str | None = None
    surname: str | None = None
    organisation: str | None = None
    organisation_ids: tuple[tuple[str, str], ...] = ()

    @property
    def is_person(self) -> bool:
        return self.national_id is not None

    @property
    def identifiers(self) -> tuple[str, ...]:
        """Every identifier as ``kind:value`` (for audit records and directory matching)."""
        out = [f"email:{e}" for e in self.emails]
        if self.rpps:
            out.append(f"rpps:{self.rpps}")
        if self.adeli:
            out.append(f"adeli:{self.adeli}")
        if self.national_id:
            out.append(f"idnat:{self.national_id}")
        out += [f"{kind}:{value}" for kind, value in self.organisation_ids]
        return tuple(out)

    def names_address(self, address: str) -> bool:
        """Is `address` one of the certificate's e-mail addresses (case-insensitive)?"""
        return address.strip().lower() in self.emails


SHORT_NAMES = {NameOID.GIVEN_NAME: "GN", NameOID.SURNAME: "SN", NameOID.TITLE: "title",
               NameOID.EMAIL_ADDRESS: "emailAddress", NameOID.SERIAL_NUMBER: "serialNumber"}


def dn(name: x509.Name) -> str:
    """RFC 4514 text of a name with the short attribute names seen in IGC-Santé subjects."""
    return name.rfc4514_string(SHORT_NAMES)


def _attr(name: x509.Name, oid: ObjectIdentifier) -> str | None:
    values = name.get_attributes_for_oid(oid)
    return str(values[0].value) if values else None


def _sans(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return [], []
    emails = [e.lower() for e in san.get_values_for_type(x509.RFC822Name)]
    upns = []
    for other in san.get_values_for_type(x509.OtherName):
        if other.type_id == UPN_OID:
            try:
                upns.append(str(core.UTF8String.load(other.value).native))
            except ValueError:
                continue
    return emails, upns


#: ISO 6523 ICD 0002 (SIRENE) followed by a SIREN, as IGC-Santé CA certificates write their OU
#: (``0002 187512751``): a SIREN, not an ADELI cabinet id of type digit ``0``.
_ISO6523_SIREN = re.compile(r"^0002 ?(\d{9})$")


def _structure_ids(name: x509.Name) -> tuple[tuple[str, str], ...]:
    out = []
    for attr in name.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME):
        iso = _ISO6523_SIREN.match(str(attr.value).strip())
        if iso is not None:
            out.append(("siren", iso.group(1)))
            continue
        value = str(attr.value).replace(" ", "")
        kind = _STRUCTURE_KINDS.get(value[:1])
        if kind and len(value) > 1 and value[1:].isalnum() and kind[1] in (None, len(value) - 1):
            out.append((kind[0], value[1:]))
    return tuple(out)


def _national(cn: str | None, upns: list[str]) -> tuple[str, str, str] | None:
    candidates = [cn] if cn else []
    candidates += [u.split("@", 1)[0] for u in upns if u.lower().endswith("@carte-cps.fr")]
    for value in candidates:
        m = _CARD_CN.match(value.strip())
        if m:
            return m["type"], m["id"], m["card"]
    return None


def read_identity(cert: x509.Certificate) -> CertificateIdentity:
    """Read addresses and health identifiers from `cert`."""
    subject = cert.subject
    emails, upns = _sans(cert)
    for e in subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS):
        if str(e.value).lower() not in emails:
            emails.append(str(e.value).lower())
    cn = _attr(subject, NameOID.COMMON_NAME)
    fields: dict[str, str | None] = {}
    found = _national(cn, upns)
    if found:
        kind, ident, card = found
        fields["national_id"] = kind + ident
        fields["card_id"] = card
        if kind == "8" and len(ident) == 11 and ident.isdigit():
            fields["national_id_type"], fields["rpps"] = "rpps", ident
        elif kind == "0" and len(ident) == 9:
            fields["national_id_type"], fields["adeli"] = "adeli", ident
        elif kind == "3":
            fields["national_id_type"] = "structure-staff"
        else:
            fields["national_id_type"] = "other"
    return CertificateIdentity(
        subject=dn(subject), common_name=cn, emails=tuple(emails), upns=tuple(upns),
        profession=_attr(subject, NameOID.TITLE), given_name=_attr(subject, NameOID.GIVEN_NAME),
        surname=_attr(subject, NameOID.SURNAME), organisation=_attr(subject, NameOID.ORGANIZATION_NAME),
        organisation_ids=_structure_ids(subject), **fields)
