"""With several worker processes the console runs in the primary one only (its sessions are in
that process's memory; a second bind of its port would fail): one `console-listening`, by w0."""

from __future__ import annotations

import ssl
import time
import urllib.request
from pathlib import Path

from gateway.server.passwords import hash_password
from tests.conftest import free_port
from tests.e2e.harness import GatewayProcess, log_events, wait_port, write_config


def test_the_console_runs_in_worker_0_only(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "op.hash").write_text(hash_password("operator password", "argon2") + "\n")
    setup = write_config(tmp_path, sink_port=free_port(), extra=f"""
[console]
port = {port}
tls_cert = "tls-cert.pem"
tls_key = "tls-key.pem"

[operators.op]
password_hash_file = "op.hash"
""")
    setup.config.write_text(setup.config.read_text().replace("workers = 1\n", "workers = 2\n", 1))
    with GatewayProcess(setup):
        wait_port(port)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # both workers up
            started = [e for e in log_events(setup) if e.get("event") == "listening" and e.get("listener") == "relay"]
            if len(started) == 2:
                break
            time.sleep(0.1)
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # the test's self-signed pair
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/login", context=ctx, timeout=10) as page:  # noqa: S310
            assert page.status == 200 and b"Operator login" in page.read()
        events = log_events(setup)
    assert len([e for e in events if e.get("event") == "listening" and e.get("listener") == "relay"]) == 2
    consoles = [e for e in events if e.get("event") == "console-listening"]
    assert [(e["worker"], e["port"]) for e in consoles] == [("w0", port)]
