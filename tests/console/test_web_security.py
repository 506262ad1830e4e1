"""The console's login, sessions, CSRF and headers, against the real application over real TLS
(aiohttp's client; the browser test is tests/console/test_browser.py)."""

from __future__ import annotations

import logging
import re
import ssl
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from gateway.audit import AuditTrail, AuditWriter
from gateway.console.server import ConsoleServer
from gateway.console.web import SECURITY_HEADERS
from gateway.spool import Spool
from tests.console.support import MAIL_PASSWORD, MAIL_USER, OPERATOR, OPERATOR_PASSWORD, console_config

PAGES = ("/queue", "/refusals", "/flows", "/flows?window=7d", "/certificates", "/audit")
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class Running:
    def __init__(self, folder: Path, **kwargs) -> None:
        self.config = console_config(folder, **kwargs)
        self.spool = Spool(self.config.spool.path).open()
        self.writer = AuditWriter(AuditTrail(self.config.audit.path))
        self.woken = 0
        self.server = ConsoleServer(self.config, self.spool, audit=self.writer, wake=self._wake)

    def _wake(self) -> None:
        self.woken += 1

    @property
    def url(self) -> str:
        assert self.server.address is not None
        return f"https://127.0.0.1:{self.server.address[1]}"

    def records(self) -> list[dict]:
        self.writer.close()
        self.writer = AuditWriter(AuditTrail(self.config.audit.path))
        self.server.console.audit_sink = self.writer
        return list(AuditTrail(self.config.audit.path).records())


@pytest.fixture
async def console(tmp_path: Path):
    running = Running(tmp_path)
    await running.server.start()
    yield running
    await running.server.stop()
    running.writer.close()
    running.spool.close()


def client() -> aiohttp.ClientSession:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the test's own self-signed console certificate
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx), cookie_jar=aiohttp.CookieJar(unsafe=True))


async def login(http: aiohttp.ClientSession, url: str, name: str = OPERATOR, password: str = OPERATOR_PASSWORD
                ) -> aiohttp.ClientResponse:
    async with http.get(url + "/login") as page:
        token = CSRF.search(await page.text()).group(1)
    return await http.post(url + "/login", data={"operator": name, "password": password, "csrf": token},
                           allow_redirects=False)


async def csrf_of(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url + "/audit") as page:
        return CSRF.search(await page.text()).group(1)


async def test_pages_need_a_login_and_the_session_cookie_is_strict(console: Running) -> None:
    async with client() as http:
        for page in PAGES:
            async with http.get(console.url + page, allow_redirects=False) as resp:
                assert resp.status == 303 and resp.headers["Location"] == "/login"
        resp = await login(http, console.url)
        assert resp.status == 303 and resp.headers["Location"] == "/queue"
        cookie = next(v for v in resp.headers.getall("Set-Cookie") if v.startswith("__Host-msgw-console="))
        attributes = {a.strip().split("=")[0].lower(): a.strip() for a in cookie.split(";")[1:]}
        assert {"secure", "httponly", "samesite", "path"} <= set(attributes)
        assert attributes["samesite"].lower() == "samesite=strict" and attributes["path"] == "Path=/"
        for page in PAGES:
            async with http.get(console.url + page, allow_redirects=False) as page_resp:
                assert page_resp.status == 200, page
                for name, value in SECURITY_HEADERS.items():
                    assert page_resp.headers[name] == value
    records = console.records()
    logins = [r for r in records if r["decision"] == "console-login"]
    assert [(r["identity"], r["reason"], r["listener"]) for r in logins] == [(OPERATOR, "password", "console")]


async def test_headers_are_on_errors_and_the_login_page_too(console: Running) -> None:
    async with client() as http:
        async with http.get(console.url + "/login") as resp:
            assert resp.headers["Content-Security-Policy"] == SECURITY_HEADERS["Content-Security-Policy"]
            assert resp.headers["Cache-Control"] == "no-store"
        async with http.post(console.url + "/login", data={"operator": "x"}) as resp:
            assert resp.status == 403
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert resp.headers["Referrer-Policy"] == "no-referrer"


async def test_a_post_without_the_csrf_token_is_refused_and_does_nothing(console: Running) -> None:
    msg_id = console.spool.accept("lis@lab.example", ["dr@far.example"], b"Subject: x\r\n\r\nbody\r\n", lifetime=3600)
    before = console.spool.get(msg_id)
    async with client() as http:
        await login(http, console.url)
        token = await csrf_of(http, console.url)
        for data in ({}, {"csrf": ""}, {"csrf": token[:-2] + "xx"}):
            async with http.post(f"{console.url}/queue/{msg_id}/retry", data=data, allow_redirects=False) as resp:
                assert resp.status == 403
            async with http.post(f"{console.url}/queue/{msg_id}/delete", data=data, allow_redirects=False) as resp:
                assert resp.status == 403
        for method in ("PUT", "DELETE", "PATCH"):  # no method but GET/HEAD passes without the token
            async with http.request(method, f"{console.url}/queue/{msg_id}/delete", allow_redirects=False) as resp:
                assert resp.status == 403
        # another session's token is not this session's
        async with client() as other:
            await login(other, console.url)
            foreign = await csrf_of(other, console.url)
        async with http.post(f"{console.url}/queue/{msg_id}/delete", data={"csrf": foreign},
                             allow_redirects=False) as resp:
            assert resp.status == 403
    assert console.spool.get(msg_id) == before
    assert console.woken == 0
    assert not [r for r in console.records() if r["decision"] in ("console-retry", "console-delete")]


