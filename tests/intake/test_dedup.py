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
