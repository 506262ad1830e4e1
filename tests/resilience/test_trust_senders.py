"""Trust battery: the signature follows the authenticated identity (issue 11, item 1).

A real `msgw serve` with the protection policy on and the TEST PKI: the laboratory's account
signs with the organisation key; a practice account has no key; a relay partner is known by
its client certificate. Every spoofing attempt — MAIL FROM, From:, Sender:, towards a remote
doctor or a local mailbox, from an account or from the partner — is refused (553 5.7.1) and
audited; what the legitimate lab sends leaves signed by the lab's key (shown by `openssl cms`),
what the practice account sends leaves encrypted but never with the lab's signature."""

from __future__ import annotations

import json
import smtplib
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.server.passwords import hash_password
from gateway.smime.testpki import ORG_EMAIL, PERSON_EMAIL, TestPKI
from tests.conftest import free_port, require_tool
from tests.e2e.harness import GatewayProcess, GatewaySetup, Sink, msgw, write_config
from tests.e2e.tlspki import TestCA
from tests.smime.support import key_toml, shared_pki, trust_toml

PASSWORD = "trust battery password"
DEMO = "demo@msgw.test"
PARTNER_CN = "mss.partner.example"


def _tls(ca: TestCA | None = None, cert=None) -> ssl.SSLContext:
    if ca is None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the test listener's throw-away self-signed certificate
        return ctx
    ctx = ssl.create_default_context(cafile=str(ca.ca_file))
    ctx.load_cert_chain(str(cert.cert), str(cert.key))
    return ctx


def _mail(sender_header: str, to: str, *, extra: str = "") -> bytes:
    return (f"From: {sender_header}\r\nTo: <{to}>\r\n{extra}Subject: Resultat TEST\r\n"
            f"Message-ID: <{time.time_ns()}@msgw.test>\r\nDate: Thu, 03 Dec 2026 10:00:00 +0100\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nbody\r\n").encode()


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return shared_pki().pki


def _setup(folder: Path, pki: TestPKI, sink: Sink, tls_ca: TestCA, internal_port: int) -> GatewaySetup:
    server = tls_ca.issue("localhost")
    extra = f"""
[accounts."{ORG_EMAIL}"]
password_hash = "{hash_password(PASSWORD)}"

[accounts."{DEMO}"]
password_hash = "{hash_password(PASSWORD)}"

[partners."{PARTNER_CN}"]
senders = ["@partner.example"]

{key_toml('labo-sign', pki['org_sign'])}

{trust_toml(pki)}
[policy]
default = "require-smime"

[policy.sign_with]
"{ORG_EMAIL}" = "labo-sign"
"network:internal" = "labo-sign"

# the lab's internal mail server, trusted by network, may relay only the lab's addresses
[listeners.internal]
kind = "relay"
address = "127.0.0.1"
port = {internal_port}
allowed_networks = ["127.0.0.0/8"]
senders = ["@labo-tests.sante.test"]
"""
    setup = write_config(folder, sink_port=sink.port, extra=extra)
    text = setup.config.read_text()
    text = text.replace('domains = ["msgw.test"]', 'domains = ["msgw.test", "labo-tests.sante.test"]')
    text = text.replace('tls_cert = "tls-cert.pem"\ntls_key = "tls-key.pem"\nallowed_networks = []',
                        f'tls_cert = "{server.cert}"\ntls_key = "{server.key}"\nallowed_networks = []\n'
                        f'client_ca = "{tls_ca.ca_file}"\nallowed_client_subjects = ["{PARTNER_CN}"]')
    setup.config.write_text(text)
    person = folder / "person.pem"
    person.write_bytes(pki["person_encrypt"].cert.public_bytes(serialization.Encoding.PEM))
    out = msgw("directory", "add", PERSON_EMAIL, "--capability", "smime", "--cert", str(person),
               "--config", str(setup.config))
    assert out.returncode == 0, out.stderr
    return setup


