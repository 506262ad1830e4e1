"""`msgw payload inspect FILE [--json] [--show-patient]`: what a lab's or hospital's payload says
(`msgw payload plan`, for the CI-SIS HL7v2 profile, is in `gateway.commands.payload_plan`).

For operators diagnosing a sender's output: kind, document type, author, recipients'
identifiers, document id, replacement status. Patient identifiers are masked unless
``--show-patient`` is given (a warning then goes to stderr, since the output may end up in a
ticket). Malformed input exits 2 with a one-line reason naming the location, never the content.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gateway.commands.payload_plan import register as register_plan
from gateway.routing.model import PartyRef, PatientId, PayloadError, PayloadInfo, mask
from gateway.routing.payload import detect_payload, read_payload
from gateway.routing.sidecar import looks_like_sidecar, read_sidecar


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("payload", help="inspect structured payloads (HPRIM, HL7 v2, CDA, PDF, IHE XDM)")
    psub = p.add_subparsers(dest="payload_command", required=True)
    inspect = psub.add_parser("inspect", help="show what a payload file says (patient identifiers masked)")
    inspect.add_argument("file", metavar="FILE", help="payload file to read")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of text")
    inspect.add_argument("--show-patient", action="store_true",
                         help="show patient identifiers in clear (prints a warning)")
    inspect.set_defaults(func=run_inspect)
    register_plan(psub)


def _party(p: PartyRef | None, show: bool) -> dict[str, Any] | None:
    if p is None:
        return None
    hide = p.is_patient and not show
    return {"id_type": p.id_type, "value": mask(p.value) if hide else p.value,
            "rpps": p.rpps, "name": "<patient>" if hide else p.display_name,
            "organisation": "" if hide else p.organisation,
            "address": (mask(p.address) if hide else p.address) if p.address else None,
            "role": p.role, "source": p.source, "patient": p.is_patient}


def _patient(pid: PatientId, show: bool) -> dict[str, Any]:
    return {"kind": pid.kind, "value": pid.value if show else mask(pid.value), "authority": pid.authority,
            "source": pid.source}


def to_dict(info: PayloadInfo, show: bool = False) -> dict[str, Any]:
    return {
        "kind": info.kind,
        "document_type": {"code": info.document_type.code, "label": info.document_type.label,
                          "system": info.document_type.system},
        "document_id": info.document_id, "set_id": info.set_id, "version": info.version,
        "replaces": info.replaces, "replaced_id": info.replaced_id, "cancels": info.cancels,
        "encoding": info.encoding, "created": info.created, "sender": info.sender,
        "author": _party(info.author, show),
        "recipients": [_party(p, show) for p in info.recipients],
        "legal_authenticator": _party(info.legal_authenticator, show),
        "patient_ids": [_patient(p, show) for p in info.patient_ids],
        "body": info.body, "media_type": info.media_type,
        "embedded": [to_dict(e, show) for e in info.embedded],
        "warnings": list(info.warnings),
    }


def _party_line(p: dict[str, Any]) -> str:
    text = f"{p['id_type']} {p['value']}"
    if p["name"]:
        text += f" ({p['name']})"
    if p["address"]:
        text += f" <{p['address']}>"
    return text + f" role={p['role'] or '-'} from {p['source']}"


def _print_text(d: dict[str, Any], indent: str = "") -> None:
    dt_ = d["document_type"]
    print(f"{indent}kind: {d['kind']}")
    print(f"{indent}document type: {dt_['code']} {dt_['label']} ({dt_['system']})".rstrip())
    print(f"{indent}document id: {d['document_id'] or '-'}")
    if d["set_id"] or d["version"] is not None:
        print(f"{indent}set id: {d['set_id'] or '-'} version: {d['version'] if d['version'] is not None else '-'}")
    print(f"{indent}replaces: {'yes' if d['replaces'] else 'no'}"
          + (f" (replaced id {d['replaced_id']})" if d["replaced_id"] else "")
          + (" cancels: yes" if d["cancels"] else ""))
    if d["encoding"]:
        print(f"{indent}encoding: {d['encoding']}")
    print(f"{indent}author: {_party_line(d['author']) if d['author'] else '-'}")
    if not d["recipients"]:
        print(f"{indent}recipients: -")
    for p in d["recipients"]:
        print(f"{indent}recipient: {_party_line(p)}")
    for pid in d["patient_ids"]:
        print(f"{indent}patient id: {pid['kind']} {pid['value']} from {pid['source']}")
    for w in d["warnings"]:
        print(f"{indent}warning: {w}")
    for n, e in enumerate(d["embedded"], start=1):
        print(f"{indent}embedded document {n}:")
        _print_text(e, indent + "  ")


def run_inspect(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        print(f"msgw: payload: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        if detect_payload(data) is None and looks_like_sidecar(data, path.name):
            info = read_sidecar(data)  # what a PDF's JSON sidecar routes it to
        else:
            info = read_payload(data, path.name)
    except PayloadError as exc:
        print(f"msgw: payload: {exc}", file=sys.stderr)
        return 2
    if args.show_patient:
        print("warning: patient identifiers shown in clear; do not paste this output into tickets or mail",
              file=sys.stderr)
    d = to_dict(info, args.show_patient)
    if args.json:
        print(json.dumps(d, ensure_ascii=False, indent=2))
    else:
        _print_text(d)
    return 0
