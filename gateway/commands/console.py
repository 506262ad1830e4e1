"""`msgw console passwd OPERATOR`: write the argon2id hash of a console operator's password.

Operators are not mail accounts (`[operators."<name>"]`, never `[accounts]`). The password is
read from stdin (without echo on a terminal) and only its hash is written, mode 0600, to the
operator's `password_hash_file` (read from the config's TOML as written, so the file need not
exist yet) or to `--file`. A running gateway reads the file at each login: no restart needed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from pathlib import Path

from gateway.commands.passwd import _read_password
from gateway.config import DEFAULT_SOURCE, default_config_text
from gateway.server.passwords import hash_password


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("console", help="the supervision console in the browser: operator passwords")
    csub = p.add_subparsers(dest="console_command", required=True)
    pw = csub.add_parser("passwd", help="set a console operator's password (reads it from stdin)",
                         description="Read a password from stdin and write its argon2id hash to the operator's "
                                     "password_hash_file.")
    pw.add_argument("operator", help='the operator\'s name, as in [operators."<name>"]')
    pw.add_argument("--config", "-c", metavar="FILE",
                    help="gateway TOML file naming the operator (default: the embedded default under ./var)")
    pw.add_argument("--file", metavar="PATH", help="write the hash here instead of the operator's password_hash_file")
    pw.set_defaults(func=run_passwd)


def hash_file_for(operator: str, config: str | None) -> Path:
    """The operator's `password_hash_file`, resolved as the config loader would; ValueError if none."""
    if config:
        path = Path(config)
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        base, source = path.resolve().parent, str(path)
    else:
        data, base, source = tomllib.loads(default_config_text()), Path.cwd(), DEFAULT_SOURCE
    spec = data.get("operators", {}).get(operator)
    if not isinstance(spec, dict):
        raise ValueError(f'{source}: no [operators."{operator}"]')
    value = spec.get("password_hash_file")
    if not isinstance(value, str) or not value:
        raise ValueError(f'{source}: [operators."{operator}"] has no password_hash_file (give --file)')
    target = Path(os.path.expanduser(value))
    return target if target.is_absolute() else base / target


def write_hash(path: Path, hashed: str) -> None:
    """Atomically, mode 0600: a half-written hash never locks the operator out."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(hashed + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def run_passwd(args: argparse.Namespace) -> int:
    try:
        target = Path(args.file) if args.file else hash_file_for(args.operator, args.config)
    except (OSError, ValueError, tomllib.TOMLDecodeError) as exc:
        print(f"msgw: {exc}", file=sys.stderr)
        return 2
    password = _read_password()
    if len(password) < 8:
        print("msgw: an operator password needs at least 8 characters", file=sys.stderr)
        return 2
    try:
        write_hash(target, hash_password(password, "argon2"))
    except OSError as exc:
        print(f"msgw: cannot write {target} ({exc.strerror})", file=sys.stderr)
        return 2
    print(f"operator {args.operator}: argon2id hash written to {target}")
    return 0