def _submit(setup: GatewaySetup, login: str, mail_from: str, rcpt: str, data: bytes) -> tuple[int, str]:
    """One message over submission; the first refusing reply (code, text) or (250, queue text)."""
    with smtplib.SMTP("127.0.0.1", setup.submission_port, timeout=20) as client:
        client.ehlo("client.msgw.test")
        client.starttls(context=_tls())
        client.ehlo("client.msgw.test")
        client.login(login, PASSWORD)
        return _transaction(client, mail_from, rcpt, data)


def _partner(setup: GatewaySetup, ca: TestCA, cert, mail_from: str, rcpt: str, data: bytes) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", setup.relay_port, timeout=20) as client:
        client.ehlo("mx.partner.example")
        client.starttls(context=_tls(ca, cert))
        client.ehlo("mx.partner.example")
        return _transaction(client, mail_from, rcpt, data)


def _internal(port: int, mail_from: str, rcpt: str, data: bytes) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.ehlo("mta.labo-tests.sante.test")
        return _transaction(client, mail_from, rcpt, data)


def _transaction(client: smtplib.SMTP, mail_from: str, rcpt: str, data: bytes) -> tuple[int, str]:
    code, text = client.mail(mail_from)
    if code != 250:
        client.rset()
        return code, text.decode()
    code, text = client.rcpt(rcpt)
    if code != 250:
        client.rset()
        return code, text.decode()
    code, text = client.data(data)
    return code, text.decode()


def _signer_of(openssl: str, pki: TestPKI, raw: bytes, tmp: Path) -> x509.Certificate | None:
    """Decrypt a copy as the doctor; the certificate that signed its content (None: not signed)."""
    enc, dec, signer = tmp / "copy.eml", tmp / "copy.dec", tmp / "signer.pem"
    enc.write_bytes(raw)
    person = pki["person_encrypt"]
    r = subprocess.run([openssl, "cms", "-decrypt", "-in", str(enc), "-recip", str(person.cert_path),
                        "-inkey", str(person.key_path), "-out", str(dec)], capture_output=True)
    assert r.returncode == 0, r.stderr
    if b"application/pkcs7-signature" not in dec.read_bytes()[:4000].lower():
        return None
    r = subprocess.run([openssl, "cms", "-verify", "-noverify", "-in", str(dec), "-signer", str(signer),
                        "-out", str(tmp / "content.eml")], capture_output=True)
    assert r.returncode == 0, r.stderr
    return x509.load_pem_x509_certificate(signer.read_bytes())


