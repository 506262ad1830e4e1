"""Shared TEST PKI for the S/MIME tests: generated once per test run, CRLs served on loopback.

Both tests/smime and tests/interop use it, so it is a process-wide singleton (a pytest
session fixture defined in two conftest trees would be built twice). The HTTP server only
listens on 127.0.0.1 and counts requests per path (for CRL cache tests).
"""

from __future__ import annotations

import atexit
import functools
import http.server
import shutil
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from gateway.smime.testpki import TestPKI, build_test_pki


class _Handler(http.server.SimpleHTTPRequestHandler):
    counter: Counter[str] = Counter()

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        type(self).counter[self.path] += 1
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass


@dataclass(frozen=True)
class Served:
    pki: TestPKI
    base_url: str
    requests: Counter[str]


@functools.cache
def shared_pki() -> Served:
    """The TEST PKI of this test run, its CRLs served at ``<base_url>/crl/<ca>.crl``."""
    directory = Path(tempfile.mkdtemp(prefix="msgw-testpki-"))
    handler = type("Handler", (_Handler,), {"counter": Counter()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    pki = build_test_pki(directory, crl_base_url=f"{base}/crl")

    def stop() -> None:
        server.shutdown()
        server.server_close()
        shutil.rmtree(directory, ignore_errors=True)

    atexit.register(stop)
    return Served(pki, base, handler.counter)


MESSAGE = (b"From: Jean Test-Dupont <jean.test-dupont@cabinet-parc.sante.test>\r\n"
           b"To: labo@labo-tests.sante.test\r\n"
           b"Subject: TEST message\r\n"
           b"Date: Wed, 25 Nov 2026 08:00:00 +0000\r\n"
           b"Message-ID: <test-1@cabinet-parc.sante.test>\r\n"
           b"Content-Type: text/plain; charset=us-ascii\r\n"
           b"\r\n"
           b"TEST body line one.\r\n"
           b"TEST body line two.\r\n")


def message_from(address: str, body: bytes = b"TEST body.\r\n", headers: bytes = b"") -> bytes:
    """A small TEST message from `address`."""
    return (f"From: <{address}>\r\nTo: <labo@labo-tests.sante.test>\r\nSubject: TEST\r\n".encode()
            + headers + b"Content-Type: text/plain; charset=us-ascii\r\n\r\n" + body)


def trust_toml(pki: TestPKI) -> str:
    """The `[trust]` table of a gateway config trusting the TEST PKI (its CRL files, no fetching)."""
    crls = ", ".join(f'"{p}"' for p in pki.crl_paths)
    return f'[trust]\nanchors = "{pki.trust_dir}"\ncrl_files = [{crls}]\nfetch_crls = false\n'


def key_toml(name: str, entry, *, chain: bool = True) -> str:
    """A `[keys.<name>]` table for a TEST PKI entry (a soft key file and its certificate)."""
    text = f'[keys.{name}]\nref = "{entry.key_path}"\ncert = "{entry.cert_path}"\n'
    return text + (f'chain = "{entry.chain_path}"\n' if chain else "")
