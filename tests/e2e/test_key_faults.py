"""Broken keys are caught before mail is accepted, and a key that goes away later defers mail.

`msgw check` and `msgw serve` (run as processes) load and check every `[keys.*]` and every TLS
client certificate of the delivery routes: files readable and private, key matching certificate,
certificate valid for at least 14 days (a warning under 30), usage fitting the role, a path to
the trust anchors with the configured CRLs. At processing time a key that cannot be used is a
local fault: the message waits in the queue (4.x.x) and goes out once the key is back.
"""

from __future__ import annotations

import shutil
import smtplib
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from gateway.server.passwords import hash_password
from gateway.smime.testpki import ORG_EMAIL, PERSON_EMAIL, TestPKI
from tests.conftest import MSGW, free_port
from tests.e2e.harness import GatewayProcess, GatewaySetup, Sink, log_events, msgw, queue_json, write_config
from tests.smime.issue import CLIENT, SERVER, make_ca, make_cert
from tests.smime.support import shared_pki

LAB_PASSWORD = "lab password for key tests"


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return shared_pki().pki


def _key_table(name: str, key: Path, cert: Path | None, chain: Path | None = None, extra: str = "") -> str:
    lines = [f"[keys.{name}]", f'ref = "{key}"']
    if cert is not None:
        lines.append(f'cert = "{cert}"')
    if chain is not None:
        lines.append(f'chain = "{chain}"')
    return "\n".join(lines) + ("\n" + extra if extra else "") + "\n"


def _config(folder: Path, pki: TestPKI, keys: str, sign_with: dict[str, str], *, sink_port: int = 9,
            delivery: str | None = None) -> GatewaySetup:
    rules = "\n".join(f'"{who}" = "{name}"' for who, name in sign_with.items())
    crls = ", ".join(f'"{p}"' for p in pki.crl_paths)
    extra = f"""
[accounts."{ORG_EMAIL}"]
password_hash = "{hash_password(LAB_PASSWORD)}"

{keys}
[trust]
anchors = "{pki.trust_dir}"
crl_files = [{crls}]
fetch_crls = false

[policy]
default = "require-smime"
neutral_subject = "Message sécurisé"

[policy.sign_with]
{rules}
"""
    setup = write_config(folder, sink_port=sink_port, extra=extra, delivery=delivery)
    text = setup.config.read_text().replace('domains = ["msgw.test"]',
                                            'domains = ["msgw.test", "labo-tests.sante.test"]')
    setup.config.write_text(text)
    return setup


def _day(cert_path: Path) -> str:
    from cryptography import x509

    return f"{x509.load_pem_x509_certificate(cert_path.read_bytes()).not_valid_after_utc:%Y-%m-%d}"


