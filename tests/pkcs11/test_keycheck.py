"""Token keys in `msgw check` / `msgw serve` start-up, on a real SoftHSM2: the module loads, the
token and the object exist, checked without the PIN; `--login` logs in and uses each key once.
At processing time a token fault (PIN source gone, token absent) defers instead of bouncing."""

from __future__ import annotations

import logging
import subprocess
import tomllib
from pathlib import Path

import pytest

from gateway.config import parse_config
from gateway.smime.keystore import KeyUnavailable
from gateway.stages.build import GatewayContext
from tests.conftest import MSGW
from tests.e2e.harness import write_config
from tests.pkcs11.conftest import CPS, LAB, MODULE, USER_PIN, WRONG, SoftHsm


def _trust(softhsm: SoftHsm, folder: Path) -> Path:
    trust = folder / "trust"
    trust.mkdir(parents=True, exist_ok=True)
    (trust / "root.pem").write_bytes(softhsm.pki.root.cert_pem())
    (trust / "intermediate.pem").write_bytes(softhsm.pki.intermediate.cert_pem())
    return trust


def _secret(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def _token_key(name: str, uri: str, **extra: str | bool) -> str:
    lines = [f"[keys.{name}]", f'ref = "{uri}"', f'module = "{MODULE}"']
    for k, v in extra.items():
        lines.append(f"{k} = {'true' if v is True else repr(v).replace(chr(39), chr(34))}")
    return "\n".join(lines) + "\n\n"


def _config(tmp_path: Path, softhsm: SoftHsm, keys: str, sign_with: dict[str, str]) -> Path:
    rules = "\n".join(f'"{who}" = "{name}"' for who, name in sign_with.items())
    extra = f"""
{keys}
[trust]
anchors = "{_trust(softhsm, tmp_path)}"
fetch_crls = false

[policy]
default = "require-smime"

[policy.sign_with]
{rules}
"""
    return write_config(tmp_path / "gw", sink_port=9, extra=extra).config


def _check(softhsm: SoftHsm, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MSGW, "check", "--config", str(config), *args], env=softhsm.env, capture_output=True,
                          text=True, timeout=120)


def _line(err: str, config: Path, key: str, prefix: str = "") -> str:
    return next((x for x in err.splitlines() if x.startswith(f"{prefix}{config}: keys.{key}: ")), "")


def test_token_keys_are_probed_without_the_pin(softhsm: SoftHsm, tmp_path: Path) -> None:
    good_pin = _secret(tmp_path / "user.pin", USER_PIN)
    wrong_pin = _secret(tmp_path / "wrong.pin", "000000")
    loose_pin = _secret(tmp_path / "loose.pin", USER_PIN, 0o644)
    encrypt_cert = tmp_path / "encrypt.pem"
    encrypt_cert.write_bytes(softhsm.pki.encrypt.cert_pem())
    keys = "".join([
        _token_key("cps-sign", softhsm.uri(CPS, key_id="01"), pin_file=str(good_pin), usage="sign"),
        _token_key("lab", softhsm.uri(LAB, "lab-sign"), pin_file=str(good_pin)),
        # A wrong PIN is harmless without --login: the PIN is not used to probe.
        _token_key("wrong-pin", softhsm.uri(WRONG, "wrong-pin-key"), pin_file=str(wrong_pin)),
        _token_key("absent", softhsm.uri("NO-SUCH-CARD", key_id="01"), pin_file=str(good_pin)),
        _token_key("waiting", softhsm.uri("NO-SUCH-CARD", key_id="01"), pin_file=str(good_pin),
                   cert=str(encrypt_cert), wait_for_token=True),
        _token_key("no-object", softhsm.uri(CPS, "No such key"), pin_file=str(good_pin)),
        _token_key("other-cert", softhsm.uri(CPS, key_id="01"), pin_file=str(good_pin), cert=str(encrypt_cert),
                   usage="sign"),
        _token_key("loose-pin", softhsm.uri(LAB, "lab-sign"), pin_file=str(loose_pin)),
    ])
    keys += '[keys.no-module]\nref = "pkcs11:token=CPS-TEST;id=%01"\nmodule = "/nonexistent/libnothing.so"\n\n'
    config = _config(tmp_path, softhsm, keys, {"lis@lab.example": "cps-sign", "@other.test": "other-cert"})
    done = _check(softhsm, config)
    assert done.returncode == 2, done.stdout + done.stderr
    err = done.stderr
    assert "token not present" in _line(err, config, "absent"), err
    assert "waits for it" in _line(err, config, "waiting", "warning: "), err
    assert "no object matches" in _line(err, config, "no-object"), err
    assert "is not the one in `cert`" in _line(err, config, "other-cert"), err
    assert "readable by group or others (mode 0644)" in _line(err, config, "loose-pin"), err
    assert "does not exist" in _line(err, config, "no-module"), err
    for name in ("cps-sign", "lab", "wrong-pin"):
        assert not _line(err, config, name), err
    assert f"{config}: keys.cps-sign: OK (sign;" in done.stdout
    assert f"{config}: keys.wrong-pin: OK (decrypt, inferred" in done.stdout
    assert USER_PIN not in done.stdout + done.stderr


