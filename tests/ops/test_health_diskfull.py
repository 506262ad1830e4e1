"""`/readyz` on a real full disk (issue 16, "Done when"): the spool on a small tmpfs the test
mounts, filled by a filler file as the resilience tests do; `/readyz` answers 503 naming the
`spool` check, `/healthz` stays 200 (the process is alive), and once the filler is deleted
`/readyz` is 200 again without a restart."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.conftest import free_port
from tests.diskfull import fill
from tests.e2e.harness import GatewayProcess, Sink, write_config
from tests.ops.test_metrics_e2e import _get, _wait_http


def _readyz(port: int) -> tuple[int, dict]:
    status, body = _get(port, "/readyz")
    return status, json.loads(body)


def _wait_status(port: int, want: int, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, answer = _readyz(port)
        if status == want or time.monotonic() > deadline:
            assert status == want, answer
            return answer
        time.sleep(0.2)


def test_readyz_not_ready_on_a_full_spool_disk_and_ready_again_after(tmp_path: Path, tmpfs_factory) -> None:
    mount = tmpfs_factory("4m")
    sink = Sink().start()
    try:
        port = free_port()
        setup = write_config(tmp_path / "gw", sink_port=sink.port, extra=f"[metrics]\nport = {port}\n")
        text = setup.config.read_text()
        assert 'path = "spool"\n' in text
        setup.config.write_text(text.replace('path = "spool"\n', f'path = "{mount}/spool"\n', 1))
        with GatewayProcess(setup) as gw:
            _wait_http(port)
            answer = _wait_status(port, 200)
            assert answer["checks"]["spool"]["ok"] is True

            fill(mount / "filler")
            answer = _wait_status(port, 503)
            assert answer["status"] == "not ready"
            assert answer["failed"] == ["spool"]
            assert "reserve" in answer["checks"]["spool"]["detail"]
            assert answer["checks"]["keys"]["ok"] and answer["checks"]["listeners"]["ok"]
            status, body = _get(port, "/healthz")
            assert status == 200 and json.loads(body)["status"] == "alive"

            (mount / "filler").unlink()
            answer = _wait_status(port, 200)
            assert answer["status"] == "ready" and answer["failed"] == []
            assert gw.proc is not None and gw.proc.poll() is None  # the same process: no restart
    finally:
        sink.stop()
