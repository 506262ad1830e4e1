"""Helpers for the S/MIME interop tests: a gpgsm home trusting the TEST PKI, tool runners.

gpgsm traps handled here (see ../shared/specs/python-stack.md): GNUPGHOME in a temp dir;
the TEST root trusted through trustlist.txt (``<fingerprint> S relax``);
``allow-loopback-pinentry`` for batch use; keys imported from the legacy 3DES/SHA-1 PKCS#12
with the passphrase on ``--passphrase-fd`` (``--passphrase`` alone is ignored for the
PKCS#12 import). CRL checks stay ON: gpgsm's dirmngr fetches the CRLs from the loopback
distribution points of the TEST PKI. The home is built once per test run and its agent and
dirmngr are stopped at exit.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from gateway.smime.testpki import Issued, TestPKI, legacy_p12
from tests.conftest import require_tool
from tests.smime.support import Served, shared_pki


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303 - gpgsm names keys by SHA-1


@dataclass(frozen=True)
class Gpgsm:
    exe: str
    home: Path
    passphrase: str

    def run(self, *args: str | Path, data: bytes | None = None, passphrase: bool = False,
            timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        cmd = [self.exe, "--batch", "--homedir", str(self.home)]
        if passphrase:
            cmd += ["--pinentry-mode", "loopback", "--passphrase-fd", "0"]
            data = (self.passphrase + "\n").encode()
        env = {**os.environ, "GNUPGHOME": str(self.home), "LC_ALL": "C"}
        return subprocess.run([*cmd, *map(str, args)], input=data, capture_output=True, timeout=timeout,
                              env=env)


@functools.cache
def _gpgsm_home(exe: str) -> Gpgsm:
    pki = shared_pki().pki
    home = Path(tempfile.mkdtemp(prefix="msgw-gpgsm-"))
    home.chmod(0o700)
    (home / "gpg-agent.conf").write_text("allow-loopback-pinentry\n")
    gpg = Gpgsm(exe, home, pki.password)

    def stop() -> None:
        gpgconf = shutil.which("gpgconf")
        if gpgconf:
            subprocess.run([gpgconf, "--homedir", str(home), "--kill", "all"], capture_output=True, timeout=30,
                           env={**os.environ, "GNUPGHOME": str(home)})
        shutil.rmtree(home, ignore_errors=True)

    atexit.register(stop)
    gpgconf = shutil.which("gpgconf")

    def agent(action: str) -> None:
        if gpgconf:
            subprocess.run([gpgconf, "--homedir", str(home), action, "gpg-agent"], capture_output=True, timeout=30,
                           env={**os.environ, "GNUPGHOME": str(home)})

    def run_until(ok: bytes | tuple[bytes, ...], *args: str | Path, passphrase: bool = False,
                  rewrite: Callable[[], None] | None = None) -> None:
        """Under load the agent sometimes misses the loopback passphrase or is not up yet ("possibly
        bad passphrase given", a failed import): retry with a restarted agent before giving up.
        ``rewrite`` makes the imported file again (a PKCS#12 gpgsm 2.2 cannot parse: fresh salt)."""
        wanted = (ok,) if isinstance(ok, bytes) else ok
        errors = []
        for attempt in range(5):
            r = gpg.run(*args, passphrase=passphrase)
            if r.returncode == 0 and any(w in r.stderr for w in wanted):
                return
            errors.append(r.stderr.decode(errors="replace"))
            if rewrite is not None and b"PKCS#12" in r.stderr:
                rewrite()
            agent("--kill")
            time.sleep(0.5 * (attempt + 1))
            agent("--launch")
        raise AssertionError(f"gpgsm {' '.join(map(str, args))} kept failing:\n" + "\n---\n".join(errors))

    # Start the agent before the first import: an agent started on demand by a PKCS#12 import
    # sometimes misses the loopback passphrase under load.
    agent("--launch")
    for ca in (pki.root, pki.persons_ca, pki.orgs_ca):
        run_until((b"imported: 1", b"unchanged: 1"), "--import", ca.cert_path)
    (home / "trustlist.txt").write_text(f"{fingerprint(pki.root.cert)} S relax\n")
    # Not org_sign_ec: gpgsm 2.2.40 segfaults importing an EC P-256 key from PKCS#12 (any
    # encryption), so gpgsm only *verifies* ECDSA here; it never signs with EC.
    for name in ("person_sign", "person_encrypt", "org_encrypt"):
        issued = pki[name]

        def rewrite(issued: Issued = issued) -> None:
            issued.legacy_p12_path.write_bytes(legacy_p12(issued.name, issued.key, issued.cert, issued.chain))

        run_until((b"secret keys imported: 1", b"secret keys unchanged: 1"), "--import", issued.legacy_p12_path,
                  passphrase=True, rewrite=rewrite)
    return gpg


def gpgsm_home() -> Gpgsm:
    """The shared gpgsm home (fails in CI, skips elsewhere when gpgsm is missing)."""
    return _gpgsm_home(require_tool("gpgsm"))


def served_pki() -> Served:
    return shared_pki()


def openssl_cafile(pki: TestPKI, directory: Path) -> Path:
    """Root + intermediates + every CRL (PEM) in one file for ``openssl cms -verify -crl_check_all``.

    OpenSSL 3.0 ``cms -verify`` has no ``-untrusted`` and no ``-CRLfile``: its store loads
    certificates and CRLs from -CAfile.
    """
    path = directory / "openssl-ca.pem"
    if not path.exists():
        parts = [c.cert.public_bytes(serialization.Encoding.PEM) for c in (pki.root, pki.persons_ca, pki.orgs_ca)]
        for crl_path in pki.crl_paths:
            parts.append(x509.load_der_x509_crl(crl_path.read_bytes()).public_bytes(serialization.Encoding.PEM))
        path.write_bytes(b"".join(parts))
    return path
