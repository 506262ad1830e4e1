"""`msgw certs tokens`: what an operator runs to write the key line of the config."""

from __future__ import annotations

import json
import subprocess

from tests.conftest import MSGW
from tests.pkcs11.conftest import CPS, MODULE, USER_PIN, SoftHsm
from tests.pkcs11.pki import EMAIL, PROFESSION, RPPS


def _msgw(softhsm: SoftHsm, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MSGW, *args], env=softhsm.env, input=stdin, capture_output=True, text=True, timeout=60
    )


def test_lists_token_and_cps_identity(softhsm: SoftHsm) -> None:
    done = _msgw(softhsm, "certs", "tokens", "--module", MODULE)
    assert done.returncode == 0, done.stderr
    assert f"token {CPS!r}" in done.stdout
    assert f"rpps: {RPPS}" in done.stdout
    assert f"profession: {PROFESSION}" in done.stdout
    assert EMAIL in done.stdout
    assert f'ref = "pkcs11:token={CPS};id=%01"' in done.stdout


def test_json_with_login_lists_keys_and_uris(softhsm: SoftHsm) -> None:
    done = _msgw(
        softhsm, "tokens", "--module", MODULE, "--token", CPS, "--pin-stdin", "--json", stdin=USER_PIN + "\n"
    )
    assert done.returncode == 0, done.stderr
    assert USER_PIN not in done.stdout + done.stderr
    report = json.loads(done.stdout)
    token = next(s for s in report["slots"] if s["label"] == CPS)
    assert token["logged_in"] is True
    assert {k["label"] for k in token["keys"]} == {"Signature", "Chiffrement"}
    sign = next(c for c in token["certificates"] if c["id"] == "01")
    assert sign["rpps"] == RPPS and sign["profession"] == PROFESSION and EMAIL in sign["emails"]
    assert sign["uri"] == f"pkcs11:token={CPS};object=Signature;id=%01"
    assert sign["has_private_key"] is True


def test_pin_needs_a_token_and_bad_module_is_usage_error(softhsm: SoftHsm) -> None:
    done = _msgw(softhsm, "certs", "tokens", "--module", MODULE, "--pin-stdin", stdin=USER_PIN + "\n")
    assert done.returncode == 2 and "--token" in done.stderr
    done = _msgw(softhsm, "certs", "tokens", "--module", "/nonexistent/libnothing.so")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
