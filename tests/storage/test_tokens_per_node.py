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


# -- two real gateway processes, each with its own SoftHSM ----------------------------------------

CARD = "LABO-CARD"


def _hsm(root: Path, with_card: bool):
    """A SoftHSM of one node (its own token folder: a module reads its config once per process)."""
    from tests.pkcs11.conftest import MODULE, SoftHsm
    from tests.pkcs11.test_signed_once import _TestPkiEntry
    from tests.smime.support import shared_pki

    tokendir = root / "tokens"
    tokendir.mkdir(parents=True)
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokendir}\nobjectstore.backend = file\nlog.level = ERROR\n"
                    "slots.removable = false\n")
    import os

    hsm = SoftHsm(root=root, conf=conf, tokendir=tokendir, module=MODULE, pki=None,  # type: ignore[arg-type]
                  env={**os.environ, "SOFTHSM2_CONF": str(conf)})
    if with_card:
        hsm.init_token(CARD)
        hsm.put_single_use(CARD, _TestPkiEntry(shared_pki().pki["org_sign"]), "01", "labo-signature", "sign")
    return hsm


def _node(folder: Path, dsn: str, node: str, sink_port: int, pin_file: Path, check_every: str = "30s"):
    from gateway.server.passwords import hash_password
    from gateway.smime.testpki import ORG_EMAIL
    from tests.e2e.harness import write_config
    from tests.pkcs11.conftest import MODULE
    from tests.pkcs11.test_signed_once import PASSWORD
    from tests.smime.support import shared_pki, trust_toml

    pki = shared_pki().pki
    org = pki["org_sign"]
    plain, password = split_password(dsn)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pg.pass").write_text(password + "\n")
    extra = f"""
[accounts."{ORG_EMAIL}"]
password_hash = "{hash_password(PASSWORD)}"

[keys.labo-sign]
ref = "pkcs11:token={CARD};object=labo-signature"
module = "{MODULE}"
pin_file = "{pin_file}"
usage = "sign"
cert = "{org.cert_path}"
chain = "{org.chain_path}"
wait_for_token = true

{trust_toml(pki)}
[policy]
default = "require-smime"
neutral_subject = "Message sécurisé"

[policy.sign_with]
"{ORG_EMAIL}" = "labo-sign"

[storage]
backend = "postgresql"
dsn = "{plain}"
password_file = "{folder / "pg.pass"}"
node = "{node}"
connect_timeout = "2s"
lease = "3s"
token_check = "{check_every}"
"""
    return write_config(folder, sink_port=sink_port, extra=extra, retry='["1s"]')


