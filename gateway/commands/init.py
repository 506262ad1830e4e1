"""`msgw init`: create the first-run files under ./var/default (loopback TLS pair, demo account,
TEST PKI with its demo directory entries, TEST legacy keys, the demo drop folder).

Loading a configuration never creates files: `msgw serve` (on the embedded default), `msgw demo`
and this command make them. The example config/gateway.toml points at the same files, so
`msgw init` makes it usable on a fresh clone, and other commands can then use the default.

It lists what it made and what it kept (a second run keeps everything still valid), and says
that the PKI is a TEST one: its private keys sit beside its certificates, readable by anyone who
reads this folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway.default_setup import DEMO_USER, prepare_default_files


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="create the TEST loopback certificate and demo account under ./var/default")
    p.add_argument("--dir", type=Path, default=Path("var/default"),
                   help="folder for the first-run files (default: %(default)s)")
    p.set_defaults(func=run)


def _items(folder: Path) -> list[tuple[str, list[Path], str]]:
    """What `prepare_default_files` makes: (what to show, the paths it is made of, what it is for)."""
    state = folder.parent
    return [
        (f"{folder}/", [folder], "folder of the first-run files (mode 0700)"),
        (f"{folder / 'tls-cert.pem'}, tls-key.pem", [folder / "tls-cert.pem", folder / "tls-key.pem"],
         "the listeners' TLS pair: self-signed, for loopback, TEST"),
        (f"{folder / 'demo.password'}, demo.hash", [folder / "demo.password", folder / "demo.hash"],
         f"the demo account {DEMO_USER}: its password, and its hash the config reads"),
        (f"{folder / 'console-admin.password'}, console-admin.hash",
         [folder / "console-admin.password", folder / "console-admin.hash"],
         "the console operator admin (https://127.0.0.1:8587/): its password, and its hash the config reads"),
        (f"{folder / 'pki'}/", [folder / "pki"],
         "the TEST PKI: CAs, CPS-shaped cards, partners, CRLs, keys beside their certificates; "
         "TEST ONLY, never trust it or use its keys in production"),
        (f"{folder / 'TEST-doctor.key.pem'}, TEST-doctor.cert.pem",
         [folder / "TEST-doctor.key.pem", folder / "TEST-doctor.cert.pem"],
         "the TEST doctor Jean TEST-DUPONT's key pair: opens what the capture mode writes to var/outbox"),
        (f"{folder / 'apicrypt'}/", [folder / "apicrypt"], "TEST legacy (Apicrypt) keys for the bridge demo"),
        (f"{state / 'directory.sqlite'}", [state / "directory.sqlite"],
         "the directory, with the demo correspondents and their TEST certificates"),
        (f"{state / 'drop' / 'lis'}/", [state / "drop" / "lis"], "the demo drop folder of a lab system"),
    ]


def _stamp(paths: list[Path]) -> tuple[int, ...] | None:
    """Modification times (a folder's changes when files are made in it); None when one is missing."""
    try:
        return tuple(p.stat().st_mtime_ns for p in paths)
    except FileNotFoundError:
        return None


def _count(paths: list[Path]) -> str:
    folder = paths[0]
    if len(paths) == 1 and folder.is_dir() and folder.name in ("pki", "apicrypt"):
        return f" ({sum(1 for p in folder.rglob('*') if p.is_file())} files)"
    return ""


def run(args: argparse.Namespace) -> int:
    items = _items(args.dir)
    before = [_stamp(paths) for _, paths, _ in items]
    prepare_default_files(args.dir)
    print("msgw init: first-run files for the embedded default and config/gateway.toml "
          "(TEST material: never use it in production)")
    width = max(len(label) + len(_count(paths)) for label, paths, _ in items)
    for (label, paths, what), old in zip(items, before, strict=True):
        new = _stamp(paths)
        state = "kept" if old is not None and old == new else "made" if old is None else "renewed"
        if new is None:
            continue
        print(f"  {state:<7} {(label + _count(paths)):<{width}}  {what}")
    known = {p for _, paths, _ in items for p in paths}
    for other in sorted(set(args.dir.iterdir()) - known):  # what a newer first run adds, listed all the same
        print(f"  {'present':<7} {other}{'/' if other.is_dir() else ''}")
    print(f"Demo login: {DEMO_USER}, password in {args.dir / 'demo.password'}")
    return 0
