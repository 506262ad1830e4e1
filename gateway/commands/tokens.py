"""`msgw certs tokens --module PATH [--json]`: slots, tokens and the certificates on them.

For each certificate it prints who it names (RPPS/ADELI from the CPS CN, profession from
`title`, e-mail addresses from the SAN), its usages, and the `pkcs11:` URI to put in the
config, so an operator writes the key line without guessing labels or ids. Certificates are
public objects: no PIN is needed; with a PIN option the private keys are listed too (and the
URI then carries the key's label).

Wiring: `register(subparsers)` attaches `tokens` under the `certs` group (shared with
gateway/commands/certs.py through its `certs_subparsers`, or created here when that module is
absent) and also adds a top-level `msgw tokens` alias; `add_tokens_command(certs_sub)` adds it
to a given `certs` sub-parser set.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gateway.errors import GatewayError

DEFAULT_HINT = "/usr/lib/softhsm/libsofthsm2.so (SoftHSM2), /usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--module", required=True, help=f"PKCS#11 module path, e.g. {DEFAULT_HINT}")
    p.add_argument("--token", help="only this token label")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.add_argument("--pin-file", help="log in with the PIN in this file (lists private keys too; "
                   "needs --token: a PIN is never tried on several cards)")
    p.add_argument("--pin-env", help="log in with the PIN in this environment variable")
    p.add_argument("--pin-stdin", action="store_true", help="read the PIN from stdin")
    p.set_defaults(func=cmd_tokens)


def add_tokens_command(certs_sub: Any) -> None:
    """Add `tokens` to the `certs` sub-commands (no-op if it is there already)."""
    if "tokens" in certs_sub.choices:
        return
    p = certs_sub.add_parser("tokens", help="slots, tokens and certificates on a PKCS#11 module")
    _add_arguments(p)


def register(subparsers: Any) -> None:
    try:
        from gateway.commands.certs import certs_subparsers
    except ImportError:
        certs_subparsers = _own_certs_subparsers
    add_tokens_command(certs_subparsers(subparsers))
    if "tokens" not in subparsers.choices:
        p = subparsers.add_parser("tokens", help="alias of `msgw certs tokens`")
        _add_arguments(p)


def _own_certs_subparsers(subparsers: Any) -> Any:
    existing = subparsers.choices.get("certs")
    if existing is not None:
        return existing._msgw_sub
    p = subparsers.add_parser("certs", help="certificates: tokens")
    sub = p.add_subparsers(dest="certs_command", required=True)
    p._msgw_sub = sub
    return sub


def _describe_cert(cert: Any) -> dict[str, Any]:
    try:
        from gateway.commands.certs import describe
    except ImportError:
        return {"subject": cert.subject.rfc4514_string(), "serial": format(cert.serial_number, "x")}
    return describe(cert)


def _cert_item(entry: Any) -> dict[str, Any]:
    item = {"label": entry.label, "id": entry.id, "uri": entry.uri, "has_private_key": entry.has_private_key,
            "is_ca": _is_ca(entry.certificate)}
    item.update(_describe_cert(entry.certificate))
    return item


def _is_ca(cert: Any) -> bool:
    from cryptography import x509

    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def cmd_tokens(args: argparse.Namespace) -> int:
    from gateway.smime.pkcs11 import pin_source
    from gateway.smime.pkcs11.discovery import list_tokens
    from gateway.smime.pkcs11.keys import resolve_module
    from gateway.smime.pkcs11.uri import Pkcs11Uri

    try:
        module = resolve_module(Pkcs11Uri(), args.module)
        pin = pin_source(pin_file=args.pin_file, pin_env=args.pin_env, pin_stdin=args.pin_stdin)
        if pin is not None and args.token is None:
            # One PIN presented to every card would spend a try on each card it does not fit.
            print("msgw certs tokens: a PIN option needs --token LABEL", file=sys.stderr)
            return 2
        entries = list_tokens(module, pin, args.token)
    except GatewayError as exc:
        print(f"msgw certs tokens: {exc}", file=sys.stderr)
        return 2
    report = []
    for entry in entries:
        item: dict[str, Any] = {
            "slot_id": entry.slot_id, "slot_description": entry.slot_description, "present": entry.present,
            "label": entry.label, "serial": entry.serial, "manufacturer": entry.manufacturer,
            "model": entry.model, "flags": entry.flags, "logged_in": entry.logged_in, "error": entry.error,
            "keys": [vars(k) for k in entry.keys],
            "certificates": [_cert_item(c) for c in entry.certificates],
        }
        report.append(item)
    if args.json:
        print(json.dumps({"module": module, "slots": report}, indent=2, ensure_ascii=False))
        return 0
    _print_text(module, report)
    return 0


def _print_text(module: str, report: list[dict[str, Any]]) -> None:
    print(f"module: {module}")
    for item in report:
        head = f"slot {item['slot_id']} ({item['slot_description']})"
        if not item["present"]:
            print(f"{head}: no token")
            continue
        print(f"{head}: token {item['label']!r} serial {item['serial']} "
              f"[{item['manufacturer']} / {item['model']}] {' '.join(item['flags'])}")
        if item["error"]:
            print(f"  error: {item['error']}")
        for key in item["keys"]:
            uses = ",".join(u for u in ("sign", "decrypt") if key[u])
            print(f"  private key {key['label']!r} id {key['id']} {key['key_type']} ({uses})")
        for cert in item["certificates"]:
            print(f"  certificate {cert['label']!r} id {cert['id']}")
            print(f"    subject: {cert.get('subject')}")
            for field in ("rpps", "adeli", "national_id", "card_id", "profession", "given_name", "surname",
                          "organisation"):
                if cert.get(field):
                    print(f"    {field}: {cert[field]}")
            if cert.get("emails"):
                print(f"    emails: {', '.join(cert['emails'])}")
            if cert.get("key_usage"):
                print(f"    key usage: {', '.join(cert['key_usage'])}")
            if cert.get("not_after"):
                print(f"    valid until: {cert['not_after']} ({cert.get('validity', '')})")
            if not cert["is_ca"] and cert["has_private_key"] is not False:
                print(f"    config: ref = \"{cert['uri']}\"")
