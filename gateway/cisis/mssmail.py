"""The MSSanté message of one copy of a CI-SIS transmission: what msgw, as the GESTIONNAIRE,
sends to the professionals (one message) or to the patient's Mon espace santé mailbox.

Rules (Référentiel #2 and the IG "Transmission de document(s) CDA en HL7v2", pages
``mapping-mss`` and ``exemples``):

- ``From:`` the platform's application mailbox (so DSNs and read MDNs come back to it and become
  ZAMs); ``To:`` the copy's recipients; ``Reply-To:`` the CRÉATEUR's ``PRT-4 = REPLY`` address,
  except on a patient copy the professional closed to replies (there ``X-MSS-MES: FIN``, and no
  Reply-To at all).
- ``Subject:`` ``XDM/1.0/DDM+<libellé> <NOM> <prénom> <date de naissance>``, the convention of the
  IG examples and Ref#2 ECO.2.1.3 that receiving platforms route on. **It names the patient.**
  That is acceptable only because such a copy never travels in clear: it leaves either inside
  S/MIME, where `gateway.smime.headers` cuts the outer header block to its allow-list (a neutral
  Subject, no ``X-*``) and protects the real one inside, or over trust-space mutual TLS between
  MSSanté operators. The Subject and the body therefore never reach a log, an audit record or
  `BuiltCopy.headers` (which ``msgw payload plan`` prints). A replacement or a deletion keeps the
  same Subject; the body says what to do (IG exemples 2 and 3).
- Body: the CRÉATEUR's ``CORPSMAIL_PS`` / ``CORPSMAIL_PATIENT`` text, or a neutral French default,
  then the replacement / deletion sentence.
- Attachments: ``IHE_XDM.ZIP`` with every CDA of the transmission byte for byte (extra-metadata
  ``action`` C / D for a replacement / deletion), then the PDF(s) the N1 CDA(s) carry.
- ``X-MSS-CODECDA`` (ECO.2.4.1) and ``X-MSS-INS`` (ECO.2.4.2) are computed from the archive just
  built, read back with `read_xdm`, never from the HL7 message: they describe what the recipient
  gets. ``X-MSS-CODECDA`` is one field, the codes comma-separated without spaces, duplicates
  removed, first-seen order (Ref#2 says only "multi-valué"; the comma list is the form the
  published client implementations use, e.g. ``34112-3,PRESC-BIO``). ``X-MSS-INS`` is ``O`` only
  when every CDA of the archive carries a qualified INS (INS-NIR/NIA OID, or the .10 test one,
  and the four traits), the same matricule as the HL7 PID, and the PID identity is qualified.
- ``X-MSS-NIL`` (ECO.2.4.3) on every message; ``Disposition-Notification-To:`` the application
  mailbox when the CRÉATEUR asked for read acknowledgments (``ACK_LECTURE_MSS = Y``).
- No ``Auto-Submitted`` field: RFC 3834 responders and many clients suppress read receipts for
  auto-submitted mail, and the read MDN is what the CRÉATEUR's ZAM Z03 reports.

Pure: values in, bytes out; CPU-bound on large documents (zip, base64), so a caller on the
event loop runs `build_copy` in a worker thread.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from gateway.cisis import cdapdf
from gateway.cisis.model import Action, CopyPlan, Document, Recipient, RecipientKind, Transmission
from gateway.routing.cda import read_cda
from gateway.routing.model import RPPS_OID, PartyRef, PayloadInfo, professional_id_type
from gateway.routing.xdm import XDS_CODES, XdmDocument, XdmPackage, build_xdm, default_source_id, read_xdm

SUBJECT_PREFIX = "XDM/1.0/DDM+"
XDM_NAME = "IHE_XDM.ZIP"
_XDM_ACTION = {Action.INITIAL: None, Action.REPLACE: "C", Action.DELETE: "D"}


@dataclass(frozen=True)
class BuiltCopy:
    """One MSSanté message ready for the spool. ``headers`` are the MSSanté-specific fields set
    (for ``msgw payload plan``): never the Subject, which names the patient. ``recipients`` may
    be a patient's ``<INS>@patient.mssante.fr``: kept out of repr, never logged."""

    kind: str  # "professional" | "patient" (the CopyPlan's)
    data: bytes = field(repr=False)  # CRLF MIME
    message_id: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    attachments: tuple[str, ...] = ()
    recipients: tuple[str, ...] = field(default=(), repr=False)
    #: What the copy lacks and why ("no PDF rendering: ...").
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class _ArchiveFacts:
    """What the archive just built says, read back from it."""

    codes: tuple[str, ...]
    identities: tuple[cdapdf.CdaIdentity, ...]
    infos: tuple[PayloadInfo, ...]
    pdfs: tuple[bytes, ...]


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    """Duplicates removed, first-seen order kept."""
    return tuple(dict.fromkeys(v for v in values if v))


def _info(doc: Document) -> PayloadInfo:
    return doc.info if doc.info is not None else read_cda(doc.data)


