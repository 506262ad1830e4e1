"""Legacy bridging end to end over sockets: an Apicrypt-v1 lab result for an S/MIME doctor
arrives as S/MIME that `openssl cms` opens and verifies with the HPRIM text intact; an S/MIME
message from a hospital for a legacy-only doctor arrives in the legacy format and decodes
with the doctor's keys; broken armor gets its sender a DSN and delivers nothing."""

from __future__ import annotations

import email
import email.policy
import smtplib
import subprocess
import time
from pathlib import Path

import pytest

from gateway.legacy.apicrypt1 import Apicrypt1Codec, decrypt
from gateway.legacy.apicrypt1_format import dearmor
from gateway.legacy.keystore import ApicryptKeyStore, make_key_file
from gateway.smime.testpki import ORG_EMAIL, PERSON_EMAIL, TestPKI
from tests.conftest import require_tool
from tests.e2e.harness import GatewayProcess, Sink, msgw, queue_json
from tests.e2e.test_protection_flow import _protected_setup
from tests.interop.conftest_smime import openssl_cafile
from tests.smime.support import shared_pki

YEAR = time.gmtime().tm_year
LAB = "labo.test@medical99.apicrypt.org"
LEGACY_DOCTOR = "dr.legacy@medical99.apicrypt.org"
HPRIM = ("H|~^\\&|||LABO TEST|||||||ORU|H2.2|20261125\r\n"
         "P|1||||TESTPATIENT^INVENTEE||19700101|F\r\n"
         "OBX|1|NM|GLY^Glycemie||5.4|mmol/l|3.9-5.8||||F\r\n"
         "L|1|||3\r\n").encode("latin-1")


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return shared_pki().pki


def _keys(folder: Path) -> Path:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for user in ("Master", "msgw.bridge", "labo.test", "dr.legacy"):
        make_key_file(folder, user, YEAR, 65536)
    return folder


def _bridge_setup(tmp_path: Path, pki: TestPKI, sink_port: int):
    keys = _keys(tmp_path / "apicrypt")
    setup = _protected_setup(tmp_path / "gw", pki, sink_port)
    text = setup.config.read_text().replace("allowed_networks = []", 'allowed_networks = ["127.0.0.0/8"]')
    text += f"""
[legacy]
sign_key = "labo-sign"
decrypt_key = "labo-decrypt"

[legacy.apicrypt1]
keys = "{keys}"
identity = "msgw.bridge"
"""
    setup.config.write_text(text)
    out = msgw("directory", "add", LEGACY_DOCTOR, "--capability", "legacy:apicrypt1", "--key-ref", "dr.legacy",
               "--config", str(setup.config))
    assert out.returncode == 0, out.stderr
    # The lab is a known legacy correspondent: its armor is bridged on any listener (issue 11, item 4).
    out = msgw("directory", "add", LAB, "--capability", "legacy:apicrypt1", "--key-ref", "labo.test",
               "--config", str(setup.config))
    assert out.returncode == 0, out.stderr
    return setup, keys


def _legacy_mail(keys: Path, to: str) -> bytes:
    mime = (f"From: <{LAB}>\r\nTo: <{to}>\r\nSubject: Resultats\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n").encode() + HPRIM
    return Apicrypt1Codec().encode(mime, "labo.test", ["msgw.bridge"], ApicryptKeyStore(keys))


