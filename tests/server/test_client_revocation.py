"""Revocation of TLS client certificates (issue 17): the checker with real certificates, real CRLs
over HTTP and `openssl ocsp` as the responder; a revoked relay partner refused at MAIL over real
sockets. (MLLP: tests/intake/test_mllp_revocation.py.)"""

from __future__ import annotations

import asyncio
import datetime as dt
import smtplib
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.server.clientcheck import ClientChecks
from gateway.smime.clientauth import ClientCertChecker, national_id, usage_refusal
from gateway.smime.ocsp import OcspSource
from gateway.smime.revocation import CrlSource, http_fetch
from gateway.smime.testpki import CARD_OTHER_RPPS, PARTNER_CN, PARTNER_REVOKED_CN, PERSON_RPPS, Issued
from tests.conftest import free_port
from tests.e2e.harness import GatewayProcess, GatewaySetup, write_config
from tests.e2e.tlspki import TestCA
from tests.server.cardpki import CardPki, card_pki, ocsp_responder


@pytest.fixture(scope="module")
def cards(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CardPki]:
    with card_pki(tmp_path_factory.mktemp("cards")) as served:
        yield served


def der(issued: Issued) -> bytes:
    return issued.cert.public_bytes(serialization.Encoding.DER)


def x509_der(path: Path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(serialization.Encoding.DER)


def checks(cards: CardPki, *, crl_files: tuple[str, ...] = (), fetch: bool = True, ocsp: bool = False) -> ClientChecks:
    pki = cards.pki
    return ClientChecks([pki.root.cert, pki.persons_ca.cert, pki.orgs_ca.cert],
                        CrlSource(files=[pki.crl_dir / f for f in crl_files], fetcher=http_fetch if fetch else None),
                        OcspSource() if ocsp else None)


def card_checker(cards: CardPki, **kw: object) -> ClientCertChecker:
    return checks(cards, **kw).checker(cards.pki.root.cert_path, card=True)  # type: ignore[arg-type]


def test_identifiant_national_from_the_cn_or_the_upn(cards: CardPki) -> None:
    pki = cards.pki
    assert national_id(pki["card_auth"].cert) == "8" + PERSON_RPPS
    assert national_id(pki["card_other"].cert) == "8" + CARD_OTHER_RPPS
    assert national_id(pki["partner_tls"].cert) is None  # an organisation certificate names no person


def test_usage_card_needs_client_auth_partner_follows_rfc5280(cards: CardPki) -> None:
    pki = cards.pki
    assert usage_refusal(pki["card_auth"].cert, require_client_auth=True) is None
    assert usage_refusal(pki["card_no_client_auth"].cert, require_client_auth=True) == "no-client-auth"
    assert usage_refusal(pki["person_sign"].cert, require_client_auth=True) == "no-client-auth"  # signature card
    assert usage_refusal(pki["card_no_client_auth"].cert, require_client_auth=False) is None  # no EKU: any use
    assert usage_refusal(pki["org_sign"].cert, require_client_auth=False) == "no-client-auth"  # emailProtection
    assert usage_refusal(pki["org_encrypt"].cert, require_client_auth=False) == "no-digital-signature"


def test_checker_with_crls_over_http(cards: CardPki) -> None:
    pki = cards.pki
    checker = card_checker(cards)

    async def run() -> dict[str, tuple[str, bool]]:
        out = {}
        for name in ("card_auth", "card_revoked", "card_expired", "card_no_client_auth"):
            verdict = await checker.check(der(pki[name]))
            out[name] = (verdict.reason, verdict.temporary)
        return out

    assert asyncio.run(run()) == {"card_auth": ("good", False), "card_revoked": ("revoked", False),
                                  "card_expired": ("expired", False), "card_no_client_auth": ("no-client-auth", False)}


def test_checker_refuses_expired_and_unknown_issuer(cards: CardPki, tmp_path: Path) -> None:
    rogue = TestCA(tmp_path / "rogue", name="TEST AC rogue")
    stranger = rogue.issue("poste.cabinet.test", server=False)
    checker = checks(cards).checker(cards.pki.root.cert_path)
    stranger_der = x509_der(stranger.cert)
    assert asyncio.run(checker.check(stranger_der)).reason == "unknown-issuer"
    assert asyncio.run(checker.check(der(cards.pki["card_expired"]))).reason == "expired"
    assert asyncio.run(checker.check(b"not a certificate")).reason == "unreadable"


def test_ocsp_revoked_wins_over_a_crl_that_does_not_list_it_yet(cards: CardPki) -> None:
    """The card was revoked after the CRL was published: OCSP says so, the CRL does not."""
    pki = cards.pki
    with ocsp_responder(cards, [pki["card_auth"].cert], [pki["card_other"].cert]):
        checker = card_checker(cards, crl_files=("root.crl", "persons.crl"), fetch=False, ocsp=True)
        assert asyncio.run(checker.check(der(pki["card_other"]))).reason == "revoked"
        assert asyncio.run(checker.check(der(pki["card_auth"]))).reason == "good"


def test_responder_down_is_temporary_never_cached_and_good_verdicts_are(cards: CardPki) -> None:
    pki = cards.pki
    checker = card_checker(cards, crl_files=("root.crl",), fetch=False, ocsp=True)
    card = der(pki["card_auth"])
    down = asyncio.run(checker.check(card))
    assert (down.reason, down.temporary, down.ok) == ("revocation-unavailable", True, False)
    assert checker.cache.entries == {}  # a temporary answer is not kept
    with ocsp_responder(cards, [pki["card_auth"].cert], []):
        assert asyncio.run(checker.check(card)).ok
    # the responder is gone again: the verdict comes from the cache (per fingerprint, until it expires)
    assert asyncio.run(checker.check(card)).ok
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=6)
    assert asyncio.run(checker.check(card, now=later)).temporary  # past its TTL it is asked again


