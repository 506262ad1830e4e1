"""The queue shared by several nodes on PostgreSQL (issue 18, items 2-3), against a real server:
two owners never hold the same message at once; an owner that stops renewing loses its claims
after the lease and another takes them (counted as takeovers); a node killed by SIGKILL loses
nothing and its work is re-claimed after the lease; an accept killed between the body and the
rows leaves nothing; PostgreSQL stopped under a real SMTP listener gives 4xx (451 4.3.0) within
5 s, never 250, and acceptance resumes by itself when it returns."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from gateway.config import load_config
from gateway.errors import SpoolError, smtp_reply
from gateway.server.smtp import SmtpServer
from gateway.spool import Outcome, RecipientState, StoreUnavailable
from gateway.spool.pg import PgSpool
from tests.conftest import ROOT
from tests.e2e.harness import write_config
from tests.resilience.support import RawSMTP

pytestmark = pytest.mark.postgresql

BODY = b"From: lab@lab.example\r\nSubject: r\r\n\r\nbody\r\n"


def _store(dsn: str, owner: str, **kwargs) -> PgSpool:
    kwargs.setdefault("lease", 2.0)
    kwargs.setdefault("connect_timeout", 2.0)
    return PgSpool(dsn, owner=owner, **kwargs).open()


def _until(check, timeout: float = 30.0, step: float = 0.1):
    """Poll `check` until it returns something true (or fail after `timeout`, a safety net)."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, "timed out"
        time.sleep(step)


def _seed(dsn: str, n: int) -> set[str]:
    with _store(dsn, "seed") as seed:
        ids = {seed.accept("lab@lab.example", [f"dr{i}@y.example"], BODY + str(i).encode(), lifetime=3600)
               for i in range(n)}
        seed.release_claims("seed")
    return ids


def test_two_owners_hammering_never_claim_the_same_message(pg_dsn: str) -> None:
    seeded = _seed(pg_dsn, 120)
    nodes = [_store(pg_dsn, "node-a", lease=60), _store(pg_dsn, "node-b", lease=60)]
    taken: dict[str, set[str]] = {"node-a": set(), "node-b": set()}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def hammer(node: PgSpool) -> None:
        try:
            idle = 0
            while idle < 3:
                with lock:
                    mine = set(taken[node.owner])
                got = node.due_received(limit=3, exclude=mine)
                with lock:
                    taken[node.owner].update(m.id for m in got)
                idle = 0 if got else idle + 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in nodes for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert not errors, errors
        assert not taken["node-a"] & taken["node-b"], "a message claimed by both nodes"
        assert taken["node-a"] | taken["node-b"] == seeded, "every message claimed"
        assert taken["node-a"] and taken["node-b"], "both nodes got work"
        holders = {mid: owner for mid, owner, left in nodes[0].leases()}
        assert all(holders[m] == owner for owner, ids in taken.items() for m in ids)
        assert nodes[0].counts()["takeovers"] == 0
    finally:
        for n in nodes:
            n.close()


def test_an_owner_that_stops_renewing_loses_its_claims_after_the_lease(pg_dsn: str) -> None:
    stalled = _store(pg_dsn, "stalled", lease=1.0, renew_every=0)  # no heartbeat
    alive = _store(pg_dsn, "alive", lease=1.0)
    renewing = _store(pg_dsn, "renewing", lease=1.0)  # heartbeat every 1/3 s
    try:
        held = {stalled.accept("lab@lab.example", ["a@y.example"], BODY, lifetime=3600) for _ in range(3)}
        kept = {renewing.accept("lab@lab.example", ["b@y.example"], BODY, lifetime=3600) for _ in range(2)}
        assert alive.due_received() == [], "live leases are not taken"
        got = _until(lambda: {m.id for m in alive.due_received()})
        assert got == held, "the lapsed claims, and only those (the renewed ones stay)"
        assert alive.counts()["takeovers"] == 3
        assert {m: o for m, o, _ in alive.leases()} == {**dict.fromkeys(held, "alive"),
                                                         **dict.fromkeys(kept, "renewing")}
        assert stalled.renew() == 0 and stalled.in_hand() == frozenset(), "the stalled owner knows it lost them"
        assert stalled.due_received() == [], "and cannot take them back while the new lease runs"
        # Another half-lease later the heartbeat still holds the renewing owner's messages.
        time.sleep(1.5)
        assert not {m.id for m in alive.due_received()} & kept
        assert {m: o for m, o, _ in alive.leases() if m in kept} == dict.fromkeys(kept, "renewing")
    finally:
        for s in (stalled, alive, renewing):
            s.close()


