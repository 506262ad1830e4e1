"""The ``capture`` transport: the embedded default's copies for other domains written into a
folder instead of leaving the machine (`[delivery] capture`, refused in a real configuration).

Why: a first run must show what the gateway would send — the prepared copy, signed and encrypted —
without an Internet peer, and without pretending to deliver. Each group of recipients of one copy
becomes ``<capture>/<domain>/<UTC time>-<random>.eml``: exactly the bytes SMTP would carry after
DATA (no header added, CRLF as prepared), and beside it ``<same name>.envelope.json`` with the
envelope (sender, recipients: addresses only). Written like a Maildir file (temporary name,
fsync, rename, directory fsync), so a name that exists is a whole copy.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from gateway.config import GatewayConfig
from gateway.delivery.local import mailbox_dirname
from gateway.delivery.smtp_client import RecipientResult
from gateway.errors import DeliveryError, PermanentError
from gateway.fsutil import write_atomic

#: What `msgw serve` and `msgw check` say whenever capture is on.
NOTICE = "CAPTURE MODE: mail for other domains is written to {folder}/<domain>/ — nothing leaves this machine"


class _Destination(Protocol):
    @property
    def domain(self) -> str: ...


class _Hop(Protocol):
    """What this transport reads of `transports.Hop` (it does not import transports.py)."""

    @property
    def config(self) -> GatewayConfig: ...

    @property
    def destination(self) -> _Destination: ...


def capture_notice(config: GatewayConfig) -> str | None:
    """The loud line for the banner and `msgw check`, or None when mail really leaves."""
    folder = config.delivery.capture
    return NOTICE.format(folder=_shown(folder)) if folder is not None else None


def _shown(folder: Path) -> str:
    """The folder as a user typed it: relative to the working directory when under it."""
    try:
        return str(folder.relative_to(Path.cwd()))
    except ValueError:
        return str(folder)


def write_capture(folder: Path, domain: str, sender: str, recipients: Sequence[str], data: bytes) -> Path:
    """Write one captured copy and its envelope; the path of the copy. Blocking (fsyncs)."""
    box = folder / mailbox_dirname(domain)  # a domain from a recipient address: never a path
    box.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    name = f"{stamp}-{secrets.token_hex(4)}"
    envelope = {"sender": sender, "recipients": list(recipients), "domain": domain}
    write_atomic(box / f"{name}.envelope.json", json.dumps(envelope, indent=2).encode() + b"\n")
    path = box / f"{name}.eml"
    write_atomic(path, data)
    return path


class CaptureTransport:
    """Registered as ``TRANSPORTS["capture"]``; the next-hop table names it for every non-local
    domain without a route when `[delivery] capture` is set. Every recipient gets 250 once the file is on disk;
    a write that fails (full disk) is temporary: the copy waits in the spool."""

    def __init__(self, hop: _Hop) -> None:
        self.folder = hop.config.delivery.capture
        self.domain = hop.destination.domain

    async def deliver(self, sender: str, recipients: Sequence[str], data: bytes
                      ) -> tuple[dict[str, RecipientResult], str]:
        if self.folder is None:  # the next-hop table names this transport only with a folder
            raise DeliveryError("capture transport without [delivery] capture", temporary=True, status="4.3.5")
        try:
            path = await asyncio.to_thread(write_capture, self.folder, self.domain, sender, recipients, data)
        except PermanentError as exc:  # a domain no folder can be named after (never passes RCPT)
            raise DeliveryError(f"cannot capture for this domain: {exc}", temporary=False, status=exc.status) \
                from None
        except OSError as exc:
            raise DeliveryError(f"cannot write the capture folder: {exc.strerror}", temporary=True,
                                status="4.3.0") from None
        reply = RecipientResult(250, f"2.0.0 captured as {path.name}, not sent (capture mode)")
        return {rcpt: reply for rcpt in recipients}, "capture"
