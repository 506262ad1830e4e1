"""The From:/Sender: claim check's fast path (issue 15: `gateway.senders._plain_claims` and
`_addresses`) against the full readers it stands in for: `rawmime.header_fields` for the header
block and `email.utils.getaddresses` for the addresses. The oracle below is the check as it was
written before the fast path; on every input — hand-picked attacks and generated header blocks —
both must give the same addresses, or the same error, so the refusal decision cannot change."""

from __future__ import annotations

import itertools
from email.utils import getaddresses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import MalformedInput
from gateway.rawmime import header_fields, unfold
from gateway.senders import (
    _ONE_MAILBOX,
    CLAIM_FIELDS,
    SenderIdentity,
    _addresses,
    _plain_claims,
    claimed_senders,
    refused_claims,
)


def _oracle(message: bytes) -> list[str]:
    """`claimed_senders` before issue 15's fast path, verbatim."""
    fields = header_fields(message)
    out: list[str] = []
    for name in CLAIM_FIELDS:
        values = [value for field, value in fields if field == name]
        if len(values) > 1:
            raise MalformedInput(f"several {name.title()}: fields", "message header")
        for value in values:
            pairs = getaddresses([value])
            addresses = [addr.strip().lower() for _, addr in pairs if addr.strip()]
            if not addresses or any("@" not in a for a in addresses):
                raise MalformedInput(f"unreadable {name.title()}: field", "message header")
            out += addresses
    return out


def _outcome(read: object, message: bytes) -> object:
    try:
        return read(message)  # type: ignore[operator]
    except MalformedInput as exc:
        return ("MalformedInput", exc.what, exc.where)


def _same(message: bytes) -> None:
    assert _outcome(claimed_senders, message) == _outcome(_oracle, message), message


def _old_addresses(value: str) -> list[str]:
    return [addr.strip().lower() for _, addr in getaddresses([value]) if addr.strip()]


# One field value each: the plain forms the fast path takes, and what must go to the full parser.
VALUES = [
    "a@b.c", "<a@b.c>", "Labo TEST <labo@labo-tests.sante.test>", '"Labo, TEST" <a@b.c>', '"" <a@b.c>',
    "Dr. A <a@b.c>", "Dr.A<a@b.c>", "é <a@b.c>", "Île-de-France Labo <a@b.c>", "A.B@C.D", "x+tag@b.c",
    "=?utf-8?q?Labo_=C3=A9?= <lab@x.test>", "=?utf-8?b?PGV2aWxAeC50ZXN0Pg==?= <lab@x.test>",
    # two addresses, groups, comments hiding an address, routes, literals, quoted local parts
    "a@b.c, d@e.f", "a@b.c,d@e.f", "Labo <a@b.c>, <d@e.f>", "Team: a@b.c, d@e.f;", "Team:;", "undisclosed:;",
    "(evil@x.test) a@b.c", "a@b.c (evil@x.test)", "Labo (x@y.z) <a@b.c>", "<a@b.c> (c)", "Labo <a@b.c> (c)",
    "<a@x>@y", "<a@x.test>@y.test", "<@route.test:a@b.c>", "<a@[192.0.2.1]>", "a@[192.0.2.1]",
    '"a b"@c.d', '"a@b.c" <d@e.f>', '"a\\"b" <c@d.e>', '"a\\b" <c@d.e>', "<a@b.c> d@e.f", "a@b.c <d@e.f>",
    "a@b@c.d", "<a@b@c.d>", "a.@b.c", ".a@b.c", "a..b@c.d", "a@b..c", "a@.b.c", "a@b.c.", "a@-b.c",
    "<a@b.c", "a@b.c>", "<<a@b.c>>", "<a@b.c>>", "<>", "", "nobody", "Labo TEST", "@b.c", "a@", "<a@>",
    "a@b.c;", "a@b.c,", ",a@b.c", "Labo <a@b.c>;", "Labo\x00 <a@b.c>", "a\x00@b.c", '"\x00" <a@b.c>',
    "<a@b.c\x00>", "a@b.c\x7f", "Labo\u2028<a@b.c>", "<é@b.c>", "<a@é.c>", "a@b.c\u00a0d@e.f",
    "Labo <a@b.c> <d@e.f>", "Labo <a@b.c>x", "x<a@b.c>y", "< a@b.c >", "<a @b.c>", "<a@ b.c>", "a @ b.c",
    "Name <a@b.c>, Name2 <d@e.f>", "'a'@b.c", "a@b_c.d", "\ufeffa@b.c", "<a@b.c>\t", "\\<a@b.c>",
    '"x" "y" <a@b.c>', 'x "y" <a@b.c>', '"x" y <a@b.c>', "ȷ <a@b.c>", "Ɋ <a@b.c>",
]


