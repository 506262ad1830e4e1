"""CPS card login (issue 17): SASL EXTERNAL on the submission listener with the card's
authentication certificate in the TLS handshake, over real sockets against `msgw serve`.

Peers: `smtplib` with a client certificate, `openssl s_client -starttls smtp -cert` (an independent
TLS client, which sends AUTH EXTERNAL by hand) and `swaks --tls-cert/--tls-key` (swaks 20201014
has no EXTERNAL mechanism: it shows what the server offers to a client with and without a card).
Revocation: CRLs served over HTTP by the test (`cardpki.card_pki`), OCSP answered by `openssl ocsp`.
"""

from __future__ import annotations

import base64
import json
import smtplib
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.directory.directory import AddressInput, DirectoryItem, Identity, SqliteDirectory, directory_path
from gateway.smime.testpki import CARD_OTHER_RPPS, PERSON_RPPS, Issued
from tests.conftest import free_port, require_tool
from tests.e2e.harness import GatewayProcess, GatewaySetup, make_message, write_config
from tests.server.cardpki import CardPki, card_pki, ocsp_responder

JEAN = "jean.test-dupont@msgw.test"
PAUL = "paul.test-martin@msgw.test"
LOCAL_RCPT = "postmaster@msgw.test"


def card_setup(folder: Path, cards: CardPki, trust: str, *, max_failures: int = 1000) -> GatewaySetup:
    """A gateway whose submission listener asks for a card certificate (client_ca: the TEST
    IGC-Santé root and persons CA), with Jean's account mapped by `national_ids` (no password)
    and Paul known only to the directory as a local mailbox."""
    pki = cards.pki
    folder.mkdir(parents=True, exist_ok=True)
    ca_file = folder / "cards-ca.pem"
    ca_file.write_bytes(pki.root.cert_path.read_bytes() + pki.persons_ca.cert_path.read_bytes())
    setup = write_config(folder, sink_port=free_port(), extra=f"""
[accounts."{JEAN}"]
password_auth = false
national_ids = ["8{PERSON_RPPS}"]

[auth]
max_failures = {max_failures}

[trust]
anchors = "{pki.trust_dir}"
{trust}
""")
    text = setup.config.read_text().replace("max_recipients = 50\n",
                                             f'max_recipients = 50\nclient_ca = "{ca_file}"\n', 1)
    setup.config.write_text(text)
    config = load_config(setup.config)
    store = SqliteDirectory(directory_path(config))
    try:
        store.put(DirectoryItem(
            rkey="bal:" + PAUL, entity_key="pp:8" + CARD_OTHER_RPPS,
            identity=Identity(kind="person", national_id="8" + CARD_OTHER_RPPS, rpps=CARD_OTHER_RPPS),
            address=AddressInput(address=PAUL, capability="local", key_ref="paul")))
    finally:
        store.close()
    return setup


def ocsp_only(cards: CardPki) -> str:
    """`[trust]` keys: the cards' status from OCSP alone (the CAs' from the root's CRL file)."""
    return f'fetch_crls = false\nocsp = true\ncrl_files = ["{cards.pki.crl_dir / "root.crl"}"]'


