"""``[delivery.consumers."<address>"]``: application mailboxes (BAL applicatives) whose mail goes
to a CONSOMMATEUR (a DPI, RIS or practice software) as HL7 v2.6 MDM messages, not to a Maildir
(CI-SIS volet "Transmission au LPS de documents CDA provenant d'un courriel MSSanté").

Why these keys:
- ``mllp = "host:port"`` (with ``tls``, ``ca_file``, ``client_cert``, ``client_key``: TLS 1.2+,
  the DPI's certificate verified) or ``folder``: one ``.hl7`` file per MDM, written atomically.
  Exactly one: a document must have somewhere to go.
- ``application`` / ``facility``: MSH-5 / MSH-6 (the consumer); ``organisation``: the XON of the
  ``PRT`` RCT segment (the organisation that owns the mailbox).
- ``ack_timeout``: how long the consumer's ACK is awaited before the mail is deferred.
- ``no_xdm``: a mail without an ``IHE_XDM.ZIP`` goes to the address's local Maildir
  (``maildir``, the default) or is refused with a DSN (``refuse``); never dropped.

The address must be in a local domain (checked across sections: `check_local`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gateway.config.reader import Reader, valid_address

_HOSTPORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(?P<port>\d{1,5})$")
_CONSUMER_KEYS = {"mllp", "folder", "tls", "ca_file", "client_cert", "client_key", "application", "facility",
                  "organisation", "ack_timeout", "no_xdm"}

NoXdm = Literal["maildir", "refuse"]


@dataclass(frozen=True)
class ConsumerConfig:
    """One application mailbox and its consumer endpoint (exactly one of ``mllp_host`` or ``folder``)."""

    address: str
    mllp_host: str | None = None
    mllp_port: int = 0
    folder: Path | None = None
    tls: bool = False
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    application: str = "DPI"
    facility: str = ""
    organisation: str = ""
    ack_timeout: float = 30.0
    no_xdm: NoXdm = "maildir"

    @property
    def endpoint(self) -> str:
        """Where the MDMs go, for logs and `msgw queue` (no content)."""
        if self.folder is not None:
            return f"folder:{self.folder}"
        return f"mllp{'s' if self.tls else ''}:{self.mllp_host}:{self.mllp_port}"


def _endpoint(r: Reader, spec: Mapping[str, Any], prefix: str) -> tuple[str | None, int, Path | None]:
    mllp = r.string(spec, "mllp", prefix, None)
    folder = r.path(spec, "folder", prefix, nonempty=True)
    host: str | None = None
    port = 0
    if mllp is not None:
        m = _HOSTPORT.match(mllp.strip())
        if not m or not 0 < int(m.group("port")) <= 65535:
            r.problem(prefix + "mllp", "expected host:port of the consumer's MLLP listener")
        else:
            host, port = m.group("host").strip("[]"), int(m.group("port"))
    if (mllp is None) == (folder is None):
        r.problem(prefix.rstrip("."), "set exactly one of mllp (host:port) or folder: where this mailbox's MDMs go")
    return host, port, folder


def _consumer(r: Reader, address: str, spec: Mapping[str, Any], prefix: str) -> ConsumerConfig | None:
    r.unknown(spec, _CONSUMER_KEYS, prefix)
    if not valid_address(address):
        r.problem(prefix.rstrip("."), "not a mail address")
        return None
    host, port, folder = _endpoint(r, spec, prefix)
    tls = r.boolean(spec, "tls", prefix, False)
    if tls and folder is not None:
        r.problem(prefix + "tls", "tls applies to mllp only")
    return ConsumerConfig(
        address=address.strip().lower(), mllp_host=host, mllp_port=port, folder=folder, tls=tls,
        ca_file=r.path(spec, "ca_file", prefix, must_exist=True),
        client_cert=r.path(spec, "client_cert", prefix, must_exist=True),
        client_key=r.path(spec, "client_key", prefix, must_exist=True),
        application=(r.string(spec, "application", prefix, "DPI") or "DPI").strip(),
        facility=(r.string(spec, "facility", prefix, "") or "").strip(),
        organisation=(r.string(spec, "organisation", prefix, "") or "").strip(),
        ack_timeout=r.positive_duration(spec, "ack_timeout", prefix, 30.0),
        no_xdm=r.choice(spec, "no_xdm", prefix, ("maildir", "refuse"), "maildir"),  # type: ignore[arg-type]
    )


def read_consumers(r: Reader, spec: Mapping[str, Any], prefix: str = "delivery.") -> tuple[ConsumerConfig, ...]:
    """The ``consumers`` sub-table of ``[delivery]``, every problem recorded in ``r``."""
    consumers: list[ConsumerConfig] = []
    for address, cspec in r.table(spec, "consumers", prefix).items():
        cprefix = f'{prefix}consumers."{address}".'
        if not isinstance(cspec, dict):
            r.problem(cprefix[:-1], "expected a table")
            continue
        c = _consumer(r, address, cspec, cprefix)
        if c is None:
            continue
        if c.address in {o.address for o in consumers}:
            r.problem(cprefix[:-1], "this address is listed twice")
            continue
        consumers.append(c)
    return tuple(consumers)


def check_local(r: Reader, consumers: tuple[ConsumerConfig, ...], local_domains: frozenset[str] | set[str]
                | tuple[str, ...]) -> None:
    """A consumer mailbox is ours: its domain must be a local domain (else mail for it is relayed)."""
    for c in consumers:
        if c.address.rpartition("@")[2] not in local_domains:
            r.problem(f'delivery.consumers."{c.address}"', "the address is not in a local domain ([local] domains)")


__all__ = ["ConsumerConfig", "check_local", "read_consumers"]
