"""`msgw directory import|lookup|add|remove`: the directory of correspondents from the shell.

Exit codes: 0 ok, 1 not found, 2 bad input (one-line reason on stderr). Imports print their
counts and rows/s; rejected rows are listed on stderr by line number and reason (never values).
The heavy modules are imported inside the handlers so `msgw --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from gateway.commands.common import Ticker, add_config_option, config_from, count_lines, on_terminal, progress

if TYPE_CHECKING:
    from gateway.directory.directory import DirectoryStore

_SHOWN_ERRORS = 20


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("directory", help="directory of correspondents: import, look up, add")
    dsub = p.add_subparsers(dest="directory_command", required=True)

    ip = dsub.add_parser("import", help="import an Annuaire Santé extraction or our CSV (idempotent)")
    ip.add_argument("file", help="the extraction or CSV file to import")
    ip.add_argument("--format", choices=("mssante-extraction", "rpps-extraction", "csv"),
                    help="default: detected from the header line")
    ip.add_argument("--source", help="source name for a CSV (csv or csv:NAME); re-importing a source replaces it")
    ip.add_argument("--allow-empty", action="store_true", help="let a file with no valid row empty its source")
    ip.add_argument("--json", action="store_true", help="print the import statistics as JSON")
    add_config_option(ip)
    ip.set_defaults(func=run_import)

    lp = dsub.add_parser("lookup", help="look up by RPPS, ADELI, identifiant national, FINESS, address or name")
    lp.add_argument("query", metavar="RPPS|ADELI|ADDRESS|NAME", help="an identifier, a mail address or a name")
    lp.add_argument("--postcode", help="narrow a name search to a postcode (or its first digits)")
    lp.add_argument("--json", action="store_true", help="print the entries as JSON")
    add_config_option(lp)
    lp.set_defaults(func=run_lookup)

    ap = dsub.add_parser("add", help="add or replace one address (operator entry, never removed by imports)")
    ap.add_argument("address", help="the mail address to add or replace")
    ap.add_argument("--capability", required=True, help="smime, local, trusted-domain or legacy:<codec>")
    ap.add_argument("--cert", action="append", default=[], metavar="FILE",
                    help="encryption certificate (PEM or DER; repeat for several)")
    ap.add_argument("--key-ref", help="key reference a local mailbox decrypts with (capability local)")
    ap.add_argument("--mailbox-type", choices=("PER", "ORG", "APP"),
                    help="MSSanté mailbox type: personal, organisation or application")
    ap.add_argument("--rpps", help="the professional's RPPS number")
    ap.add_argument("--adeli", help="the professional's ADELI number")
    ap.add_argument("--last-name", help="family name (for lookups by name)")
    ap.add_argument("--first-name", help="given name")
    ap.add_argument("--organisation", help="organisation name")
    add_config_option(ap)
    ap.set_defaults(func=run_add)

    rp = dsub.add_parser("remove", help="remove an operator entry added with `directory add`")
    rp.add_argument("address", help="the mail address to remove")
    add_config_option(rp)
    rp.set_defaults(func=run_remove)


def _fail(reason: str, code: int = 2) -> int:
    print(f"msgw: {reason}", file=sys.stderr)
    return code


def _open(args: argparse.Namespace) -> Any:
    from gateway.storage import open_directory

    return open_directory(config_from(args))


def run_import(args: argparse.Namespace) -> int:
    from gateway.directory.annuaire import RowError, import_file
    from gateway.directory.directory import DirectoryError, ImportFormatError

    path = Path(args.file)
    if not path.is_file():
        return _fail(f"no such file: {path}")
    shown = [0]
    # On a terminal, a bar over the file's rows (its lines but the header); elsewhere nothing, not
    # even the line count.
    total = max(count_lines(path) - 1, 0) if on_terminal() else None

    def on_error(err: RowError) -> None:
        tick()
        shown[0] += 1
        if shown[0] <= _SHOWN_ERRORS:
            print(f"msgw: {path.name}: {err}", file=sys.stderr)

    try:
        # the configuration and the directory first: their errors are not drawn inside a bar
        with _open(args) as store, progress(f"importing {path.name}", total) as advance:
            tick = Ticker(advance)
            counted = cast("DirectoryStore", _Counting(store, tick)) if total is not None else store
            report = import_file(counted, path, args.format, source=args.source, allow_empty=args.allow_empty,
                                 on_error=on_error)
            tick.flush()
            if total is not None:
                advance(total - tick.count)  # lines no reader saw as a row (blank ones) end the bar
    except (DirectoryError, ImportFormatError) as exc:
        return _fail(str(exc))
    if shown[0] > _SHOWN_ERRORS:
        print(f"msgw: {path.name}: … and {shown[0] - _SHOWN_ERRORS} more rejected row(s)", file=sys.stderr)
    if args.json:
        json.dump({"format": report.format, "source": report.source, "encoding": report.encoding,
                   "rows": report.rows, "seconds": round(report.seconds, 3),
                   "rows_per_second": round(report.rows_per_second), **report.counts.as_dict(),
                   "errors": [{"line": e.line, "reason": e.reason} for e in report.errors[:_SHOWN_ERRORS]]},
                  sys.stdout, indent=2)
        print()
    else:
        print(report.summary())
    return 0


class _Counting:
    """The directory, seen by the import through a counter of the rows it takes (the progress bar's;
    `import_file` counts rows itself only for its final report)."""

    def __init__(self, store: Any, tick: Ticker) -> None:
        self._store, self._tick = store, tick

    def __getattr__(self, name: str) -> Any:  # the rest of the store, as it is
        return getattr(self._store, name)

    def sync_source(self, source: str, items: Any, **kwargs: Any) -> Any:
        return self._store.sync_source(source, self._counted(items), **kwargs)

    def _counted(self, items: Any) -> Any:
        for item in items:
            self._tick()
            yield item


def run_lookup(args: argparse.Namespace) -> int:
    q = args.query.strip()
    with _open(args) as store:
        if "@" in q:
            found = [c] if (c := store.by_address(q)) else []
        elif re.fullmatch(r"\d{11}", q):
            found = [c] if (c := store.by_rpps(q)) else []
        elif re.fullmatch(r"[08][0-9A-Za-z]{9,11}", q) and (c := store.by_national_id(q.upper())):
            found = [c]
        elif re.fullmatch(r"[0-9A-Za-z]{9}", q) and any(ch.isdigit() for ch in q):
            found = [c] if (c := store.by_adeli(q.upper())) else store.by_finess(q.upper())
        else:
            found = store.find_by_name(q, args.postcode)
    if not found:
        return _fail("not found in the directory", 1)
    if args.json:
        json.dump([c.to_json() for c in found], sys.stdout, indent=2, ensure_ascii=False, default=str)
        print()
        return 0
    for c in found:
        _print(c)
    return 0


def _print(c: Any) -> None:
    e = c.entity
    ids = " ".join(f"{k}={v}" for k, v in (("rpps", e.rpps), ("adeli", e.adeli), ("national", e.national_id),
                                            ("finess", e.finess), ("siret", e.siret)) if v)
    name = " ".join(x for x in (e.civility, e.first_name, e.last_name) if x) or e.organisation or "-"
    print(f"{e.kind} {name}  {ids}  [{', '.join(e.sources)}]")
    for a in e.activities:
        prof = " / ".join(x for x in (a.profession_label or a.profession_code,
                                      a.speciality_label or a.speciality_code) if x)
        where = " ".join(x for x in (a.organisation, a.service, a.postcode) if x)
        print(f"    activity: {prof or '-'}  {where}".rstrip())
    for addr in c.addresses:
        extra = f" key={addr.key_ref}" if addr.key_ref else ""
        extra += f" certificates={len(addr.certificates)}" if addr.certificates else ""
        print(f"    <{addr.address}> {addr.mailbox_type or ''} {addr.capability}{extra}  [{addr.source}]")


def _read_certs(files: list[str]) -> list[bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    out: list[bytes] = []
    for name in files:
        data = Path(name).read_bytes()
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
        out.extend(c.public_bytes(Encoding.DER) for c in certs)
    return out


def run_add(args: argparse.Namespace) -> int:
    from gateway.directory.directory import DirectoryError, EntityKind, Identity, national_id_for, operator_item

    try:
        certs = _read_certs(args.cert)
    except OSError as exc:
        return _fail(f"cannot read certificate file: {exc.strerror}")
    except ValueError:
        return _fail("a --cert file is not a PEM or DER certificate")
    kind: EntityKind = "organisation" if args.organisation and not (args.rpps or args.adeli) else "person"
    identity = Identity(kind=kind, national_id=national_id_for(args.rpps, args.adeli), rpps=args.rpps,
                        adeli=args.adeli.upper() if args.adeli else None, last_name=args.last_name,
                        first_name=args.first_name, organisation=args.organisation)
    named = bool(args.rpps or args.adeli or args.last_name or args.organisation)
    try:
        with _open(args) as store:
            known = None if named else store.address(args.address)
            # no identity given: keep the address with the entity the directory already knows
            item = operator_item(args.address, args.capability, key_ref=args.key_ref, certificates=certs,
                                 mailbox_type=args.mailbox_type or (known.mailbox_type if known else None),
                                 identity=identity, entity_key=known.entity_key if known else None)
            store.put(item)
    except DirectoryError as exc:
        return _fail(str(exc))
    print(f"added <{item.address.address if item.address else args.address}> {args.capability}"
          + (f" with {len(certs)} certificate(s)" if certs else ""))
    return 0


def run_remove(args: argparse.Namespace) -> int:
    from gateway.directory.directory import normalise_address

    with _open(args) as store:
        removed = store.remove("addr:" + normalise_address(args.address))
    if not removed:
        return _fail("no operator entry for this address", 1)
    print("removed")
    return 0
