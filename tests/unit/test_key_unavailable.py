"""A key fault at processing time is the gateway's own: temporary (the message waits), alerted as
`key-unavailable` with the key's name, never a bounce. Real TEST-PKI keys and files, a real
`GatewayContext` built from a parsed config."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tomllib
from pathlib import Path

import pytest

from gateway.config import parse_config
from gateway.errors import GatewayError
from gateway.smime.keystore import KeyUnavailable
from gateway.smime.testpki import ORG_EMAIL, TestPKI
from gateway.stages.build import GatewayContext
from tests.smime.support import shared_pki


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return shared_pki().pki


def context(folder: Path, pki: TestPKI, key: str, cert: str, chain: str = "") -> GatewayContext:
    text = f"""
[listeners.relay]
kind = "relay"
port = 0

[spool]
path = "{folder / 'spool'}"

[local]
domains = ["labo-tests.sante.test"]

[keys.labo-sign]
ref = "{key}"
cert = "{cert}"
{f'chain = "{chain}"' if chain else ""}

[trust]
anchors = "{pki.trust_dir}"
fetch_crls = false

[policy]
default = "require-smime"

[policy.sign_with]
"{ORG_EMAIL}" = "labo-sign"
"""
    config = parse_config(tomllib.loads(text), source="test.toml", base=folder)
    return GatewayContext(config)


def _alerts(caplog: pytest.LogCaptureFixture) -> list[dict]:
    return [dict(r.fields, level=r.levelname) for r in caplog.records
            if r.getMessage() == "key-unavailable"]


async def test_key_file_gone_is_temporary_and_alerted(pki: TestPKI, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.policy")
    org = pki["org_sign"]
    key = tmp_path / "labo.key.pem"
    shutil.copy(org.key_path, key)
    ctx = context(tmp_path, pki, str(key), str(org.cert_path), str(org.chain_path))
    try:
        key.unlink()
        with pytest.raises(GatewayError) as raised:
            await ctx.signing_key(ORG_EMAIL)
        assert raised.value.temporary and raised.value.status.startswith("4.")
        assert "labo-sign" in str(raised.value)
        (alert,) = _alerts(caplog)
        assert alert["key"] == "labo-sign" and alert["level"] == "ERROR"
        shutil.copy(org.key_path, key)  # back: the next attempt signs
        signing = await ctx.signing_key(ORG_EMAIL)
        assert signing is not None and signing.certificate == org.cert
    finally:
        ctx.close()


async def test_missing_key_table_is_temporary(pki: TestPKI, tmp_path: Path) -> None:
    org = pki["org_sign"]
    ctx = context(tmp_path, pki, str(org.key_path), str(org.cert_path))
    ctx.config = dataclasses.replace(ctx.config, keys={})  # the table went away (a reload, a typo)
    try:
        with pytest.raises(KeyUnavailable) as raised:
            await ctx.signing_key(ORG_EMAIL)
        assert raised.value.temporary and "no [keys.labo-sign]" in str(raised.value)
    finally:
        ctx.close()


async def test_expired_signing_certificate_is_temporary(pki: TestPKI, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.policy")
    expired, renewed = pki["expired"], pki["org_sign"]
    key, cert, chain = tmp_path / "labo.key.pem", tmp_path / "labo.pem", tmp_path / "labo.chain.pem"
    for src, dst in ((expired.key_path, key), (expired.cert_path, cert), (expired.chain_path, chain)):
        shutil.copy(src, dst)
    ctx = context(tmp_path, pki, str(key), str(cert), str(chain))
    try:
        with pytest.raises(KeyUnavailable) as raised:
            await ctx.signing_key(ORG_EMAIL)
        assert raised.value.temporary and "expired on" in str(raised.value)
        assert _alerts(caplog)[0]["key"] == "labo-sign"
        # The operator installs the renewed key and certificate: the next attempt uses them.
        for src, dst in ((renewed.key_path, key), (renewed.cert_path, cert), (renewed.chain_path, chain)):
            shutil.copy(src, dst)
        signing = await ctx.signing_key(ORG_EMAIL)
        assert signing is not None and signing.certificate == renewed.cert
    finally:
        ctx.close()
