"""Audit anchors across nodes (issue 18, item 5), on a real PostgreSQL with real trail files:
one leader elected by advisory lock anchors every node's head; the verifier catches an edit, a
deletion, a reordering and a truncation of any node's trail — also when the forger rewrote the
chain and the head file so that the node's own check passes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from gateway.audit import GENESIS, AuditTrail, record_hash
from gateway.audit_anchor import AnchorService, AnchorStore, verify_trails
from tests.storage.conftest import split_password

pytestmark = pytest.mark.postgresql

Records = list[dict]


def _trail(path: Path, n: int, who: str) -> AuditTrail:
    trail = AuditTrail(path)
    for i in range(n):
        trail.append(queue_id=f"{who}{i}", recipient=f"r{i}@x.test", decision="smime", outcome="delivered")
    return trail


def _store(dsn: str, node: str, **kwargs) -> AnchorStore:
    plain, password = split_password(dsn)
    return AnchorStore(plain, node=node, password=password, **kwargs)


def _rewrite(src: AuditTrail, dest: Path, change: Callable[[Records], Records], *, rechain: bool) -> AuditTrail:
    """A forged copy of `src`: `change` applied to its records; with `rechain`, the chain and the
    head file recomputed (a consistent forgery: the trail's own verify passes)."""
    records = [dict(r) for r in src.records()]
    records = change(records)
    if rechain:
        prev = GENESIS
        for i, rec in enumerate(records, start=1):
            rec.pop("hash", None)
            rec["seq"], rec["prev_hash"] = i, prev
            rec["hash"] = prev = record_hash(rec)
    dest.write_text("".join(json.dumps(r) + "\n" for r in records))
    head = {"seq": records[-1]["seq"], "hash": records[-1]["hash"]} if records else {"seq": 0, "hash": GENESIS}
    dest.with_name(dest.name + ".head").write_text(json.dumps(head))
    return AuditTrail(dest)


def _edit(records: Records) -> Records:
    records[2]["outcome"] = "bounced"
    return records


FORGERIES: dict[str, Callable[[Records], Records]] = {
    "edit": _edit,
    "deletion": lambda rs: rs[:2] + rs[3:],
    "reordering": lambda rs: [rs[0], rs[2], rs[1], *rs[3:]],
    "truncation": lambda rs: rs[:3],
}


@pytest.fixture
def anchored(pg_dsn, tmp_path: Path):
    """Two nodes' trails, both anchored by the elected node; the trails and the anchors."""
    a, b = _trail(tmp_path / "a" / "audit.jsonl", 6, "A"), _trail(tmp_path / "b" / "audit.jsonl", 4, "B")
    store_a, store_b = _store(pg_dsn, "node-a"), _store(pg_dsn, "node-b")
    node_a, node_b = AnchorService(store_a, a), AnchorService(store_b, b)
    first = node_a.turn()  # a publishes and is elected: the anchor names a only
    assert first is not None and set(first.heads) == {"node-a"}
    assert node_b.turn() is None  # b publishes; the lock is a's
    second = node_a.turn()
    assert second is not None and second.heads == {"node-a": a.head(), "node-b": b.head()}
    assert second.prev_hash == first.hash
    assert node_a.turn() is None  # nothing moved: no new anchor
    anchors = store_a.anchors()
    yield a, b, anchors, store_a, store_b
    store_a.close()
    store_b.close()


def test_the_trails_and_their_anchors_agree(anchored) -> None:
    a, b, anchors, _, _ = anchored
    report = verify_trails({"node-a": a, "node-b": b}, anchors)
    assert report.ok, report.problems
    assert (report.anchors, report.records) == (2, {"node-a": 6, "node-b": 4})
    partial = verify_trails({"node-a": a}, anchors)
    assert not partial.ok and "node node-b: no trail given" in partial.problems[0]


@pytest.mark.parametrize("rechain", [True, False], ids=["consistent-forgery", "naive"])
@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_every_injected_forgery_is_caught(anchored, tmp_path: Path, forgery: str, rechain: bool) -> None:
    a, b, anchors, _, _ = anchored
    (tmp_path / "forged").mkdir()
    forged = _rewrite(a, tmp_path / "forged" / "audit.jsonl", FORGERIES[forgery], rechain=rechain)
    if rechain:
        assert forged.verify().ok  # the node's own check is fooled: only the anchors can tell
    report = verify_trails({"node-a": forged, "node-b": b}, anchors)
    assert not report.ok
    assert all(p.startswith("node node-a") for p in report.problems), report.problems
    if forgery == "truncation" and rechain:
        assert any("truncated" in p and "seq 6" in p for p in report.problems), report.problems
    # the untouched node stays clean on its own
    assert verify_trails({"node-b": b}, [x for x in anchors if "node-a" not in x.heads]).ok


def test_an_edited_or_deleted_anchor_is_caught(anchored, pg_cluster, pg_dsn) -> None:
    a, b, anchors, store_a, _ = anchored
    dbname = urlsplit(pg_dsn).path.strip("/")
    a.append(queue_id="A9", decision="smime")
    store_a.publish_head(a)
    third = store_a.write_anchor()
    assert third is not None and verify_trails({"node-a": a, "node-b": b}, store_a.anchors()).ok
    pg_cluster.psql(f"DELETE FROM audit_anchors WHERE id = {anchors[1].id}", dbname)  # noqa: S608 - an int
    report = verify_trails({"node-a": a, "node-b": b}, store_a.anchors())
    assert not report.ok and report.problems == [f"anchor {third.id} does not follow the previous anchor "
                                                 "(one deleted or replaced)"]
    pg_cluster.psql("UPDATE audit_anchors SET heads = replace(heads, '[7,', '[6,') "  # noqa: S608 - an int
                    f"WHERE id = {third.id}", dbname)
    report = verify_trails({"node-a": a, "node-b": b}, store_a.anchors())
    assert any(f"anchor {third.id} modified" in p for p in report.problems), report.problems


def test_the_leader_dies_and_another_node_takes_over(anchored, tmp_path: Path) -> None:
    a, b, anchors, store_a, store_b = anchored
    assert store_a.leading and not store_b.try_lead()
    store_a.resign()  # as PostgreSQL does when the leader's process or connection dies
    assert store_b.try_lead()
    b.append(queue_id="B9", decision="smime")
    store_b.publish_head(b)
    anchor = store_b.write_anchor()
    assert anchor is not None and anchor.leader == "node-b" and anchor.heads["node-b"] == b.head()
    assert anchor.prev_hash == anchors[-1].hash
    assert verify_trails({"node-a": a, "node-b": b}, store_b.anchors()).ok


def test_msgw_audit_verify_checks_the_chains_with_the_anchors(pg_dsn, tmp_path: Path) -> None:
    import subprocess

    from tests.conftest import MSGW
    from tests.storage.test_migrate import _config

    config = _config(tmp_path, pg_dsn)  # node "node-a", its trail beside its spool
    a = _trail(tmp_path / "var" / "audit.jsonl", 5, "A")
    b = _trail(tmp_path / "b" / "audit.jsonl", 3, "B")
    store_a, store_b = _store(pg_dsn, "node-a"), _store(pg_dsn, "node-b")
    AnchorService(store_b, b).turn()  # b leads and anchors itself
    AnchorService(store_a, a).turn()
    store_b.resign()
    assert AnchorService(store_a, a).turn() is not None  # a leads now and anchors both

    def verify(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([MSGW, "audit", "verify", "--config", str(config), *extra], capture_output=True,
                              text=True, timeout=60)

    ok = verify("--trail", f"node-b={b.path}", "--all-nodes")
    assert ok.returncode == 0 and "2 anchor(s) agree" in ok.stdout, ok.stdout + ok.stderr
    assert verify("--all-nodes").returncode == 1  # node-b's trail not given
    assert verify().returncode == 0  # this node only
    forged_dir = tmp_path / "forged"
    forged_dir.mkdir()
    forged = _rewrite(b, forged_dir / "audit.jsonl", FORGERIES["edit"], rechain=True)
    bad = verify("--trail", f"node-b={forged.path}")
    assert bad.returncode == 1 and "node node-b: record at anchored seq 3 differs" in bad.stderr, bad.stderr
    store_a.close()
    store_b.close()


def test_old_anchors_are_pruned_after_the_retention(pg_dsn, tmp_path: Path) -> None:
    clock = [1000.0]
    trail = _trail(tmp_path / "audit.jsonl", 2, "A")
    store = _store(pg_dsn, "node-a", clock=lambda: clock[0])
    service = AnchorService(store, trail, retention=100.0)
    assert service.turn() is not None
    clock[0] = 1050.0
    trail.append(queue_id="A9", decision="smime")
    assert service.turn() is not None
    clock[0] = 1120.0  # the first anchor is 120 s old, the second 70 s
    trail.append(queue_id="A10", decision="smime")
    assert service.turn() is not None
    assert [x.created for x in store.anchors()] == [1050.0, 1120.0]
    assert verify_trails({"node-a": trail}, store.anchors()).ok  # the oldest kept starts the check
    store.close()
