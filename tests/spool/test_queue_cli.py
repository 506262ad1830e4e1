"""`msgw queue list/show` (run as the command) show each message's stage (received or
prepared) and its copies' forms, keeping every JSON key of the contract (CLI.md); `retry` on a
received message makes its preparation due again."""

from __future__ import annotations

import json
import time
from pathlib import Path

from gateway.config import load_config
from gateway.spool import NewCopy, Outcome, RecipientState, Spool
from tests.e2e.harness import msgw, write_config

OLD_KEYS = {"id", "sender", "size", "received", "expires", "listener", "client", "auth_user", "quarantined",
            "recipients"}
OLD_RCPT_KEYS = {"address", "state", "attempts", "next_attempt", "last_error", "last_status", "remote"}


def test_queue_show_and_list_tell_received_from_prepared(tmp_path: Path) -> None:
    setup = write_config(tmp_path / "gw", sink_port=9)
    cfg = str(setup.config)
    with Spool(load_config(setup.config).spool.path).open() as spool:
        waiting = spool.accept("lab@lab.example", ["dr@y.example"], b"Subject: s\r\n\r\nb\r\n", lifetime=3600)
        done = spool.accept("lab@lab.example", ["a@y.example", "b@y.example"], b"Subject: s\r\n\r\nb\r\n",
                            lifetime=3600)
        a, b = spool.get(done).recipients
        spool.prepare(done, [NewCopy("smime", False, b"signed and encrypted", (a.id,))],
                      [Outcome(b.id, RecipientState.DEFERRED, "4.7.0", "key unavailable",
                               next_attempt=time.time() + 3600, address=b.address)])
    out = msgw("queue", "show", done, "--json", "--config", cfg)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert OLD_KEYS <= shown.keys() and all(OLD_RCPT_KEYS <= r.keys() for r in shown["recipients"])
    assert shown["stage"] == "received", "one recipient still waits for its preparation"
    assert [(c["form"], c["size"], c["require_tls"]) for c in shown["copies"]] == [("smime", 20, False)]
    rcpts = {r["address"]: r for r in shown["recipients"]}
    assert (rcpts["a@y.example"]["stage"], rcpts["a@y.example"]["form"]) == ("prepared", "smime")
    assert (rcpts["b@y.example"]["stage"], rcpts["b@y.example"]["form"]) == ("received", None)

    listed = json.loads(msgw("queue", "list", "--json", "--config", cfg).stdout)
    assert {m["id"]: m["stage"] for m in listed} == {waiting: "received", done: "received"}
    text = msgw("queue", "show", done, "--config", cfg).stdout.decode()
    assert "copy 1: smime, 20 B" in text and "<a@y.example> [copy 1 (smime)]" in text
    assert "<b@y.example> [received]" in text

    out = msgw("queue", "retry", done, "--config", cfg)
    assert out.returncode == 0 and b"2 recipient(s)" in out.stdout
    with Spool(load_config(setup.config).spool.path).open(recover=False) as spool:
        assert {m.id for m in spool.due_received()} == {waiting, done}
