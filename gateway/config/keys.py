"""`[keys.<name>]`: signing and decryption keys (PKCS#12/PEM files or PKCS#11 tokens).

The fields are validated by the key store, which knows them (`gateway.smime.keystore.KeyRef`, a
module that imports only `gateway.errors` at load: no crypto stack, no cycle)."""

from __future__ import annotations

from typing import Any

from gateway.config.reader import Reader
from gateway.errors import ConfigError
from gateway.smime.keystore import KeyRef


def read_keys(r: Reader, data: dict[str, Any]) -> dict[str, KeyRef]:
    """`[keys.<name>]` tables → KeyRef."""
    out: dict[str, KeyRef] = {}
    for name, spec in r.table(data, "keys").items():
        if not isinstance(spec, dict):
            r.problem(f"keys.{name}", "expected a table")
            continue
        try:
            out[name] = KeyRef.from_mapping(spec, source=r.source, prefix=f"keys.{name}.", base=r.base)
        except ConfigError as exc:
            r.absorb(exc)
    return out
