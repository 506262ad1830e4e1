"""The outer headers' fast paths (issue 15) give what the stdlib gives: the outer Date field
(`smime/datefield.outer_date` through `_outer_field`) against `email.utils.parsedate_to_datetime` +
`format_datetime` on the common Date form, its near misses, invalid and random values (a second set
of values beside tests/smime/test_datefield.py's); the cached neutral Subject against `header_field`."""

from __future__ import annotations

import email.utils
import random

import pytest

from gateway.smime.headers import _outer_field, allowed_outer_fields, header_field, subject_field

FORMS = [
    "Wed, 25 Nov 2026 09:00:00 +0100", "25 Nov 2026 09:00:00 +0100", "Wed, 25 nov 2026 09:00:00 -0000",
    "Wed, 25 NOV 2026 09:00:00 +0000", "Mon, 25 Nov 2026 09:00:00 +0100", "Wed, 5 Nov 2026 09:00:00 -0130",
    "Wed, 05 Nov 2026 09:00:00 +0199", "Wed, 31 Feb 2026 09:00:00 +0100", "Wed, 25 Nov 2026 24:00:00 +0100",
    "Wed, 25 Nov 2026 09:60:00 +0100", "Wed, 25 Nov 2026 09:00:60 +0100", "Wed, 25 Nov 2026 09:00:00 +9999",
    "Wed, 25 Nov 2026 09:00:00 +2400", "Wed, 25 Nov 2026 09:00:00 -2359", "Wed, 00 Nov 2026 09:00:00 +0100",
    "Wed, 25 Nov 0999 09:00:00 +0100", "Wed, 25 Nov 1000 09:00:00 +0100", "Wed, 25 Nov 9999 23:59:59 -0000",
    "Wed, 25 Nov 26 09:00:00 +0100", "Wed, 25 Nov 2026 09:00 +0100", "Wed, 25 Nov 2026 09:00:00 GMT",
    "Wed, 25 Nov 2026 09:00:00 +0100 (CET)", "Wed,25 Nov 2026 09:00:00 +0100", "Wed 25 Nov 2026 09:00:00 +0100",
    "Wed, 25 November 2026 09:00:00 +0100", "Wed, 25 Nox 2026 09:00:00 +0100", "", "garbage",
    "Wed, 25 Nov 2026 09:00:00 +01", "Wed, 25 Nov 2026 9:00:00 +0100", "Wed, 25 Nov 2026 09:00:00 +0100x",
    "Wed, 25 Nov 2026 09:00:00  +0100", "Wed, ２５ Nov 2026 09:00:00 +0100", "Wed, 25 Nov ２０２６ 09:00:00 +0100",
]


def _check(value: str) -> None:
    """The outer field the gateway writes for `Date: value` is the stdlib's reading written again;
    a value the stdlib cannot read becomes the current time (a valid Date either way)."""
    field = f"Date: {value}\r\n".encode()
    try:
        expected = f"Date: {email.utils.format_datetime(email.utils.parsedate_to_datetime(value))}\r\n".encode()
    except (TypeError, ValueError, IndexError, OverflowError):
        got = _outer_field(field)
        assert got.startswith(b"Date: ") and email.utils.parsedate_to_datetime(got[6:-2].decode()), value
        return
    assert _outer_field(field) == expected, value


@pytest.mark.parametrize("value", FORMS)
def test_the_outer_date_is_the_stdlibs(value: str) -> None:
    _check(value)


def test_the_outer_date_on_random_dates() -> None:
    rng = random.Random(15)
    days = ["Mon, ", "Tue, ", "Sun, ", "", "Xyz, "]
    months = ["Jan", "feb", "MAR", "Apr", "May", "jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec", "Foo"]
    for _ in range(5000):
        value = (f"{rng.choice(days)}{rng.randint(0, 33):0{rng.choice([1, 2])}d} {rng.choice(months)} "
                 f"{rng.randint(900, 9999)} {rng.randint(0, 25):02d}:{rng.randint(0, 61):02d}:{rng.randint(0, 61):02d} "
                 f"{rng.choice('+-')}{rng.randint(0, 9999):04d}")
        _check(value)
        cut = rng.randrange(len(value))
        _check(value[:cut] + rng.choice(["", " ", "x", ":", "0"]) + value[cut + 1:])


def test_the_outer_date_field_is_the_stdlib_one() -> None:
    for value in FORMS[:12]:
        field = f"Date: {value}\r\n".encode()
        try:
            expected = f"Date: {email.utils.format_datetime(email.utils.parsedate_to_datetime(value))}\r\n".encode()
        except (TypeError, ValueError, IndexError, OverflowError):
            continue
        assert _outer_field(field) == expected


@pytest.mark.parametrize("subject", ["Message sécurisé / Secure message", "Secure message", "ÉÀ" * 80, "a\r\nb"])
def test_the_cached_subject_is_header_field(subject: str) -> None:
    assert subject_field(subject) == header_field("Subject", subject)
    assert subject_field(subject) is subject_field(subject)
    fields = allowed_outer_fields(b"From: <a@b.test>\r\nSubject: secret\r\n\r\nx", neutral_subject=subject)
    assert header_field("Subject", subject) in fields