def test_check_and_serve_refuse_each_broken_key(pki: TestPKI, tmp_path: Path) -> None:
    made = tmp_path / "keys"
    orgs = pki.orgs_ca
    soon = make_cert(made, "soon", orgs, days_left=9.5)
    loose = make_cert(made, "loose", orgs, mode=0o644)
    no_sign = make_cert(made, "no-sign", orgs, sign=False, encipher=True)
    server_eku = make_cert(made, "server-eku", orgs, eku=SERVER)
    org_sign, org_encrypt = pki["org_sign"], pki["org_encrypt"]
    keys = "".join([
        _key_table("good", org_sign.key_path, org_sign.cert_path, org_sign.chain_path),
        _key_table("missing-key", made / "gone.key.pem", org_sign.cert_path),
        _key_table("missing-cert", org_sign.key_path, made / "gone.pem"),
        _key_table("expired", pki["expired"].key_path, pki["expired"].cert_path, pki["expired"].chain_path),
        _key_table("mismatch", org_sign.key_path, org_encrypt.cert_path),
        _key_table("soon", soon.key_path, soon.cert_path, soon.chain_path),
        _key_table("loose", loose.key_path, loose.cert_path, loose.chain_path),
        _key_table("no-sign", no_sign.key_path, no_sign.cert_path, no_sign.chain_path),
        _key_table("server-eku", server_eku.key_path, server_eku.cert_path, server_eku.chain_path),
        _key_table("stranger", pki["unknown_issuer"].key_path, pki["unknown_issuer"].cert_path,
                   pki["unknown_issuer"].chain_path),
        _key_table("revoked", pki["revoked"].key_path, pki["revoked"].cert_path, pki["revoked"].chain_path),
        _key_table("sign-only", org_sign.key_path, org_sign.cert_path, org_sign.chain_path, 'usage = "decrypt"'),
    ])
    signers = ["good", "missing-key", "missing-cert", "expired", "mismatch", "soon", "loose", "no-sign",
               "server-eku", "stranger", "revoked"]
    setup = _config(tmp_path / "gw", pki, keys, {f"@{n}.test": n for n in signers})
    cfg = str(setup.config)

    out = msgw("check", "--config", cfg)
    err = out.stderr.decode()
    assert out.returncode == 2, err
    expected = {
        "missing-key": "cannot read key file",
        "missing-cert": "cannot read certificate file",
        "expired": "certificate expired on",
        "mismatch": "private key does not match its certificate",
        "soon": f"certificate expires in 9 days ({_day(soon.cert_path)})",
        "loose": "is readable by group or others (mode 0644)",
        "no-sign": "does not allow digitalSignature",
        "server-eku": "does not allow e-mail protection",
        "stranger": "does not chain to the trust anchors",
        "revoked": "is revoked",
        "sign-only": "does not allow keyEncipherment",
    }
    for name, text in expected.items():
        line = next((x for x in err.splitlines() if x.startswith(f"{cfg}: keys.{name}: ")), None)
        assert line is not None and text in line, (name, err)
    assert f"{cfg}: keys.good:" not in err, err
    assert "keys.good: OK (sign" in out.stdout.decode()

    # serve refuses to start, one line per problem, and never listens.
    done = subprocess.run([MSGW, "serve", "--config", cfg], cwd=setup.folder, capture_output=True, timeout=120)
    serr = done.stderr.decode()
    assert done.returncode == 2, serr
    for name, text in expected.items():
        assert any(x.startswith(f"{cfg}: keys.{name}: ") and text in x for x in serr.splitlines()), (name, serr)
    with pytest.raises(OSError):
        smtplib.SMTP("127.0.0.1", setup.submission_port, timeout=2)


def test_warnings_only_check_passes_and_serve_starts(pki: TestPKI, tmp_path: Path) -> None:
    later = make_cert(tmp_path / "keys", "later", pki.orgs_ca, days_left=20.5)
    org_encrypt = pki["org_encrypt"]
    keys = (_key_table("later", later.key_path, later.cert_path, later.chain_path)
            + _key_table("mailbox", org_encrypt.key_path, org_encrypt.cert_path, org_encrypt.chain_path))
    setup = _config(tmp_path / "gw", pki, keys, {ORG_EMAIL: "later"})
    out = msgw("check", "--config", str(setup.config))
    assert out.returncode == 0, out.stderr
    err = out.stderr.decode()
    assert f"warning: {setup.config}: keys.later: certificate expires in 20 days ({_day(later.cert_path)})" in err
    stdout = out.stdout.decode()
    assert "keys.mailbox: OK (decrypt" in stdout and "inferred" in stdout
    with GatewayProcess(setup):
        pass
    warned = [e for e in log_events(setup) if e["event"] == "key-warning"]
    assert warned and warned[0]["key"] == "keys.later" and "20 days" in warned[0]["reason"]


