"""`msgw zam list`: what the CI-SIS ZAM ledger holds for an operator (issue 16, item 5).

The GESTIONNAIRE owes business acknowledgments (ZAM^Z01|Z02|Z03) to each CRÉATEUR; the ledger
(`gateway.storage.open_zam_ledger`: ``<spool>/cisis.sqlite``, or the shared PostgreSQL one)
keeps the ones never acknowledged within the spool lifetime (``expired``) and counts the returns
(DSNs, MDNs) it dropped, by reason (``ignored``: a report for no copy of ours, a reader not on
the copy). Both are for a person to look at; the running gateway never acts on them again.

Only identifiers are shown: the ZAM's type, control id, CRÉATEUR, attempts and age, never its
HL7 content (it names the recipients, a patient's mailbox among them).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys

from gateway.commands.common import add_config_option, config_from
from gateway.storage import open_zam_ledger


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("zam", help="the CI-SIS business acknowledgments (ZAM) ledger")
    zsub = p.add_subparsers(dest="zam_command", required=True)
    lp = zsub.add_parser("list", help="ZAMs never acknowledged (expired) and returns ignored, by reason")
    add_config_option(lp)
    lp.add_argument("--expired", action="store_true",
                    help="ZAMs no CRÉATEUR acknowledged within the spool lifetime (default: both lists)")
    lp.add_argument("--ignored", action="store_true",
                    help="returns (DSN, MDN) that matched no copy and recipient, counted by reason")
    lp.add_argument("--json", action="store_true", help="one JSON object with the lists asked for")
    lp.set_defaults(func=run_list)


def _kind(data: bytes) -> str:
    """The ZAM's message type (MSH-9, e.g. ``ZAM^Z02^ZAM_Z01``): a header field, no content."""
    msh = data.split(b"\r", 1)[0].split(b"\n", 1)[0]
    if not msh.startswith(b"MSH") or len(msh) < 4:
        return "?"
    fields = msh.split(msh[3:4])
    return fields[8].decode("ascii", "replace") if len(fields) > 8 else "?"


def _utc(stamp: float) -> str:
    return dt.datetime.fromtimestamp(stamp, dt.UTC).isoformat(timespec="seconds")


def run_list(args: argparse.Namespace) -> int:
    from gateway.cisis.ledger import FILE_NAME

    config = config_from(args)
    path = config.spool.path / FILE_NAME
    both = not (args.expired or args.ignored)
    if not config.storage.shared and not path.exists():
        # reading must not create the ledger of a gateway that never served the profile
        print(f"msgw: no CI-SIS ledger at {path} (this gateway has not served the CI-SIS profile)", file=sys.stderr)
        expired, ignored, pending = [], {}, 0
    else:  # the factory: the SQLite file beside the spool, or the shared ledger every node writes
        ledger = open_zam_ledger(config)
        try:
            expired, ignored, pending = ledger.expired(), ledger.ignored(), ledger.pending_count()
        finally:
            ledger.close()
    rows = [{"id": e.id, "type": _kind(e.data), "control_id": e.control_id, "creator": e.creator,
             "attempts": e.attempts, "created": _utc(e.created)} for e in expired]
    if args.json:
        out: dict[str, object] = {"pending": pending}
        if both or args.expired:
            out["expired"] = rows
        if both or args.ignored:
            out["ignored"] = ignored
        print(json.dumps(out, indent=2))
        return 0
    if both or args.expired:
        print(f"expired ZAMs (never acknowledged by their CRÉATEUR): {len(rows)}; still pending: {pending}")
        for r in rows:
            print(f"  #{r['id']}  {r['type']}  control {r['control_id']}  to {r['creator']}  "
                  f"{r['attempts']} attempt(s)  queued {r['created']}")
    if both or args.ignored:
        print(f"ignored returns (DSN/MDN matching no copy and recipient): {sum(ignored.values())}")
        for reason, count in ignored.items():
            print(f"  {reason}: {count}")
    return 0
