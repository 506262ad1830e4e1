"""One message to 10,000 recipients does not stall the gateway (issue 11, item 9).

Under the protection policy, every stage tested each recipient against the set of handled
recipients, rebuilt for each test: quadratic, on the event loop (101 s for 10,000, every
listener frozen). Here a lab sends one result to 10,000 local mailboxes while a probe keeps
opening connections to another listener: every greeting comes back within a second, and every
recipient ends delivered."""

from __future__ import annotations

import smtplib
import socket
import ssl
import threading
import time
from pathlib import Path

from gateway.smime.testpki import TestPKI
from tests.e2e.harness import PASSWORD, USER, GatewayProcess, make_message, queue_json, write_config
from tests.smime.support import shared_pki, trust_toml

COUNT = 10_000


class GreetingProbe(threading.Thread):
    """Connects every 50 ms and times the banner; keeps the worst delay seen."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.worst = 0.0
        self.samples = 0
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                    banner = sock.recv(512)
                    sock.sendall(b"QUIT\r\n")
                if not banner.startswith(b"220"):
                    self.errors.append(f"banner {banner[:40]!r}")
            except OSError as exc:  # a stalled listener: no banner within 10 s
                self.errors.append(f"{type(exc).__name__} after {time.monotonic() - started:.1f}s")
            self.worst = max(self.worst, time.monotonic() - started)
            self.samples += 1
            self.stop.wait(0.05)


def test_ten_thousand_local_recipients_under_the_policy(tmp_path: Path) -> None:
    pki: TestPKI = shared_pki().pki
    rcpts = [f"dr.{i:05d}@msgw.test" for i in range(COUNT)]
    extra = f"""
{trust_toml(pki)}
[policy]
default = "require-smime"
"""
    setup = write_config(tmp_path, sink_port=9, extra=extra)
    text = setup.config.read_text().replace("max_recipients = 50", f"max_recipients = {COUNT}")
    text = text.replace("mailboxes = [", "mailboxes = [" + ", ".join(f'"{r}"' for r in rcpts) + ", ")
    setup.config.write_text(text)
    with GatewayProcess(setup):
        probe = GreetingProbe(setup.relay_port)
        probe.start()
        started = time.monotonic()
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the test listener's throw-away self-signed certificate
        with smtplib.SMTP("127.0.0.1", setup.submission_port, timeout=120) as client:
            client.ehlo("lis.lab.example")
            client.starttls(context=ctx)
            client.ehlo("lis.lab.example")
            client.login(USER, PASSWORD)
            refused = client.sendmail(USER, rcpts, make_message(USER, rcpts[0], "one result", "to everyone"))
        assert refused == {}
        accepted = time.monotonic()
        deadline = accepted + 300
        while time.monotonic() < deadline and queue_json(setup):
            time.sleep(0.5)
        drained = time.monotonic()
        probe.stop.set()
        probe.join(timeout=30)
        assert queue_json(setup) == []
    delivered = [p.name for p in setup.maildir.iterdir() if p.name.startswith("dr.") and any((p / "new").iterdir())]
    print(f"\n10,000 recipients: submitted in {accepted - started:.1f}s, delivered in {drained - accepted:.1f}s, "
          f"{probe.samples} greetings, worst {probe.worst * 1000:.0f} ms, {len(probe.errors)} failed")
    assert len(delivered) == COUNT
    assert probe.errors == [] and probe.samples > 10 and probe.worst < 1.0