def tls_context(card: Issued | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the server's identity is not what these tests are about
    if card is not None:
        ctx.load_cert_chain(str(card.cert_path), str(card.key_path))
    return ctx


def session(setup: GatewaySetup, card: Issued | None) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", setup.submission_port, timeout=15)
    client.ehlo("poste.cabinet.test")
    client.starttls(context=tls_context(card))
    client.ehlo("poste.cabinet.test")
    return client


def external(client: smtplib.SMTP, authzid: str = "") -> tuple[int, bytes]:
    """AUTH EXTERNAL with an initial response (`=` for an empty authorization identity)."""
    initial = base64.b64encode(authzid.encode()).decode() if authzid else "="
    return client.docmd("AUTH", f"EXTERNAL {initial}")


def log_events(setup: GatewaySetup, name: str) -> list[dict]:
    lines = setup.log_file.read_text(encoding="utf-8").splitlines() if setup.log_file.exists() else []
    return [e for e in (json.loads(line) for line in lines if line.startswith("{")) if e.get("event") == name]


def refused_with(setup: GatewaySetup, reason: str) -> bool:
    return any(e.get("mechanism") == "EXTERNAL" and e.get("reason") == reason for e in log_events(setup, "auth-failed"))


@pytest.fixture(scope="module")
def cards(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CardPki]:
    with card_pki(tmp_path_factory.mktemp("cards")) as served:
        yield served


@pytest.fixture(scope="module")
def crl_gateway(cards: CardPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewaySetup]:
    """Revocation by CRL only, fetched over HTTP from the certificates' distribution points."""
    setup = card_setup(tmp_path_factory.mktemp("gw-crl"), cards, "fetch_crls = true\nocsp = false")
    with GatewayProcess(setup):
        yield setup


def test_card_login_sends_as_its_own_address_only(crl_gateway: GatewaySetup, cards: CardPki) -> None:
    with session(crl_gateway, cards.pki["card_auth"]) as client:
        assert "EXTERNAL" in client.esmtp_features["auth"].split()
        assert client.auth("EXTERNAL", lambda challenge=None: "")[0] == 235
        assert client.mail(JEAN)[0] == 250
        assert client.rcpt(LOCAL_RCPT)[0] == 250
        assert client.data(make_message(JEAN, LOCAL_RCPT, "card login", "hello"))[0] == 250
        # sender binding: the card proves Jean, not anyone else of the practice
        assert client.mail("someone.else@msgw.test")[0] == 553


def test_external_is_offered_only_with_a_client_certificate(crl_gateway: GatewaySetup) -> None:
    with session(crl_gateway, None) as client:
        assert "EXTERNAL" not in client.esmtp_features.get("auth", "").split()
        assert external(client)[0] == 504
        assert client.mail(JEAN)[0] == 530


def test_card_of_a_directory_mailbox_logs_in_as_that_mailbox(crl_gateway: GatewaySetup, cards: CardPki) -> None:
    with session(crl_gateway, cards.pki["card_other"]) as client:
        assert external(client)[0] == 235
        assert client.mail(PAUL)[0] == 250
        client.rset()
        assert client.mail(JEAN)[0] == 553


def test_authorization_identity_must_be_the_cards_account(crl_gateway: GatewaySetup, cards: CardPki) -> None:
    with session(crl_gateway, cards.pki["card_auth"]) as client:
        assert external(client, PAUL)[0] == 535  # Jean's card asking to act as Paul
    assert refused_with(crl_gateway, "authzid-mismatch")
    with session(crl_gateway, cards.pki["card_auth"]) as client:
        assert external(client, JEAN)[0] == 235


def test_revoked_card_is_refused_by_crl(crl_gateway: GatewaySetup, cards: CardPki) -> None:
    with session(crl_gateway, cards.pki["card_revoked"]) as client:
        code, reply = external(client)
        assert (code, reply) == (535, b"5.7.8 Authentication credentials invalid")
        assert client.mail(JEAN)[0] == 530
    assert refused_with(crl_gateway, "revoked")
    text = crl_gateway.log_file.read_text(encoding="utf-8")
    assert "BEGIN CERTIFICATE" not in text and "TEST-REVOQUE" not in text  # no certificate dump


def test_card_without_client_auth_usage_is_refused(crl_gateway: GatewaySetup, cards: CardPki) -> None:
    with session(crl_gateway, cards.pki["card_no_client_auth"]) as client:
        assert external(client)[0] == 535
    assert refused_with(crl_gateway, "no-client-auth")


def test_unknown_identifiant_national_is_refused(crl_gateway: GatewaySetup, cards: CardPki) -> None:
    with session(crl_gateway, cards.pki["card_unknown"]) as client:
        assert external(client)[0] == 535
    assert refused_with(crl_gateway, "unknown-national-id")


def test_expired_card_fails_the_handshake(crl_gateway: GatewaySetup, cards: CardPki) -> None:
    """OpenSSL refuses an expired certificate before SMTP resumes (the checker refuses it too:
    test_client_revocation.py::test_checker_refuses_expired_and_unknown_issuer)."""
    with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError)):
        with session(crl_gateway, cards.pki["card_expired"]) as client:
            external(client)


