"""`[trust]`: where trust comes from (CA folder, CRLs, OCSP, the MSSanté domain list)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config.reader import Reader, parse_duration


@dataclass(frozen=True)
class TrustConfig:
    """Where trust comes from: CA folder (roots + intermediates), CRLs, the MSSanté domain list."""

    anchors: Path | None
    crl_files: tuple[Path, ...]
    fetch_crls: bool
    crl_max_age: float
    authorised_domains_file: Path | None
    #: Ask the certificates' OCSP responders too (fresher than CRLs; either answer suffices).
    ocsp: bool = False


def read_trust(r: Reader, data: dict[str, Any]) -> TrustConfig | None:
    if "trust" not in data:
        return None
    spec = r.table(data, "trust")
    prefix = "trust."
    r.unknown(spec, {"anchors", "crl_files", "fetch_crls", "crl_max_age", "authorised_domains_file", "ocsp"}, prefix)
    anchors = r.path(spec, "anchors", prefix, must_exist=True)
    if anchors is not None and anchors.exists() and not anchors.is_dir():
        r.problem(prefix + "anchors", "must be a folder of PEM CA certificates")
    crls = []
    for i, item in enumerate(r.get(spec, "crl_files", prefix, list, [])):
        p = r.path({"": item}, "", f"{prefix}crl_files[{i}]", must_exist=True) if isinstance(item, str) else None
        if p is None:
            r.problem(f"{prefix}crl_files[{i}]", "expected a file path")
        else:
            crls.append(p)
    return TrustConfig(
        anchors=anchors, crl_files=tuple(crls), fetch_crls=r.get(spec, "fetch_crls", prefix, bool, True),
        crl_max_age=r.convert(spec, "crl_max_age", prefix, parse_duration, "7d"),
        authorised_domains_file=r.path(spec, "authorised_domains_file", prefix, must_exist=True),
        ocsp=r.get(spec, "ocsp", prefix, bool, False),
    )
