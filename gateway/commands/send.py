"""`msgw send`: inject a file into the spool as if it had been received (durably).

An .eml goes in as it is; a bare payload (HPRIM, HL7 v2, CDA, PDF) goes through the same
intake as the drop folders and MLLP: its recipients are read from the payload and looked up
in the directory (plus any --to), duplicates within the window are skipped, and each copy is
wrapped in a neutral message. ``--with FILE`` adds the files that go with the payload: the PDF
beside an HPRIM/HL7/CDA file, or the PDF a JSON sidecar describes (``msgw send X.json --with X.pdf``).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from gateway.commands.common import add_config_option, config_from
from gateway.intake.bundle import SubmittedFile
from gateway.spool import Spool
from gateway.storage import open_dedup, open_directory, open_queue_store, open_zam_ledger


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("send", help="inject a message or a bare payload file into the queue")
    add_config_option(p)
    p.add_argument("--from", dest="sender", required=True, metavar="ADDR")
    p.add_argument("--to", dest="recipients", action="append", default=[], metavar="ADDR")
    p.add_argument("--with", dest="companions", action="append", default=[], type=Path, metavar="FILE",
                   help="a file sent with the payload: its PDF, or the JSON sidecar of a PDF")
    p.add_argument("file", type=Path)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gateway.routing.payload import detect_payload
    from gateway.routing.sidecar import looks_like_sidecar

    config = config_from(args)
    files: list[SubmittedFile] = []
    for path in (args.file, *args.companions):
        try:
            files.append(SubmittedFile(path.read_bytes(), path.name))
        except OSError as exc:
            print(f"msgw: cannot read {path}: {exc.strerror}", file=sys.stderr)
            return 2
    data = files[0].data
    kind = detect_payload(data) or ("sidecar" if looks_like_sidecar(data, args.file.name) else None)
    if kind is None and args.companions:
        print("msgw: --with goes with a payload (HPRIM, HL7 v2, CDA, PDF or a JSON sidecar)", file=sys.stderr)
        return 2
    if kind is None:
        if not args.recipients:
            print("msgw: a message file needs at least one --to", file=sys.stderr)
            return 2
        # Normalise line endings: a file from disk usually has LF; SMTP and S/MIME want CRLF.
        data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        with open_queue_store(config).open(recover=False) as spool:
            # The operator on this host speaks for --from (they can read the key files anyway).
            msg_id = spool.accept(args.sender, args.recipients, data, lifetime=config.spool.max_queue_lifetime,
                                  listener="cli", auth_user=args.sender)
        print(msg_id)
        return 0
    return _send_payload(config, args, files, kind)


@contextlib.contextmanager
def _gestionnaire(config, spool: Spool) -> Iterator[object]:
    """The CI-SIS GESTIONNAIRE for a profile message given to `msgw send` (None when the profile is
    not served): its ZAMs go into the ledger, which the running gateway's sender reads."""
    settings = config.intake.cisis
    if not settings.enabled:
        yield None
        return
    from gateway.audit import AuditTrail, AuditWriter, audit_path
    from gateway.cisis.gestionnaire import Gestionnaire

    ledger = open_zam_ledger(config)
    audit = AuditWriter(AuditTrail(audit_path(config)))
    try:
        yield Gestionnaire(settings, spool, ledger, lifetime=config.spool.max_queue_lifetime, audit=audit)
    finally:
        audit.close()
        ledger.close()


def _send_payload(config, args: argparse.Namespace, files: list[SubmittedFile], kind: str) -> int:
    from gateway.intake.bundle import bundle_files
    from gateway.intake.door import IntakeDoor

    routing = config.intake.routing
    bundle = bundle_files(files)
    dedup = open_dedup(config)
    with open_directory(config) as directory, open_queue_store(config).open(recover=False) as spool:
        # The operator on this host speaks for --from (they can read the key files anyway).
        door = IntakeDoor(spool, directory, dedup, None, config.spool.max_queue_lifetime, routing=routing,
                          sender=args.sender, auth_user=args.sender, listener="cli")
        with _gestionnaire(config, spool) as door.gestionnaire:
            _, ids = door.submit(bundle.data, bundle.filename, client="msgw-send", info=bundle.info,
                                 pdfs=bundle.pdfs, envelope_recipients=args.recipients)
    if not ids:
        print(f"msgw: {kind} payload already sent to every recipient within the dedup window", file=sys.stderr)
    for msg_id in ids:
        print(msg_id)
    return 0