def test_login_uses_the_pin_and_each_key_once(softhsm: SoftHsm, tmp_path: Path) -> None:
    good_pin = _secret(tmp_path / "user.pin", USER_PIN)
    wrong_pin = _secret(tmp_path / "wrong.pin", "000000")
    keys = "".join([
        _token_key("cps-sign", softhsm.uri(CPS, key_id="01"), pin_file=str(good_pin), usage="sign"),
        _token_key("cps-decrypt", softhsm.uri(CPS, key_id="02"), pin_file=str(good_pin), usage="decrypt"),
        _token_key("wrong-pin", softhsm.uri(WRONG, "wrong-pin-key"), pin_file=str(wrong_pin)),
    ])
    config = _config(tmp_path, softhsm, keys, {"lis@lab.example": "cps-sign"})
    assert _check(softhsm, config).returncode == 0
    done = _check(softhsm, config, "--login")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "refused the PIN" in _line(done.stderr, config, "wrong-pin"), done.stderr
    assert f"{config}: keys.cps-sign: OK (sign;" in done.stdout
    assert f"{config}: keys.cps-decrypt: OK (decrypt;" in done.stdout
    assert "000000" not in done.stdout + done.stderr


def _context(tmp_path: Path, softhsm: SoftHsm, key: str) -> GatewayContext:
    text = f"""
[listeners.relay]
kind = "relay"
port = 0

[spool]
path = "{tmp_path / 'spool'}"

[local]
domains = ["lab.example"]

{key}
[trust]
anchors = "{_trust(softhsm, tmp_path)}"
fetch_crls = false

[policy]
default = "require-smime"

[policy.sign_with]
"lis@lab.example" = "token"
"""
    return GatewayContext(parse_config(tomllib.loads(text), source="test.toml", base=tmp_path))


@pytest.mark.parametrize("case", ["pin-env-unset", "token-absent"])
async def test_token_fault_at_processing_time_defers(softhsm: SoftHsm, tmp_path: Path, case: str,
                                                     caplog: pytest.LogCaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO, logger="gateway.policy")
    monkeypatch.delenv("MSGW_TEST_UNSET_PIN", raising=False)
    if case == "pin-env-unset":  # the PIN's variable is missing in the service's environment
        key = _token_key("token", softhsm.uri(LAB, "lab-sign"), pin_env="MSGW_TEST_UNSET_PIN")
    else:
        pin = _secret(tmp_path / "user.pin", USER_PIN)
        key = _token_key("token", softhsm.uri("CARD-NOT-INSERTED", key_id="01"), pin_file=str(pin))
    ctx = _context(tmp_path, softhsm, key)
    try:
        with pytest.raises(KeyUnavailable) as raised:
            await ctx.signing_key("lis@lab.example")
        assert raised.value.temporary and raised.value.status.startswith("4.")
        alerts = [r for r in caplog.records if r.getMessage() == "key-unavailable"]
        assert alerts and alerts[0].fields["key"] == "token" and alerts[0].levelname == "ERROR"
    finally:
        ctx.close()
