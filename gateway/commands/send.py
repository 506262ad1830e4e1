"""`msgw send`: inject a file into the spool as if it had been received (durably).

An .eml goes in as it is; a bare payload (HPRIM, HL7 v2, CDA, PDF) goes through the same
intake as the drop folders and MLLP: its recipients are read from the payload and looked up
in the directory (plus any --to), duplicates within the window are skipped, and each copy is
wrapped in a neutral message. ``--with FILE`` adds the files that go with the payload: the PDF
beside an HPRIM/HL7/CDA file, or the PDF a JSON sidecar describes (``msgw send X.json --with X.pdf``).

What the protection policy would bounce is refused before anything is queued (exit 1), with the
reply the SMTP server gives at RCPT: the same decision (`GatewayContext.rcpt_refusal`, the route
stage's table on the facts known before queueing) and the same reply table (`smtp_reply`). Each
queued id is printed first on its line, followed by what it is (the message, the document, the
routing notice to the sender) and to whom.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from gateway.commands.common import add_config_option, config_from
from gateway.intake.bundle import SubmittedFile
from gateway.spool import Spool
from gateway.storage import open_dedup, open_directory, open_queue_store, open_zam_ledger


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("send", help="inject a message or a bare payload file into the queue")
    add_config_option(p)
    p.add_argument("--from", dest="sender", required=True, metavar="ADDR",
                   help="envelope sender; the key of this address signs (as an authenticated login)")
    p.add_argument("--to", dest="recipients", action="append", default=[], metavar="ADDR",
                   help="recipient (repeatable); needed for a message, added to a payload's own")
    p.add_argument("--with", dest="companions", action="append", default=[], type=Path, metavar="FILE",
                   help="a file sent with the payload: its PDF, or the JSON sidecar of a PDF")
    p.add_argument("file", type=Path, help="an .eml message, or a payload (HPRIM, HL7 v2, CDA, PDF, JSON sidecar)")
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
        if not refusals_allow(config, args.recipients):
            return 1
        with open_queue_store(config).open(recover=False) as spool:
            # The operator on this host speaks for --from (they can read the key files anyway).
            msg_id = spool.accept(args.sender, args.recipients, data, lifetime=config.spool.max_queue_lifetime,
                                  listener="cli", auth_user=args.sender)
        print(f"{msg_id}  the message, to {', '.join(args.recipients)}")
        return 0
    return _send_payload(config, args, files, kind)


def policy_refusals(config, recipients: Iterable[str]) -> list[tuple[str, str]]:
    """(recipient, reply) for each recipient the SMTP server would refuse at RCPT under this
    configuration's protection policy; none under the plain relay (it refuses nothing by policy).

    Asks `GatewayContext.rcpt_refusal`, the server's own RCPT check, so the answer and its text
    cannot drift from SMTP's; only certain answers refuse (a slow discovery is decided after
    queueing, as at RCPT)."""
    from gateway.errors import PolicyError, smtp_reply
    from gateway.stages.build import build_pipeline

    wanted = list(dict.fromkeys(r.lower() for r in recipients))
    _, context = build_pipeline(config)
    if context is None or not wanted:
        return []
    ctx = context

    async def ask() -> list[tuple[str, str | None]]:
        return [(rcpt, await ctx.rcpt_refusal(rcpt)) for rcpt in wanted]

    quiet = logging.NullHandler()  # the discovery's log lines: the reply below says it all
    logging.getLogger("gateway").addHandler(quiet)
    try:
        answers = asyncio.run(ask())
    finally:
        ctx.close()
        logging.getLogger("gateway").removeHandler(quiet)
    return [(rcpt, smtp_reply(PolicyError(reason), "RCPT")) for rcpt, reason in answers if reason is not None]


def refusals_allow(config, recipients: Sequence[str]) -> bool:
    """Say on stderr which recipients the policy refuses (nothing is queued then)."""
    refused = policy_refusals(config, recipients)
    for rcpt, reply in refused:
        print(f"msgw: {rcpt}: {reply}", file=sys.stderr)
    if refused:
        print(f"msgw: nothing queued: the protection policy refuses {len(refused)} recipient(s) "
              "(SMTP would refuse them at RCPT; queued, they would bounce)", file=sys.stderr)
    return not refused


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
    from gateway.cisis.reader import is_transmission
    from gateway.intake.bundle import bundle_files
    from gateway.intake.door import IntakeDoor
    from gateway.intake.process import accept_all, intake_bytes

    routing = config.intake.routing
    bundle = bundle_files(files)
    dedup = open_dedup(config)
    lifetime = config.spool.max_queue_lifetime
    now = dt.datetime.now(dt.UTC)
    with open_directory(config) as directory, open_queue_store(config).open(recover=False) as spool:
        # The operator on this host speaks for --from (they can read the key files anyway).
        door = IntakeDoor(spool, directory, dedup, None, lifetime, routing=routing,
                          sender=args.sender, auth_user=args.sender, listener="cli")
        if is_transmission(bundle.data):  # the CI-SIS GESTIONNAIRE's own rules and copies
            with _gestionnaire(config, spool) as door.gestionnaire:
                _, ids = door.submit(bundle.data, bundle.filename, client="msgw-send", info=bundle.info,
                                     pdfs=bundle.pdfs, envelope_recipients=args.recipients, now=now)
            for msg_id in ids:
                print(f"{msg_id}  a CI-SIS copy of the transmission")
            return 0
        # The door's two steps apart (`IntakeDoor.submit`), to check the recipients in between.
        result = intake_bytes(bundle.data, bundle.filename, sender=args.sender, envelope_recipients=args.recipients,
                              directory=directory, dedup=dedup, settings=routing, now=now, info=bundle.info,
                              pdfs=bundle.pdfs)
        if not refusals_allow(config, [r for out in result.outgoing for r in out.recipients]):
            return 1
        ids = accept_all(result, spool, lifetime=lifetime, listener="cli", client="msgw-send", dedup=dedup, now=now,
                         auth_user=args.sender)
    if not ids:
        print(f"msgw: {kind} payload already sent to every recipient within the dedup window", file=sys.stderr)
    for msg_id, out in zip(ids, result.outgoing, strict=True):
        what = f"the document ({kind})" if out.envelope_sender else "the routing notice to the sender"
        print(f"{msg_id}  {what}, to {', '.join(out.recipients)}")
    if result.suppressed:
        print(f"msgw: already sent within the dedup window, not queued again for: {', '.join(result.suppressed)}",
              file=sys.stderr)
    return 0
