"""The listeners' own policing over real sockets (issue 11, items 11, 15, 16, 18): AUTH guessing
is locked out per address and per account and audited, an unknown account costs the same hash
work as a known one, only known local mailboxes are accepted (no Maildir per invented address),
the relay listener advertises no empty AUTH, and bare-LF data is refused for what it is."""

from __future__ import annotations

import asyncio
import base64
import json
import smtplib
import ssl
import time
from pathlib import Path

from gateway.config import load_config
from gateway.server.passwords import verify_password
from gateway.server.smtp import GatewayHandler
from gateway.spool import Spool
from tests.e2e.harness import PASSWORD, USER, GatewayProcess, make_message, msgw, write_config
from tests.resilience.support import RawSMTP


def _tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the test listener's throw-away self-signed certificate
    return ctx


def _login(port: int, user: str, password: str) -> tuple[int, bytes]:
    """One AUTH PLAIN attempt (smtplib's login() would go on with LOGIN after a failure)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.ehlo("client.example")
        client.starttls(context=_tls())
        client.ehlo("client.example")
        blob = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        return client.docmd("AUTH", f"PLAIN {blob}")


def test_auth_guessing_is_locked_out_and_audited(tmp_path: Path) -> None:
    setup = write_config(tmp_path, sink_port=9, extra='[auth]\nmax_failures = 3\nwindow = "10m"\nlockout = "10m"\n')
    with GatewayProcess(setup):
        # one guesser, three connections: the third failure locks its address out
        codes = [_login(setup.submission_port, USER, f"wrong {i}")[0] for i in range(3)]
        assert codes == [535, 535, 535]
        code, text = _login(setup.submission_port, USER, PASSWORD)   # even the right password now
        assert code == 454 and b"4.7.0" in text
    records = [json.loads(line) for line in
               msgw("audit", "show", "--json", "--config", str(setup.config)).stdout.decode().splitlines()]
    decisions = [(r["decision"], r.get("identity")) for r in records]
    assert decisions.count(("auth-failed", USER)) == 3 and ("auth-locked", USER) in decisions
    assert all(r.get("client") == "127.0.0.1" for r in records)


def test_unknown_account_costs_the_same_hash_work(tmp_path: Path, monkeypatch) -> None:
    setup = write_config(tmp_path, sink_port=9)
    config = load_config(setup.config)
    handler = GatewayHandler(config, config.listeners[0], Spool(setup.spool))
    verified: list[str] = []

    def counting(stored: str, password: str) -> bool:  # the real scrypt runs; we only see which hash
        verified.append(stored)
        return verify_password(stored, password)

    monkeypatch.setattr("gateway.server.smtp.verify_password", counting)

    async def timed(login: bytes) -> float:
        started = time.perf_counter()
        assert not await handler.check_password(login, b"wrong password")
        return time.perf_counter() - started

    async def measure() -> tuple[float, float]:
        known = min([await timed(USER.encode()) for _ in range(3)])
        unknown = min([await timed(login) for login in (b"nobody@lab.example", b"\xff\xfe", b"")])
        return known, unknown

    known, unknown = asyncio.run(measure())
    account = config.account(USER)
    assert account is not None and verified[:3] == [account.password_hash] * 3
    # unknown (and undecodable) logins paid for a full scrypt of a real hash as well
    assert len(verified) == 6 and all(h.startswith("$scrypt$") and h != account.password_hash for h in verified[3:])
    print(f"\nAUTH failure, known account {known * 1000:.0f} ms, unknown {unknown * 1000:.0f} ms")


def test_only_known_local_mailboxes_are_accepted(tmp_path: Path) -> None:
    setup = write_config(tmp_path, sink_port=9)
    with GatewayProcess(setup):
        with smtplib.SMTP("127.0.0.1", setup.relay_port, timeout=10) as client:
            client.ehlo("mx.outside.example")
            client.mail("someone@outside.example")
            assert client.rcpt("invented-1@msgw.test")[0] == 550
            code, text = client.rcpt("invented-2@msgw.test")
            assert code == 550 and b"5.1.1" in text
            assert client.rcpt("dr.a@msgw.test")[0] == 250                 # [local] mailboxes
            assert client.rcpt("postmaster@msgw.test")[0] == 250
            client.data(make_message("someone@outside.example", "dr.a@msgw.test", "s", "known mailbox"))
        out = msgw("directory", "add", "dr.new@msgw.test", "--capability", "local", "--key-ref", "dr.new",
                   "--config", str(setup.config))
        assert out.returncode == 0, out.stderr
        with smtplib.SMTP("127.0.0.1", setup.relay_port, timeout=10) as client:
            client.ehlo("mx.outside.example")
            client.mail("someone@outside.example")
            assert client.rcpt("dr.new@msgw.test")[0] == 250                # the directory's local entry
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (setup.maildir / "dr.a@msgw.test").exists():
            time.sleep(0.1)
    boxes = {p.name for p in setup.maildir.iterdir()}
    assert "dr.a@msgw.test" in boxes and not any(b.startswith("invented") for b in boxes)


def test_catch_all_collects_unknown_local_parts(tmp_path: Path) -> None:
    setup = write_config(tmp_path, sink_port=9)
    text = setup.config.read_text().replace('maildir = "maildir"', 'maildir = "maildir"\ncatch_all = "x@msgw.test"')
    setup.config.write_text(text)
    with GatewayProcess(setup):
        with smtplib.SMTP("127.0.0.1", setup.relay_port, timeout=10) as client:
            client.sendmail("someone@outside.example", ["who-1@msgw.test", "who-2@msgw.test"],
                            make_message("someone@outside.example", "who-1@msgw.test", "s", "to the catch-all"))
        box = setup.maildir / "x@msgw.test" / "new"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (box.exists() and list(box.iterdir())):
            time.sleep(0.1)
        assert len(list(box.iterdir())) == 1                                  # one copy, not one per alias
    assert {p.name for p in setup.maildir.iterdir()} == {"x@msgw.test"}


def test_relay_listener_advertises_no_empty_auth(tmp_path: Path) -> None:
    setup = write_config(tmp_path, sink_port=9)
    with GatewayProcess(setup):
        with smtplib.SMTP("127.0.0.1", setup.relay_port, timeout=10) as client:
            client.ehlo("mx.outside.example")
            client.starttls(context=_tls())
            code, text = client.ehlo("mx.outside.example")
            assert code == 250 and b"AUTH" not in text and not client.has_extn("auth")
        with smtplib.SMTP("127.0.0.1", setup.submission_port, timeout=10) as client:
            client.ehlo("client.example")
            client.starttls(context=_tls())
            client.ehlo("client.example")
            assert set(client.esmtp_features["auth"].split()) == {"LOGIN", "PLAIN"}


def test_bare_lf_message_is_refused_as_bare_lf_not_line_too_long(tmp_path: Path) -> None:
    setup = write_config(tmp_path, sink_port=9)
    lines = [b"From: <someone@outside.example>", b"To: <dr.a@msgw.test>", b"Subject: unix line ends", b""]
    lines += [b"line %d of a message written with LF only" % i for i in range(200)]
    with GatewayProcess(setup), RawSMTP(setup.relay_port) as smtp:
        assert smtp.cmd(b"EHLO mx.outside.example")[0] == 250
        assert smtp.cmd(b"MAIL FROM:<someone@outside.example>")[0] == 250
        assert smtp.cmd(b"RCPT TO:<dr.a@msgw.test>")[0] == 250
        assert smtp.cmd(b"DATA")[0] == 354
        smtp.send(b"\n".join(lines) + b"\r\n.\r\n")
        code, text = smtp.reply()
        assert code == 550 and "bare LF" in text and "Line too long" not in text
        assert smtp.cmd(b"NOOP")[0] == 250                                   # the session goes on


def test_a_directory_fault_at_rcpt_is_temporary_and_says_nothing_inside(tmp_path: Path) -> None:
    """A directory that cannot answer (here: its database closed under the listener, as a full
    disk or a lock would) defers the recipient with 451; no 500 with the exception's text."""
    from aiosmtpd.smtp import Envelope, Session

    from gateway.app import local_mailbox_lookup
    from gateway.directory.directory import SqliteDirectory
    from gateway.server.smtp import LocalMailboxes

    setup = write_config(tmp_path, sink_port=9)
    config = load_config(setup.config)
    directory = SqliteDirectory(tmp_path / "directory.sqlite")
    directory.close()
    handler = GatewayHandler(config, config.listeners[1], Spool(setup.spool),
                             mailboxes=LocalMailboxes(config, local_mailbox_lookup(directory)))

    async def rcpt() -> tuple[str, str]:
        session, envelope = Session(asyncio.get_running_loop()), Envelope()
        session.peer = ("192.0.2.1", 1)
        reply = await handler.handle_RCPT(None, session, envelope, "dr.unlisted@msgw.test", [])
        return reply, await handler.handle_exception(ValueError("internal detail 42"))

    reply, unexpected = asyncio.run(rcpt())
    assert reply.startswith("451 4.3.0") and "Error" not in reply
    assert unexpected.startswith("451 4.3.0") and "internal detail" not in unexpected



