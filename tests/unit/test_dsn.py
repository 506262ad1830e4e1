"""RFC 3464 DSNs: parsed back with Python's `email`, every field checked, never a body byte."""

from __future__ import annotations

import email
import email.policy
import random
import re
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage

import pytest

from gateway.delivery.dsn import RecipientReport, build_dsn, header_block

MARKER = "PATIENT-MARKER-7f3a9c"
ARRIVAL = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
NOW = datetime(2026, 11, 25, 9, 31, 5, tzinfo=UTC)
ORIGINAL = (
    "Received: from lis.labo.example by msgw.example; Fri, 20 Nov 2026 09:30:00 +0000\r\n"
    "From: Laboratoire <lab@labo.example>\r\n"
    "To: dr.martin@cabinet.example, dr.durand@cabinet.example\r\n"
    "Subject: Résultats de M. X\r\n"
    "Message-ID: <orig-1@labo.example>\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "\r\n"
    f"Résultats : {MARKER}\r\n"
    "Glycémie 1.2 g/L\r\n"
).encode()


def failed(recipient: str = "dr.martin@cabinet.example", **kw) -> RecipientReport:
    fields = dict(action="failed", status="5.1.1", diagnostic="smtp; 550 5.1.1 <dr.martin@cabinet.example> unknown",
                  remote_mta="dns; mx.cabinet.example", last_attempt=NOW - timedelta(minutes=1))
    fields.update(kw)
    return RecipientReport(recipient, **fields)  # type: ignore[arg-type]


def delayed(recipient: str = "dr.durand@cabinet.example") -> RecipientReport:
    return RecipientReport(recipient, "delayed", "4.4.1", diagnostic="smtp; 451 4.4.1 try later",
                           remote_mta="dns; mx2.cabinet.example", last_attempt=NOW,
                           will_retry_until=ARRIVAL + timedelta(days=5))


def build(recipients: list[RecipientReport], original: bytes = ORIGINAL, **kw) -> bytes:
    args = dict(original=original, envelope_id="Q-0001", envelope_from="lab@labo.example",
                reporting_mta="msgw.example", recipients=recipients, arrival=ARRIVAL, now=NOW)
    args.update(kw)
    return build_dsn(**args)  # type: ignore[arg-type]


def parse(dsn: bytes) -> EmailMessage:
    message = email.message_from_bytes(dsn, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def assert_wire_clean(dsn: bytes) -> None:
    """7-bit, CRLF only, no over-long line."""
    assert dsn.isascii()
    assert re.search(rb"(?<!\r)\n", dsn) is None and re.search(rb"\r(?!\n)", dsn) is None
    assert dsn.endswith(b"\r\n")
    assert max(len(line) for line in dsn.split(b"\r\n")) <= 998


def status_blocks(message: EmailMessage) -> list[email.message.Message]:
    parts = list(message.iter_parts())
    assert parts[1].get_content_type() == "message/delivery-status"
    blocks = parts[1].get_payload()
    assert isinstance(blocks, list)
    return blocks


def test_failed_dsn_structure_and_every_field() -> None:
    dsn = build([failed()])
    assert_wire_clean(dsn)
    message = parse(dsn)
    assert message.defects == []
    assert message["From"].addresses[0].addr_spec == "MAILER-DAEMON@msgw.example"
    assert message["From"].addresses[0].display_name == "Mail Delivery System"
    assert message["To"].addresses[0].addr_spec == "lab@labo.example"
    assert message["Date"].datetime == NOW
    assert re.fullmatch(r"<[^<>@\s]+@msgw\.example>", message["Message-ID"])
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["Subject"] == "Undelivered Mail Returned to Sender"
    assert message["MIME-Version"] == "1.0"
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"

    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status",
                                                     "text/rfc822-headers"]
    per_message, per_rcpt = status_blocks(message)
    assert dict(per_message.items()) == {"Reporting-MTA": "dns; msgw.example", "Original-Envelope-Id": "Q-0001",
                                         "Arrival-Date": "Fri, 20 Nov 2026 09:30:00 +0000"}
    assert dict(per_rcpt.items()) == {
        "Final-Recipient": "rfc822; dr.martin@cabinet.example",
        "Action": "failed",
        "Status": "5.1.1",
        "Remote-MTA": "dns; mx.cabinet.example",
        "Diagnostic-Code": "smtp; 550 5.1.1 <dr.martin@cabinet.example> unknown",
        "Last-Attempt-Date": "Wed, 25 Nov 2026 09:30:05 +0000",
    }
    assert per_message.defects == [] and per_rcpt.defects == []


