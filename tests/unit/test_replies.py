"""The one translation of an error to an SMTP reply (`gateway.errors.smtp_reply`), and the one
answer to "retry or refuse" that the SMTP listeners and the MLLP ACKs share (`is_temporary`)."""

from __future__ import annotations

import pytest

from gateway.directory.certdiscovery import NoCertificate, NoCertificateTemporary
from gateway.errors import (
    ConfigError,
    DeliveryError,
    GatewayError,
    MalformedInput,
    PolicyError,
    SpoolError,
    TemporaryError,
    smtp_reply,
)
from gateway.intake.dedup import DedupError
from gateway.intake.mllp import ack_for
from gateway.intake.process import Unroutable
from gateway.legacy.errors import KeyStoreUnavailable
from gateway.routing.model import Hl7Error, UnsupportedPayload
from gateway.smime.errors import MalformedSmime, SignatureInvalid

_NO_TRACE: dict = {"address": "a@x.example", "trace": (), "rejected": ()}

#: error -> the reply it gets as the answer to DATA (the message) and to RCPT (a recipient).
TABLE = [
    (SpoolError("cannot store message: no space left"), "452 4.3.1 cannot store message: no space left", "452"),
    (TemporaryError("Too many recipients", status="4.5.3"), "452 4.5.3 Too many recipients", "452"),
    (TemporaryError("Mailbox lookup temporarily unavailable"), "451 4.3.0 Mailbox lookup temporarily unavailable",
     "451"),
    (DedupError("duplicate store busy"), "451 4.3.0 duplicate store busy", "451"),
    (KeyStoreUnavailable("cannot read key file"), "451 4.3.0 cannot read key file", "451"),
    (NoCertificateTemporary("directory unreachable", **_NO_TRACE), "451 4.4.3 directory unreachable", "451"),
    (DeliveryError("next hop down", temporary=True), "451 4.4.1 next hop down", "451"),
    (PolicyError("destination x.example is refused by policy"),
     "554 5.7.1 destination x.example is refused by policy", "550"),
    (NoCertificate("no certificate for a@x.example", **_NO_TRACE), "554 5.7.1 no certificate for a@x.example", "550"),
    (Unroutable("the payload names no recipient"), "554 5.1.1 the payload names no recipient", "550"),
    (SignatureInvalid("signature does not verify"), "554 5.7.7 signature does not verify", "550"),
    (MalformedInput("unreadable From: field", "message header"),
     "550 5.6.0 unreadable From: field at message header", "550"),
    (Hl7Error("MSH segment missing", "segment 1"), "550 5.6.0 MSH segment missing at segment 1", "550"),
    (MalformedSmime("message header cannot be parsed"), "550 5.6.0 message header cannot be parsed", "550"),
    (GatewayError("no recipients", status="5.5.1"), "554 5.5.1 no recipients", "550"),
    (ConfigError([("gateway.toml", "spool.path", "missing")]), "554 5.3.5 gateway.toml: spool.path: missing", "550"),
    (DeliveryError("host said no", temporary=False), "554 5.0.0 host said no", "550"),
]


@pytest.mark.parametrize(("error", "reply", "rcpt_code"), TABLE,
                         ids=[type(e).__name__ + "-" + r[:3] for e, r, _ in TABLE])
def test_each_error_has_one_reply(error: GatewayError, reply: str, rcpt_code: str) -> None:
    assert smtp_reply(error) == reply == error.smtp_reply()
    assert smtp_reply(error, "RCPT") == rcpt_code + reply[3:] == error.smtp_reply("RCPT")


def test_an_unexpected_error_is_temporary_and_keeps_its_text_inside() -> None:
    for error in (ValueError("patient DUPONT Jeanne, INS 299129912345678"), KeyError("x"), RuntimeError()):
        reply = smtp_reply(error)
        assert reply == "451 4.3.0 Temporary failure, try again later"
        assert ack_for(error) == ("AE", "internal error, resend later", "207")


def test_the_reply_is_one_line_and_its_class_agrees_with_the_flag() -> None:
    assert smtp_reply(GatewayError("two\r\nlines\n250 OK", temporary=True, status="5.7.1")) \
        == "451 4.7.1 two lines 250 OK"
    assert len(smtp_reply(PolicyError("x" * 5000))) < 512
    assert smtp_reply(MalformedInput("unreadable From: field", "message header"), prefix="Message refused: ") \
        == "550 5.6.0 Message refused: unreadable From: field at message header"


@pytest.mark.parametrize("error", [e for e, _, _ in TABLE] + [UnsupportedPayload("not an HL7 v2 message", "segment 1"),
                                                           OSError("disk"), ValueError("bug")])
def test_smtp_and_mllp_agree_on_retry_or_refuse(error: Exception) -> None:
    ack, text, _ = ack_for(error)
    assert {"4": "AE", "5": "AR"}[smtp_reply(error)[0]] == ack
    assert "\n" not in text and "\r" not in text


def test_mllp_ack_texts() -> None:
    assert ack_for(UnsupportedPayload("not an HL7 v2 message", "segment 1")) \
        == ("AR", "not an HL7 v2 message (segment 1)", "200")
    assert ack_for(Hl7Error("MSH segment missing")) == ("AR", "MSH segment missing", "102")
    assert ack_for(Unroutable("nobody to send it to")) == ("AR", "nobody to send it to", "207")
    assert ack_for(SpoolError("cannot store message: no space left")) \
        == ("AE", "temporary failure, resend later", "207")