def test_rcpt_refusals_are_translated_by_the_one_reply_table(tmp_path: Path) -> None:
    """Whatever shape the RCPT check refuses with (a reason, a typed error, a pipeline Refusal),
    the reply over a real socket comes from `gateway.errors.smtp_reply`: certain refusals 550,
    temporary ones 451 with their own status, never the refusal object's repr."""
    from gateway.errors import TemporaryError
    from gateway.pipeline import Refusal
    from gateway.server.smtp import SmtpServer

    setup = write_config(tmp_path, sink_port=9, relay_networks='["127.0.0.0/8"]')
    config = load_config(setup.config)
    refusals = {"a@refused.example": "destination refused.example is refused by policy",
                "b@slow.example": TemporaryError("certificate directory unreachable", status="4.4.3"),
                "c@later.example": Refusal("c@later.example", "no answer from the directory yet", status="4.4.3",
                                           temporary=True)}

    async def check(address: str):
        return refusals.get(address)

    def rcpt_replies(port: int) -> dict[str, tuple[int, bytes]]:
        with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
            client.ehlo("client.example")
            client.mail("lis@lab.example")
            return {address: client.rcpt(address) for address in refusals}

    async def run() -> dict[str, tuple[int, bytes]]:
        server = SmtpServer(config, Spool(setup.spool).open(), rcpt_check=check)
        await server.start()
        try:
            return await asyncio.to_thread(rcpt_replies, server.bound["relay"][1])
        finally:
            await server.stop()

    replies = asyncio.run(run())
    assert replies["a@refused.example"] == (550, b"5.7.1 destination refused.example is refused by policy")
    assert replies["b@slow.example"] == (451, b"4.4.3 certificate directory unreachable")
    assert replies["c@later.example"] == (451, b"4.4.3 no answer from the directory yet")