def test_old_decryption_keys_only_warn_and_serve_starts(pki: TestPKI, tmp_path: Path) -> None:
    """Keeping last year's mailbox key after a renewal is normal (older mail must still open):
    for a decrypt-only key, dates and the path to the anchors are warnings, not a refusal."""
    made = tmp_path / "keys"
    other_cert, other_key, _ = make_ca(made, "TEST AC INCONNUE")
    last_year = make_cert(made, "last-year", pki.orgs_ca, days_left=-30, not_before_days=-400, sign=False)
    mailbox = make_cert(made, "mailbox-old", pki.orgs_ca, days_left=-2, not_before_days=-400, sign=False)
    ending = make_cert(made, "ending", pki.orgs_ca, days_left=5.5, sign=False)
    future = make_cert(made, "future", pki.orgs_ca, days_left=400, not_before_days=3, sign=False)
    stranger = make_cert(made, "stranger-decrypt", (other_cert, other_key), sign=False)
    org_sign = pki["org_sign"]
    decrypt = 'usage = "decrypt"'
    keys = "".join([
        _key_table("good", org_sign.key_path, org_sign.cert_path, org_sign.chain_path),
        _key_table("last-year", last_year.key_path, last_year.cert_path, last_year.chain_path, decrypt),
        _key_table("mailbox-old", mailbox.key_path, mailbox.cert_path, mailbox.chain_path),  # named by nothing
        _key_table("ending", ending.key_path, ending.cert_path, ending.chain_path, decrypt),
        _key_table("future", future.key_path, future.cert_path, future.chain_path, decrypt),
        _key_table("stranger-decrypt", stranger.key_path, stranger.cert_path, stranger.chain_path, decrypt),
    ])
    setup = _config(tmp_path / "gw", pki, keys, {ORG_EMAIL: "good"})
    cfg = str(setup.config)
    out = msgw("check", "--config", cfg)
    err, stdout = out.stderr.decode(), out.stdout.decode()
    assert out.returncode == 0, err
    warned = {
        "last-year": f"certificate expired on {_day(last_year.cert_path)}",
        "mailbox-old": "certificate expired on",
        "ending": f"certificate expires in 5 days ({_day(ending.cert_path)})",
        "future": "certificate not valid before",
        "stranger-decrypt": "does not chain to the trust anchors",
    }
    for name, text in warned.items():
        line = next((x for x in err.splitlines() if x.startswith(f"warning: {cfg}: keys.{name}: ")), "")
        assert text in line and "decryption only" in line, (name, err)
        assert f"keys.{name}: OK (decrypt" in stdout, (name, stdout)
    with GatewayProcess(setup):
        pass
    logged = {e["key"] for e in log_events(setup) if e["event"] == "key-warning"}
    assert {f"keys.{name}" for name in warned} <= logged


def test_listener_certificate_dates_follow_the_key_rules(pki: TestPKI, tmp_path: Path) -> None:
    """The listeners' TLS certificates get the same dates rule as the keys: an error under 14
    days or when not yet valid, a warning under 30."""
    tls = tmp_path / "tls"
    ca = make_ca(tls, "TEST AC TLS")[:2]
    cases = {"ten-days": dict(days_left=10.5), "not-yet": dict(not_before_days=2),
             "twenty-days": dict(days_left=20.5)}
    outcomes = {}
    for name, dates in cases.items():
        made = make_cert(tls, name, ca, eku=SERVER, **dates)  # type: ignore[arg-type]
        folder = tmp_path / name
        folder.mkdir()
        shutil.copy(made.cert_path, folder / "tls-cert.pem")
        shutil.copy(made.key_path, folder / "tls-key.pem")
        setup = write_config(folder, sink_port=9)  # keeps the listener certificate found there
        outcomes[name] = (setup.config, msgw("check", "--config", str(setup.config)))
    config, ten = outcomes["ten-days"]
    assert ten.returncode == 2 and f"{config}: listeners.submission.tls_cert: certificate expires in 10 days" \
        in ten.stderr.decode(), ten.stderr
    config, early = outcomes["not-yet"]
    assert early.returncode == 2 and f"{config}: listeners.relay.tls_cert: certificate not valid before" \
        in early.stderr.decode(), early.stderr
    config, twenty = outcomes["twenty-days"]
    assert twenty.returncode == 0, twenty.stderr
    assert f"warning: {config}: listeners.submission.tls_cert: certificate expires in 20 days" \
        in twenty.stderr.decode()


