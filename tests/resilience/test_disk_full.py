"""The spool on a small tmpfs the test mounts, filled up by a filler file: new mail gets
`452 4.3.1` over a real SMTP socket, nothing already accepted is lost (it is delivered once
space returns), and the service resumes when the filler is deleted. After a kill -9 on a full
disk the gateway starts again, drains its queue while the disk is still full, and
`msgw queue delete` frees space (issue 11, item 10)."""

from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import free_port
from tests.diskfull import fill as _fill
from tests.diskfull import free_bytes
from tests.e2e.harness import GatewayProcess, Sink, SinkHandler, log_events, msgw, queue_json, write_config
from tests.resilience.conftest import SCALE, ResilienceReport
from tests.resilience.support import RCPT, SENDER, RawSMTP, counts, tagged, wait_until


def _send(port: int, tag: str, rcpt: str = RCPT, lines: int = 260) -> tuple[int, str]:
    with RawSMTP(port) as c:
        assert c.cmd(b"EHLO lis.partner.example")[0] == 250
        assert c.cmd(f"MAIL FROM:<{SENDER}>".encode())[0] == 250
        assert c.cmd(f"RCPT TO:<{rcpt}>".encode())[0] == 250
        assert c.cmd(b"DATA")[0] == 354
        c.send(tagged(tag, rcpt=rcpt, body="\r\n".join(["x" * 76] * lines)).replace(b"\r\n.", b"\r\n..")
               + b".\r\n")
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


STUCK = "stuck@cabinet.example"


def test_restart_after_a_disk_full_crash_drains_and_queue_delete_frees_space(
        tmp_path: Path, tmpfs_factory, resilience_report: ResilienceReport) -> None:
    mount = tmpfs_factory("4m")
    # The next hop is down at first; later it takes everything but STUCK (451: it stays queued).
    handler = SinkHandler(rcpt_reply=lambda a: "451 4.2.0 try later" if STUCK in a else "250 2.1.5 OK")
    sink = Sink(port=free_port(), handler=handler)
    setup = write_config(tmp_path / "gw", sink_port=sink.port, relay_networks='["127.0.0.0/8"]', retry='["1s"]')
    setup.config.write_text(setup.config.read_text().replace('path = "spool"', f'path = "{mount / "spool"}"'))
    accepted = [f"crash-{i:05d}" for i in range(5 * SCALE)]
    gw = GatewayProcess(setup).start()
    try:
        for tag in accepted:
            code, text = _send(setup.relay_port, tag)
            assert code == 250, text
        code, text = _send(setup.relay_port, "stuck-00000", rcpt=STUCK, lines=4000)  # ~300 KiB
        assert code == 250, text
        stuck_id = text.split()[-1]
        _fill(mount / "filler0")
        assert _send(setup.relay_port, "full-00000")[0] == 452
        time.sleep(1.5)  # the runner meets the full disk (deferrals it cannot write)
        gw.kill9()

        gw.start()  # on a disk still full: recovery must not need space
        assert free_bytes(mount) < 64 * 1024
        code, text = _send(setup.relay_port, "full-00001")
        assert code == 452 and "4.3.1" in text, (code, text)

        sink.start()  # delivery drains the queue though the disk is still full
        def drained() -> bool:
            return set(accepted) <= set(counts(handler.snapshot())) and [m["id"] for m in queue_json(setup)] == [
                stuck_id]
        assert wait_until(drained, timeout=30, step=0.2), (counts(handler.snapshot()), queue_json(setup))

        _fill(mount / "filler1")  # what the drain freed is taken again: `queue delete` on a full disk
        before = free_bytes(mount)
        out = msgw("queue", "delete", stuck_id, "--config", str(setup.config))
        assert out.returncode == 0, out.stderr.decode()
        assert free_bytes(mount) >= before + 250_000, "deleting a 300 KiB message freed no space"
        assert all(m["id"] != stuck_id for m in queue_json(setup))

        for filler in mount.glob("filler*"):
            filler.unlink()
        code, text = _send(setup.relay_port, "after-00000")
        assert code == 250, text
        assert wait_until(lambda: "after-00000" in counts(handler.snapshot()) and not queue_json(setup),
                          timeout=30, step=0.2)
        seen = counts(handler.snapshot())
    finally:
        if gw.proc is not None:
            gw.terminate()
        sink.stop()
    events = [e["event"] for e in log_events(setup)]
    assert not any("never retrieved" in e for e in events), "a delivery task died with an unhandled error"
    expected = {*accepted, "after-00000"}
    resilience_report.record("disk full + kill -9: restart, drain, queue delete", sent=len(expected) + 3,
                             acknowledged=len(expected) + 1, delivered=len(set(seen) & expected),
                             lost=len(expected - set(seen)), duplicated=sum(1 for v in seen.values() if v > 1),
                             note="restarted on a full disk; 452 meanwhile; stuck message deleted by the operator")
    assert set(seen) == expected, seen
    assert all(v == 1 for v in seen.values()), seen
