"""`msgw audit verify|show`: check the hash chain of the audit trail, and read it.

verify exits 0 when the chain is intact and 1 with a one-line reason when it is not (a record
modified, deleted — including the last one, via the head file — or reordered).
"""

from __future__ import annotations

import argparse
import json
import sys

from gateway.commands.common import add_config_option, config_from, progress


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="audit trail: verify the hash chain, show records")
    asub = p.add_subparsers(dest="audit_command", required=True)
    vp = asub.add_parser("verify", help="check the hash chain (exit 1 if broken)")
    vp.add_argument("--json", action="store_true", help="print the result as JSON")
    vp.add_argument("--trail", action="append", default=[], metavar="NODE=PATH",
                    help="[storage] postgresql: another node's trail, checked with this one against the anchors")
    vp.add_argument("--all-nodes", action="store_true", help="every anchored node's trail must be given")
    add_config_option(vp)
    vp.set_defaults(func=run_verify)
    sp = asub.add_parser("show", help="print records (optionally of one message)")
    sp.add_argument("--msg", metavar="ID", help="only the records of this message id")
    sp.add_argument("--json", action="store_true", help="one JSON record per line")
    add_config_option(sp)
    sp.set_defaults(func=run_show)


def run_verify(args: argparse.Namespace) -> int:
    from gateway.audit import AuditTrail, audit_path

    config = config_from(args)
    trail = AuditTrail(audit_path(config))
    with progress("verifying the audit trail's hash chain"):  # a spinner: verify() has no row callback
        report = trail.verify()
    if config.storage.shared:  # issue 18: the chains and the shared anchors together
        from gateway.storage import verify_audit_anchors

        anchored = verify_audit_anchors(config, args.trail, require_all=args.all_nodes)
        if not anchored.ok:
            print(f"msgw: {anchored}", file=sys.stderr)
            return 1
        if not args.json:
            print(anchored)
    if args.json:
        json.dump({"ok": report.ok, "records": report.records, "first_bad_seq": report.first_bad_seq,
                   "reason": report.reason, "head_seq": report.head_seq}, sys.stdout)
        print()
    if not report.ok:
        print(f"msgw: {report}", file=sys.stderr)
        return 1
    if not args.json:
        print(report)
    return 0


def run_show(args: argparse.Namespace) -> int:
    from gateway.audit import AuditTrail, audit_path

    trail = AuditTrail(audit_path(config_from(args)))
    shown = 0
    try:
        for rec in trail.records():
            if args.msg and rec.get("message_id") != args.msg:
                continue
            shown += 1
            if args.json:
                print(json.dumps(rec, ensure_ascii=False, sort_keys=True))
            else:
                parts = [f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in rec.items()
                         if k not in ("seq", "time", "prev_hash", "hash")]
                print(f"{rec.get('seq')} {rec.get('time')} " + " ".join(parts))
    except ValueError:
        print("msgw: the audit trail has an unreadable line (run msgw audit verify)", file=sys.stderr)
        return 2
    if args.msg and not shown:
        print("msgw: no audit record for this message", file=sys.stderr)
        return 1
    return 0
