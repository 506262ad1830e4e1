"""`headers.addresses` (issue 15, hot path): a regex takes the plain one-mailbox forms before
`email.utils.getaddresses`; wherever it matches it must give exactly getaddresses' pair, and
`addresses` as a whole must give what it gave with getaddresses alone."""

from __future__ import annotations

import email.utils
import re

from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.rawmime import header_text, raw_text
from gateway.smime import headers


def _reference(field: bytes) -> list[tuple[str, str]]:
    """`addresses` as it was: getaddresses on every value."""
    value = raw_text(field.partition(b":")[2])
    return [(header_text(name), addr) for name, addr in email.utils.getaddresses([value])
            if addr and addr.isascii() and "@" in addr and not re.search(r"[\s<>,;\"]", addr)]


HAND_PICKED = [
    "a@b.c", "<a@b.c>", " <a@b.c> ", "Labo TEST <lab@lab.example>", '"bench.1.2" <dr@cabinet.example>',
    '"" <a@b.c>', '"a,b" <a@b.c>', '"x"<a@b.c>', "Jean  Dupont <a@b.c>", "a@b.c (Resultat DUPONT Jean)",
    "x <a@b.c>, y <d@e.f>", '"Dupont, Jean" <a@b.c>', "=?utf-8?q?J=C3=A9r=C3=B4me?= <a@b.c>",
    '"=?utf-8?q?<evil@x.y>?=" <a@b.c>', "J. Dupont <a@b.c>", "a.@b.c", ".a@b.c", "a..b@c.d", "a@b..c",
    "<a@b.c> x", "a@b.c, d@e.f", '"a\\"b" <a@b.c>', "group: a@b.c;", "<@route:a@b.c>", "a@[1.2.3.4]",
    "Ünïcode <a@b.c>", "a@b.c\r\n", "\"ü\" <a@b.c>", "<a@b.c>>", "<<a@b.c>", "a@b", "@b.c", "a@",
]

_CHARS = st.sampled_from(list('ab.@<> ",()\\:;[]=?-_\'!#~') + ["=?utf-8?q?x?=", "ü", "\t"])


@settings(max_examples=3000, deadline=None)
@given(st.lists(_CHARS, max_size=24).map("".join))
@example("Labo TEST <lab@lab.example>")
def test_addresses_equal_getaddresses_on_generated_values(value: str) -> None:
    field = b"To: " + value.encode("utf-8")
    assert headers.addresses(field) == _reference(field)


def test_addresses_equal_getaddresses_on_hand_picked_values() -> None:
    matched = 0
    for value in HAND_PICKED:
        field = b"From: " + value.encode("utf-8")
        assert headers.addresses(field) == _reference(field), value
        matched += headers._SIMPLE_MAILBOX.fullmatch(raw_text(field.partition(b":")[2])) is not None
    assert matched >= 8  # the plain forms do take the fast path


def test_the_fast_path_matches_getaddresses_wherever_it_matches() -> None:
    for value in HAND_PICKED:
        text = raw_text(value)
        m = headers._SIMPLE_MAILBOX.fullmatch(text)
        if m:
            assert email.utils.getaddresses([text]) == [(m["phrase"] or m["quoted"] or "", m["angle"] or m["bare"])]


_WORD = st.text(alphabet=list("abZ09.-_'!=?+ ,()<>@;:\\\"ü\t"), min_size=0, max_size=8)
_ATOM = st.text(alphabet=list("abZ09-_'!=?+.~"), min_size=0, max_size=6)


@settings(max_examples=3000, deadline=None)
@given(st.sampled_from(["none", "phrase", "quoted", "quoted-tight"]), st.lists(_WORD, min_size=1, max_size=3),
       st.lists(_ATOM, min_size=1, max_size=3), st.lists(_ATOM, min_size=1, max_size=3), st.booleans(),
       st.sampled_from(["", " ", "  "]))
def test_addresses_equal_getaddresses_on_generated_mailboxes(kind: str, words: list[str], local: list[str],
                                                            domain: list[str], angle: bool, pad: str) -> None:
    """Values shaped like the plain forms (so many take the fast path), with the near misses."""
    addr = ".".join(local) + "@" + ".".join(domain)
    display = {"none": "", "phrase": " ".join(words) + " ", "quoted": '"' + " ".join(words) + '" ',
               "quoted-tight": '"' + "".join(words) + '"'}[kind]
    value = pad + display + (f"<{addr}>" if angle or kind != "none" else addr) + pad
    field = b"Cc: " + value.encode("utf-8")
    assert headers.addresses(field) == _reference(field)
