"""`/readyz` names the `keys` check (issue 16): a protected gateway whose signing key's
certificate disappears after the start is not ready (503, `keys` failed, the key named), and is
ready again once the file is back, without a restart; `/metrics` shows the certificate's days left."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.smime.testpki import TestPKI
from tests.conftest import free_port
from tests.e2e.harness import GatewayProcess, Sink
from tests.e2e.test_protection_flow import _protected_setup
from tests.ops.test_health_diskfull import _wait_status
from tests.ops.test_metrics_e2e import _wait_http, scrape, value
from tests.smime.support import shared_pki


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return shared_pki().pki


def test_readyz_names_a_key_that_cannot_be_loaded_and_recovers(pki: TestPKI, tmp_path: Path) -> None:
    sink = Sink().start()
    try:
        setup = _protected_setup(tmp_path / "gw", pki, sink.port)
        own = tmp_path / "keys"
        own.mkdir()
        entry = pki["org_sign"]
        key, cert = own / "sign.key.pem", own / "sign.pem"
        shutil.copy(entry.key_path, key)
        key.chmod(0o600)
        shutil.copy(entry.cert_path, cert)
        port = free_port()
        text = setup.config.read_text()
        assert str(entry.key_path) in text and str(entry.cert_path) in text
        text = text.replace(str(entry.key_path), str(key)).replace(str(entry.cert_path), str(cert))
        setup.config.write_text(text + f'\n[metrics]\nport = {port}\ninventory_interval = "1s"\n')
        with GatewayProcess(setup):
            _wait_http(port)
            answer = _wait_status(port, 200)
            assert answer["checks"]["keys"]["ok"] is True
            _, samples = scrape(port)
            assert 0 < value(samples, "msgw_certificate_days_left", kind="key", name="labo-sign") < 3700

            cert.rename(own / "sign.pem.away")
            answer = _wait_status(port, 503)
            assert answer["failed"] == ["keys"]
            assert "keys.labo-sign" in answer["checks"]["keys"]["detail"]
            _, samples = scrape(port)
            assert value(samples, "msgw_inventory_unreadable", kind="key", name="labo-sign") == 1

            (own / "sign.pem.away").rename(cert)
            answer = _wait_status(port, 200)
            assert answer["checks"]["keys"]["ok"] is True
    finally:
        sink.stop()
