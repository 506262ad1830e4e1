"""The outgoing MIME message: neutral headers, exact attachments, a readable XDM package."""

from __future__ import annotations

import datetime as dt
import email
from email import policy
from email.message import EmailMessage

from gateway.intake.wrap import payload_message
from gateway.routing.payload import read_payload
from gateway.routing.xdm import read_xdm
from tests.intake import samples as s

NOW = dt.datetime(2025, 1, 15, 10, 0, tzinfo=dt.UTC)
PATIENT_MARKERS = (s.INS, s.PATIENT_FAMILY, s.PATIENT_GIVEN, "Clemence", "19990101")


def _build(payload: bytes, *, xdm: bool = True, filename: str = "PATIENTFICTIF_Clemence.hpr") -> EmailMessage:
    info = read_payload(payload, filename)
    raw = payload_message(payload, info, sender=s.LIS, recipients=[s.ADDR_SMIME, s.ADDR_LOCAL], filename=filename,
                          now=NOW, xdm=xdm, xdm_source_id="1.2.250.9999.7")
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")  # CRLF only
    assert max(raw) < 128  # 7-bit
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    headers = "\n".join(f"{k}: {v}" for k, v in msg.items())
    for part in msg.walk():
        headers += "\n" + "\n".join(f"{k}: {v}" for k, v in part.items())
    for marker in PATIENT_MARKERS:
        assert marker not in headers, marker
    assert msg["From"] == s.LIS and s.ADDR_SMIME in msg["To"] and msg["Message-ID"] and msg["Date"]
    return msg


def _attachments(msg: EmailMessage) -> dict[str, EmailMessage]:
    return {part.get_filename(): part for part in msg.iter_attachments()}


def test_hprim_attachment_is_byte_identical() -> None:
    payload = s.hprim_medecin()
    msg = _build(payload)
    assert msg["Subject"] == "Résultat de laboratoire" and msg["X-Msgw-Replaces"] is None
    atts = _attachments(msg)
    assert set(atts) == {"resultat.hpr"}  # the LIS file name (with the patient's name) is not reused
    part = atts["resultat.hpr"]
    assert part.get_content_type() == "text/plain" and part.get_param("charset") == "iso-8859-1"
    assert part["Content-Transfer-Encoding"] == "base64"
    assert part.get_payload(decode=True) == payload
    body = msg.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "Laboratoire Fictif" in text and "REQ42" in text
    for marker in PATIENT_MARKERS:
        assert marker not in text


def test_cda_gets_an_xdm_package() -> None:
    payload = s.cda()
    msg = _build(payload, filename="cr.xml")
    atts = _attachments(msg)
    assert set(atts) == {"document.xml", "IHE_XDM.ZIP"}
    assert atts["document.xml"].get_content_type() == "text/xml"
    assert atts["document.xml"].get_payload(decode=True) == payload
    package = read_xdm(atts["IHE_XDM.ZIP"].get_payload(decode=True))
    assert package.documents[0].data == payload and package.documents[0].type_code == "11502-2"
    assert package.source_id == "1.2.250.9999.7"
    assert _attachments(_build(payload, xdm=False, filename="cr.xml")).keys() == {"document.xml"}


def test_hl7_with_embedded_cda_and_correction() -> None:
    doc = s.cda()
    payload = s.oru(embedded=doc, status="C")
    msg = _build(payload, filename="x.hl7")
    assert msg["X-Msgw-Replaces"] == "yes" and msg["Subject"] == "Résultat de laboratoire (version corrigée)"
    atts = _attachments(msg)
    assert atts["message.hl7"].get_content_type() == "application/hl7-v2"
    assert atts["message.hl7"].get_payload(decode=True) == payload  # bare CR segment ends kept
    package = read_xdm(atts["IHE_XDM.ZIP"].get_payload(decode=True))
    assert package.documents[0].data == doc


def test_pdf_media_type() -> None:
    msg = _build(s.PDF, filename="cr.pdf")
    part = _attachments(msg)["document.pdf"]
    assert part.get_content_type() == "application/pdf" and part.get_payload(decode=True) == s.PDF
    assert msg["Subject"] == "Document médical"


def test_mdn_requested_when_configured() -> None:
    from gateway.directory.directory import SqliteDirectory
    from gateway.intake.process import intake_bytes
    from gateway.intake.settings import RoutingSettings

    with SqliteDirectory(":memory:") as directory:
        settings = RoutingSettings(unrouted_default="tri@labo.test", request_mdn=True)
        result = intake_bytes(s.cda(recipients=()), "x.xml", sender="lis@labo.test",
                              envelope_recipients=["dr@cabinet.test"], directory=directory, dedup=None,
                              settings=settings, now=dt.datetime(2026, 11, 25, tzinfo=dt.UTC))
    msg = email.message_from_bytes(result.outgoing[0].message, policy=policy.default)
    assert msg["Disposition-Notification-To"] == "<lis@labo.test>"
