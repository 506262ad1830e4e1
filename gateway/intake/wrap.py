"""The outgoing message for a payload: neutral headers, a French note for the human, the payload
attached byte for byte, and an IHE XDM package for structured documents.

Why these choices:
- **Nothing about the patient in the headers** (Subject, file names): headers travel in clear
  between MTAs even when the body is S/MIME-encrypted. The subject says only the family of
  document ("Résultat de laboratoire", "Compte rendu"); attachment names are fixed
  (``resultat.hpr``, ``message.hl7``...) because LIS file names often carry the patient's name.
- **Base64 for every attachment**: the doctor's software integrates the exact bytes; base64
  keeps them through any MTA (HPRIM in ISO-8859-1, HL7 segments ended by a bare CR, which a
  ``text/*`` part sent 8bit/quoted-printable would see rewritten to CRLF) and is 7-bit safe.
- **HL7 v2 as ``application/hl7-v2``**, the media type our reader declares: there is no IANA
  registration for ER7-encoded HL7 v2 (``application/hl7v2+xml`` is the XML encoding); a
  non-``text`` type keeps mail clients from re-flowing or re-ending lines, and the ``charset``
  parameter tells the receiving software how MSH-18 was applied.
- HPRIM as ``text/plain`` with the file's charset (what HPRIM-integrating software expects),
  CDA as ``text/xml`` with its declared encoding, PDF as ``application/pdf``.
- Each of these answers is the payload format's (:class:`~gateway.routing.model.PayloadFormat`,
  found in :mod:`gateway.routing.formats`): this module never switches on a format's name.
- An ``X-Msgw-Replaces: yes`` header (and ``X-Msgw-Cancels: yes``) marks corrections so that
  downstream stages and the audit can see it without parsing the payload.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Sequence
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from gateway.logs import event
from gateway.routing import formats
from gateway.routing.model import EmbeddedDocument, MediaType, PartyRef, PayloadError, PayloadInfo
from gateway.routing.xdm import default_source_id

log = logging.getLogger(__name__)

_EXT = re.compile(r"^[A-Za-z0-9]{1,5}$")

def is_lab_result(info: PayloadInfo) -> bool:
    return formats.is_lab_result(info)


def subject_for(info: PayloadInfo) -> str:
    """A neutral subject: the document family and whether it corrects or cancels, nothing else."""
    base = "Résultat de laboratoire" if is_lab_result(info) else formats.of(info).report_subject
    if info.cancels:
        return base + " (annulation)"
    if info.replaces:
        return base + " (version corrigée)"
    return base


def attachment_name(info: PayloadInfo, filename: str | None = None) -> str:
    """A fixed, neutral attachment name; only a short alphanumeric extension of ``filename`` is kept."""
    ext = ""
    if filename and "." in filename:
        candidate = filename.rsplit(".", 1)[1]
        ext = candidate.lower() if _EXT.match(candidate) else ""
    return formats.of(info).attachment_name(ext)


def media_type_for(info: PayloadInfo) -> MediaType:
    """(maintype, subtype, params) of the payload attachment."""
    return formats.of(info).media_type(info)


def embedded_documents(payload: bytes, info: PayloadInfo) -> list[EmbeddedDocument]:
    """Documents the payload carries (CDA/PDF in HL7 OBX), with what their reader said."""
    return formats.of(info).embedded_documents(payload, info)


def _when(value: str | None) -> str:
    m = re.match(r"^(\d{4})(\d{2})(\d{2})(\d{2})?(\d{2})?", value or "")
    if not m:
        return ""
    text = f"{m.group(3)}/{m.group(2)}/{m.group(1)}"
    return text + (f" {m.group(4)}:{m.group(5)}" if m.group(4) and m.group(5) else "")


def _author(info: PayloadInfo) -> str:
    a = info.author
    if a is None or a.is_patient:
        return ""
    name = a.display_name or a.organisation
    ident = f"{a.id_type} {a.value}" if a.id_type in ("RPPS", "IDNAT", "ADELI") else ""
    return ", ".join(x for x in (name, ident) if x)


def human_text(info: PayloadInfo, names: Sequence[str]) -> str:
    """The French note for the reader: type, author, date, reference — never the patient's identity."""
    label = info.title or info.document_type.label or info.document_type.code
    lines = ["Bonjour,", "",
             "Ce message transmet un document émis automatiquement par le système d'information de l'expéditeur.",
             "", f"Type de document : {subject_for(info).split(' (')[0]} ({label})"]
    if _author(info):
        lines.append(f"Émetteur : {_author(info)}")
    if _when(info.created):
        lines.append(f"Date du document : {_when(info.created)}")
    if info.document_id:
        lines.append(f"Référence du document : {info.document_id}")
    if info.cancels:
        lines.append("Ce document ANNULE un envoi précédent.")
    elif info.replaces:
        lines.append("Ce document REMPLACE un envoi précédent"
                     + (f" (référence {info.replaced_id})." if info.replaced_id else "."))
    lines += ["", "Pièces jointes : " + ", ".join(names), "",
              "L'identité du patient figure uniquement dans le document joint, destiné à être intégré",
              "par votre logiciel.", ""]
    return "\r\n".join(lines)


