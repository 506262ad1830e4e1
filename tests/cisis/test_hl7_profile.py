"""The two edits of the HL7 reader the CI-SIS profile needs: MSH-2 written with SMALL TILDE
(U+02DC, the ANS ORU examples) and the ACK's ERR-2 location / ERR-5 application error."""

from __future__ import annotations

import datetime as dt

from gateway.routing.hl7 import build_ack, parse_message, read_hl7
from tests.cisis.samples import Spec

NOW = dt.datetime(2025, 1, 15, 10, 30, 0, tzinfo=dt.UTC)
SMALL_TILDE = "\u02dc"


def _message(msh2: str, pid11: str) -> bytes:
    return (f"MSH|{msh2}|SGL|LAB|PFI|ORG|20250115100000||ORU^R01^ORU_R01|C1|P|2.5|||||FRA|UNICODE UTF-8\r"
            f"PID|||X1^^^LAB||NOM^PRENOM||19990101|F|||{pid11}\r").encode()


def test_small_tilde_is_the_repetition_separator() -> None:
    msg = parse_message(_message(f"^{SMALL_TILDE}\\&", f"1 rue A^^VILLE^^99999^FRA^H{SMALL_TILDE}^^^^^^BDL^^99"))
    assert msg.delims.rep == "~"
    pid = msg.first("PID")
    assert pid is not None
    reps = msg.reps(pid, 11)
    assert len(reps) == 2 and reps[0][0] == ["1 rue A"] and reps[1][6] == ["BDL"]


def test_a_literal_tilde_in_such_a_message_stays_text() -> None:
    msg = parse_message(_message(f"^{SMALL_TILDE}\\&", "Lieu-dit ~ la Combe^^VILLE"))
    pid = msg.first("PID")
    assert pid is not None
    assert len(msg.reps(pid, 11)) == 1
    assert msg.value(pid, 11) == "Lieu-dit ~ la Combe"


def test_small_tilde_elsewhere_is_left_alone() -> None:
    """Only MSH-2 written exactly ``^˜\\&`` switches the reading: a U+02DC in the text of an
    ordinary message is a character."""
    msg = parse_message(_message("^~\\&", f"Rue du Tr{SMALL_TILDE}mbleau^^VILLE~^^^^^^BDL"))
    pid = msg.first("PID")
    assert pid is not None
    assert msg.value(pid, 11) == f"Rue du Tr{SMALL_TILDE}mbleau" and len(msg.reps(pid, 11)) == 2


def test_a_small_tilde_profile_message_reads_and_is_acknowledged_with_the_plain_tilde() -> None:
    data = Spec(small_tilde=True).build()
    assert SMALL_TILDE.encode() in data
    info = read_hl7(data)
    assert info.ins is not None and len(info.embedded) == 2
    ack = build_ack(data, "AA", now=NOW, control_id="ACK1")
    assert ack.startswith(b"MSH|^~\\&|PFIFICTIVE|ORGFICTIVE|SGLFICTIF|LABOFICTIF|")
    assert b"MSA|AA|CTRLCISIS1\r" in ack


def test_ack_err_location_and_application_error() -> None:
    ack = build_ack(Spec().build(), "AR", "no row allows MASQUE_PS=Y", now=NOW, control_id="ACK2",
                    error_code="207", error_location="OBX^3^5",
                    application_error=("MATRIX", "combinaison de MetaDMPMSS non prévue ^ refusée", "CISIS"))
    err = ack.decode().split("\r")[2]
    assert err == ("ERR||OBX^3^5|207^Application internal error^HL70357|E|"
                   "MATRIX^combinaison de MetaDMPMSS non prévue \\S\\ refusée^CISIS|||no row allows MASQUE_PS=Y")
    msg = parse_message(ack)
    seg = msg.first("ERR")
    assert (msg.value(seg, 2, 1), msg.value(seg, 2, 2), msg.value(seg, 2, 3)) == ("OBX", "3", "5")
    assert msg.value(seg, 5, 2) == "combinaison de MetaDMPMSS non prévue ^ refusée"


def test_ack_without_the_new_arguments_is_unchanged() -> None:
    data = Spec().build()
    expected = (b"MSH|^~\\&|PFIFICTIVE|ORGFICTIVE|SGLFICTIF|LABOFICTIF|20250115103000||ACK^R01^ACK|ACK3|P|2.5|||||"
                b"FRA|UNICODE UTF-8\rMSA|AE|CTRLCISIS1|spool full\r"
                b"ERR|||207^Application internal error^HL70357|E||||spool full\r")
    assert build_ack(data, "AE", "spool full", now=NOW, control_id="ACK3") == expected
    assert build_ack(data, "AE", "spool full", now=NOW, control_id="ACK3", error_location=None,
                     application_error=None) == expected
