"""Issue 14 end to end over real sockets: a city doctor's S/MIME-signed and encrypted letter with an
IHE_XDM.ZIP (made by msgw's own engine with the TEST person key, encrypted to the TEST organisation
certificate) reaches the hospital's application mailbox on the relay listener; msgw decrypts and
verifies it, sends the MDM to an MLLP server standing for the DPI (AA, then AE 902, then silence),
and the integration MDNs come back to the doctor's operator (an SMTP sink), S/MIME, read with
`openssl cms` and `gateway.cisis.returns.parse_returns`. The DPI down, then up: delivered, nothing
lost, also across a kill -9 of the gateway."""

from __future__ import annotations

import asyncio
import smtplib
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.cisis.returns import Return, parse_returns
from gateway.routing.hl7 import parse_message
from gateway.smime.engine import sign_and_encrypt_message
from gateway.smime.softkeys import load_key
from gateway.smime.testpki import ORG_EMAIL, PERSON_EMAIL, TestPKI
from tests.conftest import free_port, require_tool
from tests.e2e.harness import GatewayProcess, GatewaySetup, Sink, queue_json
from tests.e2e.test_protection_flow import _protected_setup
from tests.interop.conftest_smime import openssl_cafile
from tests.lps.samples import APP, cda, mail
from tests.lps.transport_support import Dpi, ack
from tests.smime.support import shared_pki

MARKER = "Chère consœur, CR-LPS-MARKER-77"


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return shared_pki().pki


class ThreadedDpi:
    """`tests.lps.transport_support.Dpi` on its own event loop in a thread; `mode` says what it
    answers: ``AA``, ``AE`` (ERR 902) or ``silent``; `start`/`stop` bring it up and down on one port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.mode = "AA"
        self.dpi = Dpi(self._answer)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def _answer(self, mdm: bytes) -> bytes | None:
        if self.mode == "silent":
            return None
        return ack("AA")(mdm) if self.mode == "AA" else ack("AE", "902^Identifiant patient inconnu")(mdm)

    def _run(self, coro: Callable[[], object]) -> object:
        return asyncio.run_coroutine_threadsafe(coro(), self.loop).result(10)  # type: ignore[arg-type]

    def start(self) -> None:
        self._run(lambda: self.dpi.start(port=self.port))

    def stop(self) -> None:
        self._run(self.dpi.stop)

    def close(self) -> None:
        if self.dpi.server is not None and self.dpi.server.is_serving():
            self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def received_for(self, document: str) -> int:
        """How many MDMs the DPI got for this CDA unique id (TXA-12)."""
        return sum(1 for m in list(self.dpi.received) if document in parse_message(m).value(
            parse_message(m).first("TXA"), 12))


def _setup(folder: Path, pki: TestPKI, sink_port: int, dpi_port: int) -> GatewaySetup:
    setup = _protected_setup(folder, pki, sink_port)
    setup.config.write_text(setup.config.read_text() + f"""
