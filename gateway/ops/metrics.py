"""Prometheus metrics of the gateway: every metric, its labels, and the small typed functions the
doors, the runner and delivery call (`accepted`, `refused`, `outcomes`, `intake_document`,
`mllp_ack`).

**No health content in a label, ever.** Labels are listener and door names, forms, outcomes,
enhanced status codes, reason *codes* (one word chosen by our code), payload formats and the
recipient's *domain* — never a local part, a subject, a body, a name, a file name or a reply
text. Cardinality is bounded: every value goes through a whitelist regex (else ``other``), and a
process labels at most `DOMAIN_LIMIT` distinct domains (then ``other``). A domain is labelled only
where the gateway chose to serve it (a local domain, or a relay right of an authenticated client
or a partner network); a relay refusal is counted with the domain ``-``, since an unauthenticated
client picks it.

Worker processes (`gateway.workers`): counters must add up across workers, so with several
workers the master sets ``PROMETHEUS_MULTIPROC_DIR`` (`prepare_worker_metrics`, a folder under
the state dir emptied at each start) before any worker imports this module, and
prometheus_client's multiprocess mode writes each process's values to its own files; worker 0
serves them all (`gateway.ops.httpd`) through `MultiProcessCollector`. A single process keeps its
values in memory (`_OWN`). Gauges that describe the shared state (queue size, age of the oldest
message, certificates, CRLs, tokens, listeners) are never per-process values: `StateCollector`
computes them at scrape time, from the queue store's `queue_stats()` (SQLite or the shared
PostgreSQL) and the cached inventory.

Several nodes (issue 18): every sample carries ``node`` (`gateway.storage.node_name`), added at
exposition by `_Labelled`, so the nodes' series never merge in Prometheus.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.errors import SpoolError
from gateway.logs import event

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.ops.status import Inventory

log = logging.getLogger("gateway.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Distinct domain label values one process gives before answering ``other``.
DOMAIN_LIMIT = 500
#: Label placeholders: not applicable, and a value outside the bounds.
NONE, OTHER = "-", "other"


def multiprocess() -> bool:
    """Whether the values go to ``PROMETHEUS_MULTIPROC_DIR`` (several worker processes)."""
    return bool(os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower()))


# `*_created` series would double the exposition for a timestamp nobody alerts on (and the
# multiprocess mode has none): the same series in both modes.
disable_created_metrics()

#: This process's registry when it is the only one (multiprocess mode registers nothing: the
#: values live in files and `MultiProcessCollector` reads them).
_OWN = CollectorRegistry(auto_describe=True)
_REG = None if multiprocess() else _OWN

ACCEPTED = Counter(
    "msgw_messages_accepted", "Messages accepted (250 after DATA, or queued by an intake door), by listener",
    ["listener"], registry=_REG)
RECIPIENTS = Counter(
    "msgw_recipients",
    "Recipients by outcome (accepted and refused at RCPT time; delivered, deferred, bounced after the queue), "
    "listener, destination domain and form of the copy (smime, trust-space-tls, legacy:<codec>, local, ...; "
    "'-' before the pipeline chose one)",
    ["listener", "domain", "form", "outcome"], registry=_REG)
REFUSALS = Counter(
    "msgw_refusals", "Refusals answered to an SMTP client, by listener, stage (mail, rcpt, data), enhanced status "
    "code and reason code", ["listener", "stage", "status", "reason"], registry=_REG)
QUEUE_STATUS = Counter(
    "msgw_queue_outcome_status", "Deferrals and bounces after the queue, by enhanced status code",
    ["outcome", "status"], registry=_REG)
LATENCY = Histogram(
    "msgw_delivery_latency_seconds", "Time from acceptance to delivery, per delivered recipient, by form",
    ["form"], registry=_REG,
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400, 5 * 86400))
INTAKE = Counter(
    "msgw_intake_documents", "Documents received by the intake doors, by door, payload format and outcome "
    "(queued, duplicate, refused, deferred)", ["door", "format", "outcome"], registry=_REG)
MLLP_ACKS = Counter("msgw_mllp_acks", "HL7 acknowledgments the MLLP listener answered, by code (AA, AE, AR)",
                    ["code"], registry=_REG)

# -- labels ------------------------------------------------------------------------------------------

_NAME = re.compile(r"[a-z0-9][a-z0-9._:+-]{0,62}")
_DOMAIN = re.compile(r"[a-z0-9]([a-z0-9-]{0,62}\.)*[a-z0-9-]{1,63}\.?")
_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_REPLY = re.compile(r"(\d{3})(?:[ -]([245]\.\d{1,3}\.\d{1,3}))?")
_domains: set[str] = set()
_domains_lock = threading.Lock()


def name_label(value: str | None) -> str:
    """A name our code or the operator's configuration chose (listener, door, form, reason)."""
    if not value:
        return NONE
    value = value.lower()
    return value if _NAME.fullmatch(value) else OTHER


