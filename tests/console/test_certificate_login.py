"""Operator login with a TLS client certificate: the TEST PKI's card certificates, CRLs served
over HTTP on loopback, the same `ClientCertChecker` as the SMTP listeners (chain, clientAuth,
revocation hard-fail). Each trust check with its attack: a revoked certificate, a certificate
no operator names, a revocation source that cannot be reached (temporary: never a login)."""

from __future__ import annotations

import hashlib
import re
import ssl
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization

from gateway.audit import AuditTrail, AuditWriter
from gateway.console.server import ConsoleServer
from gateway.server.clientcheck import ClientChecks
from gateway.smime.revocation import CrlSource, http_fetch
from gateway.smime.testpki import Issued
from gateway.spool import Spool
from tests.console.support import console_config
from tests.server.cardpki import CardPki, card_pki

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture(scope="module")
def cards(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CardPki]:
    with card_pki(tmp_path_factory.mktemp("cards")) as served:
        yield served


def _cn(issued: Issued) -> str:
    return issued.cert.subject.rfc4514_string().split("CN=", 1)[1].split(",", 1)[0]


def _fingerprint(issued: Issued) -> str:
    return hashlib.sha256(issued.cert.public_bytes(serialization.Encoding.DER)).hexdigest()


class CardConsole:
    def __init__(self, folder: Path, cards: CardPki) -> None:
        pki = cards.pki
        ca_file = folder / "persons-ca.pem"
        folder.mkdir(parents=True, exist_ok=True)
        ca_file.write_bytes(pki.root.cert_path.read_bytes() + pki.persons_ca.cert_path.read_bytes())
        operators = (f'[operators.alice]\npassword_hash_file = "alice.hash"\n'
                     f'[operators.carte]\ncertificate_fingerprint = "{_fingerprint(pki["card_auth"])}"\n'
                     f'[operators.revoque]\ncertificate_subject = "{_cn(pki["card_revoked"])}"\n')
        self.config = console_config(folder, console_extra=f'client_ca = "{ca_file}"\n', operators=operators)
        checks = ClientChecks([pki.root.cert, pki.persons_ca.cert], CrlSource(fetcher=http_fetch), None)
        self.spool = Spool(self.config.spool.path).open()
        self.writer = AuditWriter(AuditTrail(self.config.audit.path))
        self.server = ConsoleServer(self.config, self.spool, audit=self.writer,
                                    cert_check=checks.checker(ca_file, card=True).check)

    @property
    def url(self) -> str:
        assert self.server.address is not None
        return f"https://127.0.0.1:{self.server.address[1]}"

    def failures(self) -> list[tuple[str, str]]:
        self.writer.close()
        return [(r["identity"], r["reason"]) for r in AuditTrail(self.config.audit.path).records()
                if r["decision"] == "console-login-failed"]


def with_card(card: Issued) -> aiohttp.ClientSession:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the test console's self-signed certificate
    ctx.load_cert_chain(str(card.cert_path), str(card.key_path))
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx), cookie_jar=aiohttp.CookieJar(unsafe=True))


async def certificate_login(http: aiohttp.ClientSession, url: str) -> tuple[str, aiohttp.ClientResponse]:
    async with http.get(url + "/login") as page:
        html = await page.text()
    token = CSRF.search(html).group(1)
    resp = await http.post(url + "/login/certificate", data={"csrf": token}, allow_redirects=False)
    return html, resp


@pytest.fixture
async def console(tmp_path: Path, cards: CardPki):
    running = CardConsole(tmp_path / "console", cards)
    await running.server.start()
    yield running
    await running.server.stop()
    running.writer.close()
    running.spool.close()


async def test_a_named_card_logs_in_and_a_revoked_one_does_not(console: CardConsole, cards: CardPki) -> None:
    async with with_card(cards.pki["card_auth"]) as http:
        html, resp = await certificate_login(http, console.url)
        assert "Log in as carte with your certificate" in html
        assert resp.status == 303 and resp.headers["Location"] == "/queue"
        async with http.get(console.url + "/queue", allow_redirects=False) as page:
            assert page.status == 200 and "carte" in await page.text()
    async with with_card(cards.pki["card_revoked"]) as http:
        html, resp = await certificate_login(http, console.url)
        assert "with your certificate" not in html
        assert resp.status == 401
        async with http.get(console.url + "/queue", allow_redirects=False) as page:
            assert page.status == 303
    assert console.failures() == [("revoque", "client certificate: revoked")]


async def test_a_card_no_operator_names_gets_no_session(console: CardConsole, cards: CardPki) -> None:
    async with with_card(cards.pki["card_other"]) as http:
        html, resp = await certificate_login(http, console.url)
        assert "with your certificate" not in html and resp.status == 401
        assert not [c for c in resp.headers.getall("Set-Cookie", []) if c.startswith("__Host-msgw-console=")]


async def test_a_revocation_source_down_is_temporary_never_a_login(tmp_path: Path) -> None:
    with card_pki(tmp_path / "gone") as gone:
        pass  # its CRL server is stopped: the CRL distribution points no longer answer
    running = CardConsole(tmp_path / "console", gone)
    await running.server.start()
    try:
        async with with_card(gone.pki["card_auth"]) as http:
            html, resp = await certificate_login(http, running.url)
            assert "with your certificate" not in html
            assert resp.status == 503 and "try again later" in await resp.text()
            async with http.get(running.url + "/queue", allow_redirects=False) as page:
                assert page.status == 303
    finally:
        await running.server.stop()
        running.spool.close()
    [(who, why)] = running.failures()
    assert who == "carte" and why.endswith("(temporary)")