def _send(port: int, sender: str, rcpt: str, data: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.ehlo("mx.partner.example")
        client.sendmail(sender, [rcpt], data)


def test_legacy_lab_result_reaches_smime_doctor(pki: TestPKI, tmp_path: Path) -> None:
    openssl = require_tool("openssl")
    sink = Sink().start()
    try:
        setup, keys = _bridge_setup(tmp_path, pki, sink.port)
        legacy = _legacy_mail(keys, PERSON_EMAIL)
        assert b"#BINASCII1#" in legacy and b"Glycemie" not in legacy
        with GatewayProcess(setup):
            _send(setup.relay_port, LAB, PERSON_EMAIL, legacy)
            (got,) = sink.wait_for(1, timeout=30)
        assert got.recipients == [PERSON_EMAIL]
        outer = email.message_from_bytes(got.data, policy=email.policy.default)
        assert outer.get_content_type() == "application/pkcs7-mime"
        # The provenance statement travels inside the signed entity only (issue 11, items 2 and 4).
        head = got.data.split(b"\r\n\r\n", 1)[0]
        assert outer["X-Msgw-Bridged"] is None and b"codec=" not in head and b"sender-authenticated" not in head
        (tmp_path / "in.eml").write_bytes(got.data)
        person = pki["person_encrypt"]
        dec = subprocess.run([openssl, "cms", "-decrypt", "-in", str(tmp_path / "in.eml"), "-recip",
                              str(person.cert_path), "-inkey", str(person.key_path), "-out", str(tmp_path / "s.eml")],
                             capture_output=True)
        assert dec.returncode == 0, dec.stderr
        ver = subprocess.run([openssl, "cms", "-verify", "-in", str(tmp_path / "s.eml"), "-CAfile",
                              str(openssl_cafile(pki, tmp_path)), "-crl_check_all", "-purpose", "any",
                              "-signer", str(tmp_path / "signer.pem"), "-out", str(tmp_path / "c.eml")],
                             capture_output=True)
        assert ver.returncode == 0, ver.stderr
        assert b"TEST LABO MESSAGERIE SIGNATURE" in subprocess.run(
            [openssl, "x509", "-noout", "-subject", "-in", str(tmp_path / "signer.pem")], capture_output=True).stdout
        inner = email.message_from_bytes((tmp_path / "c.eml").read_bytes(), policy=email.policy.default)
        # The signer names the From the reader is shown (issue 11, item 5): the bridge's own address,
        # the legacy lab in the display name and in Reply-To, its original From kept inside.
        signer_emails = subprocess.run([openssl, "x509", "-noout", "-email", "-in", str(tmp_path / "signer.pem")],
                                       capture_output=True, text=True).stdout.split()
        shown = [a.addr_spec for a in inner["From"].addresses]
        assert shown == signer_emails == [ORG_EMAIL] and [a.addr_spec for a in outer["From"].addresses] == shown
        assert "(via la passerelle / via gateway)" in inner["From"].addresses[0].display_name
        assert [a.addr_spec for a in inner["Reply-To"].addresses] == [LAB] and LAB in str(inner["X-Original-From"])
        assert inner["Sender"] is None and outer["Sender"] is None
        assert "codec=apicrypt1" in str(inner["X-Msgw-Bridged"]) and "sender-authenticated=no" in str(
            inner["X-Msgw-Bridged"])
        part = next(p for p in inner.walk() if p.get_content_type() == "text/plain")
        text = part.get_payload(decode=True)
        # The bilingual provenance banner first (item 4), then the HPRIM byte for byte through both bridges.
        assert text.endswith(HPRIM) and text.startswith("Message reçu d'une messagerie chiffrée ancienne".encode(
            "latin-1")) and b"the sender was not authenticated" in text[:-len(HPRIM)]
    finally:
        sink.stop()


def test_smime_hospital_message_reaches_legacy_doctor(pki: TestPKI, tmp_path: Path) -> None:
    openssl = require_tool("openssl")
    sink = Sink().start()
    try:
        setup, keys = _bridge_setup(tmp_path, pki, sink.port)
        plain = tmp_path / "plain.eml"
        plain.write_bytes(f"From: <{PERSON_EMAIL}>\r\nTo: <{LEGACY_DOCTOR}>\r\nSubject: Compte rendu\r\n"
                          "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
                          "Lettre de liaison TEST, patient invente.\r\n".encode())
        s = pki["person_sign"]
        subprocess.run([openssl, "cms", "-sign", "-in", str(plain), "-signer", str(s.cert_path), "-inkey",
                        str(s.key_path), "-certfile", str(s.chain_path), "-out", str(tmp_path / "signed.eml")],
                       check=True, capture_output=True)
        subprocess.run([openssl, "cms", "-encrypt", "-aes256", "-in", str(tmp_path / "signed.eml"), "-out",
                        str(tmp_path / "sealed.eml"), "-from", PERSON_EMAIL, "-to", LEGACY_DOCTOR, "-subject",
                        "Message securise", str(pki["org_encrypt"].cert_path)], check=True, capture_output=True)
        sealed = (tmp_path / "sealed.eml").read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        with GatewayProcess(setup):
            _send(setup.relay_port, PERSON_EMAIL, LEGACY_DOCTOR, sealed)
            (got,) = sink.wait_for(1, timeout=30)
        assert got.recipients == [LEGACY_DOCTOR]
        assert b"#BINASCII1#" in got.data and b"Lettre de liaison" not in got.data
        msg = email.message_from_bytes(got.data, policy=email.policy.default)
        # The verdict travels inside the armor, in the original header the bridge writes (item 3).
        assert msg["X-Msgw-Bridged"] is None and str(msg["Subject"]) == "Message sécurisé"
        armored = next(p for p in msg.walk() if p.get_content_type() == "text/plain")
        text = decrypt(dearmor(armored.get_payload(decode=True)), ApicryptKeyStore(keys)).text
        assert b"Objet / Subject: Compte rendu" in text and b"smime-verification=pass" in text
        decoded = Apicrypt1Codec().decode(got.data, ApicryptKeyStore(keys), recipient="dr.legacy")
        assert decoded.sender == "msgw.bridge" and b"Lettre de liaison TEST" in (decoded.text or b"")
        audit = msgw("audit", "show", "--json", "--config", str(setup.config))
        assert b"legacy:apicrypt1" in audit.stdout
    finally:
        sink.stop()


def test_broken_armor_bounces_to_sender_and_delivers_nothing(pki: TestPKI, tmp_path: Path) -> None:
    sink = Sink().start()
    try:
        setup, keys = _bridge_setup(tmp_path, pki, sink.port)
        good = _legacy_mail(keys, PERSON_EMAIL)
        lines = good.split(b"\r\n")
        truncated = b"\r\n".join(line for line in lines if not line.startswith(b"#ENDBINASCII1#"))
        armor_line = next(i for i, line in enumerate(lines) if line.startswith(b"#BINASCII1#")) + 2
        flipped = list(lines)
        flipped[armor_line] = flipped[armor_line][:10] + (b"A" if flipped[armor_line][10:11] != b"A" else b"B") + \
            flipped[armor_line][11:]
        with GatewayProcess(setup):
            for data in (truncated, b"\r\n".join(flipped)):
                _send(setup.relay_port, LAB, PERSON_EMAIL, data)
            got = sink.wait_for(2, timeout=30)
            deadline = time.monotonic() + 10
            while queue_json(setup) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert queue_json(setup) == []
        assert all(m.sender == "" and m.recipients == [LAB] for m in got), [(m.sender, m.recipients) for m in got]
        for m in got:
            report = email.message_from_bytes(m.data, policy=email.policy.default)
            status = list(report.iter_parts())[1].get_payload()[1]
            assert status["Action"] == "failed" and status["Status"].startswith("5.")
            assert "Glycemie" not in m.data.decode("latin-1")
    finally:
        sink.stop()