def domain_label(address: str | None) -> str:
    """The domain of an address (never its local part), or ``other`` past the bound."""
    if not address or "@" not in address:
        return NONE
    domain = address.rpartition("@")[2].strip().lower().rstrip(">")
    if len(domain) > 253 or not _DOMAIN.fullmatch(domain):
        return OTHER
    if domain in _domains:
        return domain
    with _domains_lock:
        if domain in _domains or len(_domains) < DOMAIN_LIMIT:
            _domains.add(domain)
            return domain
    return OTHER


def status_label(text: str | None) -> str:
    """An enhanced status code ("5.7.1"), else the reply's 3 digits, else ``other``."""
    if not text:
        return NONE
    if _STATUS.fullmatch(text):
        return text
    match = _REPLY.match(text)
    if match is None:
        return OTHER
    return match.group(2) or match.group(1)


# -- what the code calls -------------------------------------------------------------------------------

def accepted(listener: str, recipients: Iterable[str]) -> None:
    """A message queued (its recipients, each by domain)."""
    name = name_label(listener)
    ACCEPTED.labels(name).inc()
    for rcpt in recipients:
        RECIPIENTS.labels(name, domain_label(rcpt), NONE, "accepted").inc()


def refused(listener: str, stage: str, reply: str, reason: str, domain: str | None = None) -> str:
    """A refusal answered to a client; returns `reply` (``return metrics.refused(..., reply, ...)``).

    `domain`: the recipient's domain at RCPT, only where the gateway would serve it (see the
    module docstring); the recipient is then counted as refused too."""
    name = name_label(listener)
    REFUSALS.labels(name, stage, status_label(reply), name_label(reason)).inc()
    if stage == "rcpt":
        RECIPIENTS.labels(name, domain_label("@" + domain) if domain else NONE, NONE, "refused").inc()
    return reply


#: What a failed AUTH is answered (aiosmtpd's reply after a failed mechanism; RFC 4954 §6).
AUTH_FAILED_REPLY = "535 5.7.8 Authentication credentials invalid"


def auth_failed(listener: str, mechanism: str, *, locked: bool = False) -> None:
    """A failed AUTH attempt (wrong password, refused card or token), by mechanism: counted as a
    refusal at stage ``auth``; ``<mechanism>-lockout`` when this failure started a lockout.
    Never the login name (a guessed name may be anything, even a patient's)."""
    reason = mechanism.lower() + ("-lockout" if locked else "")
    REFUSALS.labels(name_label(listener), "auth", status_label(AUTH_FAILED_REPLY), name_label(reason)).inc()


def auth_refused(listener: str, reply: str, reason: str) -> str:
    """An AUTH answered with a refusal of its own (locked out: 454); returns `reply`."""
    REFUSALS.labels(name_label(listener), "auth", status_label(reply), name_label(reason)).inc()
    return reply


_STATES = {"delivered": "delivered", "deferred": "deferred", "bounced": "bounced"}


def outcomes(msg: Any, written: Iterable[Any], now: float | None = None) -> None:
    """Outcomes recorded for `msg` (a `QueuedMessage`), by the runner or delivery: each counted
    with the form of the copy its recipient had (``-``: refused before any copy)."""
    now = time.time() if now is None else now
    forms = {c.id: c.form for c in getattr(msg, "copies", ())}
    rcpts = {r.id: r.copy_id for r in getattr(msg, "recipients", ())}
    listener = name_label(msg.listener)
    for o in written:
        state = _STATES.get(getattr(o.state, "value", str(o.state)))
        if state is None:
            continue
        copy_id = rcpts.get(o.rcpt_id)
        form = name_label(forms.get(copy_id)) if copy_id is not None else NONE
        _child(RECIPIENTS, (listener, domain_label(o.address), form, state)).inc()
        if state == "delivered":
            _child(LATENCY, (form,)).observe(max(0.0, now - msg.received))
        else:
            _child(QUEUE_STATUS, (state, status_label(o.status))).inc()


#: The children of `outcomes`' metrics by label values, so that a delivery does not pay
#: `.labels()` (validation, a lock, a tuple of str) per counter. Bounded as the label values
#: are (`DOMAIN_LIMIT` domains, then ``other``), and emptied past `_CHILDREN_LIMIT` anyway.
_children: dict[tuple[object, tuple[str, ...]], Any] = {}
_CHILDREN_LIMIT = 10_000


