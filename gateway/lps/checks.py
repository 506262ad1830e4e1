"""Checks before the consumer sees anything: the ANS codes of the IG's applicationErrorCondition.

Why in the gateway and not only in the DPI: a document that names no INS (903), names another
patient than its archive (904), lacks INS traits (905), or replaces/deletes a version the gateway
never delivered as the latest one (900) or by another author (901) must not be integrated
automatically; answering it here spares the DPI and tells the sender at once. 902 (unknown
patient) is the consumer's answer (its ACK), not ours. 906 covers an archive whose integrity
fails. Pure: `previous` is the store's lookup, given by the caller.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from gateway.lps.cdaheader import CdaHeader
from gateway.lps.mdm import cda_entries, header_of
from gateway.lps.model import Delivered, IncomingMail, IntegrationError
from gateway.routing.xdm import ACTIONS, XdmEntry, XdmPackage


def _cx_id(cx: str) -> tuple[str, str]:
    """(id, authority OID) of an XDS patient id ``id^^^&oid&ISO``."""
    parts = cx.split("^")
    authority = parts[3].split("&") if len(parts) > 3 else []
    return parts[0].strip(), (authority[1].strip() if len(authority) > 1 else "")


def _integrity(entry: XdmEntry) -> None:
    """906 when the document differs from the hash/size METADATA.XML declares (whoever built the package)."""
    declared = (entry.slots.get("hash") or ("",))[0].lower()
    if declared and declared != hashlib.sha1(entry.data).hexdigest():  # noqa: S324 - XDS mandates SHA-1
        raise IntegrationError("906", "document hash differs from METADATA.XML", entry.uri)
    size = (entry.slots.get("size") or ("",))[0]
    if size and size != str(len(entry.data)):
        raise IntegrationError("906", "document size differs from METADATA.XML", entry.uri)
    if entry.action is not None and entry.action not in ACTIONS:
        raise IntegrationError("906", "unknown XDM action", f"{entry.uri} action")


def _identity(header: CdaHeader, entry: XdmEntry, package: XdmPackage, seen: set[tuple[str, str]]) -> None:
    """903, 905, 904 for one document, in that order (no INS; INS without traits; another patient)."""
    where = f"{entry.uri} recordTarget/patientRole"
    p = header.patient
    if not p.ins:
        raise IntegrationError("903", "the CDA names no INS", where + "/id")
    if not (p.family and p.given and len(p.birth_time) >= 8 and p.gender):
        raise IntegrationError("905", "INS traits incomplete (birth name, first given name, birth date, sex)",
                               where + "/patient")
    ins = (p.ins, p.ins_oid)
    for label, cx in (("DocumentEntry.patientId", entry.patient_id),
                      ("SubmissionSet.patientId", package.patient_id)):
        if cx and _cx_id(cx) != ins:
            raise IntegrationError("904", f"CDA INS differs from the XDM {label}", entry.uri)
    if seen and ins not in seen:
        raise IntegrationError("904", "CDA INS differs from another CDA of the archive", entry.uri)
    seen.add(ins)


def _target(header: CdaHeader, entry: XdmEntry) -> str:
    """The delivered version this one acts on: the replaced parent (C), the document itself (D)."""
    if entry.action == "C":
        if not header.parent_id:
            raise IntegrationError("900", "replacement without relatedDocument/parentDocument/id",
                                   f"{entry.uri} relatedDocument")
        return header.parent_id
    return header.unique_id


def _version(header: CdaHeader, entry: XdmEntry, previous: Callable[[str], Delivered | None]) -> None:
    """900 and 901 for a replacement or deletion, against what the gateway delivered before.

    A document the gateway never delivered (nothing under its id nor its set) is passed on: the
    consumer may hold it from elsewhere and answers 900 itself if it does not."""
    target = _target(header, entry)
    known = previous(target)
    latest = previous(header.set_id) if header.set_id else None
    if known is None and latest is None:
        return
    if known is None or (latest is not None and latest.unique_id != known.unique_id):
        raise IntegrationError("900", "the version acted on is not the latest one delivered", entry.uri)
    if entry.action == "C" and header.version <= known.version:
        raise IntegrationError("900", "replacement does not carry a newer version", f"{entry.uri} versionNumber")
    if entry.action == "D" and header.version != known.version:
        raise IntegrationError("900", "deletion of another version than the one delivered",
                               f"{entry.uri} versionNumber")
    same_author = header.author.id and header.author.id == known.author
    same_org = known.organisation and header.author.organisation_id == known.organisation
    if not (same_author or same_org):
        raise IntegrationError("901", "replacement/deletion by another author or organisation than the "
                                      "delivered document's", f"{entry.uri} author")


def check(mail: IncomingMail, package: XdmPackage, previous: Callable[[str], Delivered | None]) -> None:
    """Raise `IntegrationError` (900, 901, 903, 904, 905, 906) at the first document that must not
    be integrated automatically; return when every CDA of the archive may go to the consumer."""
    del mail  # the checks judge the archive; the mail's facts travel to the MDM and MDN only
    entries = cda_entries(package)
    if not entries:
        raise IntegrationError("906", "the XDM archive holds no CDA document", "METADATA.XML")
    seen: set[tuple[str, str]] = set()
    for entry in entries:
        _integrity(entry)
        header = header_of(entry)
        _identity(header, entry, package, seen)
        if entry.action in ("C", "D"):
            _version(header, entry, previous)
