"""Recipient resolution: the identifiers a payload names → mail addresses, via the directory.

Why pure (no I/O but the directory object passed in): routing decisions must be testable
alone and auditable; the directory is any object with ``by_rpps``/``by_national_id``/
``by_adeli`` (the :class:`~gateway.directory.directory.DirectoryStore` protocol).

Rules:
- a party that is the patient (HL7 PRT copy to the patient's own mailbox) is never used:
  sending health data to an address a payload claims is the patient's is not our call;
- RPPS / IDNAT / ADELI → the directory → the preferred address of that person (an address the
  gateway can protect end to end — ``smime`` or ``local`` — before a ``legacy:`` one, before
  ``trusted-domain``); with no directory hit, a mail address written next to the identifier
  in the payload is used;
- ADDRESS → as is (when it is a valid address);
- LAB-CODE → the per-lab map (sender lab, code) → RPPS → directory;
- NAME only → never guessed: unresolved.
Unresolved parties send the document to the sender organisation's *unrouted* mailbox and a
notice back to the sender; the notice names professionals' identifiers and where they were
found, never names or anything about the patient.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.directory.directory import LOCAL, SMIME, TRUSTED_DOMAIN, Correspondent, is_address
from gateway.routing.model import PartyRef, PayloadInfo


class Directory(Protocol):
    def by_rpps(self, rpps: str) -> Correspondent | None: ...

    def by_adeli(self, adeli: str) -> Correspondent | None: ...

    def by_national_id(self, national_id: str) -> Correspondent | None: ...


@dataclass(frozen=True)
class Resolution:
    """Where a payload goes. ``addresses`` includes the unrouted mailbox when something was unresolved."""

    addresses: tuple[str, ...]
    resolved: tuple[tuple[PartyRef, str], ...]
    unresolved: tuple[PartyRef, ...]
    notices: tuple[str, ...]
    unrouted_used: bool = False


def _rank(capability: str, mailbox_type: str | None) -> tuple[int, int]:
    if capability in (SMIME, LOCAL):
        cap = 0
    elif capability == TRUSTED_DOMAIN:
        cap = 2
    else:
        cap = 1  # legacy:<codec>: protected, but through a bridge
    return cap, {"PER": 0, "ORG": 1, "APP": 2}.get(mailbox_type or "", 1)


def preferred_address(correspondent: Correspondent | None) -> str | None:
    """The best address of a correspondent (see module docstring), or None when it has none."""
    if correspondent is None:
        return None
    usable = [a for a in correspondent.addresses if a.address]
    if not usable:
        return None
    best = min(usable, key=lambda a: (*_rank(a.capability, a.mailbox_type), a.address))
    return best.address.lower()


def _lookup_professional(party: PartyRef, directory: Directory) -> Correspondent | None:
    value = party.value.strip()
    if party.id_type == "RPPS":
        return directory.by_rpps(value)
    if party.id_type == "ADELI":
        return directory.by_adeli(value.upper())
    if party.id_type == "IDNAT":
        found = directory.by_national_id(value)
        if found is None and party.rpps:
            found = directory.by_rpps(party.rpps)
        if found is None and value.startswith("0") and len(value) == 10:
            found = directory.by_adeli(value[1:].upper())
        return found
    return None


def lab_code_rpps(code: str, lab_codes: Mapping[Any, str], lab_senders: Iterable[str]) -> str | None:
    """RPPS for a lab-internal code: keys are (lab sender folded, code); a plain code key also works."""
    for lab in lab_senders:
        if lab:
            rpps = lab_codes.get((lab.strip().lower(), code))
            if rpps:
                return rpps
    plain = lab_codes.get(code)
    return plain if isinstance(plain, str) else None


def _describe(party: PartyRef) -> str:
    """A professional's identifier and where the payload names it: no names (they may be misparsed)."""
    where = f" ({party.role or 'recipient'}, {party.source})" if party.source else f" ({party.role or 'recipient'})"
    if party.id_type == "NAME":
        return f"destinataire désigné par un nom seulement, sans identifiant{where}"
    if party.id_type == "ADDRESS":
        return f"adresse de messagerie invalide{where}"
    return f"{party.id_type} {party.value}{where}"


def intended_parties(info: PayloadInfo) -> tuple[PartyRef, ...]:
    """Recipients named by the payload and its embedded documents (HL7 with a CDA): union, in order."""
    seen: set[tuple[str, str]] = set()
    out: list[PartyRef] = []

    def add(parties: Sequence[PartyRef]) -> None:
        for p in parties:
            key = (p.id_type, p.value.strip().lower())
            if p.rpps:
                key = ("RPPS", p.rpps)
            if key not in seen:
                seen.add(key)
                out.append(p)

    add(info.recipients)
    for inner in info.embedded:
        add(inner.recipients)
        for deeper in inner.embedded:
            add(deeper.recipients)
    return tuple(out)


def resolve_recipients(info: PayloadInfo, directory: Directory, *, sender: str, unrouted: str | None,
                       lab_codes: Mapping[Any, str]) -> Resolution:
    """Resolve every intended recipient of ``info`` (patients skipped); see the module docstring."""
    addresses: list[str] = []
    resolved: list[tuple[PartyRef, str]] = []
    unresolved: list[PartyRef] = []
    lab_senders = (info.sender, sender, *(i.sender for i in info.embedded))
    for party in intended_parties(info):
        if party.is_patient:
            continue
        address: str | None = None
        if party.id_type in ("RPPS", "IDNAT", "ADELI"):
            address = preferred_address(_lookup_professional(party, directory))
        elif party.id_type == "LAB-CODE":
            rpps = lab_code_rpps(party.value.strip(), lab_codes, lab_senders)
            address = preferred_address(directory.by_rpps(rpps)) if rpps else None
        elif party.id_type == "ADDRESS":
            candidate = party.value.strip()
            address = candidate.lower() if is_address(candidate) else None
        if address is None and party.id_type != "NAME" and party.address and is_address(party.address.strip()):
            address = party.address.strip().lower()  # written next to the identifier in the payload
        if address is None:
            unresolved.append(party)
            continue
        resolved.append((party, address))
        if address not in addresses:
            addresses.append(address)
    notices: list[str] = [f"Destinataire non identifié dans l'annuaire : {_describe(p)}" for p in unresolved]
    unrouted_used = False
    if unresolved and unrouted:
        unrouted_used = True
        if unrouted.lower() not in addresses:
            addresses.append(unrouted.lower())
        notices.append(f"Le document a été adressé à la boîte de tri {unrouted.lower()}.")
    return Resolution(addresses=tuple(addresses), resolved=tuple(resolved), unresolved=tuple(unresolved),
                      notices=tuple(notices), unrouted_used=unrouted_used)


__all__ = ["Directory", "Resolution", "intended_parties", "lab_code_rpps", "preferred_address",
           "resolve_recipients"]
