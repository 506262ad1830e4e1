"""Keys per node on a shared queue (issue 18, item 4): a CPS card lives in one machine. Each
queue process publishes the keys it can use (`queue_nodes`, heartbeat); a message whose
preparation needed a key whose token was absent is marked `needs_key` and claimed only by a
process holding it; with no live holder it stays a deferral any node may take (it waits with the
backoff, it is never dropped), and `msgw queue show` says what it waits for. Real PostgreSQL."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from gateway.spool import NewCopy, Outcome, RecipientState
from gateway.spool.pg import PgSpool
from tests.conftest import MSGW
from tests.storage.conftest import split_password
from tests.storage.test_migrate import _config

pytestmark = pytest.mark.postgresql

BODY = b"From: dr@msgw.test\r\nSubject: TEST\r\n\r\nTEST result to sign\r\n"


def _store(dsn: str, owner: str, keys: set[str] | None = None) -> PgSpool:
    plain, password = split_password(dsn)
    store = PgSpool(plain, owner=owner, password=password, lease=2.0, connect_timeout=2.0).open(recover=False)
    if keys is not None:
        store.publish_keys(keys)
    return store


def _deferred_for_lack_of(store: PgSpool, msg_id: str, key: str) -> None:
    """What the runner does when preparation raised `TokenNotHere(key)`: defer, then route."""
    [rcpt] = store.get(msg_id).recipients
    store.record_outcomes([Outcome(
        rcpt.id, RecipientState.DEFERRED, "4.3.0", "key cps unavailable: token not present",
        next_attempt=time.time() - 1)])
    store.route_to_key(msg_id, key)


def test_a_message_needing_a_card_goes_to_the_node_that_holds_it_and_waits_when_none_is_up(
        pg_dsn, tmp_path: Path) -> None:
    without = _store(pg_dsn, "node-a/w0", keys={"tls-only"})
    holder = _store(pg_dsn, "node-b/w0", keys={"cps"})
    try:
        msg_id = without.accept("dr@msgw.test", ["ide@far.example"], BODY, lifetime=3600)
        assert [m.id for m in without.due_received()] == [msg_id]
        _deferred_for_lack_of(without, msg_id, "cps")
        assert without.get(msg_id).needs_key == "cps"
        # node-a no longer claims it (due now, but it needs a card node-b holds)
        assert without.due_received() == []
        assert [m.id for m in holder.due_received()] == [msg_id]
        holder.release_claims(holder.owner)

        # the card node goes down (a clean stop withdraws its keys; a dead one's heartbeat lapses)
        holder.close()
        [waiting] = [m for m in without.due_received() if m.id == msg_id]  # no holder: any node, to defer again
        assert waiting.recipients[0].state is RecipientState.DEFERRED
        without.release_claims(without.owner)
        config = _config(tmp_path, pg_dsn)
        shown = subprocess.run([MSGW, "queue", "show", msg_id, "--config", str(config)], capture_output=True,
                               text=True, timeout=60)
        assert shown.returncode == 0 and "needs key cps" in shown.stdout, shown.stdout + shown.stderr
        listed = subprocess.run([MSGW, "queue", "show", msg_id, "--json", "--config", str(config)],
                                capture_output=True, text=True, timeout=60)
        assert '"needs_key": "cps"' in listed.stdout

        # the card node is back: it (and only it) claims the message, and preparing clears the mark
        holder = _store(pg_dsn, "node-b/w0", keys={"cps"})
        assert without.due_received() == []
        [msg] = holder.due_received()
        rcpt = msg.recipients[0]
        assert holder.prepare(msg_id, [NewCopy("smime", False, b"signed", (rcpt.id,))])
        assert holder.get(msg_id).needs_key is None
    finally:
        without.close()
        holder.close()


def test_a_dead_holders_heartbeat_lapses_and_the_message_is_taken_again(pg_dsn) -> None:
    without = _store(pg_dsn, "node-a/w0", keys=set())
    plain, password = split_password(pg_dsn)
    dead = PgSpool(plain, owner="node-b/w0", password=password, lease=1.0, renew_every=0,
                   connect_timeout=2.0).open(recover=False)  # no heartbeat: it "dies" after publishing
    dead.publish_keys({"cps"})
    try:
        msg_id = without.accept("dr@msgw.test", ["ide@far.example"], BODY, lifetime=3600)
        without.due_received()
        _deferred_for_lack_of(without, msg_id, "cps")
        without.lease = 2.0
        assert without.due_received() == []  # node-b published cps a moment ago
        time.sleep(2.5)  # more than a lease without a heartbeat: node-b holds nothing any more
        assert [m.id for m in without.due_received()] == [msg_id]
        assert [owner for owner, keys, _ in without.nodes() if "cps" in keys] == ["node-b/w0"]
    finally:
        without.close()
        dead.close()
