"""From a key reference in the config to a SigningKey / DecryptionKey.

One place decides where a private key lives: a `pkcs11:` URI is a key on a token (CPS card,
HSM; gateway.smime.pkcs11), anything else is a file (PEM or PKCS#12; gateway.smime.softkeys).
The S/MIME engine then only sees the keyapi protocols. Secrets are named, never inlined:
`pin_file` / `pin_env` for tokens, `password_file` / `password_env` for files.

Config shape (one table per key; the loader passes the table to `KeyRef.from_mapping`):

    [keys.cabinet]                      # a doctor's CPS card
    ref = "pkcs11:token=CPS%20de%20JEAN%20DUPONT;id=%01"
    module = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"
    pin_file = "/etc/msgw/cps.pin"
    usage = "sign"                      # optional: pick among several keys of the URI
    cert = "/etc/msgw/cps-signature.pem"  # optional; with wait_for_token = true the gateway
    wait_for_token = true               # starts before the card is inserted

    [keys.labo]                         # an organisation key in a file
    ref = "/etc/msgw/labo.p12"
    password_env = "MSGW_LABO_P12_PASSWORD"
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from gateway.errors import ConfigError, TemporaryError

Usage = Literal["sign", "decrypt"]


class KeyUnavailable(TemporaryError):
    """A configured key cannot be used now (file gone, token out, PIN refused, certificate
    expired, no such `[keys.X]`): a local fault, so the message waits in the queue until an
    operator fixes it; it is never bounced for it."""

    code = "key-unavailable"
    status = "4.3.5"

_INT_FIELDS = ("processes", "concurrency", "max_waiting")
_PATH_FIELDS = ("module", "pin_file", "cert", "chain", "password_file")


@dataclass(frozen=True)
class KeyRef:
    """Where a private key is and how to unlock it (never the secret itself)."""

    ref: str
    module: str | None = None
    pin_file: str | None = None
    pin_env: str | None = None
    pin_stdin: bool = False
    cert: str | None = None
    chain: str | None = None
    password_file: str | None = None
    password_env: str | None = None
    usage: Usage | None = None
    processes: int = 0
    concurrency: int = 4
    max_waiting: int = 1000
    #: With `cert`: start even when the card is not inserted; uses fail temporarily until it is.
    wait_for_token: bool = False

    @property
    def is_token(self) -> bool:
        return self.ref.lower().startswith("pkcs11:")

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any], *, source: str = "config", prefix: str = "keys.",
                     base: str | os.PathLike[str] | None = None) -> KeyRef:
        """Validate one `[keys.<name>]` table; relative paths are taken from `base` (the
        config file's directory). Raises ConfigError naming every bad key."""
        known = {f.name for f in fields(cls)} - {"pin_stdin"}
        problems = [(source, f"{prefix}{k}", "unknown key") for k in table if k not in known]
        if "pin" in table or "password" in table:
            problems.append((source, prefix.rstrip("."), "secrets go in pin_file/pin_env or "
                                                         "password_file/password_env, never in the config"))
        values: dict[str, Any] = {}
        for name in known & set(table):
            value = table[name]
            if name == "wait_for_token":
                if not isinstance(value, bool):
                    problems.append((source, f"{prefix}{name}", "must be true or false"))
                    continue
            elif name in _INT_FIELDS:
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    problems.append((source, f"{prefix}{name}", "must be a non-negative integer"))
                    continue
            elif not isinstance(value, str) or not value:
                problems.append((source, f"{prefix}{name}", "must be a non-empty string"))
                continue
            if name in _PATH_FIELDS and base is not None and not (name == "module" and "/" not in value):
                value = str(Path(base) / value)
            values[name] = value
        if "ref" not in values and not any(p[1] == f"{prefix}ref" for p in problems):
            problems.append((source, f"{prefix}ref", "missing (a pkcs11: URI or a key file path)"))
        if values.get("usage") not in (None, "sign", "decrypt"):
            problems.append((source, f"{prefix}usage", "must be 'sign' or 'decrypt'"))
        if values.get("wait_for_token") and "cert" not in values:
            problems.append((source, f"{prefix}wait_for_token", "needs `cert` (the card's certificate file)"))
        if values.get("concurrency") == 0:
            problems.append((source, f"{prefix}concurrency", "must be at least 1"))
        ref = values.get("ref", "")
        if ref and not ref.lower().startswith("pkcs11:") and base is not None:
            values["ref"] = str(Path(base) / ref)
        if problems:
            raise ConfigError(problems)
        return cls(**values)


def load_key(key: KeyRef | str, **options: Any) -> Any:
    """Open the key a reference names (blocking: start-up, CLI). The result implements
    keyapi.SigningKey and keyapi.DecryptionKey. `options` are KeyRef fields when `key` is a str.

    Token keys log in here (once per token) and raise TokenAbsent (temporary) when the
    card is not inserted; file keys raise KeyLoadError (permanent) on a bad file/password."""
    ref = KeyRef(key, **options) if isinstance(key, str) else key
    if ref.is_token:
        from gateway.smime.pkcs11 import open_token_key

        return open_token_key(ref.ref, **_token_options(ref))
    return _load_soft(ref)


async def load_key_async(key: KeyRef | str, **options: Any) -> Any:
    """`load_key` without blocking the event loop (the token login runs on its module thread)."""
    ref = KeyRef(key, **options) if isinstance(key, str) else key
    if ref.is_token:
        from gateway.smime.pkcs11 import open_token_key_async

        return await open_token_key_async(ref.ref, **_token_options(ref))
    return await asyncio.to_thread(_load_soft, ref)  # file reads, PKCS#12 key derivation: off the loop


def token_certificates(ref: KeyRef) -> tuple[Any | None, list[Any] | None]:
    """The certificate and chain a token key's `cert` / `chain` files give (None when not set),
    read as the token will be given them; used by start-up checks too (blocking)."""
    cert = _certs(ref.cert, "cert")[0] if ref.cert else None
    chain = _certs(ref.chain, "chain") if ref.chain else None
    return cert, chain


def _token_options(ref: KeyRef) -> dict[str, Any]:
    from gateway.smime.pkcs11 import pin_source

    cert, chain = token_certificates(ref)
    return {"module": ref.module, "usage": ref.usage, "certificate": cert, "chain": chain,
            "pin": pin_source(pin_file=ref.pin_file, pin_env=ref.pin_env, pin_stdin=ref.pin_stdin),
            "processes": ref.processes, "concurrency": ref.concurrency, "max_waiting": ref.max_waiting,
            "defer_if_absent": ref.wait_for_token}


def _certs(path: str, key: str) -> list[Any]:
    from gateway.smime.softkeys import load_certificates

    certs = load_certificates(path)
    if not certs:
        raise ConfigError([(path, key, "no certificate in the file")])
    return certs


def _load_soft(ref: KeyRef) -> Any:
    from gateway.smime.softkeys import load_key as load_soft_key

    return load_soft_key(ref.ref, ref.cert, ref.chain, password_file=ref.password_file,
                         password_env=ref.password_env)
