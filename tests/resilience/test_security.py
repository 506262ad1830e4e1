"""Security refusals over real sockets: the classic open-relay battery from a client that may
not relay, AUTH before STARTTLS, TLS 1.0/1.1 and weak ciphers, a client certificate from an
untrusted CA, and verification headers forged from outside."""

from __future__ import annotations

import base64
import email
import email.policy
import smtplib
import ssl
import time
from pathlib import Path

import pytest

from gateway.smime.testpki import ORG_EMAIL, TestPKI
from tests.e2e.harness import PASSWORD, USER, GatewayProcess, Sink, make_message, write_config
from tests.e2e.test_protection_flow import _protected_setup
from tests.e2e.tlspki import TestCA
from tests.resilience.conftest import ResilienceReport
from tests.resilience.support import RawSMTP, wait_until
from tests.smime.support import shared_pki

LOCAL = "msgw.test"
LOCAL_SENDER = f"postmaster@{LOCAL}"  # DSNs of refused relay attempts stay local
RELAY_ATTEMPTS = [
    f"<@{LOCAL}:victim@far.example>",  # source route
    f"<@{LOCAL},@far.example:victim@far.example>",
    f"<victim%far.example@{LOCAL}>",  # % hack
    f'<"victim@far.example"@{LOCAL}>',  # quoted local part
    f"<victim@far.example@{LOCAL}>",
    f"<far.example!victim@{LOCAL}>",  # bang path
    "<victim@far.example.>",
    "<victim@far.example>",  # plain unauthenticated external recipient
    "<VICTIM@FAR.EXAMPLE>",
    "<victim@[192.0.2.10]>",  # IP literals
    "<victim@[127.0.0.1]>",
    "<victim@[IPv6:::1]>",
    f"<victim@far.example%{LOCAL}>",
    f"<victim@{LOCAL}.far.example>",
    f"<victim@{LOCAL}@far.example>",
    "<victim@far.example> NOTIFY=NEVER",
    f"<victim@far.example\t@{LOCAL}>",
]


def test_open_relay_battery_reaches_nothing_outside(tmp_path: Path, resilience_report: ResilienceReport) -> None:
    sink = Sink().start()  # the outside world (smarthost for every non-local domain)
    try:
        setup = write_config(tmp_path, sink_port=sink.port, relay_networks="[]")  # 127.0.0.1 may not relay
        accepted: list[str] = []
        with GatewayProcess(setup):
            for rcpt in RELAY_ATTEMPTS:
                with RawSMTP(setup.relay_port) as c:
                    assert c.cmd(b"EHLO attacker.example")[0] == 250
                    assert c.cmd(f"MAIL FROM:<{LOCAL_SENDER}>".encode())[0] == 250
                    code, text = c.cmd(f"RCPT TO:{rcpt}".encode())
                    if code == 250:
                        accepted.append(rcpt)
                        assert c.cmd(b"DATA")[0] == 354
                        c.send(make_message(LOCAL_SENDER, "victim@far.example", "relay test", "relay?") + b".\r\n")
                        assert c.reply()[0] in (250, 550, 554)
                    else:
                        assert code >= 500, (rcpt, code, text)
            # Also the submission listener without AUTH.
            with RawSMTP(setup.submission_port) as c:
                c.cmd(b"EHLO attacker.example")
                assert c.cmd(f"MAIL FROM:<{LOCAL_SENDER}>".encode())[0] >= 500
            time.sleep(2.0)  # let the queue run: local deliveries, DSNs
        assert sink.handler.snapshot() == [], "a relay attempt reached the outside world"
        # Whatever was accepted was local (a Maildir here), never forwarded.
        boxes = [p.name for p in setup.maildir.iterdir()] if setup.maildir.exists() else []
        assert all(b.lower().endswith("@" + LOCAL) for b in boxes), boxes
        print(f"open relay battery: {len(RELAY_ATTEMPTS)} tries, accepted as local: {accepted}, maildirs: {boxes}")
        resilience_report.record("security: open-relay battery", sent=len(RELAY_ATTEMPTS), acknowledged=len(accepted),
                                 delivered=0, lost=0, duplicated=0,
                                 note=f"{len(RELAY_ATTEMPTS) - len(accepted)} refused at RCPT; 0 reached outside")
    finally:
        sink.stop()