async def test_retry_and_delete_with_confirmation_are_audited_with_the_operator(console: Running) -> None:
    msg_id = console.spool.accept("lis@lab.example", ["dr@far.example"], b"Subject: x\r\n\r\nbody\r\n", lifetime=3600)
    async with client() as http:
        await login(http, console.url)
        async with http.get(f"{console.url}/queue/{msg_id}") as page:
            html = await page.text()
            assert "dr@far.example" in html and msg_id in html
            token = CSRF.search(html).group(1)
        async with http.post(f"{console.url}/queue/{msg_id}/retry", data={"csrf": token},
                             allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == f"/queue/{msg_id}?done=retry"
        assert console.woken == 1
        async with http.get(f"{console.url}/queue/{msg_id}/delete") as page:
            assert "Delete message" in await page.text()
        assert console.spool.get(msg_id) is not None  # the confirmation page deletes nothing
        async with http.post(f"{console.url}/queue/{msg_id}/delete", data={"csrf": token},
                             allow_redirects=False) as resp:
            assert resp.status == 303
    assert console.spool.get(msg_id) is None
    acts = [(r["decision"], r["identity"], r.get("message_id")) for r in console.records()
            if r["decision"] in ("console-retry", "console-delete")]
    assert acts == [("console-retry", OPERATOR, msg_id), ("console-delete", OPERATOR, msg_id)]


async def test_a_mail_account_never_logs_into_the_console(console: Running) -> None:
    async with client() as http:
        resp = await login(http, console.url, MAIL_USER, MAIL_PASSWORD)
        assert resp.status == 401
        assert not [c for c in resp.headers.getall("Set-Cookie", []) if c.startswith("__Host-msgw-console=")]
        async with http.get(console.url + "/queue", allow_redirects=False) as page:
            assert page.status == 303
    failed = [r for r in console.records() if r["decision"] == "console-login-failed"]
    assert [(r["identity"], r["reason"]) for r in failed] == [("unknown", "unknown operator")]


async def test_repeated_failures_lock_the_operator_out_even_with_the_right_password(
        console: Running, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.console")
    async with client() as http:
        for _ in range(3):
            assert (await login(http, console.url, OPERATOR, "wrong")).status == 401
        resp = await login(http, console.url, OPERATOR, OPERATOR_PASSWORD)
        assert resp.status == 429
        assert "Too many failed logins" in await resp.text()
        # a guesser typing a password into the name field: it is never written back
        for _ in range(3):
            assert (await login(http, console.url, "hunter2-secret", "x")).status in (401, 429)
    failed = [(r["identity"], r["reason"]) for r in console.records() if r["decision"] == "console-login-failed"]
    assert failed[:4] == [(OPERATOR, "wrong password")] * 3 + [(OPERATOR, "locked out after repeated failures")]
    assert {who for who, _ in failed[4:]} == {"unknown"}
    assert "hunter2-secret" not in console.config.audit.path.read_text()
    logged = [r for r in caplog.records if r.getMessage() == "console-login-failed"]
    assert len(logged) == 7 and "hunter2-secret" not in repr([r.__dict__ for r in logged])


async def test_logout_ends_the_session(console: Running) -> None:
    async with client() as http:
        await login(http, console.url)
        cookie = http.cookie_jar.filter_cookies(URL(console.url))["__Host-msgw-console"].value
        token = await csrf_of(http, console.url)
        async with http.post(console.url + "/logout", data={"csrf": token}, allow_redirects=False) as resp:
            assert resp.status == 303
    async with client() as again:
        again.cookie_jar.update_cookies({"__Host-msgw-console": cookie})
        async with again.get(console.url + "/queue", allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/login"


async def test_addresses_are_escaped(console: Running) -> None:
    msg_id = console.spool.accept('"<script>alert(1)</script>"@lab.example', ["dr@far.example"], b"x\r\n",
                                  lifetime=3600)
    async with client() as http:
        await login(http, console.url)
        for page in ("/queue", f"/queue/{msg_id}"):
            async with http.get(console.url + page) as resp:
                html = await resp.text()
                assert "<script>" not in html and "&lt;script&gt;" in html


async def test_the_audit_page_reports_a_modified_trail(console: Running) -> None:
    console.writer(decision="outcome", message_id="X", outcome="delivered 2.0.0", recipient="a@b.example")
    async with client() as http:
        await login(http, console.url)
        console.records()  # flushed
        token = await csrf_of(http, console.url)
        async with http.post(console.url + "/audit/verify", data={"csrf": token}) as resp:
            assert "audit trail intact" in await resp.text()
        path = console.config.audit.path
        path.write_text(path.read_text().replace("delivered 2.0.0", "bounced 5.0.0"))
        async with http.post(console.url + "/audit/verify", data={"csrf": token}) as resp:
            html = await resp.text()
            assert "audit trail broken at seq 1" in html and "hash mismatch" in html


async def test_the_certificates_page_shows_the_tls_certificate_and_its_days_left(console: Running) -> None:
    async with client() as http:
        await login(http, console.url)
        async with http.get(console.url + "/certificates") as resp:
            html = await resp.text()
    assert "CN=localhost" in html and re.search(r'class="ok">8\d\d days<', html)
