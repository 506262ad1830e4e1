"""Local delivery: into a Maildir on this host, or to an LMTP server (Dovecot, Cyrus, ...).

Both are the last hop for mail the gateway serves itself, so both must be durable before the
spool marks a recipient delivered: the Maildir writer fsyncs the file and the directory; the LMTP
client reports the server's reply for each recipient separately (RFC 2033), so one full mailbox
never causes a duplicate for the others. No message content is ever logged or put in errors.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import secrets
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from gateway.delivery.smtp_client import RecipientResult
from gateway.errors import DeliveryError, GatewayError, PermanentError, reply_code
from gateway.fsutil import publish, write_synced
from gateway.rawmime import line_ending

_SAFE_MAILBOX_CHARS = re.compile(r"[a-z0-9._+=@-]")
_MAX_MAILBOX_NAME = 200


# --------------------------------------------------------------------------------------------
# Maildir
# --------------------------------------------------------------------------------------------

def mailbox_dirname(mailbox: str) -> str:
    """A safe, injective directory name for a mailbox (normally the address, lowercased).

    Characters outside ``[a-z0-9._+=@-]`` are percent-encoded (UTF-8), so distinct addresses never
    share a directory and nothing can climb out of the root. Raises PermanentError when unusable.
    """
    name = mailbox.strip().removeprefix("<").removesuffix(">").strip().lower()
    if not name or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise PermanentError("unusable mailbox name", status="5.1.3")
    encoded = "".join(c if _SAFE_MAILBOX_CHARS.fullmatch(c) else "".join(f"%{b:02X}" for b in c.encode())
                      for c in name)
    if encoded.startswith((".", "-")) or ".." in encoded or len(encoded) > _MAX_MAILBOX_NAME:
        raise PermanentError("unusable mailbox name", status="5.1.3")
    return encoded


def _unique_name() -> str:
    """time.pid.random.hostname, as the Maildir convention asks (no '/' or ':' in the host)."""
    now = time.time_ns()
    host = socket.gethostname().replace("/", r"\057").replace(":", r"\072") or "localhost"
    return f"{now // 1_000_000_000}.M{(now // 1000) % 1_000_000}P{os.getpid()}R{secrets.token_hex(8)}.{host}"


def _header_line(name: str, value: str, eol: bytes) -> bytes:
    clean = re.sub(r"[\x00-\x1f\x7f]", "", value)  # no header injection through the envelope
    return f"{name}: {clean}".encode("utf-8", "replace") + eol


def _make_dirs(box: Path) -> None:
    for sub in ("", "cur", "new", "tmp"):
        path = box / sub if sub else box
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            if not path.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(path)) from None


def deliver_maildir(root: Path, mailbox: str, message: bytes, *, return_path: str, delivered_to: str) -> Path:
    """Deliver durably into root/<mailbox>/new; returns the final path.

    The message bytes are kept as they are (the gateway's CRLF form; Dovecot and mutt read it);
    the two added header lines use the message's own line ending. Blocking: call it in an executor.
    """
    dirname = mailbox_dirname(mailbox)
    eol = line_ending(message)
    headers = (_header_line("Return-Path", f"<{return_path.strip().strip('<>')}>", eol)
               + _header_line("Delivered-To", delivered_to.strip(), eol))
    box = Path(root) / dirname
    tmp_path: Path | None = None
    try:
        if not Path(root).is_dir():
            Path(root).mkdir(mode=0o700, parents=True)
        _make_dirs(box)
        name = _unique_name()
        tmp_path = box / "tmp" / name
        write_synced(tmp_path, (headers, message))
        final = box / "new" / name
        publish(tmp_path, final)
        tmp_path = None
        return final
    except OSError as exc:
        reason = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        raise DeliveryError(f"maildir delivery to {dirname} failed: {reason}", temporary=True,
                            status="4.3.1") from None
    finally:
        if tmp_path is not None:
            try:
                tmp_path.unlink()
            except OSError:
                pass


# --------------------------------------------------------------------------------------------
# LMTP
# --------------------------------------------------------------------------------------------

class _LMTPClient:
    """One LMTP session on asyncio streams; every read and write is bounded by `timeout`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float) -> None:
        self.reader, self.writer, self.timeout = reader, writer, timeout
        self.extensions: set[str] = set()

    async def reply(self) -> tuple[int, str]:
        lines: list[str] = []
        while True:
            raw = await asyncio.wait_for(self.reader.readline(), self.timeout)
            if not raw:
                raise ConnectionError("connection closed by the LMTP server")
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if len(line) < 3 or not line[:3].isdigit() or (len(line) > 3 and line[3] not in " -"):
                raise ConnectionError("garbled LMTP reply")
            lines.append(line[4:])
            if len(line) == 3 or line[3] == " ":
                return int(line[:3]), "\n".join(lines)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), self.timeout)

    async def command(self, text: str) -> tuple[int, str]:
        await self.send(text.encode("utf-8") + b"\r\n")
        return await self.reply()

    async def close(self) -> None:
        try:
            if not self.writer.is_closing():
                self.writer.write(b"QUIT\r\n")
                await asyncio.wait_for(self.writer.drain(), min(self.timeout, 5.0))
                await asyncio.wait_for(self.reader.readline(), min(self.timeout, 5.0))
        except (OSError, ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            self.writer.close()
            try:
                await asyncio.wait_for(self.writer.wait_closed(), 5.0)
            except (OSError, ConnectionError, TimeoutError):
                pass


#: Size of the pieces the DATA payload is produced and sent in.
DATA_CHUNK = 64 * 1024


def dot_stuff_chunks(message: bytes, chunk: int = DATA_CHUNK) -> Iterator[bytes]:
    """The DATA payload (canonical CRLF line endings, leading dots doubled, CRLF.CRLF at the end)
    in pieces of about `chunk` bytes, each cut after a line feed.

    Why pieces: the whole payload at once costs several copies of the message (each regex pass,
    the transport's buffer); a 50 MB result for 100 mailboxes must not cost 300 MB."""
    start, size, last = 0, len(message), b""
    while start < size:
        cut = message.find(b"\n", min(start + chunk, size) - 1)
        end = size if cut < 0 else cut + 1
        piece = re.sub(rb"(?m)^\.", b"..", re.sub(rb"\r\n|\r|\n", b"\r\n", message[start:end]))
        if piece:
            last = piece
            yield piece
        start = end
    yield (b".\r\n" if not last or last.endswith(b"\r\n") else b"\r\n.\r\n")


def dot_stuff(message: bytes) -> bytes:
    """DATA payload: canonical CRLF line endings, leading dots doubled, terminated by CRLF.CRLF."""
    return b"".join(dot_stuff_chunks(message))


def _clean_address(address: str) -> str | None:
    """The address for MAIL/RCPT, or None if it could inject commands."""
    address = address.strip().removeprefix("<").removesuffix(">")
    if any(c in address for c in "\r\n<>\x00"):
        return None
    return address


async def _open(host: str, port: int, unix_path: str | None, timeout: float) -> _LMTPClient:
    where = unix_path or f"{host}:{port}"
    try:
        if unix_path:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(unix_path), timeout)
        else:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError) as exc:
        raise DeliveryError(f"cannot connect to LMTP server {where}: {type(exc).__name__}", temporary=True,
                            status="4.4.1", remote=where) from None
    return _LMTPClient(reader, writer, timeout)


