"""Intake documents by format and outcome, MLLP ACK codes and the S/MIME form, from a real
protected gateway (the TEST PKI): an HPRIM file dropped by a LIS, an ORU^R01 over MLLP (AA) and a
broken HL7 message (AR); the copies leave signed and encrypted, counted with the form `smime`.
No patient data (name, INS) and no recipient local part reach `/metrics`."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.smime.testpki import PERSON_RPPS, TestPKI
from tests.conftest import free_port
from tests.e2e.harness import GatewayProcess, Sink, wait_port
from tests.e2e.test_intake_flow import INS, _hprim, _mllp, _oru
from tests.e2e.test_intake_flow import _setup as intake_setup
from tests.ops.test_metrics_e2e import _wait_for, _wait_http, scrape, value
from tests.smime.support import shared_pki


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return shared_pki().pki


def test_intake_documents_mllp_acks_and_smime_form_are_counted(pki: TestPKI, tmp_path: Path) -> None:
    sink = Sink().start()
    try:
        setup, drop, mllp_port = intake_setup(tmp_path, pki, sink.port)
        port = free_port()
        setup.config.write_text(setup.config.read_text() + f"\n[metrics]\nport = {port}\n")
        with GatewayProcess(setup):
            wait_port(mllp_port)
            _wait_http(port)
            (drop / ".result.hpr.tmp").write_bytes(_hprim("DRJEAN"))
            (drop / ".result.hpr.tmp").rename(drop / "result.hpr")
            assert b"MSA|AA|CTRL-M-1" in _mllp(mllp_port, _oru("8" + PERSON_RPPS, "CTRL-M-1"))
            assert b"MSA|AR" in _mllp(mllp_port, b"MSH|^~\\&|broken\rPID|x\r")
            assert b"MSA|AR" in _mllp(mllp_port, b"not an HL7 message at all\r")
            sink.wait_for(2, timeout=30)
            domain = "cabinet-parc.sante.test"

            def settled(s) -> bool:
                return value(s, "msgw_recipients_total", listener="mllp", domain=domain, form="smime",
                             outcome="delivered") >= 1 and \
                    value(s, "msgw_recipients_total", listener="drop:lis", domain=domain, form="smime",
                          outcome="delivered") >= 1

            after = _wait_for(port, settled)
            text, _ = scrape(port)
        assert value(after, "msgw_mllp_acks_total", code="AA") == 1
        assert value(after, "msgw_mllp_acks_total", code="AR") == 2
        assert value(after, "msgw_intake_documents_total", door="mllp", format="hl7v2", outcome="queued") == 1
        assert value(after, "msgw_intake_documents_total", door="mllp", format="hl7v2", outcome="refused") == 1
        assert value(after, "msgw_intake_documents_total", door="mllp", format="unknown", outcome="refused") == 1
        assert value(after, "msgw_intake_documents_total", door="drop:lis", format="hprim", outcome="queued") == 1
        assert value(after, "msgw_recipients_total", listener="mllp", domain=domain, form="smime",
                     outcome="delivered") == 1
        assert value(after, "msgw_delivery_latency_seconds_count", form="smime") == 2
        for secret in ("PATIENTFICTIF", "Clemence", INS, "jean.test-dupont", "Glyc"):
            assert secret not in text
    finally:
        sink.stop()
