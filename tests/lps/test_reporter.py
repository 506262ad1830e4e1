"""The reporter: an application mailbox's outcome → the MDN (or the error notice) queued in a real
spool for the doctor; several outcome listeners each hear every outcome."""

from __future__ import annotations

import email
import email.policy
import tomllib
from pathlib import Path

import pytest

from gateway.cisis.returns import parse_returns
from gateway.config import GatewayConfig, parse_config
from gateway.delivery.consumer import INTEGRATED
from gateway.lps.reporter import LISTENER, MdnReporter
from gateway.runner import QueueService
from gateway.spool import Spool
from tests.lps.transport_support import DOCTOR, DOMAIN, MAILBOX, xdm_mail

OTHER = "secretariat@cabinet-imaginaire.mssante.test"


def config(tmp_path: Path) -> GatewayConfig:
    text = f"""
[gateway]
hostname = "msgw.{DOMAIN}"
[listeners.relay]
kind = "relay"
[spool]
path = "{tmp_path / 'spool'}"
[local]
domains = ["{DOMAIN}"]
[delivery.consumers."{MAILBOX}"]
mllp = "127.0.0.1:2575"
"""
    return parse_config(tomllib.loads(text), source="t.toml", base=tmp_path)


@pytest.fixture
def setup(tmp_path: Path):
    cfg = config(tmp_path)
    spool = Spool(cfg.spool.path).open()
    queued: list[str] = []
    yield cfg, spool, MdnReporter(cfg, spool, on_queued=queued.append), queued
    spool.close()


def spooled(spool: Spool, data: bytes, sender: str = DOCTOR) -> str:
    return spool.accept_prepared(sender, [MAILBOX], data, form="local-verified", lifetime=3600)


def test_integrated_gets_the_processed_mdn_from_the_null_sender(setup) -> None:
    cfg, spool, reporter, queued = setup
    msg_id = spooled(spool, xdm_mail())
    reporter(msg_id, MAILBOX, "delivered", "2.6.0", f"250 {INTEGRATED}")
    (mdn_id,) = queued
    queued_msg = spool.get(mdn_id)
    assert queued_msg is not None and queued_msg.sender == "" and queued_msg.listener == LISTENER
    assert queued_msg.auth_user == MAILBOX  # the mailbox signs it ([policy.sign_with])
    assert [r.address for r in queued_msg.recipients] == [DOCTOR]
    assert queued_msg.stage == "received"  # the pipeline prepares it: the protection policy applies
    (ret,) = parse_returns(spool.message_bytes(mdn_id))
    assert (ret.kind, ret.ok, ret.original_message_id) == ("mdn", True, "lettre-1@cabinet-imaginaire.mssante.test")


def test_a_refusal_gets_the_mdn_with_its_ans_code(setup) -> None:
    _cfg, spool, reporter, queued = setup
    msg_id = spooled(spool, xdm_mail())
    reporter(msg_id, MAILBOX, "bounced", "5.6.0", "554 5.6.0 902^Identifiant patient inconnu")
    (ret,) = parse_returns(spool.message_bytes(queued[0]))
    assert (ret.ok, ret.code) == (False, "902")


def test_without_a_request_a_refusal_gets_the_error_notice_a_success_nothing(setup) -> None:
    _cfg, spool, reporter, queued = setup
    msg_id = spooled(spool, xdm_mail(mdn=False))
    reporter(msg_id, MAILBOX, "delivered", "2.6.0", f"250 {INTEGRATED}")
    assert queued == []
    reporter(msg_id, MAILBOX, "bounced", "5.6.0", "554 5.6.0 904^L'INS transmis ne correspond pas")
    (notice_id,) = queued
    data = spool.message_bytes(notice_id)
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert "[904]" in str(msg["Subject"]) and msg.get_content_type() != "multipart/report"
    assert [r.address for r in spool.get(notice_id).recipients] == [DOCTOR]


def test_loop_guard_a_request_to_another_address_than_the_return_path(setup) -> None:
    _cfg, spool, reporter, queued = setup
    msg_id = spooled(spool, xdm_mail(), sender=OTHER)
    reporter(msg_id, MAILBOX, "delivered", "2.6.0", f"250 {INTEGRATED}")
    assert queued == []  # no automatic MDN to an address that is not the return path


def test_no_report_for_other_outcomes_or_other_mailboxes(setup) -> None:
    _cfg, spool, reporter, queued = setup
    msg_id = spooled(spool, xdm_mail())
    reporter(msg_id, MAILBOX, "delivered", "2.0.0", "250 2.0.0 delivered to maildir")  # no archive: not integrated
    reporter(msg_id, MAILBOX, "bounced", "5.6.0", "554 5.6.0 no IHE_XDM.ZIP archive")  # its DSN says it
    reporter(msg_id, MAILBOX, "deferred", "4.4.2", "no ACK")
    reporter(msg_id, f"secretariat@{DOMAIN}", "delivered", "2.0.0", f"250 {INTEGRATED}")
    assert queued == []


def test_a_fault_is_logged_never_raised(setup, caplog: pytest.LogCaptureFixture) -> None:
    _cfg, _spool, reporter, queued = setup
    reporter("no-such-message", MAILBOX, "delivered", "2.6.0", f"250 {INTEGRATED}")
    assert queued == [] and "lps-mdn-failed" in caplog.text


def test_several_outcome_listeners_each_hear_every_outcome(setup) -> None:
    cfg, spool, _reporter, _queued = setup
    service = QueueService(cfg, spool)
    heard: list[tuple[str, str]] = []

    def broken(*_args: object) -> None:
        raise RuntimeError("listener fault")

    service.listen_outcomes(lambda q, r, s, st, rep: heard.append(("first", s)))  # the old name still works
    service.add_outcome_listener(broken)
    service.add_outcome_listener(lambda q, r, s, st, rep: heard.append(("second", s)))
    assert service.delivery.on_outcome is not None and service.runner.on_outcome is not None
    service.delivery.on_outcome("Q1", MAILBOX, "delivered", "2.0.0", None)
    service.runner.on_outcome("Q2", MAILBOX, "bounced", "5.0.0", None)
    assert heard == [("first", "delivered"), ("second", "delivered"), ("first", "bounced"), ("second", "bounced")]
