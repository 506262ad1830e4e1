"""Bare payloads submitted over SMTP: a lab system mails an HPRIM/HL7/CDA/PDF file to the
gateway's routing address (`[intake.routing] smtp_address`), and the gateway routes it from its
content exactly as if it had been dropped in a folder.

`find_payload` (pure) collects the attachments that are payloads, PDFs or a JSON sidecar and
bundles them (:mod:`gateway.intake.bundle`: an HPRIM file with its PDF, a PDF with its sidecar),
or takes the text body when the body itself is the payload (labs often paste HPRIM in the body).
`route_smtp_payload` (blocking: run in an executor) runs the shared intake through an
`SmtpPayloadDoor` and queues the copies; the SMTP layer answers 250 only after it returned.
On a shared store the directory and the duplicate store are the process's own
(`gateway.storage.process_store`: one connection pool each, not one per message).
"""

from __future__ import annotations

import email
import email.policy
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.config.storage import StorageConfig
from gateway.errors import MalformedInput
from gateway.intake.bundle import Bundle, SubmittedFile, bundle_files
from gateway.intake.door import IntakeDoor
from gateway.intake.settings import RoutingSettings
from gateway.routing.payload import detect_payload
from gateway.routing.sidecar import looks_like_sidecar
from gateway.storage import dedup_store, directory_store, process_store

if TYPE_CHECKING:
    from gateway.directory.directory import DirectoryStore
    from gateway.intake.dedup import DuplicateStore


def find_payload(message: bytes) -> Bundle:
    """The bundle of a mailed payload, or MalformedInput when the message carries none."""
    msg = email.message_from_bytes(message, policy=email.policy.compat32)
    body: bytes | None = None
    files: list[SubmittedFile] = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes) or not data:
            continue
        name = part.get_filename()
        if name or part.get("Content-Disposition", "").lower().startswith("attachment"):
            # a sidecar is recognised by its content, so an unrelated .json attachment is ignored
            if detect_payload(data) is not None or looks_like_sidecar(data):
                files.append(SubmittedFile(data, name))
        elif body is None and detect_payload(data) is not None:
            body = data
    if body is not None and all(detect_payload(f.data) == "pdf" for f in files):
        files.insert(0, SubmittedFile(body, None))  # HPRIM pasted in the body, its PDF attached
    if files:
        return bundle_files(files)
    raise MalformedInput("no HPRIM, HL7 v2, CDA or PDF payload in the message", "body and attachments")


class SmtpPayloadDoor(IntakeDoor):
    """A door without a socket of its own: the SMTP listener receives, and answers with
    `gateway.errors.smtp_reply`. One per mailed payload: its sender is the MAIL FROM, its
    ``auth_user`` the authenticated identity that mailed it (which chooses the signing key)."""

    listener = "smtp-payload"


def route_smtp_payload(message: bytes, *, sender: str, other_recipients: Sequence[str], spool: Any,
                       directory_path: Path, state_dir: Path, settings: RoutingSettings, lifetime: float,
                       client: str, auth_user: str | None = None, storage: StorageConfig | None = None) -> list[str]:
    """Route a mailed payload; returns the queue ids of the copies (empty: already sent).

    ``auth_user``: the authenticated identity that mailed it (it chooses the signing key).
    ``storage``: where the directory and the duplicate store are (None: SQLite beside the spool)."""
    bundle = find_payload(message)
    where = storage or StorageConfig()

    def submit(directory: DirectoryStore, dedup: DuplicateStore) -> list[str]:
        door = SmtpPayloadDoor(spool, directory, dedup, None, lifetime, routing=settings, sender=sender,
                               auth_user=auth_user)
        _, ids = door.submit(bundle.data, bundle.filename, client=client, info=bundle.info, pdfs=bundle.pdfs,
                             envelope_recipients=other_recipients)
        return ids

    if where.shared:
        # one pool per process, not per message (`gateway.storage.process_store`; closed at stop)
        window = str(settings.dedup_window)
        return submit(process_store(("directory", where.dsn), lambda: directory_store(where, directory_path)),
                      process_store(("dedup", where.dsn, window),
                                    lambda: dedup_store(where, state_dir, window=settings.dedup_window)))
    dedup = dedup_store(where, state_dir, window=settings.dedup_window)
    try:
        with directory_store(where, directory_path) as directory:
            return submit(directory, dedup)
    finally:
        dedup.close()