def test_two_gateways_a_message_accepted_without_the_card_is_signed_by_the_node_with_it(
        pg_dsn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cryptography.hazmat.primitives import serialization

    from gateway.smime.testpki import PERSON_EMAIL
    from tests.conftest import require_tool
    from tests.e2e.harness import GatewayProcess, Sink, log_events, msgw
    from tests.pkcs11.conftest import USER_PIN
    from tests.pkcs11.test_signed_once import _submit
    from tests.smime.support import shared_pki

    require_tool("softhsm2-util")
    require_tool("pkcs11-tool")
    pin_file = tmp_path / "user.pin"
    pin_file.write_text(USER_PIN + "\n")
    pin_file.chmod(0o600)
    hsm_a, hsm_b = _hsm(tmp_path / "hsm-a", with_card=False), _hsm(tmp_path / "hsm-b", with_card=True)
    sink = Sink().start()
    try:
        node_a = _node(tmp_path / "a", pg_dsn, "node-a", sink.port, pin_file)
        node_b = _node(tmp_path / "b", pg_dsn, "node-b", sink.port, pin_file)
        person_pem = tmp_path / "person-encrypt.pem"
        person_pem.write_bytes(shared_pki().pki["person_encrypt"].cert.public_bytes(serialization.Encoding.PEM))
        added = msgw("directory", "add", PERSON_EMAIL, "--capability", "smime", "--cert", str(person_pem),
                     "--config", str(node_a.config))  # the shared directory: both nodes see it
        assert added.returncode == 0, added.stderr

        def start(setup, hsm) -> GatewayProcess:
            monkeypatch.setenv("SOFTHSM2_CONF", str(hsm.conf))  # the child's environment
            return GatewayProcess(setup).start()

        gw_a = start(node_a, hsm_a)
        gw_b = start(node_b, hsm_b)
        try:
            _submit(node_a.submission_port)  # accepted by the node without the card
            [got] = sink.wait_for(1, 60)
            assert b"application/pkcs7-mime" in got.data
            routed = [e for e in log_events(node_a) if e["event"] == "routed-to-key"]
            assert routed and routed[0]["key"] == "labo-sign"
            assert any(e["event"] == "prepared" for e in log_events(node_b))

            # the card node down: the next message waits (deferred, needs_key shown), then goes
            gw_b.terminate()
            _submit(node_a.submission_port)
            deadline = time.monotonic() + 60
            while True:
                shown = subprocess.run([MSGW, "queue", "list", "--config", str(node_a.config)],
                                       capture_output=True, text=True, timeout=60)
                if "needs key labo-sign" in shown.stdout:
                    break
                assert time.monotonic() < deadline, shown.stdout + shown.stderr
                time.sleep(0.5)
            assert "deferred" in shown.stdout
            time.sleep(2)
            assert len(sink.handler.snapshot()) == 1, "nothing goes while no node holds the card"
            gw_b = start(node_b, hsm_b)
            second = sink.wait_for(2, 60)[1]
            assert b"application/pkcs7-mime" in second.data
        finally:
            for gw in (gw_a, gw_b):
                if gw.proc is not None:
                    gw.terminate()
    finally:
        sink.stop()


def test_a_process_that_prepared_a_routed_message_advertises_the_key_again(pg_dsn) -> None:
    """A worker that met an absent token stopped advertising the key; when no holder was up it took
    the message anyway and prepared it (the card is back): it advertises the key again."""
    node = _store(pg_dsn, "node-b/w0", keys={"cps"})
    try:
        msg_id = node.accept("dr@msgw.test", ["ide@far.example"], BODY, lifetime=3600)
        node.due_received()
        _deferred_for_lack_of(node, msg_id, "cps")
        assert node.keys == frozenset() and ("node-b/w0", [], ) == node.nodes()[0][:2]
        [msg] = node.due_received()  # no live holder: taken here again
        assert node.prepare(msg_id, [NewCopy("smime", False, b"signed", (msg.recipients[0].id,))])
        assert node.keys == {"cps"} and node.nodes()[0][1] == ["cps"]
    finally:
        node.close()


def test_a_card_inserted_after_the_start_is_published_by_the_next_token_check(
        pg_dsn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A node started before its card (`wait_for_token`) advertised no key; once the card is in,
    the periodic token check (`[storage] token_check`, `gateway.keyinventory`) publishes the key,
    so messages that need it are routed to this node without waiting for a lucky claim. Read once
    at start (before), the key never appeared until the node prepared such a message itself."""
    from tests.conftest import require_tool
    from tests.e2e.harness import GatewayProcess, Sink, log_events
    from tests.pkcs11.conftest import USER_PIN
    from tests.pkcs11.test_signed_once import _TestPkiEntry
    from tests.smime.support import shared_pki

    require_tool("softhsm2-util")
    pin_file = tmp_path / "user.pin"
    pin_file.write_text(USER_PIN + "\n")
    pin_file.chmod(0o600)
    hsm = _hsm(tmp_path / "hsm", with_card=False)
    observer = _store(pg_dsn, "observer/w0")
    sink = Sink().start()
    try:
        setup = _node(tmp_path / "b", pg_dsn, "node-b", sink.port, pin_file, check_every="1s")
        monkeypatch.setenv("SOFTHSM2_CONF", str(hsm.conf))
        gw = GatewayProcess(setup).start()
        try:
            def published() -> list[str]:
                return [k for owner, keys, _ in observer.nodes() if owner.startswith("node-b") for k in keys]

            assert published() == [], "no card yet: no key advertised"
            hsm.init_token(CARD)  # the card goes into the reader
            hsm.put_single_use(CARD, _TestPkiEntry(shared_pki().pki["org_sign"]), "01", "labo-signature", "sign")
            deadline = time.monotonic() + 45
            while "labo-sign" not in published():
                assert time.monotonic() < deadline, f"the key was never published: {observer.nodes()}"
                time.sleep(0.5)
            changed = [e for e in log_events(setup) if e["event"] == "keys-published" and e.get("reason")]
            assert changed and changed[-1]["keys"] == ["labo-sign"]
        finally:
            gw.terminate()
    finally:
        sink.stop()
        observer.close()
