"""Bare payloads submitted over SMTP: a lab system mails an HPRIM/HL7/CDA/PDF file to the
gateway's routing address (`[intake.routing] smtp_address`), and the gateway routes it from its
content exactly as if it had been dropped in a folder.

`find_payload` (pure) takes the first attachment that a payload reader recognises, or the
text body when the body itself is the payload (labs often paste HPRIM in the body).
`route_smtp_payload` (blocking: run in an executor) runs the shared intake and queues the
copies; the SMTP layer answers 250 only after it returned.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.errors import MalformedInput
from gateway.intake.dedup import DedupStore
from gateway.intake.process import accept_all, intake_bytes
from gateway.intake.service import DEDUP_FILE
from gateway.intake.settings import RoutingSettings
from gateway.routing.directory import SqliteDirectory
from gateway.routing.payload import detect_payload


def find_payload(message: bytes) -> tuple[bytes, str | None]:
    """(payload bytes, file name) of a mailed payload, or MalformedInput when there is none."""
    msg = email.message_from_bytes(message, policy=email.policy.compat32)
    body: bytes | None = None
    for part in msg.walk():
        if part.is_multipart():
            continue
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes) or not data:
            continue
        if part.get_filename() or part.get("Content-Disposition", "").lower().startswith("attachment"):
            if detect_payload(data) is not None:
                return data, part.get_filename()
        elif body is None and detect_payload(data) is not None:
            body = data
    if body is not None:
        return body, None
    raise MalformedInput("no HPRIM, HL7 v2, CDA or PDF payload in the message", "body and attachments")


def route_smtp_payload(message: bytes, *, sender: str, other_recipients: Sequence[str], spool: Any,
                       directory_path: Path, state_dir: Path, settings: RoutingSettings, lifetime: float,
                       client: str) -> list[str]:
    """Route a mailed payload; returns the queue ids of the copies (empty: already sent)."""
    payload, filename = find_payload(message)
    now = dt.datetime.now(dt.UTC)
    dedup = DedupStore(state_dir / DEDUP_FILE, window=settings.dedup_window)
    with SqliteDirectory(directory_path) as directory:
        result = intake_bytes(payload, filename, sender=sender, envelope_recipients=other_recipients,
                              directory=directory, dedup=dedup, settings=settings, now=now)
        return accept_all(result, spool, lifetime=lifetime, listener="smtp-payload", client=client, dedup=dedup,
                          now=now)
