"""The console in a real browser (issue 16 item 2): headless Chromium driven by Selenium against a
real `msgw serve`, mail sent over real SMTP.

One gateway: a local mailbox (Maildir) and a remote destination whose smart host is a closed
port at first (its mail defers), then a real SMTP sink. The operator logs in through the form,
sees the messages in the queue, retries the deferred one from its page once the sink is up and
sees it in the delivered flow, deletes one through the confirmation page; a POST without the
CSRF token (urllib, with the browser's session cookie) is refused; a marker written in one
message's Subject and body appears on no page. Screenshots of every page go to
`$MSGW_SCREENSHOTS` (default: the test's tmp folder); they are never committed.
"""

from __future__ import annotations

import os
import re
import smtplib
import ssl
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.server.passwords import hash_password
from tests.conftest import free_port, require_tool
from tests.e2e.harness import PASSWORD, USER, GatewayProcess, Sink, make_message, wait_port, write_config

OPERATOR, OPERATOR_PASSWORD = "nadia", "console operator password"
LOCAL, REMOTE, REMOTE2 = "secretariat@msgw.test", "dr.remote@far.example", "dr.other@far.example"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    chromium = require_tool("chromium")
    chromedriver = require_tool("chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    options.accept_insecure_certs = True  # the test gateway's self-signed certificate, in this test only
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def shots_folder(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("MSGW_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def submit(sender: str, rcpts: list[str], data: bytes, port: int) -> str:
    """Send over submission (STARTTLS + AUTH); the queue id from the 250 reply."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the test's self-signed pair
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.starttls(context=ctx)
        smtp.login(USER, PASSWORD)
        assert smtp.mail(sender)[0] == 250
        for rcpt in rcpts:
            assert smtp.rcpt(rcpt)[0] == 250
        code, reply = smtp.data(data)
    assert code == 250, reply
    return reply.decode().rsplit(" ", 1)[1]


def fetch(url: str, session: str, *, post: bool = False) -> int:
    """GET or an empty POST (no CSRF token) with the session cookie, through urllib."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # the test's self-signed pair
    assert url.startswith("https://127.0.0.1:")
    request = urllib.request.Request(url, data=b"" if post else None, method="POST" if post else "GET",  # noqa: S310
                                     headers={"Cookie": f"__Host-msgw-console={session}"})
    with urllib.request.urlopen(request, context=ctx, timeout=10) as resp:  # noqa: S310 - https, the test's console
        return int(resp.status)


def wait_until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_an_operator_follows_and_acts_on_the_queue_in_a_real_browser(tmp_path: Path, browser) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    shots = shots_folder(tmp_path)
    sink_port, console_port = free_port(), free_port()
    folder = tmp_path / "gw"
    folder.mkdir()
    (folder / "nadia.hash").write_text(hash_password(OPERATOR_PASSWORD, "argon2") + "\n")
    setup = write_config(folder, sink_port=sink_port, retry='["10m"]', extra=f"""
[console]
address = "127.0.0.1"
port = {console_port}
tls_cert = "tls-cert.pem"
tls_key = "tls-key.pem"

[operators.{OPERATOR}]
password_hash_file = "nadia.hash"
""")
    marker = f"MARKER-{uuid.uuid4().hex}"
    url = f"https://127.0.0.1:{console_port}"
    pages: dict[str, str] = {}

    def visit(path: str, name: str) -> str:
        driver.get(url + path)
        html = driver.page_source
        pages[f"{name} {path}"] = html
        driver.save_screenshot(str(shots / f"{len(pages):02d}-{name}.png"))
        return html

    with GatewayProcess(setup):
        wait_port(console_port)
        # the marker in Subject and body; to the local mailbox (delivered) and far away (deferred)
        marked = submit(USER, [LOCAL, REMOTE], make_message(USER, LOCAL, f"Résultat {marker}",
                                                            f"Patient {marker} body"), setup.submission_port)
        plain = submit(USER, [REMOTE2], make_message(USER, REMOTE2, "Compte rendu", "nothing special"),
                       setup.submission_port)
        with pytest.raises(smtplib.SMTPAuthenticationError), smtplib.SMTP("127.0.0.1", setup.submission_port) as s:
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            s.starttls(context=ctx)
            s.login(USER, "a wrong password")  # an audited refusal for the refusals page

        # login through the form
        html = visit("/queue", "login")
        assert "Operator login" in html and driver.current_url == url + "/login"
        driver.find_element(By.ID, "operator").send_keys(OPERATOR)
        driver.find_element(By.ID, "password").send_keys(OPERATOR_PASSWORD)
        driver.find_element(By.ID, "login").click()
        wait_until(lambda: driver.current_url.startswith(url + "/queue"), "the queue page after login: "
                   + driver.current_url + " " + driver.page_source[:600])
        cookie = driver.get_cookie("__Host-msgw-console")
        assert cookie is not None and cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"

        # both messages wait in the queue: the remote recipients deferred (closed port)
        def deferred_in_queue() -> bool:
            html = visit("/queue?state=deferred", "queue-deferred")
            return marked in html and plain in html and html.count(">deferred<") >= 2
        wait_until(deferred_in_queue, "both messages deferred in the queue page")
        html = visit(f"/queue/{marked}", "message-marked")
        assert LOCAL in html and REMOTE in html and "delivered" in html and "Connection refused" in html
        assert (setup.maildir / LOCAL / "new").is_dir()
        assert any(marker in p.read_text() for p in (setup.maildir / LOCAL / "new").iterdir())
        html = visit("/queue?domain=far.example&address=dr.other", "queue-filtered")
        assert plain in html and marked not in html

        # the local copy of the marked message is already in the delivered flow
        html = visit("/flows", "flows")
        assert re.search(rf"delivered</span>[^<]*</td><td>{marked}</td>", html)

        # the sink comes up; the operator retries the plain message from its page: delivered
        sink = Sink(sink_port).start()
        try:
            visit(f"/queue/{plain}", "message-plain")
            driver.find_element(By.ID, "retry").click()
            wait_until(lambda: "Retry scheduled." in driver.page_source or "no such message" in driver.page_source,
                       "the retry's answer")
            received = sink.wait_for(1)
            assert received[0].recipients == [REMOTE2]
            wait_until(lambda: plain not in visit("/queue", "queue-after-retry"), "the retried message to leave")
            html = visit("/flows", "flows-after-retry")
            assert re.search(rf"delivered</span>[^<]*</td><td>{plain}</td>", html)
            assert re.search(r"<td>far\.example</td>\s*<td class=\"num\">1</td>", html)

            # delete the marked message through the confirmation page
            visit(f"/queue/{marked}", "message-before-delete")
            driver.find_element(By.ID, "delete").click()
            wait_until(lambda: "/delete" in driver.current_url, "the confirmation page")
            pages[f"confirm {driver.current_url}"] = driver.page_source
            driver.save_screenshot(str(shots / f"{len(pages):02d}-confirm-delete.png"))
            driver.find_element(By.ID, "confirm-delete").click()
            wait_until(lambda: "Message deleted." in driver.page_source, "the deletion")
            assert marked not in visit("/queue", "queue-after-delete")
            assert len(sink.handler.snapshot()) == 1
        finally:
            sink.stop()

        html = visit("/refusals", "refusals")
        assert "auth-failed" in html
        visit("/certificates", "certificates")
        visit("/flows?window=7d", "flows-7d")
        visit("/audit", "audit")
        driver.find_element(By.ID, "verify").click()
        wait_until(lambda: "audit trail intact" in driver.page_source, "the audit report")
        pages["audit-verified"] = driver.page_source
        driver.save_screenshot(str(shots / f"{len(pages):02d}-audit-verified.png"))

        # a POST without the CSRF token, with the browser's own session cookie: refused
        session = driver.get_cookie("__Host-msgw-console")["value"]
        for path in (f"/queue/{plain}/retry", "/audit/verify", "/logout"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                fetch(url + path, session, post=True)
            assert refused.value.code == 403
        # the same cookie still opens a page: the session was not ended by the refused logout
        assert fetch(url + "/queue", session) == 200

    # the marker is on no page the operator saw
    assert len(pages) >= 12
    for name, html in pages.items():
        assert marker not in html, name
    audit = (folder / "audit.jsonl").read_text()
    assert marker not in audit
    assert '"decision":"console-retry"' in audit and f'"identity":"{OPERATOR}"' in audit
    assert '"decision":"console-delete"' in audit