def test_human_text_is_bilingual_and_names_each_recipient() -> None:
    text = list(parse(build([failed(), delayed()])).iter_parts())[0]
    assert text.get_content_charset() == "utf-8"
    content = text.get_content()
    assert "could not be delivered" in content and "n'a pas pu être remis" in content
    assert "is delayed" in content and "est retardée" in content
    assert content.count("<dr.martin@cabinet.example>:") == 2  # once per language
    assert content.count("<dr.durand@cabinet.example>:") == 2
    assert "the mailbox does not exist (5.1.1)" in content
    assert "la boîte aux lettres n'existe pas (5.1.1)" in content
    assert "550 5.1.1 <dr.martin@cabinet.example> unknown" in content
    assert "will retry until 2026-11-25 09:30 UTC" in content
    assert "nouvelles tentatives jusqu'au 25/11/2026 à 09:30 UTC" in content
    assert "données de santé" in content and "health data" in content


def test_mixed_and_delayed_reports() -> None:
    mixed = parse(build([failed(), delayed()]))
    assert mixed["Subject"] == "Undelivered Mail Returned to Sender (partial failure)"
    _, first, second = status_blocks(mixed)
    assert first["Action"] == "failed" and "Will-Retry-Until" not in first
    assert dict(second.items()) == {
        "Final-Recipient": "rfc822; dr.durand@cabinet.example",
        "Action": "delayed",
        "Status": "4.4.1",
        "Remote-MTA": "dns; mx2.cabinet.example",
        "Diagnostic-Code": "smtp; 451 4.4.1 try later",
        "Last-Attempt-Date": "Wed, 25 Nov 2026 09:31:05 +0000",
        "Will-Retry-Until": "Wed, 25 Nov 2026 09:30:00 +0000",
    }
    only_delayed = parse(build([delayed()]))
    assert only_delayed["Subject"] == "Delayed Mail (still being retried)"
    delivered = parse(build([RecipientReport("a@x.example", "delivered", "2.0.0"),
                             RecipientReport("b@x.example", "relayed", "2.0.0")]))
    assert delivered["Subject"] == "Successful Mail Delivery Report"
    assert [b["Action"] for b in status_blocks(delivered)[1:]] == ["delivered", "relayed"]
    other = parse(build([delayed(), RecipientReport("a@x.example", "delivered", "2.0.0")]))
    assert other["Subject"] == "Delivery Status Notification (mixed)"


def test_optional_fields_and_original_recipient() -> None:
    report = RecipientReport("a@x.example", "failed", "5.4.7", original_recipient="rfc822; Alias@X.example")
    _, block = status_blocks(parse(build([report], envelope_id="")))
    assert dict(block.items()) == {"Original-Recipient": "rfc822; Alias@X.example",
                                   "Final-Recipient": "rfc822; a@x.example", "Action": "failed",
                                   "Status": "5.4.7"}
    per_message = status_blocks(parse(build([report], envelope_id="")))[0]
    assert "Original-Envelope-Id" not in per_message
    plain = RecipientReport("a@x.example", "failed", "5.0.0", original_recipient="orig@x.example")
    assert status_blocks(parse(build([plain])))[1]["Original-Recipient"] == "rfc822; orig@x.example"


def test_untyped_values_get_a_type_and_bad_status_a_default() -> None:
    report = RecipientReport("a@x.example", "failed", "garbage", diagnostic="550 no such user",
                             remote_mta="mx.x.example")
    _, block = status_blocks(parse(build([report])))
    assert block["Status"] == "5.0.0"
    assert block["Diagnostic-Code"] == "smtp; 550 no such user"
    assert block["Remote-MTA"] == "dns; mx.x.example"
    report = RecipientReport("a@x.example", "delayed", "", diagnostic="connection refused")
    _, block = status_blocks(parse(build([report])))
    assert block["Status"] == "4.0.0" and block["Diagnostic-Code"] == "x-msgw; connection refused"


def test_headers_part_has_the_header_block_only() -> None:
    dsn = build([failed()])
    headers = list(parse(dsn).iter_parts())[2]
    assert headers.get_content() == ORIGINAL.split(b"\r\n\r\n")[0].decode() + "\r\n"
    assert "Subject: Résultats de M. X" in headers.get_content()
    original_headers = email.message_from_string(headers.get_content(), policy=email.policy.default)
    assert original_headers["Message-ID"] == "<orig-1@labo.example>"


