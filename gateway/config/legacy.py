"""`[legacy]` and `[legacy.<codec>]`: the bridge to legacy encrypted mail (Apicrypt v1 style, OpenPGP).

Moved here as it was in gateway/config.py; codecs declaring their own fields is separate work."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config.reader import Reader

_LEGACY_CODECS = ("apicrypt1", "openpgp")


@dataclass(frozen=True)
class LegacyCodecConfig:
    """One legacy format the bridge speaks: its key store and the bridge's own identity in it."""

    name: str
    keys: Path
    identity: str
    passphrase_file: Path | None = None
    passphrase_env: str | None = None


@dataclass(frozen=True)
class LegacyConfig:
    codecs: tuple[LegacyCodecConfig, ...]
    sign_key: str | None      # [keys.X] that signs what the bridge rebuilds as S/MIME
    decrypt_key: str | None   # [keys.X] that opens S/MIME encrypted to the bridge's certificate
    #: The paths on which legacy-encrypted mail is bridged (decoded, re-signed by the organisation):
    #: listener names. Legacy mail from a sender the directory knows as `legacy:<codec>` is bridged
    #: on any listener; on every other path legacy armor is ordinary content, never re-labelled.
    listeners: tuple[str, ...] = ()

    def codec(self, name: str) -> LegacyCodecConfig | None:
        return next((c for c in self.codecs if c.name == name), None)


def _legacy(r: Reader, data: dict[str, Any], keys: dict[str, Any]) -> LegacyConfig | None:
    if "legacy" not in data:
        return None
    spec = r.table(data, "legacy")
    prefix = "legacy."
    r.unknown(spec, {"sign_key", "decrypt_key", "listeners", *_LEGACY_CODECS}, prefix)
    listeners = tuple(str(x) for x in r.get(spec, "listeners", prefix, list, []))
    codecs = []
    for name in _LEGACY_CODECS:
        if name not in spec:
            continue
        cspec = r.table(spec, name, prefix)
        cprefix = f"{prefix}{name}."
        r.unknown(cspec, {"keys", "identity", "passphrase_file", "passphrase_env"}, cprefix)
        folder = r.path(cspec, "keys", cprefix, must_exist=True)
        identity = r.get(cspec, "identity", cprefix, str, None)
        if folder is None:
            r.problem(cprefix + "keys", "missing (the key folder or keyring of this format)")
        if not identity:
            r.problem(cprefix + "identity", "missing (the bridge's own identity in this format)")
        if folder is not None and identity:
            codecs.append(LegacyCodecConfig(name, folder, identity,
                                            r.path(cspec, "passphrase_file", cprefix, must_exist=True),
                                            r.get(cspec, "passphrase_env", cprefix, str, None)))
    refs = {}
    for key in ("sign_key", "decrypt_key"):
        value = r.get(spec, key, prefix, str, None)
        if value is not None and value not in keys:
            r.problem(prefix + key, f"names no [keys.{value}] table")
            value = None
        refs[key] = value
    return LegacyConfig(tuple(codecs), refs["sign_key"], refs["decrypt_key"], listeners)


#: The section reader under the name the other sections use (kept `_legacy` above, as the formats
#: work edits it in place).
read_legacy = _legacy