@pytest.mark.parametrize("value", VALUES)
def test_each_value_gives_the_parsers_addresses(value: str) -> None:
    text = unfold(value.encode())  # what header_fields hands over
    assert _addresses(text) == _old_addresses(text)


@pytest.mark.parametrize("value", VALUES)
def test_each_value_in_a_message_gives_the_same_claims(value: str) -> None:
    for field in ("From", "Sender", "FROM", "from \t", "Sender"):
        _same(f"{field}: {value}\r\nTo: x@y.z\r\nSubject: s\r\n\r\nbody\r\n".encode("utf-8", "surrogateescape"))
        _same(f"To: x@y.z\r\n{field}:{value}\r\n\r\nbody\r\n".encode())


def test_the_common_forms_take_the_fast_path() -> None:
    """What the fast path is for: these never reach the stdlib's address parser."""
    for value in ("a@b.c", "<a@b.c>", "Labo TEST <labo@labo-tests.sante.test>", '"Labo, TEST" <a@b.c>',
                  "=?utf-8?q?Labo_=C3=A9?= <lab@x.test>", "Dr. A <a@b.c>"):
        assert _ONE_MAILBOX.fullmatch(value) is not None, value
    message = (b"From: Labo TEST <labo@labo-tests.sante.test>\r\nTo: \"bench.1\" <x@y.z>\r\n"
               b"Subject: s\r\n folded\r\nSender: <s@x.test>\r\n\r\nbody\r\n")
    assert _plain_claims(message) == [["Labo TEST <labo@labo-tests.sante.test>"], ["<s@x.test>"]]


@pytest.mark.parametrize("message", [
    b"From: a@x.test\r\nFrom: b@x.test\r\n\r\n",            # several From
    b"From: a@x.test\r\nfrom : b@x.test\r\n\r\n",
    b"Sender: a@x.test\r\nSENDER: b@x.test\r\n\r\n",
    b"From: a@x.test\r\nX-From: b@x.test\r\nResent-From: c@x.test\r\n\r\n",  # other fields are not claims
    b"From lab@x.test Thu Dec  3 10:00:00 2026\r\nFrom: demo@x.test\r\n\r\n",  # mbox line: not a field
    b" continued\r\nFrom: demo@x.test\r\n\r\n",            # continuation before any field
    b"From\r\n\r\n", b"\r\nFrom: a@x.test\r\n\r\n", b"\r\n\r\nFrom: a@x.test\r\n",
    b"From: a@x.test", b"From: a@x.test\r\n", b"",           # no blank line
    b"From: a@x.test\nSender: b@x.test\r\n\r\n",           # bare LF: one field to header_fields
    b"From: a@x.test\rSender: b@x.test\r\n\r\n",           # bare CR
    b"From: a@x.test\r\n\nFrom: b@x.test\r\n\r\n",
    b"To: x@y.z\r\nFrom: <a@x.test>\r\n\tSender: b@x.test\r\n\r\n",  # a folded line is not a field
    b"From: Labo\r\n <a@x.test>\r\n\r\n", b"From:\r\n <a@x.test>\r\n\r\n", b"From: \r\n\r\n",
    b"From: <a@x.test>\r\n \r\n\r\n", b"From: <a@x.test>\r\n\t\r\nTo: b\r\n\r\n",
    b"From: Labo \xc3\xa9 <a@x.test>\r\n\r\n", b"From: Labo \xe9 <a@x.test>\r\n\r\n",  # 8-bit names
    b"From: <a@x.test>\x00\r\n\r\n", b"Fr\x00om: <a@x.test>\r\n\r\n", b"From\x00: a@x.test\r\n\r\n",
    b"From: a@x.test\r\nSender: <a@x>@y\r\n\r\n", b"From: a@x.test\r\nSender: evil@x.test, a@x.test\r\n\r\n",
    b"From: Team: evil@x.test;\r\n\r\n", b"From: (evil@x.test)\r\n\r\n", b"From: a@x.test (b@y.test)\r\n\r\n",
    b"X-Pad: " + b"a" * (300 * 1024) + b"\r\nFrom: a@x.test\r\n\r\n",  # past the header block limit
    b"From: a@x.test\r\n\r\n" + b"From: b@x.test\r\n" * 3,     # fields in the body are not fields
])
def test_hand_picked_header_blocks_give_the_same_claims(message: bytes) -> None:
    _same(message)