def _child(metric: Any, values: tuple[str, ...]) -> Any:
    """`metric.labels(*values)`, remembered. A child that its metric no longer has (a
    `remove` or `clear`) is asked for again, so the counts always land in the exposition."""
    key = (metric, values)
    child = _children.get(key)
    if child is None or metric._metrics.get(values) is not child:
        if len(_children) >= _CHILDREN_LIMIT:
            _children.clear()
        child = _children[key] = metric.labels(*values)
    return child


def intake_document(door: str, fmt: str | None, outcome: str) -> None:
    INTAKE.labels(name_label(door), name_label(fmt) if fmt else "unknown", outcome).inc()


def mllp_ack(code: str) -> None:
    MLLP_ACKS.labels(code if code in ("AA", "AE", "AR", "CA", "CE", "CR") else OTHER).inc()


# -- worker processes ----------------------------------------------------------------------------------

def worker_metrics_dir(config: GatewayConfig) -> Path:
    return config.state_dir / "metrics"


def prepare_worker_metrics(config: GatewayConfig) -> Path:
    """The master, before it starts the workers: an empty folder for their values, named in the
    environment they inherit (a restarted worker adds its files; the old ones keep their counts)."""
    folder = worker_metrics_dir(config)
    if folder.is_dir():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, mode=0o700)
    os.environ[MULTIPROC_ENV] = str(folder)
    return folder


# -- what is computed at scrape time -------------------------------------------------------------------

class QueueStats(Protocol):
    """What `QueueStore.queue_stats()` answers (`gateway.spool.store.QueueStats`), as read here:
    the metrics sit below the queue and never import it (tests/unit/test_architecture.py)."""

    recipients: dict[tuple[str, str], int]
    messages: int
    oldest: float | None
    quarantined: int


def queue_stats(spool: Any) -> QueueStats | None:
    """The queue as it is now, for every worker (and, on a shared store, every node) at once:
    the store's own `queue_stats()` (`QueueStore`): the SQLite spool reads through a read-only
    connection of its own (a scrape never takes the spool's lock, never delays a group commit),
    PostgreSQL answers for the whole shared queue. None (the gauges left out) when it cannot be
    read now, or for an object that is no queue store."""
    own = getattr(spool, "queue_stats", None)
    if not callable(own):
        return None
    try:
        result: QueueStats = own()
    except SpoolError as exc:
        event(log, "metrics-queue-unreadable", logging.WARNING, reason=exc.code)
        return None
    return result