def test_openssl_s_client_logs_in_with_external(crl_gateway: GatewaySetup, cards: CardPki) -> None:
    openssl = require_tool("openssl")
    card = cards.pki["card_auth"]
    commands = (f"EHLO poste.cabinet.test\nAUTH EXTERNAL =\nMAIL FROM:<{JEAN}>\nRCPT TO:<{LOCAL_RCPT}>\n"
                "RSET\nMAIL FROM:<x@msgw.test>\nQUIT\n")
    out = subprocess.run(  # noqa: S603 - fixed arguments
        [openssl, "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{crl_gateway.submission_port}",
         "-cert", str(card.cert_path), "-key", str(card.key_path), "-crlf", "-quiet", "-ign_eof"],
        input=commands.encode(), capture_output=True, timeout=30, check=False).stdout.decode(errors="replace")
    assert "250-AUTH EXTERNAL" in out or " EXTERNAL" in out
    assert "235 2.7.0 Authentication successful" in out
    assert "250 2.1.0 OK" in out and "553 5.7.1" in out


def test_swaks_with_a_card_certificate_is_offered_external(crl_gateway: GatewaySetup, cards: CardPki) -> None:
    swaks = require_tool("swaks")
    card = cards.pki["card_auth"]

    def ehlo(*cert: str) -> str:
        return subprocess.run(  # noqa: S603 - fixed arguments
            [swaks, "--server", "127.0.0.1", "--port", str(crl_gateway.submission_port), "--tls",
             "--ehlo", "poste.cabinet.test", "--quit-after", "HELO", *cert],
            capture_output=True, timeout=30, check=False).stdout.decode(errors="replace")

    with_card = ehlo("--tls-cert", str(card.cert_path), "--tls-key", str(card.key_path))
    without = ehlo()
    assert "AUTH EXTERNAL" in with_card
    assert "250-AUTH" in without and "EXTERNAL" not in without


def test_card_good_by_ocsp_logs_in_and_revoked_by_ocsp_is_refused(cards: CardPki, tmp_path: Path) -> None:
    """`openssl ocsp` is the only source of the cards' status (the root's CRL from a file)."""
    pki = cards.pki
    setup = card_setup(tmp_path / "gw", cards, ocsp_only(cards))
    with ocsp_responder(cards, [pki["card_auth"].cert], [pki["card_other"].cert]), GatewayProcess(setup):
        with session(setup, pki["card_auth"]) as client:
            assert external(client)[0] == 235
        with session(setup, pki["card_other"]) as client:
            assert external(client)[0] == 535
    assert refused_with(setup, "revoked")


def test_ocsp_responder_down_is_temporary_and_failures_are_throttled(cards: CardPki, tmp_path: Path) -> None:
    pki = cards.pki
    setup = card_setup(tmp_path / "gw", cards, ocsp_only(cards), max_failures=2)
    with GatewayProcess(setup):  # nothing answers on the OCSP port
        with session(setup, pki["card_auth"]) as client:
            code, reply = external(client)
            assert code == 454 and reply.startswith(b"4.7.0")
            assert client.mail(JEAN)[0] == 530
        assert any(e.get("reason") == "revocation-unavailable" for e in log_events(setup, "auth-deferred"))
        for _ in range(2):  # card failures count like password failures
            with session(setup, pki["card_no_client_auth"]) as client:
                assert external(client)[0] == 535
        with session(setup, pki["card_auth"]) as client:
            code, reply = external(client)
            assert code == 454 and b"Too many authentication failures" in reply
