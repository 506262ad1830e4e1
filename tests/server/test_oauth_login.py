"""Pro Santé Connect login over a real SMTP socket (issue 17, items 2, 5 and 6).

A real `msgw serve` with `[auth.oidc]` pointing at an OIDC issuer stand-in over HTTPS (its own
TEST CA, keys generated here and rotated once): OAUTHBEARER (RFC 7628) and XOAUTH2 with a valid
token log in and may send only as the professional's addresses; every forged or unfit token
(wrong audience, expired, insufficient acr, missing scope, unknown kid after the rotation refetch,
`alg: none`, HS256 keyed with the public key) gets the RFC 7628 error challenge then 535; an issuer
that cannot be reached gives 454. The password switch: a listener with `password_auth = false`
does not offer PLAIN/LOGIN, an account with `password_auth = false` fails with its right password.
"""

from __future__ import annotations

import json
import smtplib
import ssl
from base64 import b64decode, b64encode
from pathlib import Path

import pytest

from gateway.server.passwords import hash_password
from tests.conftest import free_port
from tests.e2e.harness import PASSWORD, GatewayProcess, GatewaySetup, log_events, make_message, msgw, write_config
from tests.server.oidc_issuer import AUDIENCE, Issuer

DOCTOR = "dr.psc@msgw.test"
DOCTOR_ID = "810000000001"
DIRECTORY_DOCTOR = "dr.annuaire@msgw.test"
DIRECTORY_RPPS = "10000000002"
LOCAL_RCPT = "secretariat@msgw.test"


def _tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the test listener's throw-away self-signed certificate
    return ctx


def _config(folder: Path, issuer_url: str, ca_file: Path, *, max_failures: int = 1000) -> tuple[GatewaySetup, int]:
    cards_port = free_port()
    extra = f"""
[accounts."{DOCTOR}"]
password_hash = "{hash_password(PASSWORD)}"
password_auth = false
national_ids = ["{DOCTOR_ID}"]

[listeners.cards]
kind = "submission"
address = "127.0.0.1"
port = {cards_port}
tls_cert = "tls-cert.pem"
tls_key = "tls-key.pem"
password_auth = false

[auth]
max_failures = {max_failures}

[auth.oidc]
issuer = "{issuer_url}"
audience = "{AUDIENCE}"
ca_file = "{ca_file}"
"""
    setup = write_config(folder, sink_port=free_port(), extra=extra)
    return setup, cards_port


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory):
    issuer = Issuer(tmp_path_factory.mktemp("issuer"))
    yield issuer
    issuer.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, issuer: Issuer):
    folder = tmp_path_factory.mktemp("gw")
    setup, cards_port = _config(folder, issuer.url, issuer.ca.ca_file)
    out = msgw("directory", "add", DIRECTORY_DOCTOR, "--capability", "local", "--key-ref", "dr-annuaire",
               "--rpps", DIRECTORY_RPPS, "--config", str(setup.config))
    assert out.returncode == 0, out.stderr
    with GatewayProcess(setup):
        yield setup, cards_port


def _session(port: int) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, timeout=30)
    client.ehlo("client.msgw.test")
    client.starttls(context=_tls())
    client.ehlo("client.msgw.test")
    return client


def _oauthbearer(token: str, authzid: str = "") -> bytes:
    gs2 = f"n,a={authzid}," if authzid else "n,,"
    return f"{gs2}\x01auth=Bearer {token}\x01\x01".encode()


def _xoauth2(token: str, user: str) -> bytes:
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()


def _auth(client: smtplib.SMTP, mechanism: str, blob: bytes) -> tuple[int, bytes, dict | None]:
    """AUTH with an initial response; on a 334 error challenge, answer the dummy \\x01 (RFC 7628)."""
    code, msg = client.docmd("AUTH", f"{mechanism} {b64encode(blob).decode()}")
    error = None
    if code == 334:
        error = json.loads(b64decode(msg))
        code, msg = client.docmd(b64encode(b"\x01").decode())
    return code, msg, error


def _login(port: int, mechanism: str, blob: bytes) -> tuple[int, bytes, dict | None]:
    with _session(port) as client:
        return _auth(client, mechanism, blob)


def _refused(setup: GatewaySetup, port: int, blob: bytes, reason: str, mechanism: str = "OAUTHBEARER") -> None:
    code, msg, error = _login(port, mechanism, blob)
    assert code == 535, (code, msg)
    assert msg.startswith(b"5.7.8")
    assert error is not None and error["status"] == "invalid_token"
    assert error["openid-configuration"].endswith("/.well-known/openid-configuration")
    assert error["scope"] == "openid scope_all"
    failed = [e for e in log_events(setup) if e.get("event") == "auth-failed" and e.get("mechanism") == mechanism]
    assert failed and failed[-1]["reason"] == reason, failed[-1:]