def _session_error(stage: str, where: str, reply: tuple[int, str]) -> DeliveryError:
    code, text = reply
    temporary = code < 500
    match = re.match(r"[245]\.\d{1,3}\.\d{1,3}", text)
    status = match.group(0) if match and match.group(0)[0] == str(code)[0] else None
    first_line = text.splitlines()[0] if text else ""
    return DeliveryError(f"LMTP server {where} refused {stage}: {code} {first_line}", temporary=temporary,
                         status=status, smtp_code=code, remote=where)


async def _greet(client: _LMTPClient, lhlo_name: str, where: str) -> None:
    greeting = await client.reply()
    if greeting[0] != 220:
        raise _session_error("the session", where, greeting)
    lhlo = await client.command(f"LHLO {lhlo_name}")
    if lhlo[0] != 250:
        raise _session_error("LHLO", where, lhlo)
    client.extensions = {line.split()[0].upper() for line in lhlo[1].splitlines()[1:] if line.split()}


async def _transaction(client: _LMTPClient, sender: str, recipients: list[str], message: bytes,
                       results: dict[str, tuple[int, str]]) -> None:
    """MAIL, RCPT each, DATA, then one reply per accepted recipient, into `results`."""
    clean_sender = _clean_address(sender)
    if clean_sender is None:
        raise DeliveryError("invalid envelope sender for LMTP", temporary=False, status="5.1.7")
    params = " BODY=8BITMIME" if "8BITMIME" in client.extensions and not message.isascii() else ""
    if "SMTPUTF8" in client.extensions and not (clean_sender + "".join(recipients)).isascii():
        params += " SMTPUTF8"
    mail = await client.command(f"MAIL FROM:<{clean_sender}>{params}")
    if mail[0] != 250:
        results.update({r: mail for r in recipients})
        return
    accepted = []
    for rcpt in recipients:
        clean = _clean_address(rcpt)
        if clean is None:
            results[rcpt] = (501, "5.1.3 invalid recipient address (not sent)")
            continue
        results[rcpt] = await client.command(f"RCPT TO:<{clean}>")
        if results[rcpt][0] in (250, 251):
            accepted.append(rcpt)
    if not accepted:
        return
    data = await client.command("DATA")
    if data[0] != 354:
        results.update({r: data for r in accepted})
        return
    await _data_replies(client, message, accepted, results)


