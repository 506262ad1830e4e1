"""`[legacy]` and `[legacy.<codec>]`: the bridge to legacy encrypted mail (Apicrypt v1 style, OpenPGP).

The codec names and each codec's own keys come from the codec registry (`gateway.legacy.codec`):
a new codec adds its section here without an edit to this module."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gateway.config.reader import Reader
from gateway.legacy import codec as registry

_LEGACY_OPTION_TYPES: dict[str, type] = {"str": str, "int": int, "bool": bool}


@dataclass(frozen=True)
class LegacyCodecConfig:
    """One legacy format the bridge speaks: its key store and the bridge's own identity in it.

    ``options`` holds the values of the codec's own keys (its ``config_fields``, e.g. openpgp's
    ``passphrase_file``), the ones the file gives; the codec reads them in ``open_keys``."""

    name: str
    keys: Path
    identity: str
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)


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


def _legacy_option(r: Reader, spec: dict[str, Any], option: Any, prefix: str) -> Any:
    """One codec-specific key (a ``gateway.legacy.codec.CodecOption``) checked as the codec declares it."""
    if option.kind == "path":
        return r.path(spec, option.name, prefix, must_exist=option.must_exist)
    return r.get(spec, option.name, prefix, _LEGACY_OPTION_TYPES[option.kind], None)


def _legacy(r: Reader, data: dict[str, Any], keys: dict[str, Any]) -> LegacyConfig | None:
    if "legacy" not in data:
        return None
    spec = r.table(data, "legacy")
    prefix = "legacy."
    r.unknown(spec, {"sign_key", "decrypt_key", "listeners", *registry.names()}, prefix)
    listeners = tuple(str(x) for x in r.get(spec, "listeners", prefix, list, []))
    codecs = []
    for name in registry.names():
        if name not in spec:
            continue
        fields = registry.get(name).config_fields
        cspec = r.table(spec, name, prefix)
        cprefix = f"{prefix}{name}."
        r.unknown(cspec, {"keys", "identity", *(f.name for f in fields)}, cprefix)
        folder = r.path(cspec, "keys", cprefix, must_exist=True)
        identity = r.get(cspec, "identity", cprefix, str, None)
        if folder is None:
            r.problem(cprefix + "keys", "missing (the key folder or keyring of this format)")
        if not identity:
            r.problem(cprefix + "identity", "missing (the bridge's own identity in this format)")
        options = {f.name: value for f in fields if (value := _legacy_option(r, cspec, f, cprefix)) is not None}
        if folder is not None and identity:
            codecs.append(LegacyCodecConfig(name, folder, identity, MappingProxyType(options)))
    refs = {}
    for key in ("sign_key", "decrypt_key"):
        value = r.get(spec, key, prefix, str, None)
        if value is not None and value not in keys:
            r.problem(prefix + key, f"names no [keys.{value}] table")
            value = None
        refs[key] = value
    return LegacyConfig(tuple(codecs), refs["sign_key"], refs["decrypt_key"], listeners)


#: The section reader under the name the other sections use.
read_legacy = _legacy
