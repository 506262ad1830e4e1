"""Directory import: rows/second for a generated MSSanté extraction, then look-up latency.

1. Generates an invented MSSanté mailbox extraction (the 31 public column names, `|`-separated,
   UTF-8; invented names, RPPS numbers with a Luhn key, `.test` domains) of --rows rows
   (default 1,000,000; --quick 100,000).
2. Imports it with gateway.directory.annuaire.import_file into a fresh SqliteDirectory: rows/second.
3. 10,000 random look-ups by RPPS (`by_rpps`) and 10,000 by address (`by_address`): p50/p99 in µs.
Baseline (the floor), in the same run: read the same file, split each line, keep (address, RPPS)
and `executemany` them into a bare 2-column SQLite table (same WAL + synchronous=NORMAL settings,
one transaction), then the same look-ups with a plain indexed SELECT.

Usage: .venv/bin/python bench/directory_import.py [--quick] [--rows N] [--lookups 10000] [--json FILE]
No thresholds, no asserts.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _support import default_json, loadavg, machine, percentile, print_table, write_json  # noqa: E402

from gateway.directory.annuaire import import_file  # noqa: E402
from gateway.directory.directory import SqliteDirectory  # noqa: E402

MSSANTE_HEADER = [
    "Type de BAL", "Adresse BAL", "Type Identifiant PP", "Identifiant PP", "Identification nationale PP",
    "Type identifiant structure", "Identification Structure", "Service de rattachement", "Civilité d'exercice",
    "Nom d'exercice", "Prénom d'exercice", "Catégorie profession", "Libellé de catégorie profession",
    "Code Profession", "Libellé Profession", "Code savoir-faire", "Libellé savoir-faire", "Dématérialisation",
    "Raison Sociale structure BAL", "Enseigne commerciale structure BAL", "L2COMPLEMENTLOCALISATION structure BAL",
    "L3COMPLEMENTDISTRIBUTION structure BAL", "L4NUMEROVOIE structure BAL", "L4COMPLEMENTNUMEROVOIE structure BAL",
    "NL4TYPEVOIE structure BAL", "L4LIBELLEVOIE structure BAL", "L5LIEUDITMENTION structure BAL",
    "L6LIGNEACHEMINEMENT structure BAL", "Code postal structure BAL", "Département structure BAL",
    "Pays structure BAL",
]
LAST = ["ARNOUX", "BELLEC", "CORDIER", "DUVAL-TEST", "ÉTIENNE", "FAURÉ", "GIRAUDEAU", "HOUDIN", "ISNARD", "JOLIBOIS",
        "KERVELLA", "LEMAÎTRE", "MARCHAND", "NOGUÈS", "OLLIVIER", "PÉRON", "QUÉMÉNER", "ROUSSEL", "SALAÜN", "TREGUER"]
FIRST = ["Anaïs", "Bastien", "Céline", "Damien", "Élodie", "François", "Gaëlle", "Hervé", "Inès", "Jérôme"]
PROFESSIONS = [("10", "Médecin", "SM54", "Médecine générale"), ("10", "Médecin", "SM04", "Cardiologie"),
               ("21", "Pharmacien", "", ""), ("60", "Infirmier", "", ""), ("40", "Chirurgien-Dentiste", "", "")]
COL = {name: i for i, name in enumerate(MSSANTE_HEADER)}


def luhn_key(digits: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            d = d - 9 if d > 9 else d
        total += d
    return str((10 - total % 10) % 10)


def rpps_number(i: int) -> str:
    body = f"10{i:08d}"
    return body + luhn_key(body)


def address_of(i: int) -> str:
    return f"p{i}@mssante.test"


def mssante_line(i: int, rnd: random.Random) -> str:
    prof = PROFESSIONS[i % len(PROFESSIONS)]
    cp = f"{rnd.randint(1, 95):02d}{rnd.randint(0, 999):03d}"
    rpps = rpps_number(i)
    row = [""] * len(MSSANTE_HEADER)
    for name, value in (
            ("Type de BAL", "PER"), ("Adresse BAL", address_of(i)), ("Type Identifiant PP", "8"),
            ("Identifiant PP", rpps), ("Identification nationale PP", "8" + rpps),
            ("Type identifiant structure", "1"), ("Identification Structure", f"{(i % 95) + 1:02d}0{i % 1000000:06d}"),
            ("Civilité d'exercice", "DR"), ("Nom d'exercice", LAST[i % len(LAST)]),
            ("Prénom d'exercice", FIRST[(i // len(LAST)) % len(FIRST)]), ("Catégorie profession", "C"),
            ("Libellé de catégorie profession", "Civil"), ("Code Profession", prof[0]),
            ("Libellé Profession", prof[1]), ("Code savoir-faire", prof[2]), ("Libellé savoir-faire", prof[3]),
            ("Dématérialisation", "O"), ("Raison Sociale structure BAL", f"CABINET TEST {i % 5000}"),
            ("L6LIGNEACHEMINEMENT structure BAL", f"{cp} VILLE-TEST"), ("Code postal structure BAL", cp),
            ("Département structure BAL", cp[:2]), ("Pays structure BAL", "FRANCE")):
        row[COL[name]] = value
    return "|".join(row)


def generate(path: Path, rows: int) -> None:
    rnd = random.Random(42)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write("|".join(MSSANTE_HEADER) + "\n")
        batch: list[str] = []
        for i in range(rows):
            batch.append(mssante_line(i, rnd))
            if len(batch) >= 10000:
                fh.write("\n".join(batch) + "\n")
                batch.clear()
        if batch:
            fh.write("\n".join(batch) + "\n")


def baseline_import(path: Path, db_path: Path) -> tuple[float, sqlite3.Connection]:
    started = time.perf_counter()
    db = sqlite3.connect(str(db_path), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE t (address TEXT, rpps TEXT)")
    a, r = COL["Adresse BAL"], COL["Identifiant PP"]

    def rows() -> object:
        with open(path, encoding="utf-8") as fh:
            next(fh)
            for line in fh:
                parts = line.rstrip("\n").split("|")
                yield parts[a], parts[r]

    db.execute("BEGIN")
    db.executemany("INSERT INTO t VALUES (?, ?)", rows())
    db.execute("COMMIT")
    return time.perf_counter() - started, db


def latencies(fn: object, keys: list[str]) -> list[float]:
    out = []
    for k in keys:
        t = time.perf_counter_ns()
        fn(k)  # type: ignore[operator]
        out.append((time.perf_counter_ns() - t) / 1000)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="100,000 rows")
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--lookups", type=int, default=10000)
    ap.add_argument("--json", default=default_json("directory_import"))
    args = ap.parse_args(argv)
    rows = args.rows or (100_000 if args.quick else 1_000_000)
    work = Path(tempfile.mkdtemp(prefix="msgw-bench-directory-"))
    result: dict = {"rows": rows, "lookups": args.lookups, "loadavg_1min_before": loadavg()}
    try:
        src = work / "Extraction_Correspondance_MSSante.txt"
        t = time.perf_counter()
        generate(src, rows)
        result["generate_s"] = time.perf_counter() - t
        result["file_bytes"] = src.stat().st_size
        print(f"directory import: {rows:,} rows generated in {result['generate_s']:.1f}s "
              f"({result['file_bytes'] / 1e6:.0f} MB)", flush=True)

        base_s, base_db = baseline_import(src, work / "baseline.sqlite")
        t = time.perf_counter()
        base_db.execute("CREATE INDEX t_rpps ON t (rpps)")
        base_db.execute("CREATE INDEX t_addr ON t (address)")
        result["baseline_index_s"] = time.perf_counter() - t
        result["baseline_import_s"] = base_s
        print(f"  baseline executemany: {rows / base_s:,.0f} rows/s", flush=True)

        store = SqliteDirectory(work / "directory.sqlite")
        t = time.perf_counter()
        report = import_file(store, src)  # format detected from the header
        import_s = time.perf_counter() - t
        result["import_s"] = import_s
        result["import_report"] = {"rows": report.rows, "rejected": report.counts.rejected,
                                   "counts": getattr(report.counts, "__dict__", str(report.counts))}
        result["db_files_bytes"] = {p.name: p.stat().st_size for p in work.glob("directory.sqlite*")}
        result["db_bytes"] = sum(result["db_files_bytes"].values())
        print(f"  import_file: {rows / import_s:,.0f} rows/s ({report.rows:,} read, "
              f"{report.counts.rejected} rejected)", flush=True)

        rnd = random.Random(1)
        picks = [rnd.randrange(rows) for _ in range(args.lookups)]
        rpps_keys = [rpps_number(i) for i in picks]
        addr_keys = [address_of(i) for i in picks]
        found = sum(1 for k in rpps_keys[:100] if store.by_rpps(k) is not None)
        result["found_of_100"] = found
        lat = {
            "by_rpps": latencies(store.by_rpps, rpps_keys),
            "by_address": latencies(store.by_address, addr_keys),
            "baseline_rpps": latencies(lambda k: base_db.execute("SELECT address FROM t WHERE rpps = ?",
                                                                 (k,)).fetchall(), rpps_keys),
            "baseline_address": latencies(lambda k: base_db.execute("SELECT rpps FROM t WHERE address = ?",
                                                                    (k,)).fetchall(), addr_keys),
        }
        result["lookup_us"] = {k: {"p50": percentile(v, 50), "p99": percentile(v, 99)} for k, v in lat.items()}
        store.close()
        base_db.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    lu = result["lookup_us"]
    table = print_table(
        ["step", "rows", "seconds", "rows/s", "vs floor", "lookup RPPS p50/p99 µs", "lookup address p50/p99 µs"],
        [["import_file → SqliteDirectory", rows, result["import_s"], rows / result["import_s"],
          f"{result['baseline_import_s'] / result['import_s']:.3f}",
          f"{lu['by_rpps']['p50']:.0f} / {lu['by_rpps']['p99']:.0f}",
          f"{lu['by_address']['p50']:.0f} / {lu['by_address']['p99']:.0f}"],
         ["floor: executemany, 2 columns", rows, result["baseline_import_s"], rows / result["baseline_import_s"],
          "1", f"{lu['baseline_rpps']['p50']:.0f} / {lu['baseline_rpps']['p99']:.0f}",
          f"{lu['baseline_address']['p50']:.0f} / {lu['baseline_address']['p99']:.0f}"]], 1)
    files = ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in result["db_files_bytes"].items())
    print(f"(found {result['found_of_100']}/100 sampled RPPS; extraction {result['file_bytes'] / 1e6:.0f} MB; "
          f"directory files after import: {files})")
    write_json(args.json, {"benchmark": "directory_import", "machine": machine(), "quick": args.quick, **result,
                           "table": table})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