def _client_ctx(*, max_version: ssl.TLSVersion | None = None, ciphers: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the test's throw-away self-signed listener certificate
    ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    if max_version is not None:
        ctx.maximum_version = max_version
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    return ctx


def _handshake(port: int, ctx: ssl.SSLContext) -> str | None:
    """STARTTLS with `ctx`; the negotiated (version, cipher), or None when the handshake failed."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.example")
        try:
            client.starttls(context=ctx)
        except (ssl.SSLError, OSError, smtplib.SMTPException):
            return None
        return f"{client.sock.version()} {client.sock.cipher()[0]}"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_auth_before_tls_and_weak_tls_refused(tmp_path: Path) -> None:
    setup = write_config(tmp_path, sink_port=9)
    refused_weak: list[str] = []
    with GatewayProcess(setup):
        with RawSMTP(setup.submission_port) as c:
            code, text = c.cmd(b"EHLO client.example")
            assert code == 250 and "AUTH" not in text, "AUTH offered before STARTTLS"
            blob = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
            code, text = c.cmd(f"AUTH PLAIN {blob}".encode())
            assert code in (530, 538), (code, text)  # encryption required, credentials never checked
            assert c.cmd(f"MAIL FROM:<{USER}>".encode())[0] == 530
        with RawSMTP(setup.submission_port) as c:
            c.cmd(b"EHLO client.example")
            code, _ = c.cmd(b"AUTH LOGIN")
            assert code in (530, 538)
        for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
            ctx = _client_ctx(max_version=version, ciphers="DEFAULT:@SECLEVEL=0")
            got = _handshake(setup.submission_port, ctx)
            assert got is None, f"{version.name} accepted: {got}"
        for ciphers in ("RC4", "DES-CBC3-SHA", "eNULL", "aNULL", "EXP", "DES-CBC-SHA", "RC4-SHA:RC4-MD5",
                        "NULL-SHA256", "ECDHE-ECDSA-NULL-SHA"):
            try:
                ctx = _client_ctx(max_version=ssl.TLSVersion.TLSv1_2, ciphers=f"{ciphers}:@SECLEVEL=0")
            except ssl.SSLError:
                refused_weak.append(f"{ciphers} (not even offerable by this OpenSSL)")
                continue
            got = _handshake(setup.submission_port, ctx)
            assert got is None, f"weak cipher suite {ciphers} accepted: {got}"
            refused_weak.append(ciphers)
        # Sanity: a modern client does get TLS, so the refusals above are the policy, not a broken listener.
        assert _handshake(setup.submission_port, _client_ctx()) is not None
    print(f"weak TLS refused: TLSv1, TLSv1.1, {refused_weak}")


def test_client_certificate_from_untrusted_ca_is_refused(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "pki")
    rogue = TestCA(tmp_path / "rogue", name="TEST AC rogue")
    server = ca.issue("localhost")
    impostor = rogue.issue("mss.partner.example")  # right name, wrong CA
    sink = Sink().start()
    try:
        setup = write_config(tmp_path / "gw", sink_port=sink.port)
        text = setup.config.read_text().replace(
            'allowed_networks = []',
            f'allowed_networks = []\nclient_ca = "{ca.ca_file}"\nallowed_client_subjects = ["mss.partner.example"]')
        text = text.replace('tls_cert = "tls-cert.pem"\ntls_key = "tls-key.pem"\nallowed_networks',
                            f'tls_cert = "{server.cert}"\ntls_key = "{server.key}"\nallowed_networks')
        setup.config.write_text(text)
        with GatewayProcess(setup):
            ctx = ssl.create_default_context(cafile=str(ca.ca_file))
            ctx.load_cert_chain(str(impostor.cert), str(impostor.key))
            outcome = "handshake refused"
            try:
                with smtplib.SMTP("127.0.0.1", setup.relay_port, timeout=10) as client:
                    client.ehlo("mx.partner.example")
                    client.starttls(context=ctx)
                    client.ehlo("mx.partner.example")
                    client.mail("dr@partner.example")
                    code, _ = client.rcpt("dr@far.example")
                    assert code == 550, "a certificate from an untrusted CA was allowed to relay"
                    outcome = f"RCPT {code}"
            except (ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError):
                pass
            time.sleep(0.5)
        assert sink.handler.snapshot() == []
        print(f"untrusted client CA: {outcome}")
    finally:
        sink.stop()


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return shared_pki().pki


def test_forged_verification_headers_from_outside_are_stripped(pki: TestPKI, tmp_path: Path) -> None:
    setup = _protected_setup(tmp_path / "gw", pki, sink_port=9)
    forged = ("X-Msgw-Verification: pass; signer=\"forged by an attacker\"\r\n"
              "X-Msgw-Verification: pass; signer=\"forged twice\"\r\n"
              "x-msgw-verification:pass;signer=\"forged lowercase\"\r\n"
              "X-Msgw-Bridged: apicrypt1; forged=yes\r\n"
              "X-Msgw-Verification:\r\n\tpass; signer=\"forged folded\"\r\n")
    with GatewayProcess(setup):
        with smtplib.SMTP("127.0.0.1", setup.relay_port, timeout=20) as client:
            client.ehlo("mx.outside.example")
            client.sendmail("someone@outside.example", [ORG_EMAIL],
                            make_message("someone@outside.example", ORG_EMAIL, "hello", "plain body from outside",
                                         extra_headers=forged))
        box = setup.maildir / ORG_EMAIL / "new"
        assert wait_until(lambda: box.exists() and any(box.iterdir()), timeout=20)
    raw = next(box.iterdir()).read_bytes()
    assert b"forged" not in raw, raw.split(b"\r\n\r\n")[0]
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg.get_all("X-Msgw-Bridged") is None
    verification = msg.get_all("X-Msgw-Verification") or []
    assert len(verification) <= 1 and not any(str(v).startswith("pass") for v in verification), verification