def test_a_valid_token_logs_in_and_sends_only_as_its_own_address(gateway, issuer) -> None:
    setup, _ = gateway
    token = issuer.token(DOCTOR_ID)
    with _session(setup.submission_port) as client:
        assert "OAUTHBEARER" in client.esmtp_features["auth"] and "XOAUTH2" in client.esmtp_features["auth"]
        code, msg, error = _auth(client, "OAUTHBEARER", _oauthbearer(token, DOCTOR))
        assert (code, error) == (235, None), msg
        code, _ = client.mail(f"<{LOCAL_RCPT}>")
        assert code == 553  # sender binding: another address than the professional's own
        client.rset()
        code, msg = client.mail(f"<{DOCTOR}>")
        assert code == 250, msg
        assert client.rcpt(f"<{LOCAL_RCPT}>")[0] == 250
        code, msg = client.data(make_message(DOCTOR, LOCAL_RCPT, "TEST", "body"))
        assert code == 250, msg
    log = setup.log_file.read_text()
    assert token not in log and token[-40:] not in log  # never a credential in the log
    assert any(e.get("event") == "auth-ok" and e.get("mechanism") == "OAUTHBEARER" for e in log_events(setup))


def test_xoauth2_with_a_valid_token_logs_in(gateway, issuer) -> None:
    setup, _ = gateway
    code, msg, error = _login(setup.submission_port, "XOAUTH2", _xoauth2(issuer.token(DOCTOR_ID), DOCTOR))
    assert (code, error) == (235, None), msg


def test_a_token_is_never_taken_before_tls(gateway, issuer) -> None:
    setup, _ = gateway
    with smtplib.SMTP("127.0.0.1", setup.submission_port, timeout=30) as client:
        client.ehlo("client.msgw.test")
        code, _ = client.docmd("AUTH", "OAUTHBEARER " + b64encode(_oauthbearer(issuer.token(DOCTOR_ID))).decode())
        assert code in (530, 538)


def test_oauthbearer_without_initial_response(gateway, issuer) -> None:
    setup, _ = gateway
    with _session(setup.submission_port) as client:
        code, msg = client.docmd("AUTH", "OAUTHBEARER")
        assert code == 334, msg
        code, msg = client.docmd(b64encode(_oauthbearer(issuer.token(DOCTOR_ID))).decode())
        assert code == 235, msg


def test_a_directory_professional_logs_in_as_the_local_mailbox(gateway, issuer) -> None:
    setup, _ = gateway
    with _session(setup.submission_port) as client:
        code, msg, _ = _auth(client, "OAUTHBEARER", _oauthbearer(issuer.token("8" + DIRECTORY_RPPS)))
        assert code == 235, msg
        assert client.mail(f"<{DOCTOR}>")[0] == 553
        client.rset()
        assert client.mail(f"<{DIRECTORY_DOCTOR}>")[0] == 250


@pytest.mark.parametrize("case", ["audience", "expired", "acr", "scope", "none", "hs256-public-key",
                                  "issuer", "not-yet-valid", "unknown-national-id", "authzid"])
def test_unfit_or_forged_tokens_get_the_rfc7628_error_then_535(gateway, issuer, case: str) -> None:
    setup, _ = gateway
    now_claims = issuer.claims(DOCTOR_ID)
    tokens = {
        "audience": (issuer.token(DOCTOR_ID, aud="another-service", azp="another-client"), "audience"),
        "expired": (issuer.token(DOCTOR_ID, exp=now_claims["exp"] - 3600, iat=now_claims["iat"] - 3600,
                                 nbf=now_claims["nbf"] - 3600), "expired"),
        "acr": (issuer.token(DOCTOR_ID, acr="eidas-faible"), "acr"),
        "scope": (issuer.token(DOCTOR_ID, scope="openid"), "scope"),
        "none": (issuer.none_token(DOCTOR_ID), "algorithm"),
        "hs256-public-key": (issuer.hs256_with_public_key(DOCTOR_ID), "algorithm"),
        "issuer": (issuer.token(DOCTOR_ID, iss=issuer.url + "/other"), "issuer"),
        "not-yet-valid": (issuer.token(DOCTOR_ID, nbf=now_claims["nbf"] + 3600), "not-yet-valid"),
        "unknown-national-id": (issuer.token("899999999999"), "unknown-national-id"),
        "authzid": (issuer.token(DOCTOR_ID), "authzid"),
    }
    token, reason = tokens[case]
    authzid = DIRECTORY_DOCTOR if case == "authzid" else ""
    _refused(setup, setup.submission_port, _oauthbearer(token, authzid), reason)