def assert_no_body(dsn: bytes, marker: str = MARKER) -> None:
    assert marker.encode() not in dsn
    message = parse(dsn)
    for part in message.walk():
        if not part.is_multipart() and part.get_content_type() != "message/delivery-status":
            assert marker not in part.get_content()
    assert marker not in message.as_string()


def test_body_marker_never_in_dsn() -> None:
    report = failed(diagnostic="smtp; 550 5.7.1 rejected")
    assert_no_body(build([report, delayed()]))


@pytest.mark.parametrize("original", [
    # no header/body separator: a body-looking line ends the headers
    f"From: a@x.example\r\nSubject: test\r\n{MARKER} is the body\r\nmore\r\n".encode(),
    # bare LF and bare CR everywhere
    f"From: a@x.example\nSubject: test\n\n{MARKER}\n".encode(),
    f"From: a@x.example\rSubject: test\r\r{MARKER}\r".encode(),
    f"From: a@x.example\r\nSubject: test\n\r\n{MARKER}\r\n".encode(),
    # 8-bit, not UTF-8, bytes in headers; NUL and control bytes
    b"From: a@x.example\r\nSubject: caf\xe9 \xff\x00\x07\r\nX-Bin: \x80\x81\r\n\r\n" + MARKER.encode(),
    # body only, nothing that looks like a header
    f"Dear doctor,\r\n{MARKER}\r\n".encode(),
    f"\r\n{MARKER}\r\n".encode(),
    b"",
    MARKER.encode(),
    # mbox "From " line first
    f"From lab@x Fri Nov 20 09:30:00 2026\r\nSubject: x\r\n\r\n{MARKER}".encode(),
    # a continuation line first, then body
    f"   folded\r\n{MARKER}\r\n".encode(),
    # over-long header line and huge header block
    b"Subject: " + b"A" * 5000 + b"\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(20000))
    + b"\r\n" + MARKER.encode(),
    # a body line that looks like a header, after the separator
    f"Subject: x\r\n\r\nNote: {MARKER}\r\n".encode(),
])
def test_malformed_original_never_raises_never_leaks_body(original: bytes) -> None:
    dsn = build([failed()], original=original)
    assert_wire_clean(dsn)
    assert_no_body(dsn)
    message = parse(dsn)
    assert [p.get_content_type() for p in message.iter_parts()][2] == "text/rfc822-headers"


def test_header_block_sanitising() -> None:
    assert header_block(b"From: a\nSubject: b\n\nbody") == b"From: a\r\nSubject: b\r\n"
    assert header_block(b"From: a\r\n folded\r\n\tmore\r\nbody line\r\n") == b"From: a\r\n folded\r\n\tmore\r\n"
    assert header_block(b"Subject: a\x00b\x1bc\r\n\r\n") == b"Subject: abc\r\n"
    assert header_block(b"\r\nSubject: not a header: it is body\r\n") == b""
    assert len(header_block(b"Subject: " + b"x" * 5000 + b"\r\n")) == 1000
    assert len(header_block(b"X: y\r\n" * 100000)) <= 64 * 1024


def test_eight_bit_headers_are_quoted_printable_utf8() -> None:
    dsn = build([failed()], original=b"Subject: caf\xc3\xa9 \xff\r\n\r\nbody")
    headers = list(parse(dsn).iter_parts())[2]
    assert headers["Content-Transfer-Encoding"] == "quoted-printable"
    assert headers.get_content() == "Subject: café \ufffd\r\n"


def test_hostile_fields_are_sanitised() -> None:
    report = RecipientReport("victim@x.example\r\nBcc: other@y.example", "failed", "5.1.1\r\nX-Evil: 1",
                             diagnostic="smtp; 550 bad\r\nX-Injected: yes\x00", remote_mta="dns; mx\nX-R: 1")
    dsn = build([report], envelope_id="id\r\nX-Env: 1", envelope_from="lab@labo.example\r\nCc: z@z",
                reporting_mta="msgw.example\r\nX-M: 1")
    assert_wire_clean(dsn)
    message = parse(dsn)
    for header in ("X-Evil", "X-Injected", "X-R", "X-Env", "X-M", "Bcc", "Cc"):
        assert header not in message
        for block in status_blocks(message):
            assert header not in block
    assert len(status_blocks(message)) == 2
    assert message["From"].addresses[0].addr_spec == "MAILER-DAEMON@msgw.example"
    assert status_blocks(message)[0]["Reporting-MTA"] == "dns; msgw.example"
    _, block = status_blocks(message)
    assert block["Status"] == "5.0.0"
    assert block["Diagnostic-Code"] == "smtp; 550 bad X-Injected: yes"


