"""What the sender learns: the integration MDN (RFC 8098, ANS profile struct-msg-mdn) when the mail
asked for one, else on failure the "courriel standard" error notice (struct-email-standard).

Why both: an MDN may only answer a ``Disposition-Notification-To`` (and, as RFC 8098's loop guard,
is not sent automatically when that address differs from the return path); a failed integration
must still reach the sender, so without a request the IG has a plain mail with the same subject
convention. Both re-attach the original IHE_XDM.ZIP and PDF as the profile says; the subject and
body are the original's, so they leave only through the protection policy like any mail. Pure:
the clock and host names come from the caller; the Message-ID is derived, not random.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
from datetime import datetime
from email.message import EmailMessage, Message
from email.utils import format_datetime

from gateway.lps.model import IncomingMail

DISPOSITION_OK = "automatic-action/MDN-sent-automatically; processed"
KO_PREFIX = "[KO Intégration système !]"
_INTRO_KO = "Le message ci-dessous n’a pas pu être intégré automatiquement dans le DPI pour la raison suivante : "
_INTRO_OK = "Le message ci-dessous a été intégré automatiquement dans le DPI."


def mdn_allowed(mail: IncomingMail) -> bool:
    """An MDN was asked (Disposition-Notification-To) and goes to the return path (RFC 8098 loop guard)."""
    dnt = (mail.disposition_notification_to or "").strip().lower()
    return bool(dnt) and dnt == mail.return_path.strip().lower()


def subject(mail: IncomingMail, error: tuple[str, str] | None) -> str:
    """``XDM/1.0/DDM+…`` (the original's), prefixed ``[KO Intégration système !][code] `` on failure."""
    return f"{KO_PREFIX}[{error[0]}] {mail.subject}" if error else mail.subject


def _message_id(mail: IncomingMail, kind: str, now: datetime, domain: str) -> str:
    seed = f"{kind}|{mail.message_id}|{mail.recipient}|{now.isoformat()}".encode()
    return f"<{kind}.{hashlib.sha256(seed).hexdigest()[:32]}@{domain}>"


def _human(error: tuple[str, str] | None) -> str:
    return f"{_INTRO_KO}{error[0]}^{error[1]}\r\n" if error else f"{_INTRO_OK}\r\n"


def _originals(original: bytes) -> list[Message]:
    """The original mail's attachments to send back: its IHE_XDM.ZIP and its PDF(s)."""
    msg = email.message_from_bytes(original, policy=email.policy.default)
    keep: list[Message] = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        name = (part.get_filename() or "").strip()
        if name.upper() == "IHE_XDM.ZIP" or part.get_content_type() == "application/pdf":
            keep.append(part)
    return keep


def _attach(msg: EmailMessage, parts: list[Message]) -> None:
    for part in parts:
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes):
            continue
        maintype, _, subtype = part.get_content_type().partition("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=part.get_filename() or "piece-jointe")
    for sub in msg.iter_parts():
        del sub["MIME-Version"]


def _headers(msg: EmailMessage, mail: IncomingMail, *, to: str, from_address: str, now: datetime,
             error: tuple[str, str] | None, kind: str) -> None:
    msg["From"] = from_address
    msg["To"] = to
    msg["Subject"] = subject(mail, error)
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = _message_id(mail, kind, now, from_address.rpartition("@")[2] or "localhost")
    if mail.message_id:
        msg["In-Reply-To"] = mail.message_id
        msg["References"] = mail.message_id
    msg["Auto-Submitted"] = "auto-replied"


def _notification(mail: IncomingMail, reporting_host: str, error: tuple[str, str] | None) -> bytes:
    """The message/disposition-notification fields (RFC 8098 section 3.2)."""
    lines = [f"Reporting-UA: {reporting_host}; msgw"]
    if mail.original_recipient:
        lines.append(f"Original-Recipient: rfc822;{mail.original_recipient}")
    lines.append(f"Final-Recipient: rfc822;{mail.recipient}")
    if mail.message_id:
        lines.append(f"Original-Message-ID: {mail.message_id}")
    disposition = DISPOSITION_OK + (f"/Error: {error[0]}^{error[1]}" if error else "")
    lines.append(f"Disposition: {disposition}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def build_mdn(original: bytes, mail: IncomingMail, *, reporting_host: str, from_address: str, now: datetime,
              error: tuple[str, str] | None = None) -> bytes:
    """``multipart/report; report-type=disposition-notification`` to the Disposition-Notification-To:
    human text (French, the code and label on failure), the notification, the original body, then
    the original IHE_XDM.ZIP and PDF. No Disposition-Notification-To of its own (never a loop)."""
    to = mail.disposition_notification_to or mail.return_path
    msg = EmailMessage(policy=email.policy.SMTP)
    _headers(msg, mail, to=to, from_address=from_address, now=now, error=error, kind="mdn")
    msg.set_content(_human(error), charset="utf-8")
    msg.make_mixed()
    notification = EmailMessage(policy=email.policy.SMTP)
    notification.set_content(_notification(mail, reporting_host, error), maintype="message",
                             subtype="disposition-notification", cte="8bit")
    del notification["MIME-Version"]
    msg.attach(notification)
    body = EmailMessage(policy=email.policy.SMTP)
    body.set_content(mail.body or "", charset="utf-8")
    del body["MIME-Version"]
    msg.attach(body)
    _attach(msg, _originals(original))
    msg.set_type("multipart/report")
    msg.set_param("report-type", "disposition-notification")
    return msg.as_bytes()


def build_error_notice(original: bytes, mail: IncomingMail, *, from_address: str, now: datetime,
                       error: tuple[str, str]) -> bytes:
    """The "courriel standard" to the sender (From) when integration failed and no MDN was asked:
    the same subject convention and human text, the original body, the original attachments."""
    msg = EmailMessage(policy=email.policy.SMTP)
    _headers(msg, mail, to=mail.sender, from_address=from_address, now=now, error=error, kind="notice")
    msg.set_content(_human(error) + f"Code d’erreur : {error[0]}\r\nErreur détectée : {error[1]}\r\n", charset="utf-8")
    msg.make_mixed()
    body = EmailMessage(policy=email.policy.SMTP)
    body.set_content(mail.body or "", charset="utf-8")
    del body["MIME-Version"]
    msg.attach(body)
    _attach(msg, _originals(original))
    return msg.as_bytes()
