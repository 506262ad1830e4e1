"""The shared store wired through the running gateway (issue 18, branch pgwire): the metrics and
`/readyz` read the queue through `QueueStore` (never a file), every sample names its node, workers
on another node are woken by `LISTEN/NOTIFY` long before their poll, a node's start-up frees only
its own claims, and per-message stores are kept one per process. Real PostgreSQL (marker
``postgresql``), real SMTP to a sink."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import storage
from gateway.config import load_config
from gateway.ops.health import Health
from gateway.ops.metrics import InventoryCache, StateCollector, exposition_registry, render
from gateway.runner import QueueService
from gateway.spool import Spool
from gateway.spool.pg import PgSpool
from tests.e2e.harness import Sink, write_config
from tests.storage.conftest import split_password

pytestmark = pytest.mark.postgresql

BODY = b"From: lab@lab.example\r\nSubject: TEST\r\n\r\nTEST result\r\n"


def _node_config(folder: Path, dsn: str, node: str, *, sink_port: int = 2525, poll: str = "200ms"):
    """A gateway config on the shared database under the node name `node`, polling every `poll`."""
    plain, password = split_password(dsn)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pg.pass").write_text(password + "\n")
    setup = write_config(folder, sink_port=sink_port, extra=(
        f'[storage]\nbackend = "postgresql"\ndsn = "{plain}"\npassword_file = "{folder / "pg.pass"}"\n'
        f'node = "{node}"\nconnect_timeout = "2s"\n'))
    text = setup.config.read_text()
    assert 'poll_interval = "200ms"' in text
    setup.config.write_text(text.replace('poll_interval = "200ms"', f'poll_interval = "{poll}"'))
    return load_config(setup.config)


def _samples(text: str) -> list:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def test_queue_stats_are_the_same_figures_on_both_backends(pg_dsn, tmp_path: Path) -> None:
    plain, password = split_password(pg_dsn)
    stores = [Spool(tmp_path / "spool").open(), PgSpool(plain, password=password, owner="node-a").open()]
    try:
        for store in stores:
            store.accept("lab@lab.example", ["a@y.example", "b@y.example"], BODY, lifetime=3600)
            later = store.accept("lab@lab.example", ["c@y.example"], BODY + b"2", lifetime=3600)
            [rcpt] = store.get(later).recipients
            store.mark_deferred([rcpt.id], next_attempt=time.time() + 60, error="try later", status="4.4.1")
            done = store.accept("lab@lab.example", ["d@y.example"], BODY + b"3", lifetime=3600)
            [rcpt] = store.get(done).recipients
            store.mark_delivered([rcpt.id], status="2.0.0")
        first, second = (s.queue_stats() for s in stores)
        assert (first.recipients, first.messages, first.quarantined) == (second.recipients, second.messages,
                                                                          second.quarantined)
        assert first.recipients == {("queued", "received"): 2, ("deferred", "received"): 1}
        assert first.messages == 2 and first.quarantined == 0 and first.oldest is not None
    finally:
        for store in stores:
            store.close()


def test_metrics_read_the_shared_queue_and_every_sample_names_the_node(pg_dsn, tmp_path: Path) -> None:
    """Before: the queue gauges read ``Path(spool.path)`` (a PgSpool has none) and no label said
    which node answered."""
    config = _node_config(tmp_path / "a", pg_dsn, "node-a")
    with storage.open_queue_store(config).open() as queue:
        queue.accept("lab@lab.example", ["a@y.example"], BODY, lifetime=3600)
        registry = exposition_registry(StateCollector(queue), node=storage.node_name(config.storage))
        samples = _samples(render(registry).decode())
    assert samples and all(s.labels.get("node") == "node-a" for s in samples)
    gauges = {s.name: s.value for s in samples if s.name in ("msgw_queue_messages", "msgw_queue_oldest_age_seconds")}
    assert gauges["msgw_queue_messages"] == 1 and gauges["msgw_queue_oldest_age_seconds"] >= 0
    received = [s.value for s in samples if s.name == "msgw_queue_recipients"
                and s.labels["state"] == "queued" and s.labels["stage"] == "received"]
    assert received == [1]


def test_readyz_is_not_ready_while_the_shared_store_is_down_and_ready_again_after(pg_cluster, pg_dsn,
                                                                                   tmp_path: Path) -> None:
    """Before: `/readyz` said "not a file spool" and ready while PostgreSQL was down."""
    config = _node_config(tmp_path / "a", pg_dsn, "node-a")
    queue = storage.open_queue_store(config).open()
    executor = ThreadPoolExecutor(max_workers=1)
    health = Health(config, queue, InventoryCache(config, 60.0), executor)

    def storage_check() -> tuple[bool, object, float]:
        started = time.monotonic()
        ok, checks = asyncio.run(health.ready())
        [check] = [c for c in checks if c.name in ("storage", "spool")]
        return ok, check, time.monotonic() - started

    try:
        ok, check, _ = storage_check()
        assert check.name == "storage" and check.ok, check
        pg_cluster.stop()
        try:
            ok, check, took = storage_check()
            assert not ok and check.name == "storage" and not check.ok
            assert "unavailable" in check.detail and took < 30
        finally:
            pg_cluster.start()
        deadline = time.monotonic() + 60
        while not (check := storage_check()[1]).ok and time.monotonic() < deadline:
            time.sleep(0.5)
        assert check.ok, check
    finally:
        executor.shutdown()
        queue.close()


def test_owners_carry_the_node_and_a_start_frees_only_its_own_nodes_claims(pg_dsn, tmp_path: Path) -> None:
    from gateway.commands.serve import recover_spool

    config_a = _node_config(tmp_path / "a", pg_dsn, "node-a")
    config_b = _node_config(tmp_path / "b", pg_dsn, "node-b")
    worker_a = storage.open_queue_store(config_a, owner="w1").open(recover=False)
    worker_b = storage.open_queue_store(config_b, owner="w2").open(recover=False)
    try:
        assert (worker_a.owner, worker_b.owner) == ("node-a/w1", "node-b/w2")
        held_a = worker_a.accept("lab@lab.example", ["a@y.example"], BODY, lifetime=3600)
        held_b = worker_b.accept("lab@lab.example", ["b@y.example"], BODY + b"b", lifetime=3600)
        assert {m: o for m, o, _ in worker_a.leases()} == {held_a: "node-a/w1", held_b: "node-b/w2"}
        assert recover_spool(config_b)  # node-b's `msgw serve` starting: its master frees node-b's claims
        assert {m: o for m, o, _ in worker_a.leases()} == {held_a: "node-a/w1"}
    finally:
        worker_a.close()
        worker_b.close()


def test_a_message_queued_on_one_node_is_delivered_by_another_long_before_its_poll(pg_dsn,
                                                                                   tmp_path: Path) -> None:
    """Node B's workers poll every 30 s; node A (`msgw send`-like: accepts, then closes) queues a
    message: B's LISTEN thread wakes its workers, which deliver it within seconds. Before: B only
    polled, and the message waited for the next poll."""
    sink = Sink().start()
    try:
        config = _node_config(tmp_path / "b", pg_dsn, "node-b", sink_port=sink.port, poll="30s")
        assert config.spool.poll_interval >= 30

        async def scenario() -> tuple[float, int]:
            node_b = storage.open_queue_store(config).open()
            service = QueueService(config, node_b)
            service.start()
            try:
                await asyncio.sleep(0.5)  # B has polled once (nothing) and waits for 30 s
                node_a = storage.open_queue_store(_node_config(tmp_path / "a", pg_dsn, "node-a")).open(recover=False)
                node_a.prepare_on_accept = "as-is"
                started = time.monotonic()
                await asyncio.to_thread(node_a.accept, "lab@lab.example", ["dr@y.example"], BODY, lifetime=3600)
                await asyncio.to_thread(node_a.close)
                await asyncio.to_thread(sink.wait_for, 1, 20)
                return time.monotonic() - started, service._waker.wakes if service._waker else 0
            finally:
                await service.stop(1.0)
                node_b.close()

        took, wakes = asyncio.run(scenario())
        print(f"cross-node pickup: delivered {took:.2f} s after the accept on the other node (poll 30 s)")
        assert wakes >= 1
        assert took < 15, f"delivered after {took:.1f} s: woken, not polled (poll interval 30 s)"
    finally:
        sink.stop()


def test_per_message_stores_are_opened_once_per_process_and_closed_at_stop(pg_dsn, tmp_path: Path) -> None:
    """The payload address and the LPS consumer ask `process_store`: one pool per process."""
    config = _node_config(tmp_path / "a", pg_dsn, "node-a")
    opened: list[object] = []

    def opener() -> object:
        store = storage.delivered_store(config.storage, config.spool.path)
        opened.append(store)
        return store

    first = storage.process_store(("lps-delivered", config.storage.dsn), opener)
    again = storage.process_store(("lps-delivered", config.storage.dsn), opener)
    assert first is again and len(opened) == 1
    assert storage.close_process_stores() == 1
    assert storage.process_store(("lps-delivered", config.storage.dsn), opener) is not first
    storage.close_process_stores()
