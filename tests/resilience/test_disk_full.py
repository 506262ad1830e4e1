"""The spool on a small tmpfs the test mounts, filled up by a filler file: new mail gets
`452 4.3.1` over a real SMTP socket, nothing already accepted is lost (it is delivered once
space returns), and the service resumes when the filler is deleted."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

from tests.conftest import free_port
from tests.e2e.harness import GatewayProcess, Sink, log_events, queue_json, write_config
from tests.resilience.conftest import SCALE, ResilienceReport
from tests.resilience.support import RCPT, SENDER, RawSMTP, counts, tagged, wait_until


def _fill(path: Path) -> int:
    """Write zeros until the filesystem says ENOSPC; return the bytes written."""
    written = 0
    chunk = b"\0" * 65536
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            try:
                n = os.write(fd, chunk if len(chunk) else b"\0")
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
                continue
            written += n
    finally:
        os.close(fd)
    return written


def _send(port: int, tag: str) -> tuple[int, str]:
    with RawSMTP(port) as c:
        assert c.cmd(b"EHLO lis.partner.example")[0] == 250
        assert c.cmd(f"MAIL FROM:<{SENDER}>".encode())[0] == 250
        assert c.cmd(f"RCPT TO:<{RCPT}>".encode())[0] == 250
        assert c.cmd(b"DATA")[0] == 354
        c.send(tagged(tag, body="\r\n".join(["x" * 76] * 260)).replace(b"\r\n.", b"\r\n..") + b".\r\n")
        return c.reply()


def test_full_spool_answers_452_keeps_accepted_and_resumes(tmp_path: Path, tmpfs_factory,
                                                           resilience_report: ResilienceReport) -> None:
    mount = tmpfs_factory("4m")
    sink = Sink(port=free_port())  # down at first: accepted mail stays in the spool
    setup = write_config(tmp_path / "gw", sink_port=sink.port, relay_networks='["127.0.0.0/8"]', retry='["1s"]')
    setup.config.write_text(setup.config.read_text().replace('path = "spool"', f'path = "{mount / "spool"}"'))
    accepted = [f"disk-{i:05d}" for i in range(10 * SCALE)]
    refused: list[str] = []
    with GatewayProcess(setup) as gw:
        for tag in accepted:
            code, text = _send(setup.relay_port, tag)
            assert code == 250, text
        size = 0
        for n in range(3):
            # Fill (again) right before each try: the gateway itself may free a little space
            # meanwhile (SQLite journal), and a message that fits may rightly be accepted.
            size += _fill(mount / f"filler{n}")
            tag = f"full-{n:05d}"
            code, text = _send(setup.relay_port, tag)
            assert code == 452 and "4.3.1" in text, (code, text)
            refused.append(tag)
        time.sleep(2.5)  # the delivery loop retries (and fails) against the full disk meanwhile
        assert gw.proc is not None and gw.proc.poll() is None, "the gateway died on a full disk"
        # Space returns, then the next hop: everything accepted is delivered, new mail is accepted.
        for filler in mount.glob("filler*"):
            filler.unlink()
        sink.start()
        try:
            code, text = _send(setup.relay_port, "after-00000")
            assert code == 250, text
            expected = {*accepted, "after-00000"}
            assert wait_until(lambda: expected <= set(counts(sink.handler.snapshot())) and not queue_json(setup),
                              timeout=30, step=0.2), "accepted mail not delivered after space returned"
            seen = counts(sink.handler.snapshot())
        finally:
            sink.stop()
    assert not set(refused) & set(seen), "a message answered 452 was delivered"
    events = [e["event"] for e in log_events(setup)]
    assert events.count("spool-refused") >= len(refused)
    # While the disk was full the delivery loop backed off (retry_schedule[0] = 1s) instead of
    # spinning on messages whose deferral could not be written (it did: thousands of events).
    spins = events.count("processing-deferred")
    assert spins <= 10 * len(accepted), f"{spins} processing-deferred events in ~3s: a busy loop"
    assert not any("never retrieved" in e for e in events), "a delivery task died with an unhandled error"
    lost = expected - set(seen)
    resilience_report.record("disk full: 4 MiB tmpfs spool", sent=len(expected) + len(refused),
                             acknowledged=len(expected), delivered=len(seen), lost=len(lost),
                             duplicated=sum(1 for v in seen.values() if v > 1),
                             note=f"{len(refused)} answered 452 4.3.1 (filler {size // 1024} KiB), resumed after")
    assert not lost
    assert all(v == 1 for v in seen.values())
