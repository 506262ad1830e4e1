"""ZAM building (escaping, negative acknowledgments) and reading the CRÉATEUR's ACK."""

from __future__ import annotations

import pytest

from gateway.cisis.model import ZamEvent
from gateway.cisis.zam import build_zam, parse_zam, read_ack
from gateway.routing.hl7 import parse_message
from gateway.routing.model import Hl7Error
from tests.cisis.zamdata import NOW, ORIGINAL


def test_z02_bounce_carries_the_smtp_code() -> None:
    data = build_zam(ZamEvent.MSS_RECEPTION, ORIGINAL, ok=False, control_id="Z1", now=NOW,
                     recipient_address="a@b.mssante.fr", recipient_id="8001",
                     error=("550", "5.1.1 mailbox unknown", "SMTPERRORCODE"))
    fields = parse_zam(data)
    assert fields["OBX[1]-5"] == "N^^HL70136"
    assert fields["OBX[1]-4"] == "015"
    assert fields["ERR[1]-3"] == "207^Application internal error^HL70357"
    assert fields["ERR[1]-4"] == "E"
    assert fields["ERR[1]-5"] == "550^5.1.1 mailbox unknown^SMTPERRORCODE"
    assert [s.name for s in parse_message(data).segments] == ["MSH", "EVN", "OBX", "OBX", "ERR"]


def test_delimiters_in_text_are_escaped() -> None:
    data = build_zam(ZamEvent.MSS_READ, ORIGINAL, ok=False, control_id="Z|2", now=NOW,
                     recipient_address="a@b.fr",
                     error=("904", "INS ^ différent|x\r\nMSH|", "applicationErrorCondition"))
    msg = parse_message(data)
    assert len(msg.segments) == 5
    err = msg.first("ERR")
    assert msg.value(err, 5, 1) == "904"
    assert msg.value(err, 5, 2) == "INS ^ différent|x MSH|"
    assert msg.value(err, 5, 3) == "applicationErrorCondition"
    assert msg.value(msg.segments[0], 10) == "Z|2"


def test_header_swapped_and_profile_kept() -> None:
    fields = parse_zam(build_zam(ZamEvent.DMP_RECEPTION, ORIGINAL, ok=True, control_id="1", now=NOW))
    assert (fields["MSH-3"], fields["MSH-4"], fields["MSH-5"], fields["MSH-6"]) == (
        "PFI-X", "Organisation-X", "SIL-Y", "labo")
    assert fields["MSH-21"] == "2.0^CISIS_CDA_HL7_V2"
    assert fields["MSH-9"] == "ZAM^Z01^ZAM_Z01"
    assert "OBX[2]-3" not in fields and "ERR[1]-3" not in fields


def test_negative_zam_without_error_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        build_zam(ZamEvent.MSS_RECEPTION, ORIGINAL, ok=False, recipient_address="a@b.fr", control_id="1", now=NOW)


def test_read_ack() -> None:
    ack = b"MSH|^~\\&|SIL-Y|labo|PFI-X|Organisation-X|20240101||ACK^Z02^ACK|9|P|2.6\rMSA|AA|Z1\r"
    assert read_ack(ack) == ("AA", "Z1")
    assert read_ack(ack.replace(b"MSA|AA", b"MSA|AE"))[0] == "AE"
    with pytest.raises(Hl7Error):
        read_ack(b"MSH|^~\\&|A|B|C|D|2024||ORU^R01|9|P|2.5\rPID|1\r")