def _party(r: Recipient) -> PartyRef:
    """A copy recipient as the submission set's intendedRecipient."""
    if r.kind is RecipientKind.PS and r.identifier:
        return PartyRef(professional_id_type(r.identifier, national=r.authority in ("", RPPS_OID)), r.identifier,
                        family=r.family, given=r.given, organisation=r.organisation, address=r.address,
                        role="intendedRecipient")
    return PartyRef("ADDRESS", r.address, organisation=r.organisation, address=r.address, role="intendedRecipient",
                    is_patient=r.kind is RecipientKind.PATIENT)


def build_archive(tx: Transmission, recipients: Sequence[Recipient], *, source_id: str, now: dt.datetime) -> bytes:
    """``IHE_XDM.ZIP`` with every CDA of the transmission, byte for byte, and the action slot."""
    action = _XDM_ACTION[tx.action]
    docs = [XdmDocument(d.data, _info(d), "text/xml", action=action) for d in tx.documents]
    return build_xdm(docs, source_id=source_id, now=now, intended_recipients=[_party(r) for r in recipients])


def archive_facts(package: XdmPackage) -> _ArchiveFacts:
    """Codes, identities and PDF renderings of the CDA documents of a package read back."""
    cdas = [e for e in package.documents if "xml" in e.mime_type.lower()]
    infos = tuple(read_cda(e.data) for e in cdas)
    pdfs = tuple(pdf for e, info in zip(cdas, infos, strict=True) if info.body == "nonxml"
                 for pdf in cdapdf.pdfs(e.data))
    return _ArchiveFacts(codes=_unique(i.document_type.code for i in infos),
                         identities=tuple(cdapdf.identity(e.data) for e in cdas), infos=infos, pdfs=pdfs)


def ins_header(tx: Transmission, identities: Sequence[cdapdf.CdaIdentity]) -> str:
    """``O`` when every CDA carries a qualified INS, the PID's, and the PID identity is qualified."""
    ok = bool(identities) and tx.patient.qualified and all(
        i.qualified and i.ins == tx.patient.ins for i in identities)
    return "O" if ok else "N"


def _birth(value: str) -> str:
    return f"{value[6:8]}/{value[4:6]}/{value[0:4]}" if len(value) >= 8 and value[:8].isdigit() else ""


def document_label(tx: Transmission, infos: Sequence[PayloadInfo]) -> str:
    """The document type label: the CDA's code displayName, the OBX-3 text, the XDS label, the code."""
    first = infos[0] if infos else None
    code = first.document_type.code if first else (tx.documents[0].code if tx.documents else "")
    known = XDS_CODES.get(code)
    candidates = (first.document_type.label if first else "", tx.documents[0].label if tx.documents else "",
                  known.content_type.display if known else "", code)
    return next((" ".join(c.split()) for c in candidates if c and c.strip()), "Document")


def subject(tx: Transmission, label: str, identity: cdapdf.CdaIdentity | None) -> str:
    """``XDM/1.0/DDM+<libellé> <NOM> <prénom> <date de naissance>`` (traits from the PID, else the CDA)."""
    p = tx.patient
    family = p.family or (identity.family if identity else "")
    given = p.given or (identity.given if identity else "")
    birth = _birth(p.birth_date) or _birth(identity.birth_time if identity else "")
    parts = [label, family.upper(), given, birth]
    return SUBJECT_PREFIX + " ".join(" ".join(x.split()) for x in parts if x and x.strip())


def _references(values: Iterable[str | None]) -> str:
    return ", ".join(_unique(v or "" for v in values))


def action_sentence(tx: Transmission, infos: Sequence[PayloadInfo], *, patient: bool) -> str:
    """The replacement / deletion sentence the IG asks for in the body ('' for an initial send)."""
    if tx.action is Action.REPLACE:
        if patient:
            return "Ce document remplace celui qui vous a été transmis précédemment."
        ref = _references(i.replaced_id for i in infos)
        return ("Ce document remplace la version transmise précédemment"
                + (f" (document remplacé : {ref})." if ref else "."))
    if tx.action is Action.DELETE:
        if patient:
            return ("Le document joint a été retiré par le professionnel qui l'a émis : il doit être supprimé "
                    "et ne doit plus être pris en compte.")
        ref = _references(i.document_id for i in infos)
        return ("Le document joint doit être supprimé : son auteur l'a retiré"
                + (f" (document : {ref})" if ref else "") + ". Merci de le supprimer de votre dossier "
                "et de ne plus en tenir compte.")
    return ""


def default_body(label: str, *, patient: bool, with_pdf: bool, no_reply: bool) -> str:
    """A neutral French text when the CRÉATEUR gave none (no patient data in it)."""
    if patient:
        lines = ["Bonjour,", "", f"Un professionnel de santé vous transmet un document : « {label} ».",
                 "Vous le trouverez en pièce jointe de ce message."]
        if no_reply:
            lines += ["", "Il n'est pas possible de répondre à ce message."]
        return "\n".join(lines)
    readable = " ; le fichier PDF en est la version lisible." if with_pdf else "."
    return "\n".join(["Bonjour,", "", f"Veuillez trouver ci-joint le document « {label} ».",
                      f"L'archive {XDM_NAME} permet son intégration dans votre logiciel{readable}"])


