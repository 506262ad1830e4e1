"""The integration MDN (RFC 8098, ANS profile) and the "courriel standard" error notice, read back
with the gateway's own return reader (`parse_returns`) as the sender's platform would."""

from __future__ import annotations

import dataclasses
import datetime as dt
import email
from email import policy

import pytest

from gateway.cisis.returns import ReturnError, parse_returns
from gateway.lps.incoming import read_incoming
from gateway.lps.mdn import build_error_notice, build_mdn, mdn_allowed
from gateway.lps.model import LABELS
from gateway.routing.xdm import read_xdm
from tests.lps.samples import APP, DOCTOR, REPLY, cda, mail

PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
NOW = dt.datetime(2026, 3, 2, 11, 0, tzinfo=dt.UTC)
SUBJECT = "XDM/1.0/DDM+Compte rendu TESTPATIENTE Ondine"


def _original(**kwargs):
    data = mail(cda(), pdf=PDF, **kwargs)
    incoming, _, _ = read_incoming(data, recipient=APP, return_path=DOCTOR)
    return data, incoming


def _mdn(error=None, **kwargs) -> tuple[bytes, email.message.EmailMessage]:
    data, incoming = _original(**kwargs)
    out = build_mdn(data, incoming, reporting_host="mx.hopital-imaginaire.test", from_address=APP, now=NOW,
                    error=error)
    return out, email.message_from_bytes(out, policy=policy.default)


def test_processed_mdn_reads_back_ok() -> None:
    out, msg = _mdn()
    (ret,) = parse_returns(out)
    assert ret.kind == "mdn" and ret.ok and ret.original_message_id == "lps-1@cabinet.test" and ret.recipient == APP
    assert msg["To"] == DOCTOR and msg["From"] == APP and msg["Subject"] == SUBJECT
    assert msg["Auto-Submitted"] == "auto-replied" and msg["Disposition-Notification-To"] is None
    assert msg["In-Reply-To"] == "<lps-1@cabinet.test>"
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "disposition-notification"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/disposition-notification", "text/plain",
                                                    "application/zip", "application/pdf"]
    notification = out.decode("utf-8")  # the fields as sent (the parser re-folds them when printed)
    assert "Disposition: automatic-action/MDN-sent-automatically; processed\r\n" in notification
    assert "Final-Recipient: rfc822;" + APP in notification
    assert "Reporting-UA: mx.hopital-imaginaire.test; msgw" in notification
    assert "Original-Recipient" not in notification  # the mail had none
    assert parts[1].get_content_type() == "message/disposition-notification"
    assert parts[2].get_content() .rstrip() == "Chère consœur, voici le CR."
    assert parts[3].get_filename() == "IHE_XDM.ZIP" and read_xdm(parts[3].get_payload(decode=True)).documents
    assert parts[4].get_payload(decode=True) == PDF


@pytest.mark.parametrize("code", sorted(LABELS))
def test_error_mdn_carries_code_and_label(code: str) -> None:
    out, msg = _mdn(error=(code, LABELS[code]), original_recipient=APP)
    (ret,) = parse_returns(out)
    assert not ret.ok and ret.code == code and ret.text == LABELS[code]
    assert msg["Subject"] == f"[KO Intégration système !][{code}] {SUBJECT}"
    human = next(msg.iter_parts()).get_content()
    assert human.startswith("Le message ci-dessous n’a pas pu être intégré automatiquement dans le DPI pour la "
                            "raison suivante : ") and f"{code}^{LABELS[code]}" in human
    notification = out.decode("utf-8")
    assert f"processed/Error: {code}^{LABELS[code]}" in notification
    assert f"Original-Recipient: rfc822;{APP}" in notification


def test_mdn_allowed_only_when_asked_and_to_the_return_path() -> None:
    _, incoming = _original()
    assert mdn_allowed(incoming)
    assert mdn_allowed(dataclasses.replace(incoming, disposition_notification_to=DOCTOR.upper()))
    assert not mdn_allowed(dataclasses.replace(incoming, disposition_notification_to=None))
    assert not mdn_allowed(dataclasses.replace(incoming, disposition_notification_to=REPLY))  # loop guard


def test_error_notice_is_a_plain_mail_to_the_sender() -> None:
    data, incoming = _original(dnt=None)
    out = build_error_notice(data, incoming, from_address=APP, now=NOW, error=("904", LABELS["904"]))
    msg = email.message_from_bytes(out, policy=policy.default)
    assert msg.get_content_type() == "multipart/mixed" and msg["To"] == DOCTOR and msg["From"] == APP
    assert msg["Subject"] == f"[KO Intégration système !][904] {SUBJECT}"
    assert msg["Auto-Submitted"] == "auto-replied" and msg["Disposition-Notification-To"] is None
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/plain", "application/zip", "application/pdf"]
    assert "904^" + LABELS["904"] in parts[0].get_content() and "Code d’erreur : 904" in parts[0].get_content()
    with pytest.raises(ReturnError):
        parse_returns(out)  # not a report: a human reads it


def test_message_ids_are_derived_not_random() -> None:
    """A retried reporter writes the same MDN (same Message-ID); the notice has its own."""
    first, _ = _mdn()
    again, _ = _mdn()
    data, incoming = _original()
    notice = build_error_notice(data, incoming, from_address=APP, now=NOW, error=("906", LABELS["906"]))
    ids = [email.message_from_bytes(b, policy=policy.default)["Message-ID"] for b in (first, again, notice)]
    assert ids[0] == ids[1] != ids[2] and ids[0].endswith("@hopital-imaginaire.mssante.test>")
