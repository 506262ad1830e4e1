"""The outer header block's fast paths (issue 15): `datefield.outer_date` (a regex for the common
RFC 5322 Date form before the stdlib) must give exactly what `format_datetime(parsedate_to_datetime())`
gave, on every value, and None wherever the stdlib failed; `headers.subject_field` (made once per
neutral subject) must be the field `header_field` makes; `allowed_outer_fields` as a whole must be
the block it was (Message-ID aside: random)."""

from __future__ import annotations

import datetime
import email.utils

from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.rawmime import raw_split, raw_text
from gateway.smime import datefield, headers


def _reference(value: bytes) -> str | None:
    """The outer Date as it was: the stdlib pair, None where it raised."""
    try:
        return email.utils.format_datetime(email.utils.parsedate_to_datetime(raw_text(value)))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


HAND_PICKED = [
    "Wed, 25 Nov 2026 09:00:00 +0100", "Wed, 25 Nov 2026 09:00:00 +0100\r\n", " Wed, 25 Nov 2026 09:00:00 +0100",
    "Mon, 25 Nov 2026 09:00:00 +0100",  # wrong weekday: the computed one is written
    "25 Nov 2026 09:00 -0000", "25 Nov 2026 09:00:00 +0000", "Wed,25 Nov 2026 09:00:00 +0100",
    "Wed, 5 Nov 2026 09:00:00 +0100", "Wed, 05 Nov 2026 09:00:00 +0100", "Thu, 1 Jan 1970 00:00:00 +0000",
    "Fri, 31 Dec 9999 23:59:59 -2359", "Sat, 29 Feb 2028 12:00:00 +0530", "Sun, 29 Feb 2027 12:00:00 +0530",
    "Wed, 30 Feb 2026 09:00:00 +0100", "Wed, 31 Apr 2026 09:00:00 +0100", "Wed, 0 Nov 2026 09:00:00 +0100",
    "Wed, 32 Nov 2026 09:00:00 +0100", "Wed, 25 Nov 2026 24:00:00 +0100", "Wed, 25 Nov 2026 23:60:00 +0100",
    "Wed, 25 Nov 2026 09:00:60 +0100", "Wed, 25 Nov 2026 09:00:00 +2400", "Wed, 25 Nov 2026 09:00:00 +0160",
    "Wed, 25 Nov 2026 09:00:00 +9999", "Wed, 25 Nov 2026 09:00:00 GMT", "Wed, 25 Nov 2026 09:00:00 EST",
    "Wed, 25 Nov 2026 09:00:00 UT", "Wed, 25 Nov 2026 09:00:00", "Wed, 25 Nov 26 09:00:00 +0100",
    "Wed, 25 Nov 0026 09:00:00 +0100", "Wed, 25 Nov 0999 09:00:00 +0100", "Wed, 25 Nov 1000 09:00:00 +0100",
    "Wed, 25 nov 2026 09:00:00 +0100", "wed, 25 Nov 2026 09:00:00 +0100", "Wednesday, 25 Nov 2026 09:00:00 +0100",
    "Wed, 25 Nov 2026 09:00:00 +0100 (CET)", "Wed, 25 Nov 2026 09:00:00 +0100 (Resultat DUPONT Jean)",
    "Wed, 25  Nov 2026 09:00:00 +0100", "Wed, 25 Nov 2026\r\n 09:00:00 +0100", "Wed, 25 Nov 2026 9:00:00 +0100",
    "Wed, 25 Nov 2026 09:00:00 +01", "Wed, 25 Nov 2026 09:00:00 +01:00", "2026-11-25T09:00:00+01:00",
    "Wed, 25 Nov 2026 09:00:00 +0100\n", "Wed, 25 Nov 2026 09:00:00 +0100\r\n\r\n", "\t25 Nov 2026 09:00:00 +0100 \t",
    "", " ", "garbage", "Wed, 25 Nov 2026 09:00:00 +0100 extra", "Wed, 25 Nov 2026 09:00:00.5 +0100",
    "Wed, 25 Nov 2026 09:00:00 \u00e9+0100", "Wed, 25 Nov 2026 09:00:00 -0000", "Wed, 25 Nov 2026 09:00:00 -0030",
]


def test_outer_date_equals_the_stdlib_on_hand_picked_values() -> None:
    for value in HAND_PICKED:
        raw = value.encode("utf-8")
        assert datefield.outer_date(raw) == _reference(raw), value


def test_the_fast_form_is_taken_and_still_equal() -> None:
    """The common form really goes through the regex (not only the fallback)."""
    assert datefield._COMMON.fullmatch(b" Wed, 25 Nov 2026 09:00:00 +0100\r\n") is not None
    assert datefield.outer_date(b" Mon, 25 Nov 2026 09:00:00 +0100\r\n") == "Wed, 25 Nov 2026 09:00:00 +0100"


_MONTHS = st.sampled_from(["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
                           "jan", "Foo"])
_DAYS = st.sampled_from(["", "Mon, ", "Tue, ", "Wed,", "Thu , ", "Fri, ", "Sat, ", "Sun, ", "Xyz, "])