[delivery.consumers."{ORG_EMAIL}"]
mllp = "127.0.0.1:{dpi_port}"
application = "DPI-TEST"
facility = "HOPITAL-TEST"
ack_timeout = "1s"
""")
    return setup


def _letter(pki: TestPKI, n: int) -> tuple[bytes, str]:
    """The doctor's letter number ``n`` (its own CDA), signed and encrypted; and the CDA's id."""
    plain = mail(cda(doc=str(n)), sender=PERSON_EMAIL, dnt=PERSON_EMAIL, reply_to=None, body=MARKER,
                 message_id=f"<lps-e2e-{n}@cabinet.test>")
    plain = plain.replace(f"To: {APP}".encode(), f"To: {ORG_EMAIL}".encode())
    plain = plain.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    e = pki["person_sign"]
    key = load_key(e.key_path, e.cert_path, e.chain_path)
    sealed = asyncio.run(sign_and_encrypt_message(plain, key, [pki["org_encrypt"].cert]))
    return sealed, f"1.2.250.1.999.7.1.{n}"


def _send(setup: GatewaySetup, data: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", setup.relay_port, timeout=20) as client:
        client.ehlo("mx.cabinet-parc.sante.test")
        assert client.sendmail(PERSON_EMAIL, [ORG_EMAIL], data) == {}


class Operator:
    """The doctor's side of the sink: every message to the doctor decrypted and verified with
    `openssl cms` (the independent peer), the MDNs read with `parse_returns`."""

    def __init__(self, sink: Sink, pki: TestPKI, tmp_path: Path) -> None:
        self.sink, self.pki, self.tmp = sink, pki, tmp_path
        self.openssl = require_tool("openssl")
        self.ca = openssl_cafile(pki, tmp_path)
        self._seen = 0
        self.mdns: list[Return] = []

    def _open(self, raw: bytes) -> bytes | None:
        n = self._seen
        enc, signed, out = (self.tmp / f"mdn{n}.{ext}" for ext in ("enc", "signed", "eml"))
        enc.write_bytes(raw)
        person = self.pki["person_encrypt"]
        dec = subprocess.run([self.openssl, "cms", "-decrypt", "-in", str(enc), "-recip", str(person.cert_path),
                              "-inkey", str(person.key_path), "-out", str(signed)], capture_output=True)
        if dec.returncode != 0:
            return None  # not for the doctor's key (a DSN is not encrypted)
        ver = subprocess.run([self.openssl, "cms", "-verify", "-in", str(signed), "-CAfile", str(self.ca),
                              "-crl_check_all", "-purpose", "any", "-out", str(out)], capture_output=True)
        assert ver.returncode == 0, ver.stderr
        return out.read_bytes()

    def wait_mdns(self, count: int, timeout: float = 40.0) -> list[Return]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.mdns) < count:
            got = self.sink.handler.snapshot()
            for received in got[self._seen:]:
                assert MARKER.encode() not in received.data  # protected on the way
                inner = self._open(received.data) if b"pkcs7-mime" in received.data[:4000] else None
                self._seen += 1
                if inner is not None and b"disposition-notification" in inner:
                    self.mdns.extend(parse_returns(inner))
            time.sleep(0.2)
        assert len(self.mdns) >= count, f"{len(self.mdns)} MDN(s) of {count}"
        return self.mdns


def _wait(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def _pending(setup: GatewaySetup) -> list[dict]:
    return [r for m in queue_json(setup) for r in m["recipients"] if r["address"] == ORG_EMAIL
            and r["state"] in ("queued", "deferred")]


def test_aa_ae_silence_then_back(pki: TestPKI, tmp_path: Path) -> None:
    sink = Sink().start()
    dpi = ThreadedDpi(free_port())
    dpi.start()
    try:
        setup = _setup(tmp_path / "gw", pki, sink.port, dpi.port)
        operator = Operator(sink, pki, tmp_path)
        with GatewayProcess(setup):
            first, first_id = _letter(pki, 1)
            _send(setup, first)
            (ok,) = operator.wait_mdns(1)
            assert (ok.kind, ok.ok, ok.original_message_id, ok.recipient) == ("mdn", True, "lps-e2e-1@cabinet.test",
                                                                             ORG_EMAIL)
            assert dpi.received_for(first_id) == 1
            mdm = parse_message(dpi.dpi.received[0])
            assert mdm.value(mdm.segments[0], 9, 2) == "T02" and mdm.value(mdm.segments[0], 5) == "DPI-TEST"

            dpi.mode = "AE"
            second, _ = _letter(pki, 2)
            _send(setup, second)
            refused = operator.wait_mdns(2)[1]
            assert (refused.ok, refused.code, refused.original_message_id) == (False, "902", "lps-e2e-2@cabinet.test")

            dpi.mode = "silent"
            third, third_id = _letter(pki, 3)
            _send(setup, third)
            _wait(lambda: dpi.received_for(third_id) >= 1 and any(r["state"] == "deferred" for r in _pending(setup)))
            dpi.mode = "AA"  # back: the spool's retry delivers it
            back = operator.wait_mdns(3)[2]
            assert (back.ok, back.original_message_id) == (True, "lps-e2e-3@cabinet.test")
            assert dpi.received_for(third_id) >= 2  # sent again after the silence: at least once
            _wait(lambda: not _pending(setup))
        everything = setup.log_file.read_text() + (setup.folder / "stderr.log").read_text()
        assert MARKER not in everything and "TESTPATIENTE" not in everything
    finally:
        dpi.close()
        sink.stop()


def test_dpi_down_and_kill9_then_up_delivers(pki: TestPKI, tmp_path: Path) -> None:
    sink = Sink().start()
    dpi = ThreadedDpi(free_port())  # not started: the DPI is down
    try:
        setup = _setup(tmp_path / "gw", pki, sink.port, dpi.port)
        operator = Operator(sink, pki, tmp_path)
        gw = GatewayProcess(setup).start()
        letter, doc_id = _letter(pki, 4)
        _send(setup, letter)
        _wait(lambda: any(r["state"] == "deferred" and r["attempts"] >= 1 for r in _pending(setup)))
        gw.kill9()
        assert len(_pending(setup)) == 1  # on disk, nothing lost
        dpi.start()
        with GatewayProcess(setup):
            (ok,) = operator.wait_mdns(1)
            assert (ok.ok, ok.original_message_id) == (True, "lps-e2e-4@cabinet.test")
            assert dpi.received_for(doc_id) >= 1
            _wait(lambda: not _pending(setup))
    finally:
        dpi.close()
        sink.stop()