async def _data_replies(client: _LMTPClient, message: bytes, accepted: list[str],
                        results: dict[str, tuple[int, str]]) -> None:
    """Send the message (in pieces, never a whole copy); a failure after that leaves unanswered
    recipients at 451 (retry them: at worst a duplicate, never a loss)."""
    answered = 0
    try:
        for piece in dot_stuff_chunks(message):
            await client.send(piece)
        for rcpt in accepted:
            results[rcpt] = await client.reply()
            answered += 1
    except (OSError, ConnectionError, TimeoutError, asyncio.IncompleteReadError) as exc:
        for rcpt in accepted[answered:]:
            results[rcpt] = (451, f"4.4.2 no LMTP reply after DATA ({type(exc).__name__})")


async def deliver_lmtp(host: str, port: int, *, sender: str, recipients: Sequence[str], message: bytes,
                       lhlo_name: str = "msgw", timeout: float = 60.0,
                       unix_path: str | None = None) -> dict[str, tuple[int, str]]:
    """Deliver over LMTP (RFC 2033); returns recipient -> (reply code, reply text) for every recipient.

    Hand-written because aiosmtplib does not speak LMTP (no LHLO, and it expects a single reply
    after DATA where LMTP sends one per accepted recipient). Connection failures, timeouts and
    refused greetings/LHLO raise DeliveryError (temporary unless the server said 5xx); a refused
    MAIL FROM is reported as every recipient's reply; a connection lost after the data was sent
    marks unanswered recipients 451 (retry: at worst a duplicate, never a loss).
    """
    recipients = list(dict.fromkeys(recipients))
    if not recipients:
        return {}
    where = unix_path or f"{host}:{port}"
    client = await _open(host, port, unix_path, timeout)
    results: dict[str, tuple[int, str]] = {}
    try:
        await _greet(client, lhlo_name, where)
        await _transaction(client, sender, recipients, message, results)
    except (OSError, ConnectionError, TimeoutError, asyncio.IncompleteReadError) as exc:
        raise DeliveryError(f"LMTP session with {where} failed: {type(exc).__name__}", temporary=True,
                            status="4.4.2", remote=where) from None
    finally:
        await client.close()
    return results


# --------------------------------------------------------------------------------------------
# Per-recipient results (what the Maildir and LMTP transports report)
# --------------------------------------------------------------------------------------------

async def maildir_results(root: Path, sender: str, recipients: Sequence[str], data: bytes
                          ) -> dict[str, RecipientResult]:
    """Deliver into every recipient's Maildir, off the event loop, each from the one shared
    buffer (the two added header lines, then `data` itself: no per-recipient copy)."""
    results: dict[str, RecipientResult] = {}
    for rcpt in recipients:
        try:
            await asyncio.to_thread(deliver_maildir, root, rcpt, data, return_path=sender, delivered_to=rcpt)
            results[rcpt] = RecipientResult(250, "2.0.0 delivered to maildir")
        except GatewayError as exc:
            # A Maildir's answer for one recipient, as an LMTP server would give it after DATA.
            results[rcpt] = RecipientResult(reply_code(exc, "RCPT"), f"{exc.status} {exc}")
    return results


async def lmtp_results(host: str, port: int, *, sender: str, recipients: Sequence[str], data: bytes,
                       lhlo_name: str) -> dict[str, RecipientResult]:
    replies = await deliver_lmtp(host, port, sender=sender, recipients=recipients, message=data, lhlo_name=lhlo_name)
    return {r: RecipientResult(code, text) for r, (code, text) in replies.items()}
