"""Issue 12's acceptance test: a message deferred three times is signed once.

The gateway runs in this process (listeners, spool, runner, delivery: `gateway.app.Gateway`),
signs with the TEST lab's organisation key held on a SoftHSM2 token, and delivers to a real
aiosmtpd next hop that answers 451 at the end of DATA three times, then 250. Counted: the
signatures the token made with that key, and the decision records of the audit trail. The
copy is prepared once, so every attempt re-sends the very same bytes.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from gateway.app import Gateway
from gateway.audit import AuditTrail, audit_path
from gateway.config import load_config
from gateway.server.passwords import hash_password
from gateway.smime.testpki import ORG_EMAIL, PERSON_EMAIL
from tests.e2e.harness import Sink, SinkHandler, msgw, write_config
from tests.pkcs11.conftest import MODULE, SoftHsm
from tests.smime.support import shared_pki, trust_toml

TOKEN = "LABO-ONCE"
PASSWORD = "lab password for the signed-once test"
BUSY = 3


class _TestPkiEntry:
    """A TEST PKI key and certificate in the shape `SoftHsm.put_single_use` imports."""

    def __init__(self, entry) -> None:
        self.entry = entry

    def key_der(self) -> bytes:
        key = serialization.load_pem_private_key(self.entry.key_path.read_bytes(), None)
        return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    def cert_der(self) -> bytes:
        return self.entry.cert.public_bytes(serialization.Encoding.DER)


@dataclass
class _BusyThenOk(SinkHandler):
    """451 at the end of DATA for the first `busy` transactions, then 250; keeps every copy offered."""

    busy: int = BUSY
    offered: list[bytes] = field(default_factory=list)

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.offered.append(envelope.original_content)
            refuse = len(self.offered) <= self.busy
        if refuse:
            return "451 4.3.0 mailbox busy, try again later"
        return await super().handle_DATA(server, session, envelope)


def _setup(folder: Path, softhsm: SoftHsm, pin_file: Path, sink_port: int):
    pki = shared_pki().pki
    org = pki["org_sign"]
    softhsm.init_token(TOKEN)
    softhsm.put_single_use(TOKEN, _TestPkiEntry(org), "01", "labo-signature", "sign")
    extra = f"""
[accounts."{ORG_EMAIL}"]
password_hash = "{hash_password(PASSWORD)}"

[keys.labo-sign]
ref = "pkcs11:token={TOKEN};object=labo-signature"
module = "{MODULE}"
pin_file = "{pin_file}"
usage = "sign"
cert = "{org.cert_path}"
chain = "{org.chain_path}"

{trust_toml(pki)}
[policy]
default = "require-smime"
neutral_subject = "Message sécurisé"

[policy.sign_with]
"{ORG_EMAIL}" = "labo-sign"
"""
    setup = write_config(folder, sink_port=sink_port, extra=extra, retry='["1s"]')
    person_pem = folder / "person-encrypt.pem"
    person_pem.write_bytes(pki["person_encrypt"].cert.public_bytes(serialization.Encoding.PEM))
    out = msgw("directory", "add", PERSON_EMAIL, "--capability", "smime", "--cert", str(person_pem),
               "--config", str(setup.config))
    assert out.returncode == 0, out.stderr
    return setup


def _submit(port: int) -> None:
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE  # the test listener's throw-away self-signed certificate
    message = (f"From: Labo TEST <{ORG_EMAIL}>\r\nTo: <{PERSON_EMAIL}>\r\nSubject: Résultat\r\n"
               f"Message-ID: <{time.time_ns()}@labo-tests.sante.test>\r\nMIME-Version: 1.0\r\n"
               "Content-Type: text/plain; charset=utf-8\r\n\r\nGlycémie 5,4 mmol/l\r\n").encode()
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.ehlo("lis.labo-tests.sante.test")
        client.starttls(context=tls)
        client.ehlo("lis.labo-tests.sante.test")
        client.login(ORG_EMAIL, PASSWORD)
        assert client.sendmail(ORG_EMAIL, [PERSON_EMAIL], message) == {}


async def _until(done, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_a_message_deferred_three_times_is_signed_once(softhsm: SoftHsm, pin_file: Path,
                                                             tmp_path: Path) -> None:
    handler = _BusyThenOk()
    sink = Sink(handler=handler).start()
    gateway = None
    try:
        setup = _setup(tmp_path / "gw", softhsm, pin_file, sink.port)
        config = load_config(setup.config)
        gateway = Gateway(config)
        await gateway.start()
        await asyncio.to_thread(_submit, setup.submission_port)
        await _until(lambda: len(handler.snapshot()) == 1, "the delivery after three 451 replies")
        await _until(lambda: gateway.spool.list() == [], "the queue to empty")
        assert gateway.context is not None
        token_key = gateway.context._keys["labo-sign"].key  # the TokenKey behind the configured key
        signatures = token_key.signatures
    finally:
        if gateway is not None:
            await gateway.stop()
        sink.stop()
    assert len(handler.offered) == BUSY + 1
    assert signatures == 1, f"{signatures} signatures on the token for one message deferred {BUSY} times"
    assert len(set(handler.offered)) == 1, "every attempt re-sends the same prepared bytes"
    assert b"application/pkcs7-mime" in handler.offered[0]
    records = [r for r in AuditTrail(audit_path(config)).records() if r.get("recipient") == PERSON_EMAIL]
    decisions = [r for r in records if r.get("decision") != "outcome"]
    assert len(decisions) == 1, f"decision records: {[r.get('decision') for r in decisions]}"
    assert decisions[0]["decision"].startswith("smime")
    assert [r["outcome"].split()[0] for r in records if r.get("decision") == "outcome"] == ["delivered"]
