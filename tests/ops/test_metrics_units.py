"""The parts of the metrics that need no gateway: the `[metrics]` section, the label rules (no
local part, bounded domains, status codes), the outcome counter's form label, and the inventory
gauges from a real TEST PKI (days left, CRL ages)."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import ConfigError, GatewayConfig, MetricsConfig, default_config_text, parse_config
from gateway.ops import metrics
from gateway.ops.status import CertificateStatus, FreshnessStatus, Inventory, TokenStatus
from gateway.spool import Outcome, PreparedCopy, QueuedMessage, QueuedRecipient, RecipientState

RELAY = '[listeners.relay]\nkind = "relay"\n'


def _parse(text: str) -> GatewayConfig:
    return parse_config(tomllib.loads(text + RELAY), source="t.toml", base=Path("/srv/msgw"))


def test_metrics_section_values_defaults_and_problems_with_key_paths() -> None:
    assert _parse("").metrics == MetricsConfig(enabled=False)  # no section: no new listener
    assert _parse("[metrics]\n").metrics == MetricsConfig(enabled=True, address="127.0.0.1", port=9587)
    cfg = _parse('[metrics]\naddress = "::1"\nport = 19587\ninventory_interval = "5m"\n').metrics
    assert (cfg.enabled, cfg.address, cfg.port, cfg.inventory_interval) == (True, "::1", 19587, 300.0)
    assert _parse("[metrics]\nenabled = false\n").metrics.enabled is False
    with pytest.raises(ConfigError) as err:
        _parse('[metrics]\nport = "x"\naddress = "localhost"\nenabled = "yes"\nlisten = 1\n'
               'inventory_interval = "0s"\n')
    keys = {key for _, key, _ in err.value.problems}
    assert keys == {"metrics.port", "metrics.address", "metrics.enabled", "metrics.listen",
                    "metrics.inventory_interval"}
    assert all(source == "t.toml" for source, _, _ in err.value.problems)


def test_the_embedded_default_serves_metrics_on_loopback_9587() -> None:
    data = tomllib.loads(default_config_text())
    assert data["metrics"] == {"address": "127.0.0.1", "port": 9587}


def test_domain_labels_never_carry_a_local_part_and_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_domains", set())
    monkeypatch.setattr(metrics, "DOMAIN_LIMIT", 3)
    assert metrics.domain_label("Jean.Dupont@Cabinet.Example") == "cabinet.example"
    assert metrics.domain_label("<x@b.example>") == "b.example"
    assert metrics.domain_label("no-at-sign") == "-"
    assert metrics.domain_label('"a b"@exa mple') == "other"
    assert metrics.domain_label("x@c.example") == "c.example"
    assert metrics.domain_label("x@d.example") == "other"  # past the bound
    assert metrics.domain_label("y@cabinet.example") == "cabinet.example"  # known ones keep their label


def test_status_and_name_labels() -> None:
    assert metrics.status_label("550 5.7.1 Relaying denied") == "5.7.1"
    assert metrics.status_label("552 Error: Too much mail data") == "552"
    assert metrics.status_label("4.3.0") == "4.3.0"
    assert metrics.status_label("garbage 5.7.1") == "other"
    assert metrics.name_label("Drop:LIS") == "drop:lis"
    assert metrics.name_label("un nom avec espaces") == "other"


def _message() -> QueuedMessage:
    rcpt = QueuedRecipient(id=1, message_id="m1", address="dr.secret@dest.example", state=RecipientState.QUEUED,
                           attempts=0, next_attempt=0.0, last_error=None, last_status=None, remote=None,
                           updated=0.0, dsn_sent=False, copy_id=7)
    other = QueuedRecipient(id=2, message_id="m1", address="dr.autre@dest.example", state=RecipientState.QUEUED,
                            attempts=0, next_attempt=0.0, last_error=None, last_status=None, remote=None,
                            updated=0.0, dsn_sent=False)
    return QueuedMessage(id="m1", sender="lab@lab.example", size=10, received=1000.0, expires=9e9,
                         listener="submission", client="127.0.0.1", auth_user=None, delay_notified=False,
                         crashes=0, quarantined=False, recipients=(rcpt, other),
                         copies=(PreparedCopy(7, "m1", "trust-space-tls", True, 10, "f"),))


def test_outcomes_are_counted_by_the_form_of_the_recipients_copy() -> None:
    labels = ("submission", "dest.example", "trust-space-tls", "delivered")
    before = metrics.RECIPIENTS.labels(*labels)._value.get()
    refused = metrics.RECIPIENTS.labels("submission", "dest.example", "-", "bounced")._value.get()
    latency = metrics.LATENCY.labels("trust-space-tls")._sum.get()
    metrics.outcomes(_message(), [Outcome(1, RecipientState.DELIVERED, "2.0.0", address="dr.secret@dest.example"),
                                  Outcome(2, RecipientState.BOUNCED, "5.7.1", "refused by policy",
                                          address="dr.autre@dest.example")], now=1012.5)
    assert metrics.RECIPIENTS.labels(*labels)._value.get() == before + 1
    assert metrics.RECIPIENTS.labels("submission", "dest.example", "-", "bounced")._value.get() == refused + 1
    assert metrics.LATENCY.labels("trust-space-tls")._sum.get() == latency + 12.5


def _families(inv: Inventory, now: datetime) -> dict[str, dict[tuple, float]]:
    out: dict[str, dict[tuple, float]] = {}
    for family in metrics.inventory_metrics(inv, now):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_inventory_gauges_days_left_crl_ages_tokens() -> None:
    now = datetime(2026, 12, 3, tzinfo=UTC)
    inv = Inventory(
        taken_at=now - timedelta(seconds=30),
        certificates=(CertificateStatus("key", "labo-sign", not_after=now + timedelta(days=10, hours=12)),
                      CertificateStatus("anchor", "root ca.pem", not_after=now - timedelta(days=2)),
                      CertificateStatus("tls", "relay", problem="OSError: gone")),
        freshness=(FreshnessStatus("crl", "root.crl", this_update=now - timedelta(hours=2),
                                   next_update=now + timedelta(hours=1)),
                   FreshnessStatus("trust-space-list", "domaines.csv", this_update=now - timedelta(days=1))),
        tokens=(TokenStatus("cps", "pkcs11:token=CPS", present=True),
                TokenStatus("hsm", "pkcs11:token=HSM", present=False),
                TokenStatus("unknown", "pkcs11:token=X", present=None)))
    got = _families(inv, now)
    assert got["msgw_certificate_days_left"] == {(("kind", "key"), ("name", "labo-sign")): 10.5,
                                                 (("kind", "anchor"), ("name", "root_ca.pem")): -2.0}
    assert got["msgw_inventory_unreadable"] == {(("kind", "tls"), ("name", "relay")): 1.0}
    assert got["msgw_crl_age_seconds"] == {(("name", "root.crl"),): 7200.0}
    assert got["msgw_crl_next_update_seconds"] == {(("name", "root.crl"),): 3600.0}
    assert got["msgw_trust_space_list_age_seconds"] == {(("name", "domaines.csv"),): 86400.0}
    assert got["msgw_token_present"] == {(("key", "cps"),): 1.0, (("key", "hsm"),): 0.0}
    assert got["msgw_inventory_age_seconds"] == {(): 30.0}


def test_inventory_of_a_real_test_pki_becomes_gauges(tmp_path: Path) -> None:
    from gateway.config import load_default_config
    from gateway.default_setup import prepare_default_files
    from gateway.ops.status import inventory

    prepare_default_files(tmp_path / "var" / "default")
    config = load_default_config(base=tmp_path)
    cache = metrics.InventoryCache(config, 60.0)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics.StateCollector(_NoSpool(), cache, lambda: {"relay": True}))  # type: ignore[arg-type]
    from prometheus_client import generate_latest

    text = generate_latest(registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    days = {s.labels["name"]: s.value for s in families["msgw_certificate_days_left"].samples}
    inv = inventory(config)
    assert {c.name for c in inv.certificates if c.kind == "key"} <= set(days)
    assert all(v > 0 for v in days.values())
    crls = {s.labels["name"] for s in families["msgw_crl_age_seconds"].samples}
    assert crls == {"root.crl", "persons.crl", "orgs.crl"}
    assert families["msgw_listener_up"].samples[0].value == 1


class _NoSpool:
    """A spool path with no database yet: queue gauges are left out, the rest is there."""

    path = Path("/nonexistent/spool")