def test_shared_checks_one_cache_for_every_listener(cards: CardPki) -> None:
    shared = checks(cards)
    a = shared.checker(cards.pki.root.cert_path)
    assert shared.checker(cards.pki.root.cert_path) is a
    assert shared.checker(cards.pki.root.cert_path, card=True).cache is a.cache


# -- relay partners over real sockets ------------------------------------------------------------
def relay_setup(folder: Path, cards: CardPki) -> GatewaySetup:
    """A relay listener trusting the TEST organisations CA for the two partners' certificates."""
    pki = cards.pki
    folder.mkdir(parents=True, exist_ok=True)
    ca_file = folder / "orgs-ca.pem"
    ca_file.write_bytes(pki.root.cert_path.read_bytes() + pki.orgs_ca.cert_path.read_bytes())
    setup = write_config(folder, sink_port=free_port(), extra=f"""
[partners."{PARTNER_CN}"]
senders = ["@partenaire.sante.test"]

[partners."{PARTNER_REVOKED_CN}"]
senders = ["@partenaire.sante.test"]
""")
    text = setup.config.read_text().replace(
        "allowed_networks = []",
        f'allowed_networks = []\nclient_ca = "{ca_file}"\n'
        f'allowed_client_subjects = ["{PARTNER_CN}", "{PARTNER_REVOKED_CN}"]')
    setup.config.write_text(text)
    return setup


@pytest.fixture(scope="module")
def relay(cards: CardPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewaySetup]:
    setup = relay_setup(tmp_path_factory.mktemp("gw-relay"), cards)
    with GatewayProcess(setup):
        yield setup


def relay_mail(setup: GatewaySetup, partner: Issued) -> tuple[int, bytes]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(str(partner.cert_path), str(partner.key_path))
    with smtplib.SMTP("127.0.0.1", setup.relay_port, timeout=15) as client:
        client.ehlo("mx.partenaire.sante.test")
        client.starttls(context=ctx)
        client.ehlo("mx.partenaire.sante.test")
        code, reply = client.mail("dr@partenaire.sante.test")
        if code == 250:
            assert client.rcpt("dr@loin.sante.test")[0] == 250  # a trusted partner may relay
        return code, reply


def test_revoked_relay_partner_is_refused_at_mail(relay: GatewaySetup, cards: CardPki) -> None:
    assert relay_mail(relay, cards.pki["partner_tls"])[0] == 250
    code, reply = relay_mail(relay, cards.pki["partner_revoked"])
    assert (code, reply) == (550, b"5.7.1 Client certificate refused")
    log = relay.log_file.read_text(encoding="utf-8")
    assert '"event": "partner-refused"' in log and '"reason": "revoked"' in log


def test_partner_whose_crl_cannot_be_fetched_is_deferred(tmp_path: Path) -> None:
    """The CRL server is down: a local fault, 454 4.7.0 (the partner retries), never a yes."""
    with card_pki(tmp_path / "pki") as gone:
        pass  # its CRL server stops here; the certificates still point at it
    setup = relay_setup(tmp_path / "gw", gone)
    with GatewayProcess(setup):
        code, reply = relay_mail(setup, gone.pki["partner_tls"])
    assert code == 454 and reply.startswith(b"4.7.0")
    log = setup.log_file.read_text(encoding="utf-8")
    assert '"reason": "revocation-unavailable"' in log and '"temporary": true' in log
