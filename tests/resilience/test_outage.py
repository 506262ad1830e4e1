"""Next hop down for a while, then back: everything is delivered, the attempts are spaced as
`retry_schedule` says (checked on the timestamps of the gateway's own log events), and the
queue drains."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import defaultdict
from pathlib import Path

import aiosmtplib

from tests.conftest import free_port
from tests.e2e.harness import GatewayProcess, Sink, log_events, queue_json, write_config
from tests.resilience.conftest import SCALE, ResilienceReport
from tests.resilience.support import RCPT, SENDER, counts, tagged, wait_until

SCHEDULE = (1.0, 2.0, 3.0)
OUTAGE = 7.5  # long enough for attempts at t, t+1, t+3 (and t+6) to fail
POLL = 0.2


def _ts(text: str) -> float:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC).timestamp()


async def _send_all(port: int, tags: list[str]) -> set[str]:
    acked = set()
    for tag in tags:
        await aiosmtplib.send(tagged(tag), sender=SENDER, recipients=[RCPT], hostname="127.0.0.1", port=port,
                              start_tls=False, timeout=15, local_hostname="lis.partner.example")
        acked.add(tag)
    return acked


def test_next_hop_outage_retries_on_schedule_then_drains(tmp_path: Path, resilience_report: ResilienceReport) -> None:
    n = 20 * SCALE
    sink = Sink(port=free_port())  # not started: the next hop is down (connection refused)
    setup = write_config(tmp_path, sink_port=sink.port, relay_networks='["127.0.0.0/8"]',
                         retry='["1s", "2s", "3s"]')
    tags = [f"outage-{i:05d}" for i in range(n)]
    with GatewayProcess(setup):
        down_since = time.monotonic()
        acked = asyncio.run(_send_all(setup.relay_port, tags))
        # During the outage: every message is held, deferred, with attempts counted.
        assert wait_until(lambda: all(r["state"] == "deferred" and r["attempts"] >= 2
                                      for m in queue_json(setup) for r in m["recipients"]), timeout=10)
        queued = queue_json(setup)
        assert len(queued) == n
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - down_since)))
        sink.start()
        try:
            assert wait_until(lambda: len(counts(sink.handler.snapshot())) >= n and not queue_json(setup),
                              timeout=30, step=0.2), "not everything was delivered after the next hop came back"
            seen = counts(sink.handler.snapshot())
        finally:
            sink.stop()
    events = log_events(setup)
    failed: dict[str, list[float]] = defaultdict(list)
    done: dict[str, float] = {}
    for e in events:
        if e["event"] == "delivery-failed":
            failed[e["msg"]].append(_ts(e["ts"]))
        elif e["event"] == "delivery" and e.get("delivered"):
            done[e["msg"]] = _ts(e["ts"])
    assert len(done) == n and set(failed) == set(done)
    worst_early, worst_late = 0.0, 0.0
    for msg_id, times in failed.items():
        attempts = [*times, done[msg_id]]
        assert len(times) >= 2, f"{msg_id}: only {len(times)} failed attempt(s) during a {OUTAGE}s outage"
        for i, (a, b) in enumerate(zip(attempts, attempts[1:], strict=False)):
            wanted = SCHEDULE[min(i, len(SCHEDULE) - 1)]
            gap = b - a
            worst_early = max(worst_early, wanted - gap)
            worst_late = max(worst_late, gap - wanted)
            # Never earlier than the schedule (log stamps have ms resolution), never much later
            # (one poll interval plus scheduling noise on a loaded 2-core machine).
            assert gap >= wanted - 0.02, f"{msg_id}: attempt {i + 2} after {gap:.3f}s, schedule says {wanted}s"
            assert gap <= wanted + POLL + 1.5, f"{msg_id}: attempt {i + 2} after {gap:.3f}s, schedule {wanted}s"
    lost = sorted(acked - set(seen))
    dup = sum(1 for v in seen.values() if v > 1)
    resilience_report.record("outage: next hop down 7.5s, then back", sent=n, acknowledged=len(acked),
                             delivered=len(seen), lost=len(lost), duplicated=dup,
                             note=f"retries {list(SCHEDULE)}s: worst early {worst_early:+.3f}s, "
                                  f"late {worst_late:+.3f}s")
    assert not lost and dup == 0
