"""A CI-SIS profile message on the MLLP listener, over a real socket: the GESTIONNAIRE's copies are
queued (AA), a refusal is ``AE`` naming the rule in ERR-5 and its place in ERR-2 (the profile's
meaning), a failure of ours is ``AR`` (resend later), a resend after a lost ACK sends nothing twice."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from gateway.cisis.gestionnaire import Gestionnaire
from gateway.cisis.ledger import ZamLedger
from gateway.config.cisis import CisisSettings, CreatorSettings
from gateway.intake.mllp import MllpListener
from gateway.intake.settings import MllpSettings
from gateway.routing.hl7 import mllp_frame
from tests.cisis.samples import INS, PS_ADDRESS, Spec
from tests.intake import samples as s
from tests.intake.test_mllp import _exchange

MAILBOX = "pfi@pfi-fictive.mssante.test"
SETTINGS = CisisSettings(application_mailbox=MAILBOX, nil="TEST0001",
                         creators=(CreatorSettings(name="sgl", application="SGLFICTIF", facility="LABOFICTIF",
                                                   folder=Path("/nonexistent/zam")),))


@pytest.fixture
async def listener(tmp_path: Path, spool, directory, dedup, routing):
    ledger = ZamLedger(tmp_path / "cisis.sqlite")
    audit: list[dict] = []
    settings = MllpSettings(address="127.0.0.1", port=0, sender=s.LIS, timeout=5.0,
                            allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),))
    lst = MllpListener(settings, spool, directory, dedup, None, 3600.0, routing=routing)
    lst.gestionnaire = Gestionnaire(SETTINGS, spool, ledger, lifetime=3600.0, audit=lambda **kw: audit.append(kw))
    lst.audit = audit  # type: ignore[attr-defined]
    await lst.start()
    yield lst
    await lst.stop()
    ledger.close()


async def test_profile_message_is_queued_from_the_application_mailbox(listener, spool) -> None:
    (ack,) = await _exchange(listener.bound, mllp_frame(Spec(control_id="CISIS01").build()))
    assert ack["MSA"][1:3] == ["AA", "CISIS01"]
    queued = sorted(spool.list(), key=lambda m: len(m.recipients))
    assert [[r.address for r in m.recipients] for m in queued] == [[PS_ADDRESS], [f"{INS}@patient.mssante.fr"]] \
        or [[r.address for r in m.recipients] for m in queued] == [[f"{INS}@patient.mssante.fr"], [PS_ADDRESS]]
    assert {m.sender for m in queued} == {MAILBOX}
    # the configured application mailbox chooses the signing key, not the door's sender nor the message
    assert {m.auth_user for m in queued} == {MAILBOX}
    records = listener.audit  # type: ignore[attr-defined]
    assert {r["decision"] for r in records} == {"cisis-professional", "cisis-patient"}


async def test_a_resend_after_a_lost_ack_sends_nothing_twice(listener, spool) -> None:
    frame = mllp_frame(Spec(control_id="CISIS02").build())
    acks = await _exchange(listener.bound, frame, frame, acks=2)
    assert [a["MSA"][1] for a in acks] == ["AA", "AA"]
    assert len(spool.list()) == 2  # the two copies of the first one only
    other = Spec(control_id="CISIS02", reply_to=None).build()  # same id, another content: not a resend
    (ack,) = await _exchange(listener.bound, mllp_frame(other))
    assert ack["MSA"][1] == "AA" and len(spool.list()) == 4


async def test_a_refusal_is_ae_with_the_rule_and_its_place_and_nothing_queued(listener, spool) -> None:
    message = Spec(control_id="CISIS03", flags={"INVISIBLE_REP_LEGAUX": "Y"}).build()
    (ack,) = await _exchange(listener.bound, mllp_frame(message))
    assert ack["MSA"][1:3] == ["AE", "CISIS03"]
    err = ack["ERR"]
    assert err[2].startswith("OBX^") and err[3].startswith("207^")
    assert err[5].startswith("MATRIX^") and err[5].endswith("^CISIS")
    text = "|".join(sum(ack.values(), []))
    assert INS not in text and "TESTNOM" not in text
    assert spool.list() == []


async def test_our_temporary_failure_is_ar_and_the_resend_goes(listener, spool) -> None:
    spool.close()
    (ack,) = await _exchange(listener.bound, mllp_frame(Spec(control_id="CISIS04").build()))
    assert ack["MSA"][1:3] == ["AR", "CISIS04"]
    spool.open()
    (ack,) = await _exchange(listener.bound, mllp_frame(Spec(control_id="CISIS04").build()))
    assert ack["MSA"][1] == "AA" and len(spool.list()) == 2


async def test_a_profile_message_where_the_profile_is_not_served(listener, spool) -> None:
    listener.gestionnaire = None
    (ack,) = await _exchange(listener.bound, mllp_frame(Spec(control_id="CISIS05").build()))
    assert ack["MSA"][1] == "AE" and ack["ERR"][5].startswith("PROFILE_NOT_SERVED^")
    assert spool.list() == []
