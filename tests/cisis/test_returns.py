"""Reading DSNs and MDNs that come back to the application mailbox."""

from __future__ import annotations

import pytest

from gateway.cisis.returns import Return, ReturnError, parse_returns
from tests.cisis.reports import dsn, mdn, signed
from tests.conftest import require_tool
from tests.smime.support import shared_pki


def test_failed_dsn_gives_the_smtp_code_and_the_returned_message_id() -> None:
    assert parse_returns(dsn()) == [Return("dsn", "copy-1@pfi.test", "adam.hoda@test-ci-sis.mssante.fr", False,
                                           "550", "5.1.1 user unknown")]


def test_delivered_dsn_is_ok_and_delayed_is_no_outcome() -> None:
    ok = parse_returns(dsn("delivered", "2.0.0", None))
    assert [(r.ok, r.code) for r in ok] == [(True, "")]
    assert parse_returns(dsn("delayed", "4.4.1", None)) == []


def test_dsn_without_diagnostic_uses_the_status_class() -> None:
    [r] = parse_returns(dsn(diagnostic=None, status="5.4.7"))
    assert (r.ok, r.code, r.text) == (False, "550", "status 5.4.7")


def test_displayed_mdn_is_ok() -> None:
    assert parse_returns(mdn()) == [Return("mdn", "copy-1@pfi.test", "adam.hoda@test-ci-sis.mssante.fr", True)]


def test_processed_error_mdn_carries_the_ig_code() -> None:
    [r] = parse_returns(mdn("automatic-action/MDN-sent-automatically; processed/Error: 904^INS différent"))
    assert (r.ok, r.code, r.text) == (False, "904", "INS différent")


def test_deleted_mdn_is_not_ok_with_the_other_code() -> None:
    [r] = parse_returns(mdn("manual-action/MDN-sent-manually; deleted"))
    assert (r.ok, r.code) == (False, "906")


def test_error_field_is_read() -> None:
    [r] = parse_returns(mdn("automatic-action/MDN-sent-automatically; processed/error",
                            extra="Error: 902^Patient inconnu\r\n"))
    assert (r.ok, r.code, r.text) == (False, "902", "Patient inconnu")


def test_signed_mdn_is_read_from_its_signed_content() -> None:
    openssl = require_tool("openssl")
    pki = shared_pki().pki
    inner = mdn("automatic-action/MDN-sent-automatically; processed/Error: 904^INS différent")
    body = inner.split(b"\r\n\r\n", 1)
    content = b"Content-Type: multipart/report; report-type=disposition-notification; boundary=\"b1\"\r\n\r\n" + body[1]
    data = signed(content, str(pki["org_sign"].cert_path), str(pki["org_sign"].key_path), openssl)
    assert b"multipart/signed" in data
    [r] = parse_returns(data)
    assert (r.kind, r.original_message_id, r.ok, r.code) == ("mdn", "copy-1@pfi.test", False, "904")


@pytest.mark.parametrize("data, where", [
    (b"From: x@y\r\nSubject: TEST secret subject\r\nContent-Type: text/plain\r\n\r\nTEST patient Dupont\r\n",
     "Content-Type"),
    (b"Content-Type: multipart/report; report-type=other; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n",
     "Content-Type"),
    (b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
     b"--b\r\nContent-Type: text/plain\r\n\r\nTEST\r\n--b--\r\n", "multipart/report"),
])
def test_anything_else_is_a_typed_error_without_content(data: bytes, where: str) -> None:
    with pytest.raises(ReturnError) as info:
        parse_returns(data)
    assert info.value.where == where
    assert "secret" not in str(info.value) and "Dupont" not in str(info.value)
    assert not info.value.temporary
