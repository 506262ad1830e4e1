"""Memory amplification without authentication (issue 11, item 8): one 10 MB message to 100 local
mailboxes on the relay listener, through the protection pipeline of a real `msgw serve`. Identical
local copies are one buffer, so the gateway's peak resident memory (VmHWM) grows by a few copies
of the message, not by one copy per recipient (it grew by ~950 MB before)."""

from __future__ import annotations

import base64
import os
import re
import smtplib
import time
from pathlib import Path

from tests.e2e.harness import GatewayProcess, write_config
from tests.smime.support import shared_pki, trust_toml

RECIPIENTS = 100
SIZE = 10 * 1024 * 1024
#: Allowed growth of the peak over the idle process: a handful of 10 MB copies (SMTP buffer, spool,
#: parsing, the one delivered copy), far below one copy per recipient (100 x 10 MB).
BOUND_MB = 300


def vm_hwm_kb(pid: int) -> int:
    """Peak resident set size of a process, from /proc/<pid>/status (kB)."""
    m = re.search(r"^VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    assert m, "no VmHWM in /proc status"
    return int(m.group(1))


def _message(rcpt: str) -> bytes:
    body = base64.encodebytes(os.urandom(SIZE * 3 // 4)).replace(b"\n", b"\r\n")
    return (f"From: <lis@results.example>\r\nTo: <{rcpt}>\r\nSubject: TEST large result\r\n"
            "MIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n").encode() + body


def test_one_large_message_to_many_local_mailboxes_is_held_once(tmp_path: Path) -> None:
    pki = shared_pki().pki
    boxes = [f"box{n:03d}@msgw.test" for n in range(RECIPIENTS)]
    extra = f"""
{trust_toml(pki)}
[policy]
default = "require-smime"
inbound_unverified = "flag"
"""
    setup = write_config(tmp_path / "gw", sink_port=9, extra=extra)
    text = setup.config.read_text()
    listed = ", ".join(f'"{b}"' for b in boxes)
    text = text.replace("mailboxes = [", f"mailboxes = [{listed}, ", 1)
    setup.config.write_text(text)
    data = _message(boxes[0])
    with GatewayProcess(setup) as gw:
        assert gw.proc is not None
        pid = gw.proc.pid
        time.sleep(1.0)  # settle: the idle peak includes start-up
        idle = vm_hwm_kb(pid)
        with smtplib.SMTP("127.0.0.1", setup.relay_port, timeout=120) as client:
            client.ehlo("mx.results.example")
            refused = client.sendmail("lis@results.example", boxes, data)
        assert refused == {}
        deadline = time.monotonic() + 300
        done = 0
        while time.monotonic() < deadline:
            done = sum(1 for b in boxes if (setup.maildir / b / "new").is_dir()
                       and any((setup.maildir / b / "new").iterdir()))
            if done == RECIPIENTS:
                break
            time.sleep(0.2)
        peak = vm_hwm_kb(pid)
    assert done == RECIPIENTS
    sample = next((setup.maildir / boxes[0] / "new").iterdir()).read_bytes()
    assert data.split(b"\r\n\r\n", 1)[1] in sample
    growth_mb = (peak - idle) / 1024
    print(f"\nVmHWM idle {idle / 1024:.0f} MB, peak {peak / 1024:.0f} MB, growth {growth_mb:.0f} MB "
          f"for {SIZE // 2**20} MB x {RECIPIENTS} local recipients")
    assert growth_mb < BOUND_MB, f"peak grew by {growth_mb:.0f} MB (idle {idle // 1024} MB, peak {peak // 1024} MB)"
