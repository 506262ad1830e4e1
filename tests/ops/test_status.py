"""`gateway.ops.status.inventory`: the console's own TLS certificate is listed when the console
is on (kind "tls", name "console"), from the embedded default's real files."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from gateway.config import GatewayConfig
from gateway.ops.status import CertificateStatus, inventory


@pytest.fixture(scope="module")
def default_config(tmp_path_factory: pytest.TempPathFactory) -> GatewayConfig:
    from gateway.config import load_default_config
    from gateway.default_setup import prepare_default_files

    base = tmp_path_factory.mktemp("default")
    prepare_default_files(base / "var" / "default")
    return load_default_config(base=base)


def _tls(config: GatewayConfig) -> dict[str, CertificateStatus]:
    return {c.name: c for c in inventory(config, tokens=False).certificates if c.kind == "tls"}


def test_the_consoles_certificate_is_listed_when_the_console_is_on(default_config: GatewayConfig) -> None:
    console = default_config.console
    assert console.enabled and console.tls_cert is not None
    tls = _tls(default_config)
    assert "console" in tls
    entry = tls["console"]
    cert = x509.load_pem_x509_certificate(Path(console.tls_cert).read_bytes())
    assert entry.problem == ""
    assert entry.not_after == cert.not_valid_after_utc
    assert entry.serial == format(cert.serial_number, "x")
    assert (entry.days_left(datetime.now(UTC)) or 0) > 0
    # the listeners' certificates are still there, each under its listener's name
    assert {listener.name for listener in default_config.listeners if listener.tls_cert} <= set(tls)


def test_no_console_entry_when_the_console_is_off(default_config: GatewayConfig) -> None:
    off = dataclasses.replace(default_config, console=dataclasses.replace(default_config.console, enabled=False))
    assert "console" not in _tls(off)


def test_an_unreadable_console_certificate_is_an_entry_with_its_problem(default_config: GatewayConfig,
                                                                        tmp_path: Path) -> None:
    gone = dataclasses.replace(default_config, console=dataclasses.replace(
        default_config.console, tls_cert=tmp_path / "missing.pem"))
    entry = _tls(gone)["console"]
    assert entry.not_after is None
    assert entry.problem.startswith("FileNotFoundError")
