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
- An ``X-Msgw-Replaces: yes`` header (and ``X-Msgw-Cancels: yes``) marks corrections so that
  downstream stages and the audit can see it without parsing the payload.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from gateway.logs import event
from gateway.routing.payload import PartyRef, PayloadError, PayloadInfo

log = logging.getLogger(__name__)

_LAB_CODES = {"11502-2"}
_EXT = re.compile(r"^[A-Za-z0-9]{1,5}$")
_NEUTRAL_STEM = {"hprim": "resultat", "hl7v2": "message", "cda": "document", "pdf": "document", "xdm": "IHE_XDM"}
_IANA_CHARSETS = {"cp1252": "windows-1252", "latin-1": "iso-8859-1", "utf8": "utf-8"}
_DEFAULT_EXT = {"hprim": "hpr", "hl7v2": "hl7", "cda": "xml", "pdf": "pdf", "xdm": "zip"}


@dataclass(frozen=True)
class Attachment:
    """One attached document (content kept out of repr)."""

    data: bytes = field(repr=False)
    info: PayloadInfo
    media_type: str


def is_lab_result(info: PayloadInfo) -> bool:
    if info.kind == "hprim":
        return True
    if info.kind == "hl7v2":
        return info.document_type.code.startswith("ORU")
    if info.kind in ("cda", "pdf"):  # a PDF's type comes from its sidecar
        return info.document_type.code in _LAB_CODES
    return any(is_lab_result(e) for e in info.embedded) if info.embedded else False


def subject_for(info: PayloadInfo) -> str:
    """A neutral subject: the document family and whether it corrects or cancels, nothing else."""
    if is_lab_result(info):
        base = "Résultat de laboratoire"
    elif info.kind in ("cda", "hl7v2", "xdm"):
        base = "Compte rendu"
    else:
        base = "Document médical"
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
    return f"{_NEUTRAL_STEM.get(info.kind, 'document')}.{ext or _DEFAULT_EXT.get(info.kind, 'bin')}"


def media_type_for(info: PayloadInfo) -> tuple[str, str, dict[str, str]]:
    """(maintype, subtype, params) of the payload attachment."""
    charset = _IANA_CHARSETS.get((info.encoding or "").lower(), (info.encoding or "").lower())
    if info.kind == "hprim":
        return "text", "plain", {"charset": charset or "iso-8859-1"}
    if info.kind == "hl7v2":
        return "application", "hl7-v2", {"charset": charset} if charset else {}
    if info.kind == "cda":
        return "text", "xml", {"charset": charset or "utf-8"}
    if info.kind == "pdf":
        return "application", "pdf", {}
    return "application", "zip", {}


def embedded_documents(payload: bytes, info: PayloadInfo) -> list[Attachment]:
    """CDA/PDF documents carried base64 in HL7 OBX (type ED), with what their reader said.

    Why re-read them here: :class:`PayloadInfo` keeps what a document *says*, not its bytes, and
    the XDM package and the PDF attachment need the bytes. Unreadable ones are skipped (the HL7
    reader already reported them as warnings).
    """
    if info.kind != "hl7v2" or not info.embedded:
        return []
    from gateway.routing.cda import read_cda
    from gateway.routing.hl7 import parse_message
    from gateway.routing.payload import read_pdf

    out: list[Attachment] = []
    try:
        msg = parse_message(payload)
    except PayloadError:
        return []
    for obx in msg.all("OBX"):
        if msg.value(obx, 2).upper() != "ED":
            continue
        comps = obx.raw(5).split(msg.delims.rep)[0].split(msg.delims.comp)
        if len(comps) < 5 or comps[3].strip().upper() != "BASE64":
            continue
        try:
            data = base64.b64decode(re.sub(r"\s+", "", comps[4]), validate=True)
        except (binascii.Error, ValueError):
            continue
        try:
            if data.lstrip().startswith(b"%PDF"):
                out.append(Attachment(data, read_pdf(data), "application/pdf"))
            elif data.lstrip().startswith(b"<"):
                out.append(Attachment(data, read_cda(data), "text/xml"))
        except PayloadError:
            continue
    return out


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


def _xdm(payload: bytes, info: PayloadInfo, embedded: Sequence[Attachment], *, now: dt.datetime,
         source_id: str, intended: Sequence[PartyRef]) -> bytes | None:
    from gateway.routing.xdm import XdmDocument, build_xdm

    if info.kind == "cda":
        docs = [XdmDocument(payload, info, "text/xml")]
    else:
        docs = [XdmDocument(a.data, a.info, a.media_type) for a in embedded if a.info.kind == "cda"]
    if not docs:
        return None
    try:
        return build_xdm(docs, source_id=source_id, now=now, intended_recipients=intended)
    except (PayloadError, ValueError) as exc:
        # e.g. no patient identifier with an OID: the payload still goes, without the package
        event(log, "xdm-skipped", logging.WARNING, reason=getattr(exc, "what", type(exc).__name__))
        return None


def default_source_id(sender: str) -> str:
    """An OID for XDSSubmissionSet.sourceId when none is configured: ``2.25.<UUID of the sender>`` (X.667)."""
    return "2.25." + str(uuid.uuid5(uuid.NAMESPACE_URL, "mailto:" + sender.lower()).int)


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

    embedded = embedded_documents(payload, info)
    name = attachment_name(info, filename)
    attachments: list[tuple[bytes, str, str, str, dict[str, str]]] = []
    maintype, subtype, params = media_type_for(info)
    attachments.append((payload, maintype, subtype, name if info.kind != "xdm" else "IHE_XDM.ZIP", params))
    all_pdfs = [*pdfs, *(a.data for a in embedded if a.media_type == "application/pdf")]
    if info.kind == "pdf":  # the payload is itself "document.pdf": number the others from 2
        all_pdfs = [payload, *all_pdfs]
    for n, pdf in enumerate(all_pdfs, start=1):
        if info.kind == "pdf" and n == 1:
            continue
        attachments.append((pdf, "application", "pdf", "document.pdf" if len(all_pdfs) == 1 else
                            f"document-{n}.pdf", {}))
    if xdm and info.kind != "xdm":
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


__all__ = ["Attachment", "attachment_name", "default_source_id", "embedded_documents", "human_text",
           "is_lab_result", "media_type_for", "notice_message", "payload_message", "subject_for"]
