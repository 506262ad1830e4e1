"""`msgw payload plan FILE [--json] [--out DIR]`: what the gateway would do with a CI-SIS
"Transmission de document(s) CDA en HL7v2" message, without sending anything.

For the operator asked "why did the patient not get it?": each copy (recipients and their kind,
the form the protection policy will choose is the queue's business, so the plan shows the
MSSanté headers and attachments), each recipient left out and why (the flag that says so),
the refusal with the rule it breaks, and the business acknowledgments (ZAM) the CRÉATEUR will
get. Patient mailboxes (``<INS>@patient.mssante.fr``) are masked unless ``--show-patient``.
``--out DIR`` writes each copy's *unprotected* ``.eml`` for integration testing (and says so on
stderr: those files hold health data in clear). Exit 0 planned, 1 refused, 2 unreadable.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

from gateway.cisis.gestionnaire import Planned, plan_only
from gateway.cisis.model import PATIENT_DOMAIN, CisisError
from gateway.cisis.reader import is_transmission
from gateway.commands.common import add_config_option, config_from
from gateway.routing.model import PayloadError, mask


def register(psub: argparse._SubParsersAction) -> None:
    plan = psub.add_parser("plan", help="what the gateway would send for a CI-SIS HL7v2 message (sends nothing)")
    plan.add_argument("file", metavar="FILE", help="an ORU^R01 / MDM^T02|T10|T04 message of the profile")
    plan.add_argument("--json", action="store_true", help="print JSON instead of text")
    plan.add_argument("--out", metavar="DIR", help="write each copy's unprotected .eml into DIR")
    plan.add_argument("--show-patient", action="store_true", help="show patient mailboxes in clear")
    add_config_option(plan)
    plan.set_defaults(func=run_plan)


def _address(address: str, show: bool) -> str:
    local, _, domain = address.rpartition("@")
    if show or domain != PATIENT_DOMAIN:
        return address
    return f"{mask(local)}@{domain}"


def to_dict(planned: Planned, show: bool = False) -> dict[str, Any]:
    plan = planned.plan
    tx = plan.transmission
    copies = []
    for copy, built in zip(plan.copies, planned.built, strict=True):
        headers = [[k, _address(v, show) if k.lower() in ("to", "reply-to") else v] for k, v in built.headers
                   if k.lower() != "subject" or show]
        copies.append({
            "kind": copy.kind,
            "recipients": [{"address": _address(r.address, show), "kind": r.kind.value,
                            "identifier": r.identifier if r.kind.value != "PATIENT" or show else mask(r.identifier)}
                           for r in copy.recipients],
            "body": copy.body_code if copy.body_code in tx.bodies else "default",
            "read_receipt": copy.read_receipt,
            "headers": headers,
            "attachments": list(built.attachments),
            "form": "decided by the protection policy when queued (S/MIME with a known certificate, "
                    "trust-space TLS to an MSSanté domain, otherwise refused)",
        })
    return {
        "profile": "CISIS_CDA_HL7_V2",
        "message": f"{tx.header.message_type}^{tx.header.trigger}",
        "control_id": tx.header.control_id,
        "creator": f"{tx.header.sending_application}/{tx.header.sending_facility}",
        "action": tx.action.name.lower(),
        "documents": [{"code": d.code, "level": d.level, "status": d.status, "size": len(d.data)}
                      for d in tx.documents],
        "flags": {k: ("Y" if v else "N") for k, v in tx.flags.items()},
        "matrix_row": plan.row.name if plan.row is not None else None,
        "copies": copies,
        "left_out": [{"address": _address(r.address, show), "kind": r.kind.value, "reason": why}
                     for r, why in plan.left_out],
        "zams": [{"event": z.event.value, "recipient": _address(z.recipient, show) if z.recipient else None,
                  "when": z.when} for z in plan.zams],
        "notes": list(plan.notes),
    }


def _print_text(d: dict[str, Any]) -> None:
    print(f"{d['message']} {d['control_id']} from {d['creator']}: {d['action']}, "
          f"{len(d['documents'])} document(s), matrix row {d['matrix_row'] or '-'}")
    for c in d["copies"]:
        print(f"copy for the {'patient' if c['kind'] == 'patient' else 'professionals'}:")
        for r in c["recipients"]:
            print(f"  {r['kind']:<8} {r['address']}")
        for k, v in c["headers"]:
            print(f"  {k}: {v}")
        print(f"  attachments: {', '.join(c['attachments'])}; body: {c['body']}")
    for r in d["left_out"]:
        print(f"left out: {r['kind']} {r['address']}: {r['reason']}")
    for z in d["zams"]:
        print(f"owed ZAM^{z['event']}" + (f" for {z['recipient']}" if z["recipient"] else "") + f": {z['when']}")
    for n in d["notes"]:
        print(f"note: {n}")


def _write_out(planned: Planned, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for n, (copy, built) in enumerate(zip(planned.plan.copies, planned.built, strict=True), start=1):
        path = out / f"copy-{n}-{copy.kind}.eml"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(built.data)
    print(f"warning: wrote {len(planned.built)} unprotected .eml file(s) into {out}: they hold health data in "
          "clear, for integration testing only", file=sys.stderr)


def run_plan(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        print(f"msgw: payload plan: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if not is_transmission(data):
        print("msgw: payload plan: not a message of the CI-SIS profile (MSH-21 must name CISIS_CDA_HL7_V2); "
              "use 'msgw payload inspect' for other payloads", file=sys.stderr)
        return 2
    config = config_from(args)
    try:
        planned = plan_only(data, config.intake.cisis, dt.datetime.now(dt.UTC))
    except CisisError as exc:
        refusal = {"refused": True, "rule": exc.rule, "reason": exc.what, "where": exc.where,
                   "ack": "AE", "err3": exc.hl7_error}
        if args.json:
            print(json.dumps(refusal, ensure_ascii=False, indent=2))
        else:
            print(f"refused (ACK AE, rule {exc.rule}): {exc.what}" + (f" at {exc.where}" if exc.where else ""))
            print("nothing would be sent")
        return 1
    except PayloadError as exc:
        print(f"msgw: payload plan: {exc}", file=sys.stderr)
        return 2
    if args.show_patient:
        print("warning: patient mailboxes shown in clear; do not paste this output into tickets or mail",
              file=sys.stderr)
    d = to_dict(planned, args.show_patient)
    if args.json:
        print(json.dumps(d, ensure_ascii=False, indent=2))
    else:
        _print_text(d)
    if args.out:
        _write_out(planned, Path(args.out))
    return 0


__all__ = ["register", "run_plan", "to_dict"]
