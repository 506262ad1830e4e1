"""The metrics endpoint of a real `msgw serve` (issue 16, item 1): real SMTP clients, a real sink
that defers one domain, `/metrics` fetched over HTTP before and after and parsed with
prometheus_client's own parser; the counters move by exactly what was sent, with the right labels,
and nothing of the messages (subject, body, recipients' local parts) reaches the exposition.
With two worker processes the counts of both add up."""

from __future__ import annotations

import asyncio
import json
import smtplib
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiosmtplib
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port
from tests.e2e.harness import (
    PASSWORD,
    USER,
    GatewayProcess,
    GatewaySetup,
    Sink,
    SinkHandler,
    log_events,
    make_message,
    write_config,
)

MARKER = "PATIENT-MARKER-4d2a9b"  # stands for health content: in Subject and body, never in /metrics
LOCAL_RCPT = "dr.durand@msgw.test"  # delivered to the Maildir
SLOW_RCPT = "dr.lenteur@slow.example"  # the sink defers this domain
SECRET_LOCAL_PARTS = ("dr.durand", "dr.lenteur", "quelquun.inconnu", "relaye.refuse")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _setup(folder: Path, sink: Sink) -> tuple[GatewaySetup, int]:
    port = free_port()
    setup = write_config(folder, sink_port=sink.port,
                         extra=f'[metrics]\naddress = "127.0.0.1"\nport = {port}\n')
    return setup, port


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _wait_http(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if _get(port, "/healthz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"no /healthz on port {port}")


def scrape(port: int) -> tuple[str, Samples]:
    status, body = _get(port, "/metrics")
    assert status == 200
    text = body.decode()
    samples: Samples = {}
    nodes = set()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            # issue 18: every sample carries this node's name; checked here, then left out of the key
            labels = dict(s.labels)
            nodes.add(labels.pop("node", None))
            samples[(s.name, tuple(sorted(labels.items())))] = s.value
    assert len(nodes) <= 1 and None not in nodes, nodes
    return text, samples


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    return samples.get((metric, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, metric: str, /, **labels: str) -> float:
    """Sum over every series of `metric` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, lbls), v in samples.items() if n == metric and want <= set(lbls))


def _tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the test gateway's throw-away self-signed certificate
    return ctx


def _submit(port: int, rcpt: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("lis.lab.example")
        client.starttls(context=_tls())
        client.ehlo("lis.lab.example")
        client.login(USER, PASSWORD)
        client.sendmail(USER, [rcpt], make_message(USER, rcpt, f"Résultats {MARKER}", f"Glycémie {MARKER}"))


def _rcpt_reply(rcpt: str) -> str:
    return "451 4.3.0 try again later" if rcpt.endswith("@slow.example") else "250 2.1.5 OK"


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink(handler=SinkHandler(rcpt_reply=_rcpt_reply)).start()
    yield s
    s.stop()


def _wait_for(port: int, predicate, timeout: float = 30.0) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        _, samples = scrape(port)
        if predicate(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


def test_counters_move_by_what_was_sent_with_labels_and_no_content(tmp_path: Path, sink: Sink) -> None:
    setup, port = _setup(tmp_path, sink)
    with GatewayProcess(setup):
        _wait_http(port)
        _, before = scrape(port)

        with smtplib.SMTP("127.0.0.1", setup.submission_port, timeout=30) as client:  # one wrong password
            client.ehlo("client.example")
            client.starttls(context=_tls())
            client.ehlo("client.example")
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.login(USER, PASSWORD + "-wrong")
        _submit(setup.submission_port, LOCAL_RCPT)  # delivered to the Maildir
        _submit(setup.submission_port, SLOW_RCPT)  # the sink answers 451 at RCPT: deferred
        with smtplib.SMTP("127.0.0.1", setup.relay_port, timeout=10) as client:  # unauthenticated relay
            client.ehlo("client.example")
            client.mail("lab@partner.example")
            assert client.rcpt("relaye.refuse@elsewhere.example")[0] == 550  # relaying denied
            assert client.rcpt("quelquun.inconnu@msgw.test")[0] == 550  # no such mailbox
            client.rset()

        def settled(s: Samples) -> bool:
            return (value(s, "msgw_recipients_total", listener="submission", domain="msgw.test", form="as-is",
                          outcome="delivered") >= 1
                    and value(s, "msgw_recipients_total", listener="submission", domain="slow.example",
                              form="as-is", outcome="deferred") >= 1)

        after = _wait_for(port, settled)
        text, _ = scrape(port)

        def moved(metric: str, /, **labels: str) -> float:
            return value(after, metric, **labels) - value(before, metric, **labels)

        assert moved("msgw_messages_accepted_total", listener="submission") == 2
        assert moved("msgw_recipients_total", listener="submission", domain="msgw.test", form="-",
                     outcome="accepted") == 1
        assert moved("msgw_recipients_total", listener="submission", domain="slow.example", form="-",
                     outcome="accepted") == 1
        assert moved("msgw_recipients_total", listener="submission", domain="msgw.test", form="as-is",
                     outcome="delivered") == 1
        assert moved("msgw_recipients_total", listener="submission", domain="slow.example", form="as-is",
                     outcome="deferred") == 1
        assert moved("msgw_queue_outcome_status_total", outcome="deferred", status="4.3.0") == 1
        # refused at RCPT: the relay refusal carries no domain (the client chose it), the local one does
        assert moved("msgw_refusals_total", listener="relay", stage="rcpt", status="5.7.1",
                     reason="relay-denied") == 1
        assert moved("msgw_refusals_total", listener="relay", stage="rcpt", status="5.1.1",
                     reason="unknown-mailbox") == 1
        assert moved("msgw_recipients_total", listener="relay", domain="-", form="-", outcome="refused") == 1
        assert moved("msgw_recipients_total", listener="relay", domain="msgw.test", form="-",
                     outcome="refused") == 1
        assert total(after, "msgw_recipients_total", outcome="bounced") == 0
        # the failed AUTH: a refusal at stage auth, by mechanism, never the login name
        assert moved("msgw_refusals_total", listener="submission", stage="auth", status="5.7.8",
                     reason="plain") == 1
        assert USER not in text
        # accept -> delivered latency: one observation, for the delivered copy's form
        assert moved("msgw_delivery_latency_seconds_count", form="as-is") == 1
        assert value(after, "msgw_delivery_latency_seconds_bucket", form="as-is", le="+Inf") == 1
        # queue gauges, computed at scrape time from the spool: the deferred message waits
        assert value(after, "msgw_queue_messages") == 1
        assert value(after, "msgw_queue_recipients", state="deferred", stage="prepared") == 1
        assert value(after, "msgw_queue_oldest_age_seconds") > 0
        assert value(after, "msgw_listener_up", listener="submission") == 1
        assert value(after, "msgw_listener_up", listener="relay") == 1
        # nothing of the messages in the exposition
        assert MARKER not in text
        for local_part in SECRET_LOCAL_PARTS:
            assert local_part not in text
        assert "Résultats" not in text and "Glyc" not in text

        status, body = _get(port, "/healthz")
        assert status == 200 and json.loads(body)["status"] == "alive"
        status, body = _get(port, "/readyz")
        ready = json.loads(body)
        assert status == 200, ready
        assert ready["status"] == "ready" and ready["failed"] == []
        assert set(ready["checks"]) == {"spool", "keys", "tokens", "listeners"}
        assert all(c["ok"] for c in ready["checks"].values())
    events = log_events(setup)
    assert any(e["event"] == "listening" and e.get("listener") == "metrics" for e in events)


async def _send_many(port: int, count: int) -> None:
    async def one(n: int) -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=15, start_tls=False,
                                 local_hostname="lis.partner.example")
        await client.connect()
        try:
            await client.sendmail("lab@partner.example", [LOCAL_RCPT],
                                  make_message("lab@partner.example", LOCAL_RCPT, f"n{n} {MARKER}", MARKER))
        finally:
            await client.quit()

    await asyncio.gather(*(one(n) for n in range(count)))


def test_two_workers_counts_add_up_and_one_serves_them(tmp_path: Path, sink: Sink) -> None:
    port = free_port()
    setup = write_config(tmp_path, sink_port=sink.port, relay_networks='["127.0.0.0/8"]',
                         extra=f'[metrics]\nport = {port}\n')
    text = setup.config.read_text()
    setup.config.write_text(text.replace("workers = 1\n", "workers = 2\n", 1))
    with GatewayProcess(setup):
        _wait_http(port)
        deadline = time.monotonic() + 30
        while {e.get("worker") for e in log_events(setup)
               if e["event"] == "listening" and e.get("listener") == "relay"} != {"w0", "w1"}:
            assert time.monotonic() < deadline, "the workers did not both listen"
            time.sleep(0.05)
        sent = 0
        by_worker: set[str] = set()
        while by_worker != {"w0", "w1"} or sent < 10:  # until both workers took some (the kernel spreads)
            assert sent < 100, f"one worker took every connection: {by_worker}"
            asyncio.run(_send_many(setup.relay_port, 10))
            sent += 10
            by_worker = {e.get("worker") for e in log_events(setup) if e["event"] == "accepted"}

        def settled(s: Samples) -> bool:
            return value(s, "msgw_recipients_total", listener="relay", domain="msgw.test", form="as-is",
                         outcome="delivered") >= sent

        after = _wait_for(port, settled, timeout=60)
        exposition, _ = scrape(port)
        assert value(after, "msgw_messages_accepted_total", listener="relay") == sent
        assert value(after, "msgw_recipients_total", listener="relay", domain="msgw.test", form="as-is",
                     outcome="delivered") == sent
        assert value(after, "msgw_delivery_latency_seconds_count", form="as-is") == sent
        assert value(after, "msgw_queue_messages") == 0
        assert MARKER not in exposition and "dr.durand" not in exposition
        served = {e.get("worker") for e in log_events(setup)
                  if e["event"] == "listening" and e.get("listener") == "metrics"}
        assert served == {"w0"}
    assert (tmp_path / "metrics").is_dir()  # PROMETHEUS_MULTIPROC_DIR under the state dir
