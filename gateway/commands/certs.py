"""`msgw certs show CERT [--json]`: addresses, RPPS/ADELI, profession, usages, validity.

(`msgw certs tokens` belongs to gateway/commands/tokens.py; it attaches to the same
`certs` parser when present.)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any

from cryptography import x509

from gateway.errors import GatewayError
from gateway.smime.identity import dn, read_identity
from gateway.smime.softkeys import load_certificates

_KU_NAMES = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
             "key_agreement", "key_cert_sign", "crl_sign")


def describe(cert: x509.Certificate, now: dt.datetime | None = None) -> dict[str, Any]:
    """Facts about one certificate, JSON-ready."""
    now = now or dt.datetime.now(dt.UTC)
    ident = read_identity(cert)
    usages: list[str] = []
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        usages = [n for n in _KU_NAMES if getattr(ku, n)]
    except x509.ExtensionNotFound:
        pass
    try:
        eku = [o._name for o in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value]
    except x509.ExtensionNotFound:
        eku = []
    nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
    state = "not-yet-valid" if now < nb else "expired" if now > na else "valid"
    return {
        "subject": dn(cert.subject), "issuer": dn(cert.issuer), "serial": format(cert.serial_number, "x"),
        "emails": list(ident.emails), "upns": list(ident.upns), "national_id": ident.national_id,
        "national_id_type": ident.national_id_type, "rpps": ident.rpps, "adeli": ident.adeli,
        "card_id": ident.card_id, "profession": ident.profession, "given_name": ident.given_name,
        "surname": ident.surname, "organisation": ident.organisation,
        "organisation_ids": [{"kind": k, "value": v} for k, v in ident.organisation_ids],
        "key_usage": usages, "extended_key_usage": eku,
        "not_before": nb.isoformat(), "not_after": na.isoformat(), "validity": state,
    }


def cmd_show(args: argparse.Namespace) -> int:
    try:
        certs = load_certificates(args.cert)
    except GatewayError as exc:
        print(f"msgw certs: {exc}", file=sys.stderr)
        return 2
    if not certs:
        print("msgw certs: no certificate in the file", file=sys.stderr)
        return 2
    facts = [describe(c) for c in certs]
    if args.json:
        print(json.dumps(facts if len(facts) > 1 else facts[0], indent=2, ensure_ascii=False))
        return 0
    for f in facts:
        for key, value in f.items():
            if value not in (None, [], ""):
                shown = ", ".join(str(v) if not isinstance(v, dict) else f"{v['kind']}:{v['value']}"
                                  for v in value) if isinstance(value, list) else value
                print(f"{key}: {shown}")
        print()
    return 0


def certs_subparsers(subparsers: Any) -> Any:
    """The `certs` sub-command group, created once and shared with `tokens`."""
    existing = subparsers.choices.get("certs")
    if existing is not None:
        return existing._msgw_sub  # type: ignore[attr-defined]
    p = subparsers.add_parser("certs", help="certificates: show, tokens")
    sub = p.add_subparsers(dest="certs_command", required=True)
    p._msgw_sub = sub  # type: ignore[attr-defined]
    return sub


def register(subparsers: Any) -> None:
    sub = certs_subparsers(subparsers)
    s = sub.add_parser("show", help="addresses, RPPS/ADELI, profession, usages, validity of a certificate")
    s.add_argument("cert", help="certificate file (PEM or DER)")
    s.add_argument("--json", action="store_true", help="print the reading as JSON")
    s.set_defaults(func=cmd_show)