def test_non_ascii_addresses_stay_seven_bit() -> None:
    report = RecipientReport("élodie@cabinet.example", "failed", "5.1.1")
    dsn = build([report], envelope_from="labo@santé.example", reporting_mta="passerelle.santé.example")
    assert_wire_clean(dsn)
    message = parse(dsn)
    assert message["From"].addresses[0].addr_spec == "MAILER-DAEMON@passerelle.xn--sant-epa.example"
    assert message["To"] == "undisclosed-recipients:;"
    _, block = status_blocks(message)
    assert block["Final-Recipient"] == "utf-8; \\x{E9}lodie@cabinet.example"
    assert "<élodie@cabinet.example>" in list(message.iter_parts())[0].get_content()


def test_long_diagnostic_is_folded_and_round_trips() -> None:
    text = "smtp; 550 5.7.1 " + " ".join(f"word{i}" for i in range(120))
    dsn = build([failed(diagnostic=text)])
    assert_wire_clean(dsn)
    assert max(len(line) for line in dsn.split(b"\r\n")) <= 80
    _, block = status_blocks(parse(dsn))
    assert block["Diagnostic-Code"] == text


def test_naive_and_other_timezone_dates() -> None:
    paris = timezone(timedelta(hours=1))
    report = RecipientReport("a@x.example", "delayed", "4.4.1", last_attempt=datetime(2026, 11, 25, 10, 0),
                             will_retry_until=datetime(2026, 11, 26, 10, 0, tzinfo=paris))
    message = parse(build([report], arrival=datetime(2026, 11, 25, 9, 0), now=None))
    per_message, block = status_blocks(message)
    assert per_message["Arrival-Date"] == "Wed, 25 Nov 2026 09:00:00 +0000"
    assert block["Last-Attempt-Date"] == "Wed, 25 Nov 2026 10:00:00 +0000"
    assert block["Will-Retry-Until"] == "Thu, 26 Nov 2026 10:00:00 +0100"
    assert abs((message["Date"].datetime - datetime.now(UTC)).total_seconds()) < 60


def test_message_ids_and_boundaries_are_unique() -> None:
    first, second = parse(build([failed()])), parse(build([failed()]))
    assert first["Message-ID"] != second["Message-ID"]
    assert first.get_boundary() != second.get_boundary()


def test_null_sender_and_empty_report_are_refused() -> None:
    for sender in ("", "<>", "  "):
        with pytest.raises(ValueError):
            build([failed()], envelope_from=sender)
    with pytest.raises(ValueError):
        build([])


def test_random_garbage_originals() -> None:
    rng = random.Random(1234)  # deterministic fuzz: headers of random bytes, then the body marker
    alphabet = [b"\r", b"\n", b"\r\n", b":", b" ", b"\t", b"\x00", b"\xff", b"\xc3\xa9", b"A", b"Subject", b"="]
    for _ in range(300):
        head = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        head = head.replace(b"\r\n\r\n", b"\r\n").replace(b"\n\n", b"\n").replace(b"\r\r", b"\r")
        original = b"X-Start: 1\r\n" + head + b"\r\n\r\n" + MARKER.encode() + b"\r\n"
        dsn = build([failed()], original=original)
        assert_wire_clean(dsn)
        assert MARKER.encode() not in dsn
        assert len(list(parse(dsn).iter_parts())) == 3


def test_returned_headers_keep_identification_and_drop_the_subject() -> None:
    from gateway.delivery.dsn import returned_headers

    original = (b"Received: from x\r\n\tby y\r\nFrom: <lab@x.example>\r\nTo: <dr@y.example>,\r\n <dr2@y.example>\r\n"
                b"Subject: Resultat de Mme PATIENTE\r\nMessage-ID: <1@x.example>\r\n\r\nbody\r\n")
    kept = returned_headers(original)
    assert kept == (b"From: <lab@x.example>\r\nTo: <dr@y.example>,\r\n <dr2@y.example>\r\n"
                    b"Message-ID: <1@x.example>\r\n")
