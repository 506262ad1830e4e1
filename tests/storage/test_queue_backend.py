"""The factory's PostgreSQL path for the queue, and `msgw storage migrate` for the queue.

Needs `gateway.spool.pg.PgSpool` (branch pgqueue): on a build without it these tests FAIL (not
skip), on purpose — after the merge they must pass (issue 18: the lead runs them)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from gateway import storage
from gateway.config import load_config
from gateway.spool import Spool
from tests.conftest import MSGW
from tests.storage.test_migrate import _config

pytestmark = pytest.mark.postgresql

MESSAGE = b"From: a@x.test\r\nTo: b@y.test\r\nSubject: TEST\r\n\r\nTEST body.\r\n"


def test_open_queue_store_gives_the_shared_queue_under_this_nodes_name(pg_dsn, tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, pg_dsn))
    node_a = storage.open_queue_store(config, owner="w1")
    assert type(node_a).__module__ == storage.PG_QUEUE[0] and type(node_a).__name__ == storage.PG_QUEUE[1]
    assert node_a.owner == "node-a/w1"
    with node_a.open(recover=False) as queue:
        msg_id = queue.accept("a@x.test", ["b@y.test"], MESSAGE, lifetime=3600.0)
    with storage.open_queue_store(config).open(recover=False) as other:  # another process sees it
        assert other.owner == "node-a"
        assert other.message_bytes(msg_id) == MESSAGE
        assert [m.id for m in other.list()] == [msg_id]


def test_msgw_queue_list_says_which_node_holds_which_lease(pg_dsn, tmp_path: Path) -> None:
    config_path = _config(tmp_path, pg_dsn)
    with storage.open_queue_store(load_config(config_path), owner="w1").open(recover=False) as queue:
        msg_id = queue.accept("a@x.test", ["b@y.test"], MESSAGE, lifetime=3600.0)
        assert [m.id for m in queue.due_received()] == [msg_id]  # claimed by node-a/w1
        out = subprocess.run([MSGW, "queue", "list", "--config", str(config_path)], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0 and "lease held by node-a/w1" in out.stdout, out.stdout + out.stderr
        listed = subprocess.run([MSGW, "queue", "list", "--json", "--config", str(config_path)],
                                capture_output=True, text=True, timeout=60)
        [entry] = json.loads(listed.stdout)
        assert entry["lease"]["owner"] == "node-a/w1" and entry["lease"]["seconds_left"] > 0


def test_migrate_copies_the_pending_queue_once(pg_dsn, tmp_path: Path) -> None:
    spool_path = tmp_path / "var" / "spool"
    with Spool(spool_path).open() as local:
        pending = local.accept("a@x.test", ["b@y.test", "c@y.test"], MESSAGE, lifetime=3600.0)
        done = local.accept("a@x.test", ["d@y.test"], MESSAGE, lifetime=3600.0)
        [rcpt] = local.get(done).recipients
        local.mark_delivered([rcpt.id], status="2.0.0")
    config_path = _config(tmp_path, pg_dsn)

    def run(*extra: str) -> dict:
        out = subprocess.run([MSGW, "storage", "migrate", "--config", str(config_path), "--json", "--only", "queue",
                              *extra], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        [queue] = json.loads(out.stdout)["stores"]
        return queue

    assert (run("--dry-run")["read"], run("--dry-run")["copied"]) == (1, 1)
    first = run()
    assert (first["read"], first["copied"], first["present"], first["note"]) == (1, 1, 0, "")
    second = run()
    assert (second["copied"], second["present"]) == (0, 1)
    with storage.open_queue_store(load_config(config_path)).open(recover=False) as shared:
        [msg] = shared.list()
        assert msg.id == pending and shared.message_bytes(msg.id) == MESSAGE
        assert sorted(r.address for r in msg.pending) == ["b@y.test", "c@y.test"]


def test_two_gateway_processes_on_one_database_relay_what_either_accepted(pg_dsn, tmp_path: Path) -> None:
    """`msgw serve` twice on one PostgreSQL (the factory's whole wiring: queue, directory, audit
    anchoring): mail accepted by either node is delivered, and each node published its audit head."""
    import smtplib
    import time

    from tests.e2e.harness import PASSWORD, USER, GatewayProcess, Sink, make_message, write_config
    from tests.e2e.test_relay import _tls_client_context
    from tests.storage.conftest import split_password

    plain, password = split_password(pg_dsn)
    (tmp_path / "pg.pass").write_text(password + "\n")
    sink = Sink().start()
    try:
        setups = [write_config(tmp_path / name, sink_port=sink.port, extra=(
            f'[storage]\nbackend = "postgresql"\ndsn = "{plain}"\npassword_file = "{tmp_path / "pg.pass"}"\n'
            f'node = "{name}"\nconnect_timeout = "3s"\nanchor_interval = "1s"\n')) for name in ("gw-a", "gw-b")]
        with GatewayProcess(setups[0]), GatewayProcess(setups[1]):
            for i, setup in enumerate(setups):
                with smtplib.SMTP("127.0.0.1", setup.submission_port, timeout=10) as client:
                    client.ehlo("client.test")
                    client.starttls(context=_tls_client_context())
                    client.ehlo("client.test")
                    client.login(USER, PASSWORD)
                    client.sendmail(USER, [f"dr{i}@remote.test"],
                                    make_message(USER, f"dr{i}@remote.test", "TEST", f"TEST body {i}"))
            received = sink.wait_for(2)
            assert sorted(r for m in received for r in m.recipients) == ["dr0@remote.test", "dr1@remote.test"]
            import psycopg

            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                while True:  # published within a second or two (anchor_interval = "1s"); the test's timeout bounds it
                    nodes = {r[0] for r in conn.execute("SELECT node FROM audit_heads")}
                    anchored = conn.execute("SELECT count(*) FROM audit_anchors").fetchone()
                    if nodes == {"gw-a", "gw-b"} and anchored and anchored[0]:
                        break
                    time.sleep(0.5)
    finally:
        sink.stop()