def test_xoauth2_refusal_is_the_error_challenge_then_535(gateway, issuer) -> None:
    setup, _ = gateway
    _refused(setup, setup.submission_port, _xoauth2(issuer.hs256_with_public_key(DOCTOR_ID), DOCTOR), "algorithm",
             mechanism="XOAUTH2")


def test_key_rotation_is_followed_once_and_unknown_kids_do_not_hammer_the_issuer(gateway, issuer) -> None:
    setup, _ = gateway
    assert _login(setup.submission_port, "OAUTHBEARER", _oauthbearer(issuer.token(DOCTOR_ID)))[0] == 235
    old = issuer.key
    fetched = issuer.requests["/jwks"]
    issuer.rotate()
    # a token signed with the new key: the unknown kid makes one refetch, then it is accepted
    code, msg, _ = _login(setup.submission_port, "OAUTHBEARER", _oauthbearer(issuer.token(DOCTOR_ID)))
    assert code == 235, msg
    assert issuer.requests["/jwks"] == fetched + 1
    # after the rotation: the retired key and invented kids are refused, with no new fetch
    _refused(setup, setup.submission_port, _oauthbearer(issuer.token(DOCTOR_ID, key=old)), "unknown-kid")
    for n in range(3):
        _refused(setup, setup.submission_port,
                 _oauthbearer(issuer.token(DOCTOR_ID, kid=f"invented-{n}")), "unknown-kid")
    assert issuer.requests["/jwks"] == fetched + 1


def test_password_switch_on_a_listener_hides_and_refuses_plain_and_login(gateway, issuer) -> None:
    setup, cards_port = gateway
    with _session(cards_port) as client:
        offered = client.esmtp_features.get("auth", "").split()
        assert "PLAIN" not in offered and "LOGIN" not in offered
        assert "OAUTHBEARER" in offered
        code, _ = client.docmd("AUTH", "PLAIN " + b64encode(f"\0lis@lab.example\0{PASSWORD}".encode()).decode())
        assert code == 504
        code, _, _ = _auth(client, "OAUTHBEARER", _oauthbearer(issuer.token(DOCTOR_ID)))
        assert code == 235
    with _session(setup.submission_port) as client:  # the ordinary listener still takes passwords
        assert "PLAIN" in client.esmtp_features["auth"].split()
        assert client.login("lis@lab.example", PASSWORD)[0] == 235


def test_an_account_with_password_auth_false_fails_with_its_right_password(gateway) -> None:
    setup, _ = gateway
    with _session(setup.submission_port) as client, pytest.raises(smtplib.SMTPAuthenticationError) as err:
        client.login(DOCTOR, PASSWORD)
    assert err.value.smtp_code == 535


def test_an_unreachable_issuer_is_a_temporary_failure(tmp_path: Path, issuer) -> None:
    dead = f"https://localhost:{free_port()}"  # nothing listens there
    setup, _ = _config(tmp_path, dead, issuer.ca.ca_file)
    with GatewayProcess(setup):
        code, msg, error = _login(setup.submission_port, "OAUTHBEARER", _oauthbearer(issuer.token(DOCTOR_ID)))
    assert (code, error) == (454, None), msg
    assert msg.startswith(b"4.7.0")
    assert any(e.get("event") == "auth-deferred" and e.get("reason") == "issuer-unavailable"
               for e in log_events(setup))


def test_token_failures_count_in_the_auth_throttle(tmp_path: Path, issuer) -> None:
    setup, _ = _config(tmp_path, issuer.url, issuer.ca.ca_file, max_failures=2)
    with GatewayProcess(setup):
        for _ in range(2):
            assert _login(setup.submission_port, "OAUTHBEARER", _oauthbearer(issuer.none_token(DOCTOR_ID)))[0] == 535
        code, msg, _ = _login(setup.submission_port, "OAUTHBEARER", _oauthbearer(issuer.token(DOCTOR_ID)))
    assert code == 454 and b"Too many authentication failures" in msg
    assert any(e.get("event") == "auth-failed" and e.get("locked") for e in log_events(setup))
    records = [json.loads(line) for line in (setup.folder / "audit.jsonl").read_text().splitlines()]
    failed = [r for r in records if r.get("decision") == "auth-failed"]
    assert len(failed) == 2 and failed[0]["reason"] == "OAUTHBEARER: algorithm", failed
    assert any(r.get("decision") == "auth-locked" for r in records)