class InventoryCache:
    """`gateway.ops.status.inventory(config)`, reused for `interval` seconds: it reads files and
    asks the tokens (blocking: call `get` from a thread, never from the event loop)."""

    def __init__(self, config: GatewayConfig, interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._value: Inventory | None = None
        self._taken = 0.0

    def get(self) -> Inventory:
        from gateway.ops.status import inventory

        with self._lock:
            if self._value is None or self.clock() - self._taken >= self.interval:
                self._value = inventory(self.config)
                self._taken = self.clock()
            return self._value


class StateCollector:
    """Gauges computed at scrape time from shared state (see the module docstring)."""

    def __init__(self, spool: Any, inventory: InventoryCache | None = None,
                 listeners: Callable[[], dict[str, bool]] | None = None) -> None:
        self.spool = spool
        self.inventory = inventory
        self.listeners = listeners

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        yield from self._queue(now)
        if self.inventory is not None:
            yield from inventory_metrics(self.inventory.get(), datetime.now(UTC))
        if self.listeners is not None:
            up = GaugeMetricFamily("msgw_listener_up", "1 while the listener accepts connections (in the "
                                   "process serving the metrics)", labels=["listener"])
            for name, ok in sorted(self.listeners().items()):
                up.add_metric([name_label(name)], 1.0 if ok else 0.0)
            yield up

    def _queue(self, now: float) -> Iterator[Metric]:
        stats = queue_stats(self.spool)
        if stats is None:
            return
        rcpts = GaugeMetricFamily("msgw_queue_recipients", "Pending recipients in the queue, by state (queued, "
                                  "deferred) and stage (received: to prepare; prepared: to deliver)",
                                  labels=["state", "stage"])
        for state in ("queued", "deferred"):
            for stage in ("received", "prepared"):
                rcpts.add_metric([state, stage], float(stats.recipients.get((state, stage), 0)))
        yield rcpts
        yield GaugeMetricFamily("msgw_queue_messages", "Messages in the queue with a pending recipient",
                                value=float(stats.messages))
        yield GaugeMetricFamily("msgw_queue_oldest_age_seconds", "Age of the oldest message with a pending "
                                "recipient (0: none)", value=max(0.0, now - stats.oldest) if stats.oldest else 0.0)
        yield GaugeMetricFamily("msgw_queue_quarantined_messages", "Messages quarantined for an operator",
                                value=float(stats.quarantined))


def inventory_metrics(inv: Inventory, now: datetime) -> Iterator[Metric]:
    """Days left on each certificate, ages of the CRLs and of the trust-space list, token state."""
    days = GaugeMetricFamily("msgw_certificate_days_left", "Days until the certificate expires (negative: "
                             "expired), by kind (key, anchor, tls) and name", labels=["kind", "name"])
    unreadable = GaugeMetricFamily("msgw_inventory_unreadable", "1 for a certificate, CRL or list that could "
                                   "not be read", labels=["kind", "name"])
    for cert in inv.certificates:
        left = cert.days_left(now)
        if left is None:
            unreadable.add_metric([cert.kind, _file_label(cert.name)], 1.0)
        else:
            days.add_metric([cert.kind, _file_label(cert.name)], round(left, 3))
    crl_age = GaugeMetricFamily("msgw_crl_age_seconds", "Seconds since the CRL's thisUpdate", labels=["name"])
    crl_next = GaugeMetricFamily("msgw_crl_next_update_seconds", "Seconds until the CRL's nextUpdate "
                                 "(negative: stale)", labels=["name"])
    space = GaugeMetricFamily("msgw_trust_space_list_age_seconds", "Seconds since the MSSanté trust-space list "
                              "was last refreshed (its file's modification time)", labels=["name"])
    for fresh in inv.freshness:
        name = _file_label(fresh.name)
        age = fresh.age_seconds(now)
        if age is None:
            unreadable.add_metric([fresh.kind, name], 1.0)
        elif fresh.kind == "crl":
            crl_age.add_metric([name], round(age, 1))
            if fresh.next_update is not None:
                crl_next.add_metric([name], round((fresh.next_update - now).total_seconds(), 1))
        else:
            space.add_metric([name], round(age, 1))
    tokens = GaugeMetricFamily("msgw_token_present", "1 when the PKCS#11 token of the key is in its slot, "
                               "0 when it is not", labels=["key"])
    for token in inv.tokens:
        if token.present is not None:
            tokens.add_metric([_file_label(token.key)], 1.0 if token.present else 0.0)
    yield from (days, unreadable, crl_age, crl_next, space, tokens)
    yield GaugeMetricFamily("msgw_inventory_age_seconds", "Age of the inventory the gauges above come from",
                            value=round(max(0.0, (now - inv.taken_at).total_seconds()), 1))


def _file_label(value: str) -> str:
    """A configured name or a file name of the operator's trust folder, bounded in length."""
    cleaned = re.sub(r"[^A-Za-z0-9._:#+-]", "_", value)[:100]
    return cleaned or NONE


class _Counters:
    """This process's own counters (single-process mode)."""

    def collect(self) -> Iterator[Metric]:
        yield from _OWN.collect()


class _Labelled:
    """Every sample of the collectors given, with ``node=<name>`` added (issue 18: several nodes
    scraped into one Prometheus must not add up into one series). Added at exposition, not on
    each `Counter`: the call sites and the workers' multiprocess files stay as they are, and no
    metric can be forgotten. The queue gauges on a shared store describe the whole shared queue
    (every node reports the same figure under its own label: take ``max by`` it, not ``sum``)."""

    def __init__(self, node: str, *collectors: Any) -> None:
        self.node = node
        self.collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for collector in self.collectors:
            for family in collector.collect():
                out = Metric(family.name, family.documentation, family.type, family.unit)
                for sample in family.samples:
                    out.add_sample(sample.name, {**sample.labels, "node": self.node}, sample.value,
                                   sample.timestamp, sample.exemplar)
                yield out


def exposition_registry(state: StateCollector | None, node: str | None = None) -> CollectorRegistry:
    """What `/metrics` shows: every process's counters and the scrape-time gauges; with `node`,
    every sample labelled with it (`gateway.storage.node_name`)."""
    registry = CollectorRegistry(auto_describe=False)
    collectors: list[Any] = [MultiProcessCollector(None) if multiprocess() else _Counters()]
    if state is not None:
        collectors.append(state)
    if node is None:
        for collector in collectors:
            registry.register(collector)
    else:
        registry.register(_Labelled(name_label(node) if node else NONE, *collectors))  # type: ignore[arg-type]
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition (blocking: reads the workers' files, the spool, the inventory)."""
    return generate_latest(registry)
