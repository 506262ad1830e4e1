"""The pure flows aggregation (gateway/console/flows.py) and its SVG chart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from gateway.console import charts, flows

END = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)


def qid(at: datetime) -> str:
    return f"{int(at.timestamp() * 1000):011X}ABCDEF1234"


def rec(at: datetime, decision: str, **fields: str) -> dict:
    return {"time": at.strftime("%Y-%m-%dT%H:%M:%SZ"), "decision": decision, **fields}


def outcome(at: datetime, accepted: datetime, state: str, rcpt: str, sender: str = "lis@lab.example") -> dict:
    status = "2.0.0" if state == "delivered" else "5.1.1"
    return rec(at, "outcome", message_id=qid(accepted), sender=sender, recipient=rcpt, outcome=f"{state} {status}")


SYSTEMS = {"lis@lab.example": "account lis@lab.example", "labo@labo.test": "door lis"}


def test_outcomes_refusals_and_forms_count_per_sending_system_and_destination() -> None:
    t = END - timedelta(minutes=30)
    records = [
        rec(t - timedelta(seconds=5), "smime", message_id=qid(t), sender="lis@lab.example", recipient="a@far.example"),
        outcome(t, t - timedelta(seconds=4), "delivered", "a@far.example"),
        outcome(t, t - timedelta(seconds=10), "delivered", "b@far.example"),
        outcome(t, t - timedelta(seconds=1), "bounced", "c@near.example", sender="labo@labo.test"),
        rec(t, "refused", sender="labo@labo.test", recipient="d@far.example", reason="no certificate"),
        rec(t, "auth-failed", listener="submission", identity="unknown", client="192.0.2.7"),
        rec(t, "console-retry", identity="alice", message_id="X"),                      # not a flow
        rec(END - timedelta(hours=30), "outcome", recipient="old@far.example",          # outside the window
            outcome="delivered 2.0.0", message_id=qid(END - timedelta(hours=30))),
    ]
    result = flows.aggregate(records, end=END, window=flows.HOURS, systems=SYSTEMS)
    far = result.destinations["far.example"]
    assert (sum(far.delivered), sum(far.bounced), sum(far.refused)) == (2, 0, 1)
    assert far.delivered[-1] == 2 and far.forms == {"smime": 1}
    assert far.delay(0.5) == 4.0 and far.delay(1.0) == 10.0
    assert sum(result.destinations["near.example"].bounced) == 1
    lis = result.sources["account lis@lab.example"]
    assert (sum(lis.delivered), lis.errors) == (2, 0)
    door = result.sources["door lis"]
    assert (sum(door.bounced), sum(door.refused), door.delay(0.5)) == (1, 1, None)
    assert sum(result.sources["listener submission"].refused) == 1
    assert set(result.destinations) == {"far.example", "near.example"}
    assert len(result.bucket_starts()) == 24


def test_buckets_follow_the_window() -> None:
    records = [outcome(END - timedelta(days=d, minutes=1), END - timedelta(days=d, minutes=2), "delivered",
                       "x@far.example") for d in (0, 2, 6)]
    days = flows.aggregate(records, end=END, window=flows.DAYS).destinations["far.example"]
    assert days.delivered == [1, 0, 0, 0, 1, 0, 1]
    hours = flows.aggregate(records, end=END, window=flows.HOURS).destinations["far.example"]
    assert sum(hours.delivered) == 1


def test_sending_system_names() -> None:
    assert flows.sending_system({"sender": "LIS@lab.example"}, SYSTEMS) == "account lis@lab.example"
    assert flows.sending_system({"sender": "x@lab.example"}, {"@lab.example": "account lab"}) == "account lab"
    assert flows.sending_system({"sender": "x@other.example"}, SYSTEMS) == "@other.example"
    assert flows.sending_system({"sender": "", "listener": "relay"}, SYSTEMS) == "listener relay"
    assert flows.sending_system({"sender": ""}, SYSTEMS) == "(null sender)"


def test_recent_problems_and_outcomes_newest_first_with_reasons() -> None:
    t = END - timedelta(hours=1)
    records = [
        outcome(t, t, "bounced", "c@near.example"),
        rec(t + timedelta(minutes=5), "sender-refused", listener="submission", client="192.0.2.1",
            sender="spoof@lab.example", reason="not a sender of this account"),
        outcome(t + timedelta(minutes=6), t, "delivered", "ok@far.example"),
        rec(t + timedelta(minutes=7), "console-delete", identity="alice"),
    ]
    problems = flows.recent_problems(records)
    assert [(p.kind, p.decision, p.reason) for p in problems] == [
        ("refused", "sender-refused", "not a sender of this account"), ("bounced", "outcome", "5.1.1")]
    latest = flows.recent_outcomes(records)
    assert [(o.state, o.recipient, o.delay) for o in latest] == [("delivered", "ok@far.example", 360.0),
                                                                  ("bounced", "c@near.example", 0.0)]


def test_queued_by_destination_and_by_sending_system() -> None:
    def r(address: str, state: str) -> SimpleNamespace:
        return SimpleNamespace(address=address, state=SimpleNamespace(value=state))

    messages = [SimpleNamespace(sender="lis@lab.example", auth_user="lis@lab.example", listener="submission",
                                received=1000.0, recipients=[r("a@far.example", "deferred"),
                                                             r("b@msgw.test", "delivered")]),
                SimpleNamespace(sender="x@y.example", auth_user=None, listener="relay", received=1090.0,
                                recipients=[r("c@far.example", "queued")])]
    by_dest = flows.queued_by(messages, now=1100.0)
    assert [(q.name, q.recipients, q.deferred, q.oldest) for q in by_dest] == [("far.example", 2, 1, 100.0)]
    by_src = flows.queued_by(messages, now=1100.0, systems=SYSTEMS, by="source")
    assert sorted(q.name for q in by_src) == ["@y.example", "account lis@lab.example"]


def test_the_chart_is_svg_with_escaped_text_and_no_inline_style() -> None:
    starts = [END - timedelta(hours=24 - i) for i in range(24)]
    svg = str(charts.stacked_bars("<dest> & co", starts, [("ok", [1] * 24), ("refuse", [0] * 23 + [3])]))
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "&lt;dest&gt; &amp; co" in svg and "<dest>" not in svg
    assert "style=" not in svg
    assert svg.count('<rect class="ok"') == 24 and svg.count('<rect class="refuse"') == 1
