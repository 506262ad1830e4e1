"""Duplicate suppression: window, per recipient, corrections and cancellations always pass."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest

from gateway.intake.dedup import DedupStore, document_key
from gateway.intake.process import Unroutable, intake_bytes
from gateway.routing.payload import read_payload
from tests.intake import samples as s

T0 = dt.datetime(2025, 1, 15, 10, 0, tzinfo=dt.UTC)
DAY = 86400.0


def test_window_and_recipient(tmp_path: Path) -> None:
    with DedupStore(tmp_path / "d.sqlite", window=7 * DAY) as store:
        key = ("cda", "1.2.3^DOC1")
        now = T0.timestamp()
        assert not store.seen(key, "a@x.test", now)
        store.record(key, ["A@x.test"], now)
        assert store.seen(key, "a@x.test", now + 6 * DAY)
        assert not store.seen(key, "a@x.test", now + 7 * DAY + 1)
        assert not store.seen(key, "b@x.test", now)
        assert not store.seen(("hl7v2", "1.2.3^DOC1"), "a@x.test", now)
    with DedupStore(tmp_path / "d.sqlite", window=7 * DAY) as store:  # durable
        assert store.seen(key, "a@x.test", now + 1)


def test_document_key() -> None:
    info = read_payload(s.cda())
    assert document_key(info) == ("cda", "1.2.250.9999.1.1^DOC1")
    assert document_key(dataclasses.replace(info, document_id=None)) == ("cda", "1.2.250.9999.1^SET1#v1")
    assert document_key(dataclasses.replace(info, document_id=None, set_id=None)) is None


def _intake(data: bytes, directory, dedup, routing, now: dt.datetime = T0):
    return intake_bytes(data, "x", sender=s.LIS, directory=directory, dedup=dedup, settings=routing, now=now)


def test_same_document_is_not_sent_twice_but_a_correction_is(directory, dedup, routing) -> None:
    first = _intake(s.oru(), directory, dedup, routing)
    assert [o.recipients for o in first] == [(s.ADDR_LOCAL,)]
    again = _intake(s.oru(), directory, dedup, routing)
    assert len(again) == 1  # not committed: the first one may not have reached the spool
    first.commit(dedup, T0)
    again = _intake(s.oru(), directory, dedup, routing, T0 + dt.timedelta(hours=1))
    assert list(again) == [] and again.suppressed == (s.ADDR_LOCAL,)
    corrected = _intake(s.oru(status="C"), directory, dedup, routing, T0 + dt.timedelta(hours=2))
    assert corrected.info.replaces and [o.recipients for o in corrected] == [(s.ADDR_LOCAL,)]
    assert b"X-Msgw-Replaces: yes" in corrected.outgoing[0].message
    later = _intake(s.oru(), directory, dedup, routing, T0 + dt.timedelta(days=8))
    assert len(later) == 1  # outside the window


def test_new_cda_version_and_cancellation_pass(directory, dedup, routing) -> None:
    first = _intake(s.cda(), directory, dedup, routing)
    first.commit(dedup, T0)
    v2 = _intake(s.cda(version=2, doc_id="DOC2", replaces="1.2.250.9999.1.1"), directory, dedup, routing)
    assert v2.info.replaces and len(v2) == 1 and b"X-Msgw-Replaces: yes" in v2.outgoing[0].message
    v2.commit(dedup, T0)
    cancelled = read_payload(s.oru())
    cancelled = dataclasses.replace(cancelled, cancels=True)
    _intake(s.oru(), directory, dedup, routing).commit(dedup, T0)
    out = intake_bytes(s.oru(), "x", sender=s.LIS, directory=directory, dedup=dedup, settings=routing, now=T0,
                       info=cancelled)
    assert len(out) == 1 and b"X-Msgw-Cancels: yes" in out.outgoing[0].message


def test_unresolved_recipient_goes_to_unrouted_with_a_notice(directory, dedup, routing) -> None:
    result = _intake(s.hprim_medecin("DRNOBODY"), directory, dedup, routing)
    main, notice = result.outgoing
    assert main.recipients == (s.UNROUTED,) and main.envelope_sender == s.LIS
    assert notice.recipients == (s.LIS,) and notice.envelope_sender == ""
    assert b"DRNOBODY" in notice.message
    for forbidden in (s.PATIENT_FAMILY.encode(), b"D0001", b"2991299123456"):
        assert forbidden not in notice.message
    no_unrouted = dataclasses.replace(routing, unrouted={})
    with pytest.raises(Unroutable):
        _intake(s.hprim_medecin("DRNOBODY"), directory, dedup, no_unrouted)


def test_payload_without_recipient_uses_envelope_or_unrouted(directory, dedup, routing) -> None:
    out = intake_bytes(s.PDF, "cr.pdf", sender=s.LIS, envelope_recipients=["Doc@Cabinet.test"], directory=directory,
                       dedup=dedup, settings=routing, now=T0)
    assert [o.recipients for o in out] == [("doc@cabinet.test",)]
    out = intake_bytes(s.PDF, "cr.pdf", sender=s.LIS, directory=directory, dedup=dedup, settings=routing, now=T0)
    assert out.outgoing[0].recipients == (s.UNROUTED,) and len(out) == 2


def test_preliminary_then_final_hl7_result_both_pass(directory, dedup, routing) -> None:
    """The filler order number stays the same from P to F: the final result must not be suppressed."""
    prelim = _intake(s.oru(status="P"), directory, dedup, routing)
    assert len(prelim) == 1
    prelim.commit(dedup, T0)
    final = _intake(s.oru(status="F"), directory, dedup, routing)
    assert len(final) == 1
    final.commit(dedup, T0)
    assert list(_intake(s.oru(status="F", control="RESEND"), directory, dedup, routing)) == []


# --------------------------------------------------------------------------------------------
# Issue 11, item 12: a document id is unique only within its sender and its patient.
# --------------------------------------------------------------------------------------------

OTHER_INS = "299129912345679"


def _other_patient(data: bytes, encoding: str = "utf-8") -> bytes:
    return data.replace(s.INS.encode(), OTHER_INS.encode()).replace(
        s.PATIENT_FAMILY.encode(encoding), b"AUTREPATIENT").replace(b"2991299123456", b"2991299123457")


def _sent_then(first: bytes, second: bytes, directory, dedup, routing):
    _intake(first, directory, dedup, routing).commit(dedup, T0)
    return _intake(second, directory, dedup, routing, T0 + dt.timedelta(hours=1))


def test_another_patients_hl7_result_with_the_same_order_number_is_sent(directory, dedup, routing) -> None:
    again = _sent_then(s.oru(), _other_patient(s.oru()), directory, dedup, routing)
    assert [o.recipients for o in again] == [(s.ADDR_LOCAL,)] and again.suppressed == ()


def test_another_patients_hprim_report_with_the_same_request_number_is_sent(directory, dedup, routing) -> None:
    first = s.hprim_medecin()
    other = _other_patient(first, "iso-8859-1")
    assert read_payload(first).document_id == read_payload(other).document_id == "REQ42"
    again = _sent_then(first, other, directory, dedup, routing)
    assert len(again) >= 1 and again.suppressed == ()


def test_the_same_order_number_from_another_lab_or_with_other_results_is_sent(directory, dedup, routing) -> None:
    other_lab = s.oru().replace(b"|LISX|LABX|", b"|LISY|LABY|")
    assert read_payload(other_lab).document_id == read_payload(s.oru()).document_id
    assert len(_sent_then(s.oru(), other_lab, directory, dedup, routing)) == 1
    other_result = s.oru().replace(b"||5.2|mmol/l|", b"||7.9|mmol/l|")
    assert len(_intake(other_result, directory, dedup, routing, T0 + dt.timedelta(hours=2))) == 1


def test_the_same_result_resent_is_still_suppressed(directory, dedup, routing) -> None:
    """A retransmission (new MSH-10 and MSH-7, other line endings) is the same document."""
    resent = s.oru(control="RESEND2").replace(b"20250115100000||ORU", b"20250116090000||ORU").replace(b"\r", b"\n")
    again = _sent_then(s.oru(), resent, directory, dedup, routing)
    assert list(again) == [] and again.suppressed == (s.ADDR_LOCAL,)
    hprim = _sent_then(s.hprim_medecin(), s.hprim_medecin(), directory, dedup, routing)
    assert hprim.suppressed and not any(s.ADDR_LABCODE in o.recipients for o in hprim)


def test_the_store_holds_no_patient_identifier(tmp_path: Path, directory, routing) -> None:
    with DedupStore(tmp_path / "plain.sqlite") as store:
        _intake(s.oru(), directory, store, routing).commit(store, T0)
        _intake(s.hprim_medecin(), directory, store, routing).commit(store, T0)
        rows = store._db.execute("SELECT kind, document, recipient FROM sent").fetchall()
    assert len(rows) == 2
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("plain.sqlite*"))
    for secret in (s.INS, "2991299123456", s.PATIENT_FAMILY):
        assert secret.encode() not in raw and all(secret not in str(r) for r in rows)


def test_rows_of_an_older_store_do_not_suppress(tmp_path: Path, directory, routing) -> None:
    """A store written before the key included sender, patient and content stays readable; its
    id-only rows cannot tell patients apart, so they suppress nothing (they expire with the window)."""
    with DedupStore(tmp_path / "old.sqlite") as store:
        store.record(("hl7v2", "REQ42^LABX|F"), [s.ADDR_LOCAL], T0.timestamp())
        assert len(_intake(s.oru(), directory, store, routing, T0 + dt.timedelta(hours=1))) == 1
