"""`[console]` and `[operators."<name>"]`: the supervision console in the browser (issue 16).

Operators are a role of their own, read from their own table: a mail account (`[accounts]`)
can never log into the console, and an operator can never send mail. An operator proves who
they are with a password (an argon2id or scrypt hash in `password_hash_file`, written by
`msgw console passwd`) or a TLS client certificate (`certificate_subject` or
`certificate_fingerprint`, checked against the console's `client_ca`), or either.

Without a `[console]` table there is no console; with one it is on (`enabled = false` turns it
off) and always over TLS.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config.listeners import TLS_POLICIES
from gateway.config.reader import Reader, parse_duration

_CONSOLE_KEYS = {"enabled", "address", "port", "tls_cert", "tls_key", "tls_policy", "client_ca", "session_lifetime"}
_OPERATOR_KEYS = {"password_hash_file", "certificate_subject", "certificate_fingerprint"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_FINGERPRINT = re.compile(r"(?:[0-9a-f]{2}:?){31}[0-9a-f]{2}")


@dataclass(frozen=True)
class Operator:
    """One console login. `password_hash` is read from its file when the config is loaded;
    the fingerprint is the SHA-256 of the certificate, lowercase hex without colons."""

    name: str
    password_hash: str = field(default="", repr=False)
    password_hash_file: Path | None = None
    certificate_subject: str = ""
    certificate_fingerprint: str = ""


@dataclass(frozen=True)
class ConsoleConfig:
    enabled: bool = False
    address: str = "127.0.0.1"
    port: int = 8587
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_policy: str = "mssante-ref2"
    #: Operators' client certificates are asked for (optional) and verified against it.
    client_ca: Path | None = None
    #: How long a session lives after login (seconds); no sliding renewal.
    session_lifetime: float = 8 * 3600.0
    operators: tuple[Operator, ...] = ()

    def operator(self, name: str) -> Operator | None:
        for op in self.operators:
            if op.name == name:
                return op
        return None


def read_console(r: Reader, data: dict[str, Any]) -> ConsoleConfig:
    operators = _read_operators(r, data)
    if "console" not in data:
        return ConsoleConfig(operators=operators)
    spec = r.table(data, "console")
    prefix = "console."
    r.unknown(spec, _CONSOLE_KEYS, prefix)
    enabled = r.boolean(spec, "enabled", prefix, True)
    cert = r.path(spec, "tls_cert", prefix, must_exist=enabled)
    key = r.path(spec, "tls_key", prefix, must_exist=enabled)
    if enabled and (cert is None or key is None):
        r.problem(prefix + "tls_cert", "the console is served over TLS only: tls_cert and tls_key are required")
    lifetime = r.positive_duration(spec, "session_lifetime", prefix, parse_duration("8h"))
    if lifetime > 7 * 86400:
        r.problem(prefix + "session_lifetime", "at most 7d")
    config = ConsoleConfig(
        enabled=enabled,
        address=r.get(spec, "address", prefix, str, "127.0.0.1"),
        port=r.port(spec, "port", prefix, 8587),
        tls_cert=cert, tls_key=key,
        tls_policy=r.choice(spec, "tls_policy", prefix, TLS_POLICIES, "mssante-ref2"),
        client_ca=r.path(spec, "client_ca", prefix, must_exist=enabled),
        session_lifetime=lifetime,
        operators=operators,
    )
    if enabled and not operators:
        r.problem("operators", 'the console needs at least one [operators."<name>"]')
    if config.client_ca is None and any(op.certificate_subject or op.certificate_fingerprint for op in operators):
        r.problem(prefix + "client_ca", "operators with a certificate need client_ca to check it")
    return config


def _read_operators(r: Reader, data: dict[str, Any]) -> tuple[Operator, ...]:
    out = []
    for name, spec in r.table(data, "operators").items():
        prefix = f'operators."{name}".'
        if not isinstance(spec, dict):
            r.problem(prefix[:-1], "expected a table with password_hash_file and/or certificate_subject")
            continue
        if not _NAME.fullmatch(name):
            r.problem(prefix[:-1], "an operator name is letters, digits, '.', '_' or '-' (at most 64)")
            continue
        r.unknown(spec, _OPERATOR_KEYS, prefix)
        out.append(_operator(r, name, spec, prefix))
    return tuple(out)


def _operator(r: Reader, name: str, spec: dict[str, Any], prefix: str) -> Operator:
    hash_file = r.path(spec, "password_hash_file", prefix, must_exist=True)
    stored = ""
    if hash_file is not None and hash_file.exists():
        try:
            stored = hash_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            r.problem(prefix + "password_hash_file", f"cannot read: {type(exc).__name__}")
        if stored and not stored.startswith(("$argon2", "$scrypt$")):
            r.problem(prefix + "password_hash_file", "must hold an $argon2 or $scrypt$ hash "
                      "(`msgw console passwd`), never a clear password")
            stored = ""
    subject = r.get(spec, "certificate_subject", prefix, str, "").strip()
    fingerprint = r.get(spec, "certificate_fingerprint", prefix, str, "").strip().lower()
    if fingerprint and not _FINGERPRINT.fullmatch(fingerprint):
        r.problem(prefix + "certificate_fingerprint", "expected the certificate's SHA-256 in hex (64 digits)")
        fingerprint = ""
    if hash_file is None and not subject and not fingerprint:
        r.problem(prefix[:-1], "needs password_hash_file, certificate_subject or certificate_fingerprint")
    return Operator(name=name, password_hash=stored, password_hash_file=hash_file, certificate_subject=subject,
                    certificate_fingerprint=fingerprint.replace(":", ""))