def body_text(tx: Transmission, copy: CopyPlan, label: str, facts: _ArchiveFacts) -> str:
    """The CRÉATEUR's text for this kind of copy (else the default), then the action sentence."""
    patient = copy.kind == "patient"
    given = tx.bodies.get(copy.body_code, "")
    if given.strip():
        text = given.replace("\r\n", "\n").replace("\r", "\n").strip("\n")
    else:
        text = default_body(label, patient=patient, with_pdf=bool(facts.pdfs), no_reply=copy.no_reply and patient)
    sentence = action_sentence(tx, facts.infos, patient=patient)
    return text + ("\n\n" + sentence if sentence else "") + "\n"


def mss_headers(tx: Transmission, copy: CopyPlan, facts: _ArchiveFacts, *, application_mailbox: str,
                nil: str) -> tuple[tuple[str, str], ...]:
    """The MSSanté-specific fields, in the order they are written."""
    patient = copy.kind == "patient"
    closed = patient and copy.no_reply
    out: list[tuple[str, str]] = []
    if tx.reply_to and not closed:
        out.append(("Reply-To", tx.reply_to))
    if copy.read_receipt:
        out.append(("Disposition-Notification-To", f"<{application_mailbox}>"))
    if facts.codes:
        out.append(("X-MSS-CODECDA", ",".join(facts.codes)))
        out.append(("X-MSS-INS", ins_header(tx, facts.identities)))
    out.append(("X-MSS-NIL", nil))
    if closed:
        out.append(("X-MSS-MES", "FIN"))
    return tuple(out)


def _pdf_names(count: int) -> list[str]:
    return ["document.pdf"] if count == 1 else [f"document-{n}.pdf" for n in range(1, count + 1)]


def _check(tx: Transmission, copy: CopyPlan, application_mailbox: str, nil: str) -> None:
    if not nil.strip():
        raise ValueError("X-MSS-NIL goes on every MSSanté message (Ref#2 ECO.2.4.3): set [intake.cisis] nil")
    if "@" not in application_mailbox:
        raise ValueError("the application mailbox must be an address: set [intake.cisis] application_mailbox")
    if not copy.recipients:
        raise ValueError(f"a {copy.kind} copy without recipients")
    if not tx.documents:
        raise ValueError("a transmission without a document")


def build_copy(tx: Transmission, copy: CopyPlan, *, application_mailbox: str, nil: str, now: dt.datetime,
               message_id: str | None = None, source_id: str | None = None) -> BuiltCopy:
    """The CRLF MIME message of ``copy`` (see the module docstring for every rule).

    Raises `ValueError` for a caller's mistake (empty ``nil``, no recipient), `CdaError` /
    `XdmError` (typed `PayloadError`, with a location) for a document that cannot be packaged.
    ``source_id`` is the XDSSubmissionSet.sourceId OID (derived from the mailbox when None).
    """
    _check(tx, copy, application_mailbox, nil)
    when = now if now.tzinfo is not None else now.replace(tzinfo=dt.UTC)
    recipients = _unique(r.address for r in copy.recipients)
    archive = build_archive(tx, copy.recipients, now=when,
                            source_id=source_id or default_source_id(application_mailbox))
    facts = archive_facts(read_xdm(archive))
    label = document_label(tx, facts.infos)
    headers = mss_headers(tx, copy, facts, application_mailbox=application_mailbox, nil=nil.strip())
    domain = application_mailbox.rpartition("@")[2]
    mid = message_id or make_msgid(domain=domain)
    mid = mid if mid.startswith("<") else f"<{mid}>"

    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = application_mailbox
    msg["To"] = ", ".join(recipients)
    msg["Date"] = format_datetime(when)
    msg["Message-ID"] = mid
    msg["Subject"] = subject(tx, label, facts.identities[0] if facts.identities else None)
    for name, value in headers:
        msg[name] = value
    msg.set_content(body_text(tx, copy, label, facts), subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_attachment(archive, maintype="application", subtype="zip", filename=XDM_NAME, cte="base64")
    pdf_names = _pdf_names(len(facts.pdfs))
    for pdf, name in zip(facts.pdfs, pdf_names, strict=True):
        msg.add_attachment(pdf, maintype="application", subtype="pdf", filename=name, cte="base64")
    for part in msg.iter_parts():
        del part["MIME-Version"]  # only the top level carries it
    notes = () if facts.pdfs else ("no PDF rendering: no N1 CDA with an application/pdf body in the transmission",)
    return BuiltCopy(kind=copy.kind, data=msg.as_bytes(policy=policy.SMTP), message_id=mid, headers=headers,
                     attachments=(XDM_NAME, *pdf_names[: len(facts.pdfs)]), recipients=recipients, notes=notes)


__all__ = ["SUBJECT_PREFIX", "XDM_NAME", "BuiltCopy", "build_copy"]
