"""The ``[intake.cisis]`` table: msgw as the GESTIONNAIRE of the CI-SIS profile "Transmission de
document(s) CDA en HL7v2" (see `gateway.cisis`).

Why these keys:
- ``application_mailbox``: the platform's MSSanté application mailbox (BAL applicative). It is
  the ``From:`` and the envelope sender of every message built for a CRÉATEUR (IG mapping-mss:
  "FROM: obligatoire, courriel de la BAL applicative"), so the DSNs and read MDNs come back to it
  and msgw turns them into ZAMs.
- ``nil``: the product number of the ``X-MSS-NIL`` header (Ref#2 ECO.2.4.3, given when the
  software is declared on convergence.esante.gouv.fr).
- ``creators.<name>``: each CRÉATEUR (SGL, DPI, RIS) by its MSH-3 application and MSH-4
  facility, and where its business acknowledgments go: an MLLP endpoint (``mllp =
  "host:port"``, persisted and retried like mail) or a folder (``folder``: one ``.hl7`` file per
  ZAM, written atomically). A transmission that owes ZAMs to a CRÉATEUR with neither is refused:
  an acknowledgment must never be dropped silently.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config.reader import Reader

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
_NIL = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_HOSTPORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(?P<port>\d{1,5})$")
_CISIS_KEYS = {"application_mailbox", "nil", "creators", "zam_timeout"}
_CREATOR_KEYS = {"application", "facility", "mllp", "folder", "tls", "tls_ca"}


@dataclass(frozen=True)
class CreatorSettings:
    """One CRÉATEUR and where its ZAMs go (exactly one of ``mllp_host`` or ``folder``)."""

    name: str
    application: str  # MSH-3 of its messages
    facility: str = ""  # MSH-4 ("" matches any facility of that application)
    mllp_host: str | None = None
    mllp_port: int = 0
    folder: Path | None = None
    #: MLLP over TLS 1.2+ to the CRÉATEUR, checked against ``tls_ca`` (system CAs when None).
    tls: bool = False
    tls_ca: Path | None = None

    def matches(self, application: str, facility: str) -> bool:
        return (self.application.casefold() == application.strip().casefold()
                and (not self.facility or self.facility.casefold() == facility.strip().casefold()))


@dataclass(frozen=True)
class CisisSettings:
    """Profile settings; ``application_mailbox`` None means the profile is not served."""

    application_mailbox: str | None = None
    nil: str = ""
    creators: tuple[CreatorSettings, ...] = field(default=())
    #: How long to wait for a CRÉATEUR's ACK to a ZAM before trying again.
    zam_timeout: float = 30.0

    @property
    def enabled(self) -> bool:
        return self.application_mailbox is not None

    def creator_for(self, application: str, facility: str) -> CreatorSettings | None:
        """The configured CRÉATEUR for MSH-3/MSH-4 (an exact facility before an any-facility entry)."""
        exact = [c for c in self.creators if c.facility and c.matches(application, facility)]
        if exact:
            return exact[0]
        loose = [c for c in self.creators if not c.facility and c.matches(application, facility)]
        return loose[0] if loose else None

    def creator_named(self, name: str) -> CreatorSettings | None:
        return next((c for c in self.creators if c.name == name), None)


def _creator(r: Reader, name: str, spec: Mapping[str, Any], prefix: str) -> CreatorSettings | None:
    r.unknown(spec, _CREATOR_KEYS, prefix)
    if not _NAME.match(name):
        r.problem(prefix.rstrip("."), "creator names are letters, digits, '-' and '_' (at most 32)")
        return None
    application = r.string(spec, "application", prefix, None)
    if not application or not application.strip():
        r.problem(prefix + "application", "required: the MSH-3 sending application of this CRÉATEUR")
        return None
    facility = r.string(spec, "facility", prefix, "") or ""
    mllp = r.string(spec, "mllp", prefix, None)
    folder = r.path(spec, "folder", prefix)
    host: str | None = None
    port = 0
    if mllp is not None:
        m = _HOSTPORT.match(mllp.strip())
        if not m or not 0 < int(m.group("port")) <= 65535:
            r.problem(prefix + "mllp", "expected host:port of the CRÉATEUR's MLLP listener")
        else:
            host, port = m.group("host").strip("[]"), int(m.group("port"))
    if (mllp is None) == (folder is None):
        r.problem(prefix.rstrip("."), "set exactly one of mllp (host:port) or folder: where this CRÉATEUR's ZAMs go")
    return CreatorSettings(name=name, application=application.strip(), facility=facility.strip(), mllp_host=host,
                           mllp_port=port, folder=folder, tls=r.boolean(spec, "tls", prefix, False),
                           tls_ca=r.path(spec, "tls_ca", prefix, must_exist=True))


def read_cisis(r: Reader, spec: Mapping[str, Any]) -> CisisSettings:
    """The ``[intake.cisis]`` table (``spec``), its problems recorded in ``r``."""
    prefix = "intake.cisis."
    if not spec:
        return CisisSettings()
    r.unknown(spec, _CISIS_KEYS, prefix)
    mailbox = r.address(spec, "application_mailbox", prefix, required=True)
    nil = r.string(spec, "nil", prefix, "") or ""
    if not nil:
        r.problem(prefix + "nil", "required: the X-MSS-NIL product number every MSSanté message carries")
    elif not _NIL.match(nil):
        r.problem(prefix + "nil", "the X-MSS-NIL product number: letters, digits, '.', '-', '_'")
        nil = ""
    creators: list[CreatorSettings] = []
    for name, cspec in r.table(spec, "creators", prefix).items():
        if not isinstance(cspec, dict):
            r.problem(f"{prefix}creators.{name}", "expected a table")
            continue
        c = _creator(r, name, cspec, f"{prefix}creators.{name}.")
        if c is not None:
            creators.append(c)
    seen: set[tuple[str, str]] = set()
    for c in creators:
        key = (c.application.casefold(), c.facility.casefold())
        if key in seen:
            r.problem(f"{prefix}creators.{c.name}", "another creator has the same application and facility")
        seen.add(key)
    return CisisSettings(application_mailbox=mailbox.lower() if mailbox else None, nil=nil,
                         creators=tuple(creators),
                         zam_timeout=r.positive_duration(spec, "zam_timeout", prefix, 30.0))


__all__ = ["CisisSettings", "CreatorSettings", "read_cisis"]
