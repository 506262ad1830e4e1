"""`GatewaySMTP._getaddr` answers the common <local@domain> form with a regex instead of
aiosmtpd's `email._header_value_parser` (issue 15: a third of a small message's protocol CPU).
It must give exactly the parser's answer, whatever the input: checked against aiosmtpd's own
`_getaddr` on generated and hand-picked paths, and over a real socket."""

from __future__ import annotations

from pathlib import Path

from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.server.smtp import GatewaySMTP
from tests.server.test_data_read import RCPT, SENDER, _client, gateway


def _pair(limit: int = 0) -> tuple[GatewaySMTP, SMTP]:
    ours, theirs = GatewaySMTP.__new__(GatewaySMTP), SMTP.__new__(SMTP)
    ours.local_part_limit = theirs.local_part_limit = limit
    return ours, theirs


def _answer(smtp: SMTP, arg: str) -> object:
    """The parse, or the exception it raises (aiosmtpd's parser raises IndexError on "<")."""
    try:
        return smtp._getaddr(arg)
    except Exception as exc:  # noqa: BLE001 - compared, not handled
        return type(exc)


HAND_PICKED = [
    "<a@b.c>", "<a@b.c> SIZE=1", "<a@b.c>  SIZE=1  BODY=8BITMIME ", "<a@b.c> ", "<a@b.c>\tX", "<a@b.c>(c) X",
    "<a@b.c> (c) X", "<a.b@c.d>", "<a..b@c.d>", "<.a@c.d>", "<a.@c.d>", "<a@b.c>X", "<a@-b.c>", "<a@b..c>",
    "<a@b.c.>", "<a@b>", "<a+b/c=d@x-y.z>", "<a@b.c> SIZE=1 (x)", '<"a b"@c.d>', "<a@b.c>>", "<a@b.c> <x>",
    '<a@b.c> "q"', "<a@[192.0.2.1]>", "<@route:a@b.c>", "<>", "<a@b.c", "a@b.c", "<a@b.c> \t X", "<é@b.c>",
    "<a@é.c>", "<a@b.c>\x0b", "<a@b.c> X\rY", "<A.B@Example.COM>", "<a@b.c>  ", "<x{y}|z~@q.r>",
    # the parameters a client sends with the address (SIZE, BODY, SMTPUTF8), well and badly formed
    "<a@b.c> SIZE=100 BODY=8BITMIME SMTPUTF8", "<a@b.c> size=100 body=7bit", "<a@b.c> SIZE=", "<a@b.c> =1",
    "<a@b.c> SIZE=1=2", "<a@b.c> SMTPUTF8 SMTPUTF8", "<a@b.c> BODY=BINARYMIME SIZE=x", "<a@b.c> SIZE=1\t",
    "<a@b.c> SIZE=1 ", "<a@b.c>  ", "<a@b.c> SIZE=1 BODY=8BITMIME (comment)", "<a@b.c> SİZE=1",
]


def test_hand_picked_paths_get_the_parsers_answer() -> None:
    for limit in (0, 3):
        ours, theirs = _pair(limit)
        for arg in HAND_PICKED:
            assert _answer(ours, arg) == _answer(theirs, arg), (arg, limit)


@settings(max_examples=3000, deadline=None, database=None, derandomize=True)
@given(st.text(alphabet="ab.@<>-+ \t()\"[]:é,;\\", max_size=24), st.booleans())
def test_generated_paths_get_the_parsers_answer(text: str, bracket: bool) -> None:
    arg = f"<{text}" if bracket else text
    ours, theirs = _pair()
    assert _answer(ours, arg) == _answer(theirs, arg), arg


def test_mail_and_rcpt_over_a_socket(tmp_path: Path) -> None:
    with gateway(tmp_path) as gw, _client(gw.port) as c:
        assert c.cmd(f"MAIL FROM:<{SENDER}> SIZE=100 BODY=8BITMIME".encode())[0] == 250
        assert c.cmd(f"RCPT TO:<{RCPT}>".encode())[0] == 250
        assert c.cmd(b"RCPT TO:<a..b@msgw.test>")[0] == 550  # parsed by the parser: a local, unknown mailbox
        assert c.cmd(b"RCPT TO:<a@b..c>")[0] == 553  # the parser refuses it: no fast path answer
        assert c.cmd(b"MAIL FROM:<x@y.example>")[0] == 503  # nested MAIL: aiosmtpd's own check still runs