def test_route_client_certificates_are_checked(pki: TestPKI, tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    ca_cert, ca_key, ca_file = make_ca(tls, "TEST AC TLS")
    other_cert, other_key, _ = make_ca(tls, "TEST AC TLS AUTRE")
    good = make_cert(tls, "good", (ca_cert, ca_key), eku=CLIENT + SERVER)
    server_only = make_cert(tls, "server-only", (ca_cert, ca_key), eku=SERVER)
    soon = make_cert(tls, "soon", (ca_cert, ca_key), eku=CLIENT, days_left=5.5)
    stranger = make_cert(tls, "stranger", (other_cert, other_key), eku=CLIENT)
    expired = make_cert(tls, "expired", (ca_cert, ca_key), eku=CLIENT, days_left=-1, not_before_days=-30)

    def route(domain: str, cert: Path, key: Path) -> str:
        return (f'[delivery.routes."{domain}"]\nhost = "127.0.0.1"\nport = {free_port()}\ntls = "required"\n'
                f'ca_file = "{ca_file}"\nclient_cert = "{cert}"\nclient_key = "{key}"\n\n')

    delivery = (f'smarthost = "127.0.0.1:{free_port()}"\ntls = "none"\nca_file = "{ca_file}"\n'
                f'client_cert = "{expired.cert_path}"\nclient_key = "{expired.key_path}"\n\n'
                + route("good.example", good.cert_path, good.key_path)
                + route("server-only.example", server_only.cert_path, server_only.key_path)
                + route("soon.example", soon.cert_path, soon.key_path)
                + route("mismatch.example", good.cert_path, soon.key_path)
                + route("stranger.example", stranger.cert_path, stranger.key_path))
    org_sign = pki["org_sign"]
    setup = _config(tmp_path / "gw", pki, _key_table("good", org_sign.key_path, org_sign.cert_path,
                                                     org_sign.chain_path), {ORG_EMAIL: "good"}, delivery=delivery)
    cfg = str(setup.config)
    out = msgw("check", "--config", cfg)
    err = out.stderr.decode()
    assert out.returncode == 2, err
    expected = {
        'delivery.routes."server-only.example".client_cert': "does not allow TLS client authentication",
        'delivery.routes."soon.example".client_cert': f"certificate expires in 5 days ({_day(soon.cert_path)})",
        'delivery.routes."mismatch.example".client_cert': "private key does not match its certificate",
        'delivery.routes."stranger.example".client_cert': "does not chain to the trust anchors",
        "delivery.client_cert": "certificate expired on",
    }
    for where, text in expected.items():
        assert any(x.startswith(f"{cfg}: {where}: ") and text in x for x in err.splitlines()), (where, err)
    assert 'routes."good.example"' not in err, err


def _tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the test's throw-away self-signed listener certificate
    return ctx


def _lab_message() -> bytes:
    return (f"From: Labo TEST <{ORG_EMAIL}>\r\nTo: <{PERSON_EMAIL}>\r\nSubject: TEST key fault\r\n"
            f"Message-ID: <{time.time_ns()}@labo-tests.sante.test>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\nTEST body\r\n").encode()


def _wait(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_key_file_gone_after_start_defers_then_delivers(pki: TestPKI, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    own = tmp_path / "own"
    own.mkdir()
    org_sign = pki["org_sign"]
    key_file = own / "labo-sign.key.pem"
    shutil.copy(org_sign.key_path, key_file)
    key_file.chmod(0o600)
    sink = Sink().start()
    try:
        setup = _config(tmp_path / "gw", pki, _key_table("labo-sign", key_file, org_sign.cert_path,
                                                         org_sign.chain_path), {ORG_EMAIL: "labo-sign"},
                        sink_port=sink.port)
        person = tmp_path / "person.pem"
        person.write_bytes(pki["person_encrypt"].cert.public_bytes(serialization.Encoding.PEM))
        added = msgw("directory", "add", PERSON_EMAIL, "--capability", "smime", "--cert", str(person),
                     "--config", str(setup.config))
        assert added.returncode == 0, added.stderr
        with GatewayProcess(setup):
            key_file.rename(own / "elsewhere.pem")  # the key goes away after start-up
            with smtplib.SMTP("127.0.0.1", setup.submission_port, timeout=20) as client:
                client.ehlo("lis.labo-tests.sante.test")
                client.starttls(context=_tls())
                client.ehlo("lis.labo-tests.sante.test")
                client.login(ORG_EMAIL, LAB_PASSWORD)
                assert client.sendmail(ORG_EMAIL, [PERSON_EMAIL], _lab_message()) == {}

            def deferred() -> bool:
                queued = queue_json(setup)
                return bool(queued) and queued[0]["recipients"][0]["state"] == "deferred"

            assert _wait(deferred), queue_json(setup)
            rcpt = queue_json(setup)[0]["recipients"][0]
            assert rcpt["address"] == PERSON_EMAIL and "labo-sign" in rcpt["last_error"]
            assert (rcpt["last_status"] or "").startswith("4."), rcpt
            alerts = [e for e in log_events(setup) if e["event"] == "key-unavailable"]
            assert alerts and alerts[0]["key"] == "labo-sign" and alerts[0]["level"] == "error"
            assert not any(e["event"] == "bounced" for e in log_events(setup))
            assert sink.handler.snapshot() == []

            (own / "elsewhere.pem").rename(key_file)  # the operator puts it back
            assert msgw("queue", "retry", "--all", "--config", str(setup.config)).returncode == 0
            (got,) = sink.wait_for(1, timeout=30)
        assert got.recipients == [PERSON_EMAIL] and b"application/pkcs7-mime" in got.data
        assert not any(e["event"] == "bounced" for e in log_events(setup))
    finally:
        sink.stop()