_LINES = st.sampled_from([
    "From: a@x.test", "From: Labo <a@x.test>", 'From: "L, b" <a@x.test>', "from:<A@X.test>", "FROM \t: a@x.test",
    "Sender: s@x.test", "sender:Labo <s@x.test>", "From: a@x.test, b@y.test", "From: G: a@x.test;",
    "From: (c@y.test) a@x.test", "From: <a@x>@y", "From: nobody", "From:", "To: t@x.test", "Subject: s",
    "X-From: e@x.test", "Resent-Sender: e@x.test", " folded", "\tfolded <e@x.test>", " <e@x.test>", "",
    "not a field", "From a@x.test", ":empty name", "From: a@x.test\n", "From: a@x.test\r", "Fr\nom: a@x.test",
    "From: \x00<a@x.test>", "From: é <a@x.test>", "From: =?utf-8?q?a?= <a@x.test>", "Sender:",
])


@settings(max_examples=3000, deadline=None, database=None, derandomize=True)
@given(st.lists(_LINES, max_size=8), st.booleans())
def test_generated_header_blocks_give_the_same_claims(lines: list[str], blank: bool) -> None:
    head = "\r\n".join(lines).encode()
    _same(head + (b"\r\n\r\nbody\r\n" if blank else b"\r\n"))


_VALUE_CHARS = st.text(alphabet='ab.@<>-+ \t()"[]:,;\\éŁ\x00=?_\u2028', max_size=28)


@settings(max_examples=4000, deadline=None, database=None, derandomize=True)
@given(_VALUE_CHARS)
def test_generated_values_give_the_parsers_addresses(value: str) -> None:
    text = unfold(value.encode())
    assert _addresses(text) == _old_addresses(text), text
    _same(f"From: {value}\r\nSubject: s\r\n\r\nb\r\n".encode())


@settings(max_examples=2000, deadline=None, database=None, derandomize=True)
@given(st.sampled_from(["", "Labo ", "Labo TEST ", '"Labo, T" ', "Dr. A", "é ", '"" ']),
       st.sampled_from(["a", "a.b", "A+b", "a_b", "x-y", "a..b", ".a", "a.", "é", "a b", '"a b"', ""]),
       st.sampled_from(["x.test", "X.Test", "x", "x..test", "-x.test", "[192.0.2.1]", "é.test", "", "x.test."]),
       st.sampled_from(["<{}>", "{}", "<{}>x", " <{}>", "<{}> ", "<<{}>>", "<{}>, b@c.d", "({}) <a@b.c>"]))
def test_generated_mailboxes_give_the_parsers_addresses(name: str, local: str, domain: str, shape: str) -> None:
    value = name + shape.format(f"{local}@{domain}")
    text = unfold(value.encode())
    assert _addresses(text) == _old_addresses(text), text


def test_the_refusal_decision_is_the_same() -> None:
    ident = SenderIdentity("network", "network:relay", ("labo@labo-tests.sante.test", "@x.test"))
    for value, line in itertools.product(VALUES, ("From: {}", "Sender: {}")):
        message = (line.format(value) + "\r\nFrom: labo@labo-tests.sante.test\r\n\r\nb\r\n").encode()
        if line.startswith("From"):
            message = (line.format(value) + "\r\n\r\nb\r\n").encode()
        try:
            expected: object = [a for a in _oracle(message) if not ident.may_use(a)]
        except MalformedInput as exc:
            expected = str(exc)
        try:
            got: object = refused_claims(ident, message)
        except MalformedInput as exc:
            got = str(exc)
        assert got == expected, message