def _xdm(payload: bytes, info: PayloadInfo, embedded: Sequence[EmbeddedDocument], *, now: dt.datetime,
         source_id: str, intended: Sequence[PartyRef]) -> bytes | None:
    from gateway.routing.xdm import XdmDocument, build_xdm

    if formats.of(info).xdm_document:
        docs = [XdmDocument(payload, info, "text/xml")]
    else:
        docs = [XdmDocument(a.data, a.info, a.media_type) for a in embedded if formats.of(a.info).xdm_document]
    if not docs:
        return None
    try:
        return build_xdm(docs, source_id=source_id, now=now, intended_recipients=intended)
    except (PayloadError, ValueError) as exc:
        # e.g. no patient identifier with an OID: the payload still goes, without the package
        event(log, "xdm-skipped", logging.WARNING, reason=getattr(exc, "what", type(exc).__name__))
        return None


def payload_message(payload: bytes, info: PayloadInfo, *, sender: str, recipients: Sequence[str],
                    filename: str | None, now: dt.datetime, xdm: bool, xdm_source_id: str | None = None,
                    intended: Sequence[PartyRef] = (), mdn_to: str | None = None,
                    pdfs: Sequence[bytes] = ()) -> bytes:
    """Build the CRLF MIME message carrying ``payload`` (see the module docstring).

    ``pdfs`` are PDF documents sent beside the payload (``X.hpr`` + ``X.pdf``); they are attached
    after the payload, with the PDFs the payload itself carries (HL7 OBX ED).
    """
    if now.tzinfo is None:
        now = now.replace(tzinfo=dt.UTC)
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or "msgw.localhost")
    msg["Subject"] = subject_for(info)
    msg["Auto-Submitted"] = "auto-generated"
    if mdn_to:
        # RFC 8098: the doctor's client sends a read/processed receipt back to the sending system.
        msg["Disposition-Notification-To"] = f"<{mdn_to}>"
    if info.replaces:
        msg["X-Msgw-Replaces"] = "yes"
    if info.cancels:
        msg["X-Msgw-Cancels"] = "yes"

    fmt = formats.of(info)
    embedded = embedded_documents(payload, info)
    attachments: list[tuple[bytes, str, str, str, dict[str, str]]] = []
    maintype, subtype, params = media_type_for(info)
    attachments.append((payload, maintype, subtype, attachment_name(info, filename), params))
    is_pdf = (maintype, subtype) == ("application", "pdf")
    all_pdfs = [*pdfs, *(a.data for a in embedded if a.media_type == "application/pdf")]
    if is_pdf:  # the payload is itself "document.pdf": number the others from 2
        all_pdfs = [payload, *all_pdfs]
    for n, pdf in enumerate(all_pdfs, start=1):
        if is_pdf and n == 1:
            continue
        attachments.append((pdf, "application", "pdf", "document.pdf" if len(all_pdfs) == 1 else
                            f"document-{n}.pdf", {}))
    if xdm and not fmt.xdm_package:
        package = _xdm(payload, info, embedded, now=now, source_id=xdm_source_id or default_source_id(sender),
                       intended=intended)
        if package is not None:
            attachments.append((package, "application", "zip", "IHE_XDM.ZIP", {}))

    msg.set_content(human_text(info, [a[3] for a in attachments]), subtype="plain", charset="utf-8",
                    cte="quoted-printable")
    for data, main, sub, att_name, att_params in attachments:
        msg.add_attachment(data, maintype=main, subtype=sub, filename=att_name, cte="base64",
                           params=att_params)
    for part in msg.iter_parts():
        del part["MIME-Version"]  # only the top level carries it
    return msg.as_bytes(policy=policy.SMTP)


def notice_message(notices: Sequence[str], info: PayloadInfo, *, sender: str, to: str, now: dt.datetime,
                   queue_ref: str = "") -> bytes:
    """The notice to the sending system: which professionals' identifiers were not found (no patient data)."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=dt.UTC)
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = sender
    msg["To"] = to
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or "msgw.localhost")
    msg["Subject"] = "Avis de routage : destinataire non identifié"
    msg["Auto-Submitted"] = "auto-generated"
    lines = ["Bonjour,", "",
             "La passerelle n'a pas pu identifier tous les destinataires d'un document que vous avez émis.", "",
             f"Type de document : {info.document_type.label or info.document_type.code}"]
    if info.document_id:
        lines.append(f"Référence du document : {info.document_id}")
    if queue_ref:
        lines.append(f"Référence de traitement : {queue_ref}")
    lines += ["", *notices, "",
              "Merci de compléter l'annuaire ou la table de correspondance des codes du laboratoire.", ""]
    msg.set_content("\r\n".join(lines), subtype="plain", charset="utf-8", cte="quoted-printable")
    return msg.as_bytes(policy=policy.SMTP)


__all__ = ["attachment_name", "default_source_id", "embedded_documents", "human_text",
           "is_lab_result", "media_type_for", "notice_message", "payload_message", "subject_for"]
