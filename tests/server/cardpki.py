"""Test support for card login and client-certificate revocation (issue 17): a TEST PKI whose CRLs
are served over HTTP on loopback and whose card certificates name an OCSP responder answered by
``openssl ocsp`` (an independent peer, run as a subprocess)."""

from __future__ import annotations

import contextlib
import functools
import http.server
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from gateway.smime.testpki import TestPKI, build_test_pki, write_ocsp_index
from tests.conftest import free_port, require_tool


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass


@dataclass(frozen=True)
class CardPki:
    pki: TestPKI
    crl_port: int
    ocsp_port: int

    @property
    def ocsp_url(self) -> str:
        return f"http://127.0.0.1:{self.ocsp_port}/ocsp"


@contextlib.contextmanager
def card_pki(directory: Path) -> Iterator[CardPki]:
    """A TEST PKI in `directory`, its ``crl/`` served on loopback while the context lasts. The
    OCSP port is chosen but nothing answers on it until `ocsp_responder` runs."""
    directory.mkdir(parents=True, exist_ok=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    ocsp_port = free_port()
    try:
        pki = build_test_pki(directory, crl_base_url=f"http://127.0.0.1:{server.server_port}/crl",
                             ocsp_url=f"http://127.0.0.1:{ocsp_port}/ocsp")
        yield CardPki(pki, server.server_port, ocsp_port)
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def ocsp_responder(cards: CardPki, good: list[x509.Certificate], revoked: list[x509.Certificate]) -> Iterator[None]:
    """``openssl ocsp`` answering for the persons CA on `cards.ocsp_port`, signed by its delegated
    responder certificate (``ocsp_signer``), with responses valid 5 minutes."""
    openssl = require_tool("openssl")
    pki = cards.pki
    index = write_ocsp_index(pki.directory / "ocsp-index.txt", good, revoked)
    signer = pki["ocsp_signer"]
    proc = subprocess.Popen(  # noqa: S603 - fixed arguments
        [openssl, "ocsp", "-index", str(index), "-port", str(cards.ocsp_port), "-rsigner",
         str(signer.cert_path), "-rkey", str(signer.key_path), "-CA", str(pki.persons_ca.cert_path),
         "-nmin", "5", "-ignore_err"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # Ready when it says so: a probe connection would hold this one-at-a-time responder.
        assert proc.stdout is not None
        seen = b""
        while b"ACCEPT" not in seen and b"waiting for OCSP" not in seen:
            line = proc.stdout.readline()
            if not line:
                raise AssertionError(f"openssl ocsp did not start: {seen[-500:]!r}")
            seen += line
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep its pipe drained
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
