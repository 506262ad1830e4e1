"""Local delivery: Maildir on disk, and LMTP against aiosmtpd's real LMTP server over sockets."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller, UnixSocketController
from aiosmtpd.lmtp import LMTP

from gateway.delivery.local import deliver_lmtp, deliver_maildir, dot_stuff, mailbox_dirname
from gateway.errors import DeliveryError, PermanentError
from tests.conftest import ROOT, free_port

MESSAGE = (b"From: lab@labo.example\r\nTo: dr.martin@cabinet.example\r\nSubject: Resultats\r\n\r\n"
           b"Bonjour,\r\n.line starting with a dot\r\n..two dots\r\n.\r\nend\r\n")


# --------------------------------------------------------------------------------------------
# Maildir
# --------------------------------------------------------------------------------------------

def test_maildir_delivery_layout_and_content(tmp_path: Path) -> None:
    path = deliver_maildir(tmp_path, "Dr.Martin@Cabinet.Example", MESSAGE,
                           return_path="lab@labo.example", delivered_to="dr.martin@cabinet.example")
    box = tmp_path / "dr.martin@cabinet.example"
    assert path.parent == box / "new"
    for sub in ("cur", "new", "tmp"):
        assert stat.S_IMODE((box / sub).stat().st_mode) == 0o700
    assert stat.S_IMODE(box.stat().st_mode) == 0o700
    assert list((box / "tmp").iterdir()) == []
    assert path.read_bytes() == (b"Return-Path: <lab@labo.example>\r\nDelivered-To: dr.martin@cabinet.example\r\n"
                                 + MESSAGE)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    time_part, unique, host = path.name.split(".", 2)
    assert time_part.isdigit() and f"P{os.getpid()}R" in unique and host and ":" not in path.name


def test_maildir_names_are_unique(tmp_path: Path) -> None:
    paths = {deliver_maildir(tmp_path, "a@b.example", b"Subject: x\r\n\r\nx\r\n", return_path="",
                             delivered_to="a@b.example") for _ in range(50)}
    assert len(paths) == 50
    assert len(list((tmp_path / "a@b.example" / "new").iterdir())) == 50
    assert next(iter(paths)).read_bytes().startswith(b"Return-Path: <>\r\n")


def test_maildir_keeps_lf_messages_lf(tmp_path: Path) -> None:
    path = deliver_maildir(tmp_path, "a@b.example", b"Subject: x\n\nbody\n", return_path="s@x.example",
                           delivered_to="a@b.example")
    assert path.read_bytes() == b"Return-Path: <s@x.example>\nDelivered-To: a@b.example\nSubject: x\n\nbody\n"


def test_maildir_header_injection_is_neutralised(tmp_path: Path) -> None:
    path = deliver_maildir(tmp_path, "a@b.example", MESSAGE, return_path="evil@x\r\nBcc: victim@y",
                           delivered_to="a@b.example\nX-Injected: 1")
    head = path.read_bytes().split(b"\r\n")[:3]
    assert head[0] == b"Return-Path: <evil@xBcc: victim@y>"
    assert head[1] == b"Delivered-To: a@b.exampleX-Injected: 1"


@pytest.mark.parametrize(("mailbox", "dirname"), [
    ("User@Example.ORG", "user@example.org"),
    ("<a+tag@x.example>", "a+tag@x.example"),
    ("o'brien@x.example", "o%27brien@x.example"),
    ("élodie@x.example", "%C3%A9lodie@x.example"),
    ("a/b@x.example", "a%2Fb@x.example"),
    ("a%2Fb@x.example", "a%252fb@x.example"),  # injective: a literal % is encoded too
])
def test_mailbox_names(mailbox: str, dirname: str) -> None:
    assert mailbox_dirname(mailbox) == dirname


@pytest.mark.parametrize("mailbox", ["", "  ", ".", "..", "../etc", "a..b@x", ".hidden", "-rf",
                                     "a\x00b", "a\nb", "x" * 300])
def test_unusable_mailbox_is_permanent(tmp_path: Path, mailbox: str) -> None:
    with pytest.raises(PermanentError):
        deliver_maildir(tmp_path, mailbox, MESSAGE, return_path="", delivered_to="x")
    assert list(tmp_path.iterdir()) == []


def test_root_is_created(tmp_path: Path) -> None:
    root = tmp_path / "var" / "mail"
    deliver_maildir(root, "a@b.example", MESSAGE, return_path="", delivered_to="a@b.example")
    assert (root / "a@b.example" / "new").is_dir()


def test_mailbox_path_blocked_by_a_file_is_temporary(tmp_path: Path) -> None:
    (tmp_path / "a@b.example").write_bytes(b"")
    with pytest.raises(DeliveryError) as info:
        deliver_maildir(tmp_path, "a@b.example", MESSAGE, return_path="", delivered_to="a@b.example")
    assert info.value.temporary and info.value.status == "4.3.1"


def test_disk_full_is_temporary_and_leaves_no_partial_file(tmp_path: Path) -> None:
    """A write that fails part-way (file size limit: EFBIG, like ENOSPC) defers and cleans tmp/."""
    code = f"""
