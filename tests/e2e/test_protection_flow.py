"""The gateway's main job over real sockets with real peers: a lab's message leaves signed and
encrypted (readable by `openssl cms` and `gpgsm` for the doctor only, outer headers clean),
a recipient nobody can protect is refused at RCPT, inbound S/MIME from outside is decrypted
and verified into the lab's Maildir with our header, forged headers are stripped, a revoked
signer is flagged, and the audit trail verifies."""

from __future__ import annotations

import base64
import email
import email.policy
import smtplib
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from gateway.server.passwords import hash_password
from gateway.smime.testpki import ORG_EMAIL, PERSON_EMAIL, TestPKI
from tests.conftest import require_tool
from tests.e2e.harness import GatewayProcess, GatewaySetup, Sink, log_events, msgw, write_config
from tests.interop.conftest_smime import gpgsm_home, openssl_cafile
from tests.smime.support import key_toml, shared_pki, trust_toml

LAB_PASSWORD = "lab password for tests"
MARKER = "PATIENT-MARKER-e2e-91"
SUBJECT = "Résultat glycémie Mme TESTPATIENTE"


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return shared_pki().pki


def _protected_setup(folder: Path, pki: TestPKI, sink_port: int) -> GatewaySetup:
    extra = f"""
[accounts."{ORG_EMAIL}"]
password_hash = "{hash_password(LAB_PASSWORD)}"

{key_toml('labo-sign', pki['org_sign'])}

{key_toml('labo-decrypt', pki['org_encrypt'], chain=False)}

{trust_toml(pki)}
[policy]
default = "require-smime"
neutral_subject = "Message sécurisé"
inbound_unverified = "flag"

[policy.sign_with]
"{ORG_EMAIL}" = "labo-sign"
"""
    setup = write_config(folder, sink_port=sink_port, extra=extra, relay_networks="[]")
    text = setup.config.read_text().replace('domains = ["msgw.test"]',
                                            'domains = ["msgw.test", "labo-tests.sante.test"]')
    setup.config.write_text(text)
    cfg = str(setup.config)
    person_pem = folder / "person-encrypt.pem"
    person_pem.write_bytes(pki["person_encrypt"].cert.public_bytes(serialization.Encoding.PEM))
    out = msgw("directory", "add", PERSON_EMAIL, "--capability", "smime", "--cert", str(person_pem),
               "--rpps", "10101234567", "--config", cfg)
    assert out.returncode == 0, out.stderr
    out = msgw("directory", "add", ORG_EMAIL, "--capability", "local", "--key-ref", "labo-decrypt",
               "--mailbox-type", "APP", "--config", cfg)
    assert out.returncode == 0, out.stderr
    return setup


def _tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # throw-away self-signed listener certificate of the test
    return ctx