_NODE = """
import sys, time
from gateway.spool.pg import PgSpool
dsn, n = sys.argv[1], int(sys.argv[2])
node = PgSpool(dsn, owner="node-dead", lease=2.0, connect_timeout=2.0).open()
ids = [node.accept("lab@lab.example", [f"r{i}@y.example", "cc@y.example"], b"Subject: s\\r\\n\\r\\n%d\\r\\n" % i,
                   lifetime=3600) for i in range(n)]
node.release_claims("node-dead")
taken = [m.id for m in node.due_received(limit=n)]
assert sorted(taken) == sorted(ids), (taken, ids)
print(" ".join(ids), flush=True)
time.sleep(600)  # "delivering": the heartbeat renews until SIGKILL
"""


def test_a_killed_node_loses_nothing_and_its_work_is_reclaimed_after_the_lease(pg_dsn: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _NODE, pg_dsn, "8"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline().decode().split()  # type: ignore[union-attr]
        assert len(line) == 8, proc.stderr.read().decode()[-800:] if proc.poll() is not None else line
        time.sleep(2.5)  # longer than the lease: only the dead node's heartbeat keeps it
        other = _store(pg_dsn, "node-alive", lease=2.0)
        assert other.due_received() == [], "the live node's leases are respected"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    try:
        assert other.due_received() == [], "not before its lease lapses"
        got = _until(lambda: [m for m in other.due_received(limit=100)])
        assert sorted(m.id for m in got) == sorted(line), "all of the dead node's work, nothing lost"
        assert other.counts()["takeovers"] == 8, "each possible failover duplicate counted"
        for m in got:
            assert [r.state for r in m.recipients] == [RecipientState.QUEUED] * 2
            assert other.message_bytes(m.id).startswith(b"Subject: s\r\n")
    finally:
        other.close()


_ACCEPT_AND_DIE = """
import os, signal, sys
from gateway.spool.pg import PgSpool

class Dying(PgSpool):
    @staticmethod
    def _insert_body(conn, digest, data):
        PgSpool._insert_body(conn, digest, data)  # the body is written, the rows are not
        print("body", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

Dying(sys.argv[1], owner="dying").open().accept("lab@lab.example", ["a@y.example"], b"never acknowledged",
                                                 lifetime=60)
"""


def _rows(dsn: str, sql: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchone()[0]  # type: ignore[index]


def test_an_accept_killed_between_body_and_rows_leaves_nothing(pg_dsn: str) -> None:
    out = subprocess.run([sys.executable, "-c", _ACCEPT_AND_DIE, pg_dsn], cwd=ROOT, capture_output=True, timeout=60)
    assert out.returncode == -signal.SIGKILL and out.stdout == b"body\n", out.stderr.decode()[-800:]
    # The server rolls the transaction of the dead connection back.
    _until(lambda: _rows(pg_dsn, "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE"
                                 " 'msgw-queue dying%'") == 0)
    for table in ("queue_bodies", "queue_messages", "queue_recipients"):
        assert _rows(pg_dsn, f"SELECT count(*) FROM {table}") == 0, table  # noqa: S608
    with _store(pg_dsn, "next") as store:
        assert store.list() == [] and store.due() == []


def test_an_unreferenced_body_is_harmless_and_collected_and_a_shared_one_kept(pg_dsn: str) -> None:
    with _store(pg_dsn, "n1") as store:
        one = store.accept("lab@lab.example", ["a@y.example"], BODY, lifetime=60)
        two = store.accept("lab@lab.example", ["b@y.example"], BODY, lifetime=60)
        assert _rows(pg_dsn, "SELECT count(*) FROM queue_bodies") == 1, "same bytes stored once"
        store.mark_delivered([store.get(one).recipients[0].id], status="2.0.0")
        assert store.finish_if_done(one)
        assert store.message_bytes(two) == BODY, "the body another message uses stays"
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO queue_bodies (digest, data) VALUES ('\\x00', 'orphan')")
        assert store.recover()["orphans"] == 1
        assert _rows(pg_dsn, "SELECT count(*) FROM queue_bodies") == 1
        store.mark_delivered([store.get(two).recipients[0].id], status="2.0.0")
        assert store.finish_if_done(two)
        assert _rows(pg_dsn, "SELECT count(*) FROM queue_bodies") == 0


def test_notify_wakes_a_waiting_worker(pg_dsn: str) -> None:
    waiter, writer = _store(pg_dsn, "w"), _store(pg_dsn, "a")
    try:
        assert not waiter.wait_for_work(0.2), "nothing: the timeout"
        woke: list[bool] = []
        t = threading.Thread(target=lambda: woke.append(waiter.wait_for_work(30)))
        t.start()
        time.sleep(0.5)  # the waiter is listening (it was already, since the first call)
        writer.accept("lab@lab.example", ["a@y.example"], BODY, lifetime=60)
        t.join(30)
        assert woke == [True]
    finally:
        waiter.close()
        writer.close()


def test_the_password_may_come_apart_from_the_dsn(pg_cluster, pg_dsn: str) -> None:
    from tests.pgcluster import PG_PASSWORD

    bare = pg_dsn.replace(f":{PG_PASSWORD}@", "@")
    assert PG_PASSWORD not in bare
    with PgSpool(bare, owner="n", password=PG_PASSWORD).open() as store:
        assert store.list() == []
    with pytest.raises(StoreUnavailable) as refused:
        PgSpool(bare, owner="n", password="wrong", connect_timeout=1.0).open()  # noqa: S106
    assert "wrong" not in str(refused.value) and "451 4.3.0" in smtp_reply(refused.value)


def test_two_nodes_creating_the_schema_together_do_not_race(pg_dsn: str) -> None:
    errors: list[BaseException] = []
    stores: list[PgSpool] = []

    def start(i: int) -> None:
        try:
            stores.append(_store(pg_dsn, f"n{i}"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in stores:
        s.close()
    assert not errors and len(stores) == 4, errors
    assert _rows(pg_dsn, "SELECT count(*) FROM queue_schema_version") == 1


# -- PostgreSQL stopped under a real SMTP listener ------------------------------------------------

class _Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def _send(port: int, n: int) -> tuple[int, str, float]:
    """One message over a real SMTP session: the DATA reply and how long it took."""
    with RawSMTP(port, timeout=60) as c:
        assert c.cmd(b"EHLO lis.partner.example")[0] == 250
        assert c.cmd(b"MAIL FROM:<lab@partner.example>")[0] == 250
        assert c.cmd(b"RCPT TO:<dr@cabinet.example>")[0] == 250
        assert c.cmd(b"DATA")[0] == 354
        started = time.monotonic()
        c.send(b"Subject: s\r\n\r\nmessage %d\r\n.\r\n" % n)
        code, text = c.reply()
        return code, text, time.monotonic() - started


def test_postgresql_stopped_gives_4xx_never_250_and_acceptance_resumes(tmp_path: Path, pg_cluster,
                                                                       pg_dsn: str) -> None:
    setup = write_config(tmp_path, sink_port=9, relay_networks='["127.0.0.0/8"]')
    config = load_config(setup.config)
    store = PgSpool(pg_dsn, owner="node-1", lease=5.0, connect_timeout=1.0, statement_timeout=3.0).open()
    server = SmtpServer(config, store)
    loop = _Loop()
    loop.run(server.start())
    port = server.bound["relay"][1]
    acknowledged: dict[str, int] = {}

    def send(n: int) -> tuple[int, str, float]:
        code, text, took = _send(port, n)
        if code == 250:
            acknowledged[text.rsplit(" ", 1)[1]] = n
        return code, text, took

    try:
        assert all(send(n)[0] == 250 for n in range(3))
        pg_cluster.stop()
        try:
            down = [send(n) for n in range(3, 8)]
        finally:
            pg_cluster.start()
        for code, text, took in down:
            assert code == 451 and "4.3.0" in text, text
            assert took < 5.0, f"a 4xx within 5 s, not {took:.1f} s"
        assert len(acknowledged) == 3, "no 250 while PostgreSQL was down"
        # Back: the same server (no restart) accepts again, by itself.
        _until(lambda: send(100)[0] == 250, timeout=60, step=0.5)
        assert all(send(n)[0] == 250 for n in range(8, 11))
    finally:
        loop.run(server.stop())
        loop.close()
    try:
        for msg_id, n in acknowledged.items():
            assert store.message_bytes(msg_id).endswith(b"message %d\r\n" % n), "nothing acknowledged lost"
        assert len(store.list()) == len(acknowledged)
    finally:
        store.close()


def test_an_operation_on_a_stopped_server_is_a_typed_temporary_error(pg_cluster, pg_dsn: str) -> None:
    store = _store(pg_dsn, "n", connect_timeout=1.0)
    msg_id = store.accept("lab@lab.example", ["a@y.example"], BODY, lifetime=60)
    pg_cluster.stop()
    try:
        for call in (lambda: store.accept("lab@lab.example", ["a@y.example"], BODY, lifetime=60),
                     lambda: store.due_prepared(), lambda: store.get(msg_id), store.counts):
            with pytest.raises(StoreUnavailable) as err:
                call()
            assert isinstance(err.value, SpoolError) and err.value.temporary
            assert smtp_reply(err.value).startswith("451 4.3.0")
    finally:
        pg_cluster.start()
    assert _until(lambda: _get_or_none(store, msg_id)) is not None
    store.close()


def _get_or_none(store: PgSpool, msg_id: str):
    try:
        return store.get(msg_id)
    except StoreUnavailable:
        return None


def test_a_commit_the_synchronous_standby_never_confirms_is_a_4xx_not_a_250(pg_cluster, pg_dsn: str) -> None:
    """Production runs a synchronous standby: a COMMIT waits for it, and `statement_timeout`
    does not bound that wait. A standby that never answers (named, absent) must give a
    temporary error in bounded time, and the store must work again once replication does."""
    store = _store(pg_dsn, "n", connect_timeout=1.0, commit_timeout=1.0)
    pg_cluster.psql("ALTER SYSTEM SET synchronous_standby_names = 'ghost_standby'")
    pg_cluster.psql("SELECT pg_reload_conf()")
    # The reload reaches each backend by a signal, asynchronously: wait until a new session sees
    # it, then a moment for the pool's idle sessions (else a COMMIT may still not wait).
    _until(lambda: pg_cluster.psql("SHOW synchronous_standby_names") == "ghost_standby")
    time.sleep(0.5)
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as err:
            store.accept("lab@lab.example", ["a@y.example"], BODY, lifetime=60)
        assert time.monotonic() - started < 5.0
        assert "synchronous standby" in str(err.value) and smtp_reply(err.value).startswith("451 4.3.0")
    finally:
        pg_cluster.psql("ALTER SYSTEM RESET synchronous_standby_names")
        pg_cluster.psql("SELECT pg_reload_conf()")
    # Committed on the primary although not acknowledged: delivered (at least once), never lost.
    assert len(store.list()) == 1
    _until(lambda: _accepts(store))
    assert len(store.list()) == 2
    store.close()


def _accepts(store: PgSpool) -> bool:
    try:
        store.accept("lab@lab.example", ["a@y.example"], BODY + b"2", lifetime=60)
    except StoreUnavailable:
        return False
    return True


def test_a_single_node_spool_is_imported_as_it_is(tmp_path: Path, pg_dsn: str) -> None:
    """`msgw storage migrate` moves a SQLite spool into PostgreSQL: ids, states, copies kept."""
    from gateway.spool import NewCopy, Outcome, Spool

    old = Spool(tmp_path / "spool").open()
    received = old.accept("lab@lab.example", ["a@y.example"], BODY, lifetime=3600)
    prepared = old.accept("lab@lab.example", ["b@y.example", "c@y.example", "d@y.example"], BODY + b"x",
                          lifetime=3600)
    b, c, d = old.get(prepared).recipients
    old.prepare(prepared, [NewCopy("smime", True, b"signed", (b.id, c.id)),
                           NewCopy("as-is", False, BODY + b"x", (), same_as_message=True)],
                [Outcome(d.id, RecipientState.BOUNCED, "5.7.1", "refused", address=d.address)])
    old.mark_deferred([c.id], next_attempt=time.time() + 600, error="451 later", status="4.0.0")
    dsn = old.accept_prepared("", ["lab@lab.example"], b"report", form="dsn", lifetime=60, listener="dsn")
    with _store(pg_dsn, "migrate") as new:
        for msg in old.list():
            copies = {cp.id: old.copy_bytes(cp) for cp in msg.copies}
            assert new.import_message(msg, old.message_bytes(msg.id), copies)
            assert not new.import_message(msg, old.message_bytes(msg.id), copies), "idempotent"
        assert [m.to_json() for m in new.list()] == [m.to_json() for m in old.list()]
        assert new.get(prepared) == old.get(prepared)
        for msg_id in (received, prepared, dsn):
            assert new.message_bytes(msg_id) == old.message_bytes(msg_id)
            for cp in old.get(msg_id).copies:
                assert new.copy_bytes(new.get(msg_id).copy(cp.id)) == old.copy_bytes(cp)
        fresh = new.accept("lab@lab.example", ["e@y.example"], BODY, lifetime=60)
        assert new.get(fresh).recipients[0].id > max(r.id for m in old.list() for r in m.recipients)
        assert {m.id for m in new.due_received()} == {received, fresh}
    old.close()


def test_a_node_starting_frees_its_own_workers_claims_never_another_nodes(pg_dsn: str) -> None:
    """`msgw serve`'s master releases every claim of the previous run before starting its
    workers (`release_claims()`); on a shared queue that must mean this node's, not a live
    neighbour's (it would deliver the neighbour's messages in flight a second time)."""
    claimed, running = {}, []
    for owner in ("node-a/w0", "node-a/w1", "node-b/w0", "node-a"):
        running.append(_store(pg_dsn, owner, lease=60))  # not closed: a clean close would release
        claimed[owner] = running[-1].accept("lab@lab.example", ["a@y.example"], BODY + owner.encode(), lifetime=60)
    with _store(pg_dsn, "node-ab", lease=60) as prefix_only:  # "node-a" is not a prefix of it, nor it of them
        assert prefix_only.release_claims() == 0
    master = _store(pg_dsn, "node-a", lease=60)
    try:
        # Its own claim was freed by `open()` (a named owner restarting), its workers' now.
        assert master.release_claims() == 2
        assert {m: o for m, o, _ in master.leases()} == {claimed["node-b/w0"]: "node-b/w0"}
    finally:
        for s in [master, *running]:
            s.close()


def test_a_clean_close_hands_the_work_over_at_once(pg_dsn: str) -> None:
    """A node stopped cleanly (or `msgw send`, which accepts and exits) releases its claims: the
    other node takes the message now, not after the lease, and it is no takeover."""
    sender = _store(pg_dsn, "", lease=60)
    msg_id = sender.accept("lab@lab.example", ["a@y.example"], BODY, lifetime=60)
    node = _store(pg_dsn, "node-b", lease=60)
    try:
        assert node.due_received() == []
        sender.close()
        assert [m.id for m in node.due_received()] == [msg_id]
        assert node.counts()["takeovers"] == 0
    finally:
        node.close()


def test_writers_on_the_same_messages_queue_up_instead_of_deadlocking(pg_dsn: str) -> None:
    """Attempts recording outcomes for recipients of the same messages in opposite orders, as
    delivery's concurrent batches and the runner's refusals do: each takes the messages' rows
    first, in id order, so none gets a deadlock error (PostgreSQL would abort one: a needless
    temporary failure)."""
    node = _store(pg_dsn, "n", lease=60)
    try:
        ids = [node.accept("lab@lab.example", [f"r{i}@y.example" for i in range(10)], BODY, lifetime=3600)
               for _ in range(4)]
        rcpts = [r.id for i in ids for r in node.get(i).recipients]
        later = time.time() + 3600
        errors: list[BaseException] = []

        def attempt(order: list[int]) -> None:
            try:
                for _ in range(60):
                    node.record_outcomes(Outcome(r, RecipientState.DEFERRED, "4.0.0", "busy", next_attempt=later)
                                         for r in order)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=attempt, args=(order,))
                   for order in (rcpts, rcpts[::-1], rcpts[1::2] + rcpts[::2], rcpts[::-2] + rcpts[-2::-2])]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert [str(e) for e in errors] == []
        assert all(r.attempts == 240 for i in ids for r in node.get(i).recipients)
    finally:
        node.close()