import resource, signal, sys
from pathlib import Path
from gateway.delivery.local import deliver_maildir
from gateway.errors import DeliveryError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
try:
    deliver_maildir(Path({str(tmp_path)!r}), "a@b.example", b"Subject: x\\r\\n\\r\\n" + b"y" * 100000,
                    return_path="", delivered_to="a@b.example")
except DeliveryError as exc:
    print(exc.temporary, exc.status, exc)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=ROOT, check=True).stdout
    assert out.startswith("True 4.3.1 maildir delivery to a@b.example failed: EFBIG"), out
    box = tmp_path / "a@b.example"
    assert list((box / "tmp").iterdir()) == [] and list((box / "new").iterdir()) == []


# --------------------------------------------------------------------------------------------
# LMTP
# --------------------------------------------------------------------------------------------

class LMTPHandler:
    """Records what it receives; refuses some recipients at RCPT and some after DATA."""

    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes]] = []
        self.refuse_rcpt = {"unknown@local.example": "550 5.1.1 no such user"}
        self.after_data = {"full@local.example": "452 4.2.2 mailbox full",
                           "gone@local.example": "550 5.2.1 mailbox disabled"}

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options) -> str:  # noqa: N802
        if address in self.refuse_rcpt:
            return self.refuse_rcpt[address]
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        # one reply per accepted recipient, as LMTP requires (aiosmtpd pushes the lines as given)
        return "\r\n".join(self.after_data.get(r, f"250 2.0.0 <{r}> delivered") for r in envelope.rcpt_tos)


class LMTPController(Controller):
    def factory(self) -> LMTP:
        return LMTP(self.handler, **self.SMTP_kwargs)


class LMTPUnixController(UnixSocketController):
    def factory(self) -> LMTP:
        return LMTP(self.handler, **self.SMTP_kwargs)


