"""read_incoming: the facts of the doctor's mail, its IHE_XDM.ZIP, its PDFs; typed errors, no content."""

from __future__ import annotations

import pytest

from gateway.lps.incoming import read_incoming
from gateway.routing.model import PayloadError
from tests.lps.samples import APP, DOCTOR, REPLY, cda, mail

PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


def test_facts_archive_and_pdf() -> None:
    data = mail(cda(), pdf=PDF, original_recipient=APP)
    incoming, package, pdfs = read_incoming(data, recipient=APP, return_path=DOCTOR)
    assert incoming.sender == DOCTOR and incoming.reply_to == REPLY and incoming.recipient == APP
    assert incoming.message_id == "<lps-1@cabinet.test>"
    assert incoming.subject == "XDM/1.0/DDM+Compte rendu TESTPATIENTE Ondine"  # decoded (RFC 2047)
    assert incoming.body == "Chère consœur, voici le CR."
    assert incoming.disposition_notification_to == DOCTOR and incoming.return_path == DOCTOR
    assert incoming.original_recipient == APP
    assert package is not None and len(package.documents) == 1 and package.documents[0].data == cda()
    assert pdfs == (PDF,)
    assert "TESTPATIENTE" not in repr(incoming) and "consœur" not in repr(incoming)


@pytest.mark.parametrize(("name", "ctype"), [("ihe_xdm.zip", "application/zip"),
                                             ("IHE_XDM.ZIP", "application/octet-stream")])
def test_archive_name_in_any_case(name: str, ctype: str) -> None:
    _, package, _ = read_incoming(mail(cda(), zip_name=name, zip_type=ctype), recipient=APP, return_path=DOCTOR)
    assert package is not None


def test_mail_without_xdm_gives_no_package() -> None:
    incoming, package, pdfs = read_incoming(mail(pdf=PDF, dnt=None, reply_to=None), recipient=APP,
                                            return_path=DOCTOR)
    assert package is None and pdfs == (PDF,)
    assert incoming.reply_to is None and incoming.disposition_notification_to is None


def test_other_zip_names_are_not_the_archive() -> None:
    _, package, _ = read_incoming(mail(cda(), zip_name="autre.zip"), recipient=APP, return_path=DOCTOR)
    assert package is None


@pytest.mark.parametrize("data", [b"", b"\x00\x01 not a mail", b"Subject: x\r\n\r\nno sender\r\n"])
def test_malformed_mail_is_a_payload_error(data: bytes) -> None:
    with pytest.raises(PayloadError):
        read_incoming(data, recipient=APP, return_path=DOCTOR)


def test_two_archives_are_refused() -> None:
    from email import message_from_bytes, policy

    msg = message_from_bytes(mail(cda()), policy=policy.SMTP)
    part = next(p for p in msg.iter_attachments())
    msg.attach(part)
    with pytest.raises(PayloadError) as info:
        read_incoming(msg.as_bytes(), recipient=APP, return_path=DOCTOR)
    assert "IHE_XDM" in str(info.value) and "TESTPATIENTE" not in str(info.value)


def test_an_archive_inside_a_forwarded_mail_is_not_this_mails() -> None:
    from email import message_from_bytes, policy
    from email.message import EmailMessage

    outer = EmailMessage(policy=policy.SMTP)
    outer["From"] = DOCTOR
    outer["Subject"] = "Fwd"
    outer.set_content("voir le message joint")
    outer.add_attachment(message_from_bytes(mail(cda()), policy=policy.SMTP))
    incoming, package, _ = read_incoming(outer.as_bytes(), recipient=APP, return_path=DOCTOR)
    assert package is None and incoming.body == "voir le message joint"