@settings(max_examples=4000, deadline=None)
@given(_DAYS, st.integers(0, 33), _MONTHS, st.integers(0, 10000), st.integers(0, 25), st.integers(0, 61),
       st.one_of(st.none(), st.integers(0, 61)), st.sampled_from(["+", "-"]), st.integers(0, 25), st.integers(0, 61),
       st.sampled_from(["", "\r\n", " ", " (CET)\r\n", "\n"]), st.booleans())
@example("Wed, ", 25, "Nov", 2026, 9, 0, 0, "+", 1, 0, "\r\n", False)
def test_outer_date_equals_the_stdlib_on_generated_dates(dow: str, day: int, month: str, year: int, hour: int,
                                                        minute: int, second: int | None, sign: str, zh: int, zm: int,
                                                        tail: str, pad: bool) -> None:
    sec = "" if second is None else f":{second:02d}"
    dd = f"{day:02d}" if pad else str(day)
    value = f" {dow}{dd} {month} {year:04d} {hour:02d}:{minute:02d}{sec} {sign}{zh:02d}{zm:02d}{tail}".encode()
    assert datefield.outer_date(value) == _reference(value), value


@settings(max_examples=1500, deadline=None)
@given(st.text(st.sampled_from(list("0123456789 :+-,()\r\n\tWedNovGMTUT")), max_size=40))
def test_outer_date_equals_the_stdlib_on_any_text(text: str) -> None:
    value = text.encode()
    assert datefield.outer_date(value) == _reference(value), value


@given(st.datetimes(min_value=datetime.datetime(1000, 1, 1), max_value=datetime.datetime(9999, 12, 31),
                    timezones=st.sampled_from([datetime.timezone(datetime.timedelta(minutes=m))
                                               for m in (-1439, -600, -30, 0, 60, 330, 1439)])))
@settings(max_examples=1000, deadline=None)
def test_outer_date_reads_what_format_datetime_writes(when: datetime.datetime) -> None:
    value = f" {email.utils.format_datetime(when.replace(microsecond=0))}\r\n".encode()
    assert datefield.outer_date(value) == _reference(value) == email.utils.format_datetime(when.replace(microsecond=0))


def test_subject_field_is_header_fields_field() -> None:
    for subject in ["Message sécurisé / Secure message", "Secure message", "", "x" * 300, "é" * 200,
                    "a\r\nb", "Résultat\nnouveau"]:
        assert headers.subject_field(subject) == headers.header_field("Subject", subject)
        assert headers.subject_field(subject) == headers.header_field("Subject", subject)  # the cached one


def _reference_outer(message: bytes, neutral_subject: str) -> list[bytes]:
    """allowed_outer_fields as it was (stdlib Date, Subject encoded every time)."""
    out: list[bytes] = []
    for f in raw_split(message)[0]:
        name = headers.name_of(f)
        if name == "date":
            when = _reference(f.partition(b":")[2])
            if when is not None:
                out.append(f"Date: {when}\r\n".encode())
            else:
                out.append(b"Date: NOW\r\n")
        elif name in headers.OUTER_KEPT:
            kept = headers.address_field(name.capitalize() if name != "cc" else "Cc", headers.addresses(f))
            if kept is not None:
                out.append(kept)
    out.append(b"Message-ID: X\r\n")
    out.append(headers.header_field("Subject", neutral_subject))
    mdn = [p for f in raw_split(message)[0] if headers.name_of(f) == "disposition-notification-to"
           for p in headers.addresses(f)]
    dnt = headers.address_field("Disposition-Notification-To", mdn, names=False)
    return out if dnt is None else [*out, dnt]


def _masked(fields: list[bytes], now_expected: bool) -> list[bytes]:
    """Message-ID (random) as a placeholder; a Date made of the current time (an unreadable
    original) checked to be now, then as a placeholder."""
    out = []
    for f in fields:
        if f.startswith(b"Message-ID: "):
            f = b"Message-ID: X\r\n"
        elif f.startswith(b"Date: ") and now_expected:
            when = email.utils.parsedate_to_datetime(f[6:].decode())
            assert abs((when - datetime.datetime.now(datetime.UTC)).total_seconds()) < 60
            f = b"Date: NOW\r\n"
        out.append(f)
    return out


def test_allowed_outer_fields_is_the_block_it_was() -> None:
    for date in HAND_PICKED:
        if "\n" in date.rstrip("\r\n") or not date.endswith("\r\n") and date.endswith("\n"):
            continue  # (a field of its own or a folded one: not a Date value on one line)
        for subject in ["Message sécurisé / Secure message", "Secure message"]:
            message = (b"From: Labo <lab@lab.example>\r\nTo: <dr@cab.example>, x <y@z.example>\r\nCc: a@b.example\r\n"
                       b"Subject: Resultat DUPONT\r\nDate:" + date.encode().rstrip(b"\r\n") + b"\r\n"
                       b"Disposition-Notification-To: <lab@lab.example>\r\n\r\nbody\r\n")
            expected = _reference_outer(message, subject)
            actual = headers.allowed_outer_fields(message, neutral_subject=subject)
            assert _masked(actual, b"Date: NOW\r\n" in expected) == expected, date