@pytest.fixture
def lmtp_server() -> Iterator[tuple[LMTPHandler, int]]:
    handler = LMTPHandler()
    port = free_port()
    controller = LMTPController(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


async def test_lmtp_per_recipient_replies(lmtp_server: tuple[LMTPHandler, int]) -> None:
    handler, port = lmtp_server
    recipients = ["dr.martin@local.example", "unknown@local.example", "full@local.example",
                  "gone@local.example", "dr.durand@local.example"]
    result = await deliver_lmtp("127.0.0.1", port, sender="lab@labo.example", recipients=recipients,
                                message=MESSAGE, timeout=10)
    assert set(result) == set(recipients)
    assert result["dr.martin@local.example"] == (250, "2.0.0 <dr.martin@local.example> delivered")
    assert result["dr.durand@local.example"] == (250, "2.0.0 <dr.durand@local.example> delivered")
    assert result["unknown@local.example"] == (550, "5.1.1 no such user")
    assert result["full@local.example"] == (452, "4.2.2 mailbox full")
    assert result["gone@local.example"] == (550, "5.2.1 mailbox disabled")
    assert len(handler.received) == 1
    sender, rcpts, content = handler.received[0]
    assert sender == "lab@labo.example"
    assert rcpts == ["dr.martin@local.example", "full@local.example", "gone@local.example",
                     "dr.durand@local.example"]
    assert content == MESSAGE  # dot-stuffing undone by the server: the bytes arrive intact


async def test_lmtp_all_refused_sends_no_data(lmtp_server: tuple[LMTPHandler, int]) -> None:
    handler, port = lmtp_server
    result = await deliver_lmtp("127.0.0.1", port, sender="", recipients=["unknown@local.example"],
                                message=MESSAGE, timeout=10)
    assert result == {"unknown@local.example": (550, "5.1.1 no such user")}
    assert handler.received == []


async def test_lmtp_normalises_line_endings_and_8bit(lmtp_server: tuple[LMTPHandler, int]) -> None:
    handler, port = lmtp_server
    message = "Subject: r\u00e9sultat\n\nLigne \u00e9t\u00e9\n.\nfin".encode()
    result = await deliver_lmtp("127.0.0.1", port, sender="lab@labo.example",
                                recipients=["a@local.example", "a@local.example"], message=message, timeout=10)
    assert result == {"a@local.example": (250, "2.0.0 <a@local.example> delivered")}
    assert handler.received[0][2] == message.replace(b"\n", b"\r\n") + b"\r\n"
    assert handler.received[0][1] == ["a@local.example"]  # duplicates delivered once


async def test_lmtp_over_unix_socket() -> None:
    handler = LMTPHandler()
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:  # short path: AF_UNIX limit is 108 bytes
        sock = os.path.join(tmp, "lmtp.sock")
        controller = LMTPUnixController(handler, unix_socket=sock)
        controller.start()
        try:
            result = await deliver_lmtp("", 0, sender="lab@labo.example", recipients=["a@local.example"],
                                        message=MESSAGE, timeout=10, unix_path=sock)
        finally:
            controller.stop()
    assert result == {"a@local.example": (250, "2.0.0 <a@local.example> delivered")}
    assert handler.received[0][2] == MESSAGE


async def test_lmtp_connection_refused_is_temporary() -> None:
    with pytest.raises(DeliveryError) as info:
        await deliver_lmtp("127.0.0.1", free_port(), sender="a@b.example", recipients=["c@d.example"],
                           message=MESSAGE, timeout=5)
    assert info.value.temporary is True


async def test_lmtp_silent_server_times_out_temporarily() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never greets
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(DeliveryError) as info:
            await deliver_lmtp("127.0.0.1", port, sender="a@b.example", recipients=["c@d.example"],
                               message=MESSAGE, timeout=0.5)
    finally:
        server.close()
        await server.wait_closed()
    assert info.value.temporary is True


async def _scripted_server(replies_after_data: list[bytes], greeting: bytes = b"220 lmtp ready\r\n"):
    """A tiny real LMTP server that answers the session and then `replies_after_data`, then hangs up."""
    got: dict[str, bytes] = {}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"LHLO":
                writer.write(b"250-lmtp\r\n250 PIPELINING\r\n")
            elif verb in (b"MAIL", b"RCPT"):
                writer.write(b"250 ok\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go\r\n")
                got["data"] = await reader.readuntil(b"\r\n.\r\n")
                writer.writelines(replies_after_data)
                await writer.drain()
                break
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"500 what\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], got


async def test_lmtp_connection_lost_after_data_defers_unanswered_only() -> None:
    server, port, got = await _scripted_server([b"250 2.0.0 first ok\r\n"])
    try:
        result = await deliver_lmtp("127.0.0.1", port, sender="a@b.example",
                                    recipients=["one@x.example", "two@x.example"], message=MESSAGE, timeout=5)
    finally:
        server.close()
        await server.wait_closed()
    assert result["one@x.example"] == (250, "2.0.0 first ok")
    assert result["two@x.example"][0] == 451
    assert got["data"] == dot_stuff(MESSAGE)


async def test_lmtp_multiline_replies_and_refused_greeting() -> None:
    server, port, _ = await _scripted_server([b"250-2.0.0 ok\r\n250 2.0.0 stored\r\n"])
    try:
        result = await deliver_lmtp("127.0.0.1", port, sender="a@b.example", recipients=["one@x.example"],
                                    message=MESSAGE, timeout=5)
    finally:
        server.close()
        await server.wait_closed()
    assert result == {"one@x.example": (250, "2.0.0 ok\n2.0.0 stored")}

    server, port, _ = await _scripted_server([], greeting=b"554 5.3.2 not accepting mail\r\n")
    try:
        with pytest.raises(DeliveryError) as info:
            await deliver_lmtp("127.0.0.1", port, sender="a@b.example", recipients=["one@x.example"],
                               message=MESSAGE, timeout=5)
    finally:
        server.close()
        await server.wait_closed()
    assert info.value.temporary is False and info.value.smtp_code == 554 and info.value.status == "5.3.2"


def test_dot_stuffing() -> None:
    assert dot_stuff(b"a\r\n.b\n..c\r.\r\nd") == b"a\r\n..b\r\n...c\r\n..\r\nd\r\n.\r\n"
    assert dot_stuff(b"") == b".\r\n"
    assert dot_stuff(b".") == b"..\r\n.\r\n"