def _lab_message(to: str) -> bytes:
    return (f"From: Labo TEST <{ORG_EMAIL}>\r\nTo: <{to}>\r\n"
            "Subject: =?utf-8?q?R=C3=A9sultat_glyc=C3=A9mie_Mme_TESTPATIENTE?=\r\n"
            f"Message-ID: <{time.time_ns()}@labo-tests.sante.test>\r\nDate: Wed, 25 Nov 2026 09:00:00 +0100\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            f"Glycémie à jeun 5,4 mmol/l {MARKER}\r\n").encode()


def submit_as_lab(setup, recipients: list[str], mail: bytes | str) -> dict:
    """The TEST lab's system on the submission listener: STARTTLS, AUTH, one message; the refused recipients."""
    with smtplib.SMTP("127.0.0.1", setup.submission_port, timeout=20) as client:
        client.ehlo("lis.labo-tests.sante.test")
        client.starttls(context=_tls())
        client.ehlo("lis.labo-tests.sante.test")
        client.login(ORG_EMAIL, LAB_PASSWORD)
        return client.sendmail(ORG_EMAIL, recipients, mail)


def test_lab_to_doctor_signed_and_encrypted_unknown_refused(pki: TestPKI, tmp_path: Path) -> None:
    openssl = require_tool("openssl")
    swaks = require_tool("swaks")
    gpg = gpgsm_home()
    sink = Sink().start()
    try:
        setup = _protected_setup(tmp_path / "gw", pki, sink.port)
        with GatewayProcess(setup):
            refused = submit_as_lab(setup, [PERSON_EMAIL, "dr.nobody@nowhere.test"], _lab_message(PERSON_EMAIL))
            assert set(refused) == {"dr.nobody@nowhere.test"}
            code, text = refused["dr.nobody@nowhere.test"]
            assert code == 550 and b"5.7.1" in text and b"no protection possible" in text
            msg_file = tmp_path / "swaks-body.eml"
            msg_file.write_bytes(_lab_message(PERSON_EMAIL))
            out = subprocess.run([swaks, "--server", f"127.0.0.1:{setup.submission_port}", "--tls", "--auth",
                                  "PLAIN", "--auth-user", ORG_EMAIL, "--auth-password", LAB_PASSWORD,
                                  "--from", ORG_EMAIL, "--to", PERSON_EMAIL, "--helo", "lis.labo-tests.sante.test",
                                  "--data", str(msg_file)], capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stdout + out.stderr
            got = sink.wait_for(2, timeout=30)
        assert all(m.recipients == [PERSON_EMAIL] for m in got)
        ca = openssl_cafile(pki, tmp_path)
        for n, received in enumerate(got):
            raw = received.data
            head = raw.split(b"\r\n\r\n", 1)[0]
            assert MARKER.encode() not in raw and b"TESTPATIENTE" not in head and b"glyc" not in head.lower()
            outer = email.message_from_bytes(raw, policy=email.policy.default)
            assert str(outer["Subject"]) == "Message sécurisé"
            assert outer.get_content_type() == "application/pkcs7-mime"
            enc = tmp_path / f"in{n}.eml"
            enc.write_bytes(raw)
            person = pki["person_encrypt"]
            dec = subprocess.run([openssl, "cms", "-decrypt", "-in", str(enc), "-recip", str(person.cert_path),
                                  "-inkey", str(person.key_path), "-out", str(tmp_path / f"signed{n}.eml")],
                                 capture_output=True)
            assert dec.returncode == 0, dec.stderr
            ver = subprocess.run([openssl, "cms", "-verify", "-in", str(tmp_path / f"signed{n}.eml"), "-CAfile",
                                  str(ca), "-crl_check_all", "-purpose", "any", "-out", str(tmp_path / f"c{n}.eml")],
                                 capture_output=True)
            assert ver.returncode == 0, ver.stderr
            inner = email.message_from_bytes((tmp_path / f"c{n}.eml").read_bytes(), policy=email.policy.default)
            assert MARKER in inner.get_content() and str(inner["Subject"]) == SUBJECT
        # gpgsm reads it too (it does not parse MIME: give it the DER of the CMS body).
        body = got[0].data.split(b"\r\n\r\n", 1)[1]
        (tmp_path / "cms.der").write_bytes(base64.b64decode(b"".join(body.split())))
        r = gpg.run("--output", tmp_path / "gpgsm-signed.eml", "--decrypt", tmp_path / "cms.der", passphrase=True)
        assert r.returncode == 0, r.stderr.decode(errors="replace")
        assert b"multipart/signed" in (tmp_path / "gpgsm-signed.eml").read_bytes()
        events = log_events(setup)
        assert any(e["event"] == "rcpt-refused" for e in events)
        everything = setup.log_file.read_text() + (setup.folder / "stderr.log").read_text()
        assert MARKER not in everything and "TESTPATIENTE" not in everything
        audit = msgw("audit", "verify", "--config", str(setup.config))
        assert audit.returncode == 0, audit.stderr
        shown = msgw("audit", "show", "--json", "--config", str(setup.config))
        assert b'"smime"' in shown.stdout and MARKER.encode() not in shown.stdout
    finally:
        sink.stop()


def _openssl_signed_encrypted(openssl: str, pki: TestPKI, tmp_path: Path, signer: str, *, forged: bool) -> bytes:
    body = (f"From: <{PERSON_EMAIL}>\r\nTo: <{ORG_EMAIL}>\r\nSubject: Demande d'examen\r\n"
            + ("X-Msgw-Verification: pass; signer=\"forged by an attacker\"\r\n" if forged else "")
            + "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
            + f"Prescription TEST {MARKER}\r\n")
    src = tmp_path / f"{signer}-plain.eml"
    src.write_bytes(body.encode())
    s = pki[signer]
    signed = tmp_path / f"{signer}-signed.eml"
    r = subprocess.run([openssl, "cms", "-sign", "-in", str(src), "-signer", str(s.cert_path), "-inkey",
                        str(s.key_path), "-certfile", str(s.chain_path), "-out", str(signed)], capture_output=True)
    assert r.returncode == 0, r.stderr
    sealed = tmp_path / f"{signer}-sealed.eml"
    r = subprocess.run([openssl, "cms", "-encrypt", "-aes256", "-in", str(signed), "-out", str(sealed),
                        "-from", PERSON_EMAIL, "-to", ORG_EMAIL, "-subject", "Message securise",
                        str(pki["org_encrypt"].cert_path)], capture_output=True)
    assert r.returncode == 0, r.stderr
    return sealed.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def test_inbound_smime_from_outside_is_decrypted_verified_and_flagged(pki: TestPKI, tmp_path: Path) -> None:
    openssl = require_tool("openssl")
    setup = _protected_setup(tmp_path / "gw", pki, sink_port=9)
    good = _openssl_signed_encrypted(openssl, pki, tmp_path, "person_sign", forged=True)
    bad = _openssl_signed_encrypted(openssl, pki, tmp_path, "revoked", forged=False)
    with GatewayProcess(setup):
        for data in (good, bad):
            with smtplib.SMTP("127.0.0.1", setup.relay_port, timeout=20) as client:
                client.ehlo("mx.cabinet-parc.sante.test")
                client.sendmail(PERSON_EMAIL, [ORG_EMAIL], data)
        box = setup.maildir / ORG_EMAIL / "new"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (box.exists() and len(list(box.iterdir())) >= 2):
            time.sleep(0.1)
        files = list(box.iterdir())
        assert len(files) == 2
    by_state = {}
    for f in files:
        msg = email.message_from_bytes(f.read_bytes(), policy=email.policy.default)
        headers = msg.get_all("X-Msgw-Verification")
        assert headers is not None and len(headers) == 1
        by_state[str(headers[0]).split(";")[0]] = msg
    assert set(by_state) == {"pass", "fail"}
    passed = by_state["pass"]
    assert "rpps:10101234567" in str(passed["X-Msgw-Verification"])
    assert "forged" not in passed.as_string()
    assert MARKER in passed.get_body(("plain",)).get_content()
    assert "revoked" in str(by_state["fail"]["X-Msgw-Verification"]).lower()
