"""Flows per partner, from audit records: pure (records in, figures out; no file, no clock).

Why the audit trail: it is the one record of what happened to every recipient after the spool
forgets a finished message — the decision (form or refusal) when it was prepared, and its final
outcome (`decision="outcome"`, `outcome="delivered 2.0.0"` / `"bounced 5.1.1"`). Deferrals are not
audited (a later attempt decides); what is still queued comes from the spool (`QueueSnapshot`).

A *sending system* is who handed the message in: an operator-configured name for an address
(`account <name>`, `door <name>`, from `sender_systems`), the listener of a refusal at the door,
else the sender's domain. A *destination* is the recipient's domain. Delay = the outcome's time
minus the accept time encoded in the queue id (`spool.new_message_id`: hex milliseconds first).

Only identifiers, counts and reasons come out: never a subject or a body (the trail holds none).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

#: Door-side refusals and the pipeline's refusals (`stages/outbound.py`, `inbound.py`, `server/smtp.py`).
REFUSALS = frozenset({"refused", "refused-unverified", "auth-failed", "auth-locked", "sender-refused",
                      "partner-refused", "legacy-not-bridged", "smime-not-legacy", "cisis-left-out"})
#: Operator actions the console itself writes: not flows.
CONSOLE_PREFIX = "console-"


@dataclass(frozen=True)
class Window:
    """A chart's span: `buckets` bars of `bucket` seconds each, ending now."""

    name: str
    bucket: int
    buckets: int

    @property
    def span(self) -> int:
        return self.bucket * self.buckets


HOURS = Window("last 24 hours", 3600, 24)
DAYS = Window("last 7 days", 86400, 7)
WINDOWS = {"24h": HOURS, "7d": DAYS}


@dataclass
class Series:
    """One partner's figures over a window: counts per bucket and the delays of its deliveries."""

    name: str
    delivered: list[int]
    bounced: list[int]
    refused: list[int]
    delays: list[float] = field(default_factory=list)
    forms: dict[str, int] = field(default_factory=dict)

    @classmethod
    def empty(cls, name: str, buckets: int) -> Series:
        return cls(name, [0] * buckets, [0] * buckets, [0] * buckets)

    @property
    def total(self) -> int:
        return sum(self.delivered) + sum(self.bounced) + sum(self.refused)

    @property
    def errors(self) -> int:
        return sum(self.bounced) + sum(self.refused)

    def delay(self, q: float) -> float | None:
        """The `q` quantile (0..1) of accept→delivered delays, nearest rank; None without deliveries."""
        if not self.delays:
            return None
        ordered = sorted(self.delays)
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass(frozen=True)
class Event:
    """A refusal or a bounce, as the refusals page lists it (identifiers and the reason only)."""

    time: datetime
    kind: str  # "refused" (at the door or by the policy) or "bounced"
    decision: str
    message_id: str
    sender: str
    recipient: str
    listener: str
    client: str
    reason: str


@dataclass
class Flows:
    window: Window
    end: datetime
    sources: dict[str, Series]
    destinations: dict[str, Series]

    def bucket_starts(self) -> list[datetime]:
        start = self.end.timestamp() - self.window.span
        return [datetime.fromtimestamp(start + i * self.window.bucket, UTC) for i in range(self.window.buckets)]


@functools.lru_cache(maxsize=4096)
def _epoch(text: str) -> float | None:
    """Why by hand and cached: `strptime` cost ~13 µs a record, most of a 100k-record page;
    records written in the same second share one string."""
    if len(text) != 20 or text[4] != "-" or text[7] != "-" or text[10] != "T" or text[19] != "Z":
        return None
    try:
        fields = (int(text[0:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]), int(text[14:16]),
                  int(text[17:19]))
        return datetime(*fields, tzinfo=UTC).timestamp()
    except ValueError:
        return None


def parse_time(text: Any) -> datetime | None:
    """The trail's `time` ("2026-12-03T21:56:36Z"), or None for anything else."""
    epoch = _epoch(text) if isinstance(text, str) else None
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def accepted_at(queue_id: str) -> datetime | None:
    """The accept time in a queue id (11 hex digits of milliseconds), or None."""
    head = queue_id[:11]
    if len(head) != 11:
        return None
    try:
        ms = int(head, 16)
    except ValueError:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC)


def domain_of(address: str) -> str:
    _, at, domain = address.rpartition("@")
    return domain.lower() if at and domain else "(none)"


def sending_system(record: Mapping[str, Any], systems: Mapping[str, str]) -> str:
    """Who handed the message in (see the module docstring); `systems` maps addresses (lowercase)
    and `@domain` patterns to names."""
    sender = str(record.get("sender") or "").lower()
    if sender in systems:
        return systems[sender]
    identity = str(record.get("identity") or "")
    if identity and identity != "unknown":
        return systems.get(identity.lower(), f"account {identity}")
    domain = domain_of(sender) if sender else ""
    if domain and f"@{domain}" in systems:
        return systems[f"@{domain}"]
    if record.get("listener") and not sender:
        return f"listener {record['listener']}"
    return f"@{domain}" if domain and domain != "(none)" else "(null sender)"


def classify(record: Mapping[str, Any]) -> str | None:
    """"delivered", "bounced", "refused", "form" (a protection decision) or None (not a flow)."""
    decision = str(record.get("decision") or "")
    if not decision or decision.startswith(CONSOLE_PREFIX):
        return None
    if decision == "outcome":
        state = str(record.get("outcome") or "").split(" ", 1)[0]
        return state if state in ("delivered", "bounced") else None
    if decision in REFUSALS or decision.endswith("-refused"):
        return "refused"
    return "form"