def test_spoofed_senders_are_refused_and_the_signature_follows_the_login(pki: TestPKI, tmp_path: Path,
                                                                         resilience_report) -> None:
    openssl = require_tool("openssl")
    tls_ca = TestCA(tmp_path / "tls")
    partner = tls_ca.issue(PARTNER_CN)
    sink = Sink().start()
    try:
        internal_port = free_port()
        setup = _setup(tmp_path / "gw", pki, sink, tls_ca, internal_port)
        lab_local = ORG_EMAIL  # the lab's own mailbox is local here (labo-tests.sante.test)
        attacks = {
            "account without key: MAIL FROM the lab": lambda: _submit(
                setup, DEMO, ORG_EMAIL, PERSON_EMAIL, _mail(f"<{ORG_EMAIL}>", PERSON_EMAIL)),
            "account without key: From: the lab": lambda: _submit(
                setup, DEMO, DEMO, PERSON_EMAIL, _mail(f"Laboratoire <{ORG_EMAIL}>", PERSON_EMAIL)),
            "account without key: Sender: the lab": lambda: _submit(
                setup, DEMO, DEMO, PERSON_EMAIL, _mail(f"<{DEMO}>", PERSON_EMAIL, extra=f"Sender: <{ORG_EMAIL}>\r\n")),
            "account without key: From: the lab, to a local mailbox": lambda: _submit(
                setup, DEMO, DEMO, lab_local, _mail(f"<{ORG_EMAIL}>", lab_local)),
            "account without key: From : the lab (obsolete syntax)": lambda: _submit(
                setup, DEMO, DEMO, PERSON_EMAIL, _mail(f"<{DEMO}>", PERSON_EMAIL).replace(
                    f"From: <{DEMO}>".encode(), f"From : <{ORG_EMAIL}>".encode())),
            "account without key: two From: fields": lambda: _submit(
                setup, DEMO, DEMO, PERSON_EMAIL, _mail(f"<{DEMO}>", PERSON_EMAIL, extra=f"From: <{ORG_EMAIL}>\r\n")),
            "account: From: with the lab in a second address": lambda: _submit(
                setup, DEMO, DEMO, PERSON_EMAIL, _mail(f"<{DEMO}>, <{ORG_EMAIL}>", PERSON_EMAIL)),
            "relay partner (client cert): MAIL FROM the lab": lambda: _partner(
                setup, tls_ca, partner, ORG_EMAIL, PERSON_EMAIL, _mail(f"<{ORG_EMAIL}>", PERSON_EMAIL)),
            "relay partner (client cert): From: the lab": lambda: _partner(
                setup, tls_ca, partner, "dr@partner.example", PERSON_EMAIL, _mail(f"<{ORG_EMAIL}>", PERSON_EMAIL)),
            "trusted network bound to the lab: MAIL FROM elsewhere": lambda: _internal(
                internal_port, "dr@elsewhere.test", PERSON_EMAIL, _mail("<dr@elsewhere.test>", PERSON_EMAIL)),
            "trusted network bound to the lab: From: elsewhere": lambda: _internal(
                internal_port, ORG_EMAIL, PERSON_EMAIL, _mail("<dr@elsewhere.test>", PERSON_EMAIL)),
        }
        with GatewayProcess(setup):
            outcomes = {name: attack() for name, attack in attacks.items()}
            # controls: each identity with its own address goes through
            lab = _submit(setup, ORG_EMAIL, ORG_EMAIL, PERSON_EMAIL, _mail(f"Laboratoire <{ORG_EMAIL}>", PERSON_EMAIL))
            demo = _submit(setup, DEMO, DEMO, PERSON_EMAIL, _mail(f"<{DEMO}>", PERSON_EMAIL))
            ally = _partner(setup, tls_ca, partner, "dr@partner.example", PERSON_EMAIL,
                            _mail("<dr@partner.example>", PERSON_EMAIL))
            lab_mta = _internal(internal_port, "secretariat@labo-tests.sante.test", PERSON_EMAIL,
                                _mail("<secretariat@labo-tests.sante.test>", PERSON_EMAIL))
            assert [lab[0], demo[0], ally[0], lab_mta[0]] == [250] * 4, (lab, demo, ally, lab_mta)
            got = sink.wait_for(4, timeout=30)
            time.sleep(1.0)  # anything an attack would have let through arrives by now
            got = sink.handler.snapshot()
        for name, (code, text) in outcomes.items():
            expected = "550" if "two From" in name else "553"
            resilience_report.trust(f"sender binding: {name}", attempts=1, stopped=int(str(code) == expected),
                                    note=f"{code} {text.split(chr(10))[0][:40]}")
            assert str(code) == expected, (name, code, text)
            assert ("5.6.0" if expected == "550" else "5.7.1") in text
        assert len(got) == 4 and all(m.recipients == [PERSON_EMAIL] for m in got)
        signers = {m.sender: _signer_of(openssl, pki, m.data, tmp_path) for m in got}
        org = pki["org_sign"].cert
        assert signers[ORG_EMAIL] is not None and signers[ORG_EMAIL].serial_number == org.serial_number
        assert signers[DEMO] is None            # no key of its own: encrypted, never the lab's signature
        assert signers["dr@partner.example"] is None
        # the operator named the internal network in sign_with: its (bound) mail is signed by the lab
        mta = signers["secretariat@labo-tests.sante.test"]
        assert mta is not None and mta.serial_number == org.serial_number
        shown = msgw("audit", "show", "--json", "--config", str(setup.config))
        records = [json.loads(line) for line in shown.stdout.decode().splitlines() if line.strip()]
        refused = [r for r in records if r.get("decision") == "sender-refused"]
        assert len(refused) == sum(1 for n in outcomes if "two From" not in n)
        assert {r["identity"] for r in refused} == {DEMO, f"partner:{PARTNER_CN}", "network:internal"}
        assert msgw("audit", "verify", "--config", str(setup.config)).returncode == 0
    finally:
        sink.stop()
