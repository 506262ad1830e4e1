"""Config checks added with the trust seams (issue 11): a trust-space-TLS destination must have
a mutual-TLS route, local mailboxes and the catch-all must be local, [legacy] listeners must
exist, [auth] limits are read."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateway.config import ConfigError, GatewayConfig, parse_config

HERE = Path(__file__)
BASE = """
[listeners.relay]
kind = "relay"
[trust]
[policy]
[policy.destinations]
"mss.test" = "trust-space-tls"
"""


def _parse(text: str) -> GatewayConfig:
    return parse_config(tomllib.loads(text), source="t.toml", base=Path("/"))


def test_trust_space_destination_without_client_certificate_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        _parse(BASE + '[delivery.routes."mss.test"]\nhost = "127.0.0.1"\ntls = "required"\n')
    assert ('policy.destinations."mss.test": trust-space-tls: delivery.routes."mss.test" presents no client '
            'certificate' in str(err.value))
    with pytest.raises(ConfigError, match="trust-space-tls: delivery does not require TLS"):
        _parse(BASE)  # no route: MX delivery with the opportunistic default and no certificate
    with pytest.raises(ConfigError, match="needs mutual TLS"):
        _parse(BASE.replace('"mss.test" = "trust-space-tls"', "") .replace("[policy]\n",
                                                                         '[policy]\ndefault = "trust-space-tls"\n'))


def test_trust_space_destination_with_mutual_tls_route_is_accepted() -> None:
    cfg = _parse(BASE + f'[delivery.routes."mss.test"]\nhost = "127.0.0.1"\ntls = "required"\n'
                 f'client_cert = "{HERE}"\nclient_key = "{HERE}"\n')
    assert cfg.delivery.route_for("mss.test") is not None
    # the delivery-wide certificate serves a route that has none of its own
    _parse(BASE + f'[delivery]\nclient_cert = "{HERE}"\nclient_key = "{HERE}"\n'
           '[delivery.routes."mss.test"]\nhost = "127.0.0.1"\ntls = "required"\n')


def test_local_mailboxes_catch_all_and_auth_limits() -> None:
    cfg = _parse('[listeners.relay]\nkind = "relay"\n[local]\ndomains = ["x.test"]\n'
                 'mailboxes = ["Dr.A@x.test"]\ncatch_all = "tri@x.test"\n'
                 '[auth]\nmax_failures = 3\nwindow = "1m"\nlockout = "1h"\n')
    assert cfg.local.mailboxes == ("dr.a@x.test",) and cfg.local.catch_all == "tri@x.test"
    assert (cfg.auth.max_failures, cfg.auth.window, cfg.auth.lockout) == (3, 60.0, 3600.0)
    with pytest.raises(ConfigError) as err:
        _parse('[listeners.relay]\nkind = "relay"\n[local]\ndomains = ["x.test"]\n'
               'mailboxes = ["a@elsewhere.test"]\ncatch_all = "nobody"\n')
    assert "local.mailboxes[0]: not an address in a local domain" in str(err.value)
    assert "local.catch_all: not an address in a local domain" in str(err.value)


def test_legacy_listeners_must_name_a_listener() -> None:
    with pytest.raises(ConfigError, match=r"legacy.listeners\[0\]: no listener named 'legacy-in'"):
        _parse('[listeners.relay]\nkind = "relay"\n[legacy]\nlisteners = ["legacy-in"]\n')
    cfg = _parse('[listeners.relay]\nkind = "relay"\n[legacy]\nlisteners = ["relay"]\n')
    assert cfg.legacy is not None and cfg.legacy.listeners == ("relay",)
