"""The README's promise: `msgw serve` with no config runs on the embedded default and the
printed swaks example delivers to the local Maildir; `msgw demo` exits 0."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import MSGW, require_tool
from tests.e2e.harness import wait_port


def test_embedded_default_and_printed_example(tmp_path: Path) -> None:
    require_tool("swaks")
    err = open(tmp_path / "stderr.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([MSGW, "serve"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_port(5870)
        wait_port(2525)
        banner = (tmp_path / "stderr.log").read_text()
        example = re.search(r"with swaks:\s+(swaks .*)", banner)
        assert example, banner
        out = subprocess.run(["bash", "-c", example.group(1)], cwd=tmp_path, capture_output=True, text=True,
                             timeout=60, env=dict(os.environ))
        assert out.returncode == 0, out.stdout + out.stderr
        new = tmp_path / "var" / "maildir" / "doctor@msgw.localhost" / "new"
        deadline = time.monotonic() + 15
        while not (new.exists() and any(new.iterdir())) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(list(new.iterdir())) == 1
        assert (tmp_path / "var" / "spool" / "queue.sqlite").exists()
        assert oct((tmp_path / "var" / "default" / "demo.password").stat().st_mode & 0o777) == "0o600"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        err.close()


def test_msgw_demo_exits_zero(tmp_path: Path) -> None:
    out = subprocess.run([MSGW, "demo"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "demo finished: OK" in out.stdout
    assert "refused at RCPT: 550 5.7.1" in out.stdout
    assert "application/pkcs7-mime" in out.stdout and "layers enveloped+signed" in out.stdout
    assert "X-Msgw-Verification: pass" in out.stdout and "audit trail intact" in out.stdout
    # Routing from content: a lab result to the S/MIME doctor, a discharge letter (XDM) to a local mailbox.
    assert "attachments: ['message.hl7']" in out.stdout and "'IHE_XDM.ZIP'" in out.stdout
    # The bridge, both ways.
    assert "X-Msgw-Bridged: from=codec=apicrypt1" in out.stdout and "smime-verification=pass" in out.stdout
