"""A real SoftHSM2 for the PKCS#11 tests: temporary SOFTHSM2_CONF, tokens made by the test.

The module is loaded once per process (python-pkcs11 caches it, and SoftHSM reads its config at
C_Initialize), so the configuration is session-wide: every token the tests need lives in one
temporary token directory. Keys and certificates come from a small CPS-shaped test PKI and
are imported with `pkcs11-tool`, as an operator would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.smime.pkcs11 import get_worker
from tests.conftest import ROOT, require_tool, unavailable
from tests.pkcs11.pki import CpsPki, Issued, make_pki

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
USER_PIN = "246810"
SO_PIN = "13579111"
CPS = "CPS-TEST"  # a doctor's card: signing key 01, encryption key 02, the CA certificate
LAB = "LAB-HSM"  # a lab HSM: organisation key 10, EC key 11
WRONG = "WRONG-PIN"  # a token the wrong-PIN test may abuse
REMOVABLE = "REMOVABLE"  # a token the removal test deletes and puts back


@dataclass
class SoftHsm:
    root: Path
    conf: Path
    tokendir: Path
    module: str
    pki: CpsPki
    env: dict[str, str] = field(default_factory=dict)

    def run(self, *args: str) -> str:
        done = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise AssertionError(f"{args[0]} failed: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    def init_token(self, label: str, pin: str = USER_PIN) -> None:
        self.run(
            "softhsm2-util", "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", SO_PIN
        )

    def delete_token(self, label: str) -> None:
        self.run("softhsm2-util", "--delete-token", "--token", label)

    def put(
        self,
        label: str,
        issued: Issued,
        key_id: str,
        obj_label: str,
        *,
        sign: bool = True,
        decrypt: bool = False,
        pin: str = USER_PIN,
    ) -> None:
        """Import a private key and its certificate under one CKA_ID."""
        name = f"{label}-{key_id}"
        key_file = self.root / f"{name}.key.der"
        cert_file = self.root / f"{name}.cert.der"
        key_file.write_bytes(issued.key_der())
        cert_file.write_bytes(issued.cert_der())
        usage = (["--usage-sign"] if sign else []) + (["--usage-decrypt"] if decrypt else [])
        base = ["pkcs11-tool", "--module", self.module, "--token-label", label, "--login", "--pin", pin]
        self.run(
            *base,
            "--write-object",
            str(key_file),
            "--type",
            "privkey",
            "--id",
            key_id,
            "--label",
            obj_label,
            *usage,
        )
        self.put_cert(label, issued, key_id, obj_label, pin=pin)

    def put_single_use(self, label: str, issued: Issued, key_id: str, obj_label: str, usage: str) -> None:
        """Import a key allowed only to sign or only to decrypt, and its certificate."""
        key_file = self.root / f"{label}-{key_id}.key.der"
        key_file.write_bytes(issued.key_der())
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.pkcs11.p11import",
                self.module,
                label,
                str(key_file),
                key_id,
                obj_label,
                usage,
            ],
            input=USER_PIN + "\n",
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise AssertionError(f"key import failed: {done.stderr.strip()}")
        self.put_cert(label, issued, key_id, obj_label)

    def put_cert(
        self, label: str, issued: Issued, key_id: str, obj_label: str, *, pin: str = USER_PIN
    ) -> None:
        cert_file = self.root / f"{label}-{key_id}-only.cert.der"
        cert_file.write_bytes(issued.cert_der())
        self.run(
            "pkcs11-tool",
            "--module",
            self.module,
            "--token-label",
            label,
            "--login",
            "--pin",
            pin,
            "--write-object",
            str(cert_file),
            "--type",
            "cert",
            "--id",
            key_id,
            "--label",
            obj_label,
        )

    def make_removable(self) -> None:
        self.init_token(REMOVABLE)
        self.put(REMOVABLE, self.pki.lab, "20", "removable-sign")

    def uri(self, token: str, obj: str | None = None, key_id: str | None = None) -> str:
        parts = [f"token={token}"]
        if obj:
            parts.append(f"object={obj}")
        if key_id:
            parts.append("id=" + "".join(f"%{key_id[i : i + 2]}" for i in range(0, len(key_id), 2)))
        return "pkcs11:" + ";".join(parts)


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    require_tool("softhsm2-util")
    require_tool("pkcs11-tool")
    require_tool("openssl")
    if not os.path.exists(MODULE):
        unavailable(f"SoftHSM2 module {MODULE} missing")
    root = tmp_path_factory.mktemp("softhsm")
    tokendir = root / "tokens"
    tokendir.mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokendir}\nobjectstore.backend = file\nlog.level = ERROR\n"
        "slots.removable = false\n"
    )
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    hsm = SoftHsm(
        root=root,
        conf=conf,
        tokendir=tokendir,
        module=MODULE,
        pki=make_pki(),
        env={**os.environ, "SOFTHSM2_CONF": str(conf)},
    )
    hsm.pki.write(root)
    hsm.init_token(CPS)
    hsm.put_single_use(CPS, hsm.pki.sign, "01", "Signature", "sign")
    hsm.put_single_use(CPS, hsm.pki.encrypt, "02", "Chiffrement", "decrypt")
    hsm.put_cert(CPS, hsm.pki.intermediate, "ca01", "AC IGC-SANTE TEST")
    hsm.init_token(LAB)
    hsm.put(LAB, hsm.pki.lab, "10", "lab-sign", sign=True, decrypt=True)
    hsm.put(LAB, hsm.pki.ec_sign, "11", "ec-sign", sign=True)
    hsm.init_token(WRONG)
    hsm.put(WRONG, hsm.pki.lab, "01", "wrong-pin-key")
    hsm.make_removable()
    # Tests must see re-created tokens at once: no rate limit on module re-initialisation.
    get_worker(MODULE).rescan_interval = 0.0
    yield hsm
    if previous is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = previous


@pytest.fixture(scope="session")
def pin_file(softhsm: SoftHsm) -> Path:
    path = softhsm.root / "user.pin"
    path.write_text(USER_PIN + "\n")
    path.chmod(0o600)
    return path