def aggregate(records: Iterable[Mapping[str, Any]], *, end: datetime, window: Window,
              systems: Mapping[str, str] = {}) -> Flows:  # noqa: B006 - read only
    """Count each record of the window into its sending system's and destination's series."""
    stop = end.timestamp()
    start = stop - window.span
    sources: dict[str, Series] = {}
    destinations: dict[str, Series] = {}
    for record in records:
        text = record.get("time")
        when = _epoch(text) if isinstance(text, str) else None
        if when is None or not start <= when < stop + 1:
            continue
        kind = classify(record)
        if kind is None:
            continue
        index = min(window.buckets - 1, int((when - start) // window.bucket))
        recipient = str(record.get("recipient") or "")
        pairs = [(sources, sending_system(record, systems))]
        if recipient:
            pairs.append((destinations, domain_of(recipient)))
        delay = _delay(record, when) if kind == "delivered" else None
        for table, name in pairs:
            series = table.get(name) or table.setdefault(name, Series.empty(name, window.buckets))
            if kind == "form":
                decision = str(record["decision"])
                series.forms[decision] = series.forms.get(decision, 0) + 1
                continue
            getattr(series, kind)[index] += 1
            if delay is not None:
                series.delays.append(delay)
    return Flows(window, end, sources, destinations)


def _delay(record: Mapping[str, Any], when: float) -> float | None:
    accepted = accepted_at(str(record.get("message_id") or ""))
    return None if accepted is None else max(0.0, when - accepted.timestamp())


def recent_problems(records: Iterable[Mapping[str, Any]], *, limit: int = 200,
                    since: datetime | None = None) -> list[Event]:
    """The latest refusals and bounces, newest first."""
    found: list[Event] = []
    for record in _newest_first(records):
        if len(found) >= limit:
            break
        kind = classify(record)
        if kind not in ("refused", "bounced"):
            continue
        when = parse_time(record.get("time"))
        if when is None or (since is not None and when < since):
            continue
        reason = str(record.get("reason") or "")
        if kind == "bounced":
            reason = str(record.get("outcome") or "").partition(" ")[2] or reason
        found.append(Event(time=when, kind=kind, decision=str(record.get("decision") or ""),
                           message_id=str(record.get("message_id") or ""), sender=str(record.get("sender") or ""),
                           recipient=str(record.get("recipient") or ""), listener=str(record.get("listener") or ""),
                           client=str(record.get("client") or ""), reason=reason))
    found.sort(key=lambda e: e.time, reverse=True)
    return found[:limit]


def _newest_first(records: Iterable[Mapping[str, Any]]) -> Iterable[Mapping[str, Any]]:
    """The trail is appended in time order: read from its end, stop at the limit."""
    return reversed(records) if isinstance(records, Sequence) else reversed(list(records))


@dataclass(frozen=True)
class Queued:
    """What still waits, per partner, from the spool: pending recipients and the oldest's age."""

    name: str
    recipients: int
    deferred: int
    oldest: float  # seconds


def queued_by(messages: Iterable[Any], *, now: float, systems: Mapping[str, str] = {},  # noqa: B006
              by: str = "destination") -> list[Queued]:
    """Pending recipients of `spool.QueuedMessage`s grouped by destination domain or sending system."""
    table: dict[str, list[float]] = {}
    deferred: dict[str, int] = {}
    for msg in messages:
        for rcpt in msg.recipients:
            if rcpt.state.value not in ("queued", "deferred"):
                continue
            if by == "destination":
                name = domain_of(rcpt.address)
            else:
                name = sending_system({"sender": msg.sender, "identity": msg.auth_user or "",
                                       "listener": msg.listener}, systems)
            table.setdefault(name, []).append(now - msg.received)
            deferred[name] = deferred.get(name, 0) + (rcpt.state.value == "deferred")
    return sorted((Queued(name, len(ages), deferred[name], max(ages)) for name, ages in table.items()),
                  key=lambda q: (-q.recipients, q.name))


@dataclass(frozen=True)
class Outcome:
    """One final outcome (delivered or bounced) as the flows page lists it."""

    time: datetime
    state: str
    status: str
    message_id: str
    system: str
    recipient: str
    next_hop: str
    delay: float | None


def recent_outcomes(records: Iterable[Mapping[str, Any]], *, limit: int = 50,
                    systems: Mapping[str, str] = {}) -> list[Outcome]:  # noqa: B006 - read only
    """The latest final outcomes, newest first, with their accept→outcome delay."""
    found: list[Outcome] = []
    for record in _newest_first(records):
        if len(found) >= limit:
            break
        kind = classify(record)
        when = parse_time(record.get("time"))
        if kind not in ("delivered", "bounced") or when is None:
            continue
        msg_id = str(record.get("message_id") or "")
        accepted = accepted_at(msg_id)
        found.append(Outcome(time=when, state=kind, status=str(record.get("outcome") or "").partition(" ")[2],
                             message_id=msg_id, system=sending_system(record, systems),
                             recipient=str(record.get("recipient") or ""), next_hop=str(record.get("next_hop") or ""),
                             delay=max(0.0, (when - accepted).total_seconds()) if accepted else None))
    found.sort(key=lambda o: o.time, reverse=True)
    return found[:limit]
