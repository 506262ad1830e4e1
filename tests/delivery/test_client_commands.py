"""The pipelined transaction's command lines (`SmtpSession._commands`) against the way they were
built before the per-address cache: aiosmtplib's quoting and `_command_line`'s join and control-
character refusal for every argument, per message. Varied and hostile addresses, with and
without SIZE, the same address again (cached) and after a refusal (never cached)."""

from __future__ import annotations

from typing import Any

import pytest
from aiosmtplib.email import quote_address

from gateway.delivery import smtp_client
from gateway.delivery.smtp_client import RecipientResult, SmtpSession, _command_line, _short

ADDRESSES = [
    "lab@labo.test", "dr.martin@hopital.mssante.fr", "", "<>", "<a@b.test>", "Dr Who <who@tardis.test>",
    '"quoted local"@x.test', '"a\\"b"@x.test', "a@[127.0.0.1]", "user+tag@sub.domain.test", "  spaced@x.test  ",
    "no-at-sign", "a@b@c", "x" * 300 + "@long.test", "bell\x07@x.test", "cr\r@x.test", "lf\n@x.test",
    "crlf\r\nRSET@x.test", "nul\x00@x.test", "tab\t@x.test", "del\x7f@x.test", "é@accent.test", "a@ünicode.test",
    "\u2028@x.test", "MAIL FROM:<x@y>", "a@b.test\r\nDATA", "<<a@b>>", "(comment) a@b.test", "a@b.test, c@d.test",
]


def _reference_mail(sender: str, size: int | None) -> bytes:
    options = [f"SIZE={size}".encode("ascii")] if size is not None else []
    return _command_line(b"MAIL", b"FROM:" + quote_address(sender).encode("ascii"), *options)


def _reference_rcpt(rcpt: str) -> bytes:
    return _command_line(b"RCPT", b"TO:" + quote_address(rcpt).encode("ascii"))


def _outcome(fn: Any, *args: Any) -> tuple[str, bytes | str]:
    try:
        return "ok", fn(*args)
    except ValueError as exc:
        return type(exc).__name__, str(exc)


class _Client:
    def __init__(self, size: bool) -> None:
        self.esmtp_extensions = {"pipelining": "", **({"size": "10240000"} if size else {})}

    def supports_extension(self, name: str) -> bool:
        return name.lower() in self.esmtp_extensions


def _session(size: bool) -> SmtpSession:
    return SmtpSession(_Client(size), "hop.test", "hop.test[127.0.0.1]:25", 0.0)  # type: ignore[arg-type]


def _reference_commands(sender: str, recipients: list[str], size: int | None
                        ) -> tuple[bytes, list[tuple[str, bytes]], dict[str, RecipientResult]]:
    mail = _reference_mail(sender, size)
    results: dict[str, RecipientResult] = {}
    sendable: list[tuple[str, bytes]] = []
    for rcpt in recipients:
        try:
            sendable.append((rcpt, _reference_rcpt(rcpt)))
            results[rcpt] = smtp_client._UNANSWERED
        except ValueError as exc:
            results[rcpt] = RecipientResult(553, f"5.1.3 recipient address cannot be sent: {_short(exc)}")
    return mail, sendable, results


@pytest.mark.parametrize("address", ADDRESSES)
def test_each_address_gives_the_reference_lines_or_the_same_refusal(address: str) -> None:
    for _ in range(2):  # the second time from the cache (or again refused: refusals are not cached)
        for size in (None, 0, 1_234, 10**12):
            head = _outcome(smtp_client._mail_head, address)
            reference = _outcome(_reference_mail, address, size)
            if head[0] == "ok":
                assert isinstance(head[1], bytes)
                assert head[1] + (b" SIZE=%d" % size if size is not None else b"") + b"\r\n" == reference[1]
            else:
                assert head == reference
        assert _outcome(smtp_client._rcpt_line, address) == _outcome(_reference_rcpt, address)


def test_refusals_are_not_cached() -> None:
    smtp_client._mail_head.cache_clear()
    smtp_client._rcpt_line.cache_clear()
    for address in ADDRESSES:
        _outcome(smtp_client._mail_head, address)
        _outcome(smtp_client._rcpt_line, address)
    refused = sum(_outcome(_reference_rcpt, a)[0] != "ok" for a in set(ADDRESSES))
    assert refused > 5
    assert smtp_client._rcpt_line.cache_info().currsize == len(set(ADDRESSES)) - refused


@pytest.mark.parametrize("size_offered", [True, False])
def test_commands_match_the_reference_for_mixed_recipient_lists(size_offered: bool) -> None:
    session = _session(size_offered)
    good = [a for a in ADDRESSES if _outcome(_reference_rcpt, a)[0] == "ok"]
    bad = [a for a in ADDRESSES if _outcome(_reference_rcpt, a)[0] != "ok"]
    lists = [good, bad, good + bad, bad + good, good[:1] * 3, [], list(reversed(ADDRESSES)), ADDRESSES * 2]
    for sender in ADDRESSES:
        for recipients in lists:
            for length in (0, 999, 20_000):
                try:
                    mine: Any = session._commands(sender, recipients, length)
                except smtp_client.DeliveryError as exc:
                    mine = ("refused", str(exc), exc.status, exc.temporary)
                try:
                    reference: Any = _reference_commands(sender, recipients, length if size_offered else None)
                except ValueError as exc:
                    reference = ("refused", str(session._sender_unsendable(exc)), "5.1.7", False)
                if isinstance(mine, tuple) and mine[0] != "refused":
                    mine = (mine[0], mine[1], list(mine[2].items()))
                    reference = (reference[0], reference[1], list(reference[2].items()))
                assert mine == reference
