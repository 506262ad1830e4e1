"""The ``[intake]`` table: MLLP listener, drop folders and payload routing settings.

A section like the others (the shared :class:`~gateway.config.reader.Reader` collects every
problem as ``(source, key, message)``); :func:`parse_intake` stays callable on its own (the
table alone, or the whole document) and raises one :class:`~gateway.errors.ConfigError`.
``gateway.intake.settings`` re-exports these names for the intake doors.

Why the config insists on an unrouted mailbox for every configured sender: a payload whose
recipient cannot be resolved must never be dropped, so a drop folder or MLLP listener without
a place to send such payloads is a configuration error, found at start and not at 3 a.m.
"""

from __future__ import annotations

import csv
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gateway.config.cisis import CisisSettings, read_cisis
from gateway.config.listeners import TLS_POLICIES
from gateway.config.reader import Reader, parse_size, valid_address
from gateway.errors import ConfigError
from gateway.routing.model import DEFAULT_MAX_FRAME

CompleteRule = Literal["rename", "ok-marker"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
_OID = re.compile(r"^[0-2](\.(0|[1-9]\d*))+$")
_RPPS = re.compile(r"^\d{11}$")
_DEFAULT_NETWORKS = ("127.0.0.0/8", "::1/128")

_MLLP_KEYS = {"address", "port", "sender", "max_frame", "timeout", "tls_cert", "tls_key", "allowed_networks",
              "client_ca", "allowed_client_subjects", "tls_policy"}
_DROP_KEYS = {"path", "sender", "done", "error", "complete", "poll_interval", "pdf_wait"}
_ROUTING_KEYS = {"smtp_address", "request_mdn", "unrouted", "unrouted_default", "dedup_window", "lab_codes", "xdm",
                 "xdm_source_id", "notify_sender", "notice_from"}


@dataclass(frozen=True)
class MllpSettings:
    """HL7 v2 over MLLP. No authentication exists in MLLP: access is by network (and TLS)."""

    address: str = "127.0.0.1"
    port: int = 2575
    sender: str = ""
    max_frame: int = DEFAULT_MAX_FRAME
    timeout: float = 300.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    allowed_networks: tuple[Network, ...] = ()
    #: Mutual TLS: client certificates must chain to this CA file (and name one of the subjects).
    client_ca: Path | None = None
    allowed_client_subjects: tuple[str, ...] = ()
    #: The TLS versions and suites offered (a `gateway.config.listeners.TLS_POLICIES` preset).
    tls_policy: str = "mssante-ref2"

    def allows(self, ip: str) -> bool:
        """True when ``ip`` may connect; an empty list allows everyone (explicit choice in the config)."""
        if not self.allowed_networks:
            return True
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.allowed_networks)


@dataclass(frozen=True)
class DropSettings:
    """One drop folder of one sending system (LIS/HIS)."""

    name: str
    path: Path
    sender: str
    done: Path
    error: Path
    complete: CompleteRule = "rename"
    poll_interval: float = 5.0
    #: How long a PDF waits for the payload or JSON sidecar of the same name before it goes alone.
    pdf_wait: float = 120.0

    @property
    def processing(self) -> Path:
        """Files being processed (moved here first: see dropfolder.py for the crash-safe order)."""
        return self.path / "processing"


@dataclass(frozen=True)
class RoutingSettings:
    """Recipient resolution: unrouted mailboxes, duplicate window, lab-internal codes, XDM."""

    unrouted: Mapping[str, str] = field(default_factory=dict, hash=False)
    unrouted_default: str | None = None
    dedup_window: float = 7 * 86400.0
    lab_codes: Mapping[tuple[str, str], str] = field(default_factory=dict, hash=False, repr=False)
    xdm: bool = True
    xdm_source_id: str | None = None
    notify_sender: bool = True
    notice_from: str | None = None
    #: Mail sent to this address is routed from its payload (HPRIM/HL7/CDA/PDF body or attachment).
    smtp_address: str | None = None
    #: Ask the doctor's client for a read/processed receipt (MDN, RFC 8098) back to the sender.
    request_mdn: bool = False

    def unrouted_for(self, sender: str) -> str | None:
        """The unrouted mailbox of the sender's organisation (or the default one)."""
        return self.unrouted.get(sender.strip().lower(), self.unrouted_default)


@dataclass(frozen=True)
class IntakeConfig:
    mllp: MllpSettings | None = None
    drops: tuple[DropSettings, ...] = ()
    routing: RoutingSettings = field(default_factory=RoutingSettings)
    #: CI-SIS "Transmission de document(s) CDA en HL7v2": msgw as the GESTIONNAIRE.
    cisis: CisisSettings = field(default_factory=CisisSettings)

    @property
    def enabled(self) -> bool:
        return self.mllp is not None or bool(self.drops)


def _mllp(r: Reader, spec: dict[str, Any]) -> MllpSettings:
    prefix = "intake.mllp."
    r.unknown(spec, _MLLP_KEYS, prefix)
    port = spec.get("port", 2575)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        r.problem(prefix + "port", "port must be an integer between 0 and 65535")
        port = 2575
    nets: list[Network] = []
    raw_nets = spec.get("allowed_networks", list(_DEFAULT_NETWORKS))
    if not isinstance(raw_nets, list):
        r.problem(prefix + "allowed_networks", "expected a list of networks")
        raw_nets = list(_DEFAULT_NETWORKS)
    for i, net in enumerate(raw_nets):
        try:
            nets.append(ipaddress.ip_network(str(net), strict=False))
        except ValueError:
            r.problem(f"{prefix}allowed_networks[{i}]", "not a network (use e.g. '10.1.0.0/16')")
    tls_cert = r.path(spec, "tls_cert", prefix, must_exist=True, nonempty=True)
    tls_key = r.path(spec, "tls_key", prefix, must_exist=True, nonempty=True)
    if (tls_cert is None) != (tls_key is None):
        r.problem(prefix + "tls_key", "tls_cert and tls_key go together")
    client_ca = r.path(spec, "client_ca", prefix, must_exist=True, nonempty=True)
    if client_ca is not None and tls_cert is None:
        r.problem(prefix + "client_ca", "client certificates need TLS: set tls_cert and tls_key")
    subjects = spec.get("allowed_client_subjects", [])
    if not isinstance(subjects, list) or not all(isinstance(x, str) and x for x in subjects):
        r.problem(prefix + "allowed_client_subjects", "expected a list of subject CNs or RFC 4514 names")
        subjects = []
    if subjects and client_ca is None:
        r.problem(prefix + "allowed_client_subjects", "allowed_client_subjects needs client_ca to check certificates")
    max_frame = r.convert(spec, "max_frame", prefix, parse_size, DEFAULT_MAX_FRAME)
    return MllpSettings(
        address=r.string(spec, "address", prefix, "127.0.0.1") or "127.0.0.1",
        port=port,
        sender=r.address(spec, "sender", prefix, required=True) or "",
        max_frame=max_frame,
        timeout=r.positive_duration(spec, "timeout", prefix, 300.0),
        tls_cert=tls_cert,
        tls_key=tls_key,
        allowed_networks=tuple(nets),
        client_ca=client_ca,
        allowed_client_subjects=tuple(subjects),
        tls_policy=r.choice(spec, "tls_policy", prefix, TLS_POLICIES, "mssante-ref2"),
    )


def _subfolder(r: Reader, spec: dict[str, Any], key: str, prefix: str, folder: Path) -> Path:
    value = r.string(spec, key, prefix, key)
    if value is None or not value.strip():
        r.problem(prefix + key, "must not be empty")
        return folder / key
    if ".." in Path(value).parts:
        r.problem(prefix + key, "must not contain '..'")
        return folder / key
    target = r.path({key: value}, key, prefix, base=folder, nonempty=True) or folder / key
    if target.resolve() in (folder.resolve(), (folder / "processing").resolve()):
        r.problem(prefix + key, "must differ from the drop folder and its processing/ folder")
    return target


def _drops(r: Reader, table: dict[str, Any]) -> tuple[DropSettings, ...]:
    out = []
    for name, spec in table.items():
        prefix = f"intake.drop.{name}."
        if not isinstance(spec, dict):
            r.problem(f"intake.drop.{name}", "expected a table")
            continue
        if not _NAME.match(name):
            r.problem(f"intake.drop.{name}", "drop folder names use letters, digits, '-' and '_' (max 32)")
        r.unknown(spec, _DROP_KEYS, prefix)
        path = r.path(spec, "path", prefix, nonempty=True)
        if path is None and "path" not in spec:
            r.problem(prefix + "path", "required (the folder the sending system writes to)")
        path = path or r.base / f"drop-{name}"
        sender = r.address(spec, "sender", prefix, required=True) or ""
        complete = r.string(spec, "complete", prefix, "rename")
        if complete not in ("rename", "ok-marker"):
            r.problem(prefix + "complete", "must be 'rename' or 'ok-marker'")
            complete = "rename"
        done = _subfolder(r, spec, "done", prefix, path)
        error = _subfolder(r, spec, "error", prefix, path)
        if done.resolve() == error.resolve():
            r.problem(prefix + "error", "done and error must be different folders")
        out.append(DropSettings(name=name, path=path, sender=sender, done=done, error=error,
                                complete=complete,  # type: ignore[arg-type]
                                poll_interval=r.positive_duration(spec, "poll_interval", prefix, 5.0),
                                pdf_wait=r.duration(spec, "pdf_wait", prefix, 120.0)))
    paths = [d.path.resolve() for d in out]
    if len(paths) != len(set(paths)):
        r.problem("intake.drop", "two drop folders share the same path")
    return tuple(out)


def load_lab_codes(path: Path, r: Reader, key: str) -> dict[tuple[str, str], str]:
    """CSV ``lab_sender,lab_code,rpps`` → {(lab_sender folded, code): rpps}; every bad line is a problem.

    ``lab_sender`` is either the sending lab as the payload names it (HPRIM H-5 / MSH-3) or the
    envelope sender address; both are looked up at resolution time.
    """
    out: dict[tuple[str, str], str] = {}
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        r.problem(key, f"cannot read the lab code file: {exc.strerror}")
        return out
    except UnicodeDecodeError:
        r.problem(key, "the lab code file is not UTF-8 text")
        return out
    rows = csv.reader(text.splitlines())
    header = next(rows, None)
    if header is None or [h.strip().lower() for h in header[:3]] != ["lab_sender", "lab_code", "rpps"]:
        r.problem(key, "the lab code file must start with the header lab_sender,lab_code,rpps")
        return out
    for line_no, row in enumerate(rows, start=2):
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) < 3:
            r.problem(key, f"line {line_no}: expected lab_sender,lab_code,rpps")
            continue
        lab, code, rpps = (c.strip() for c in row[:3])
        if not lab or not code:
            r.problem(key, f"line {line_no}: lab_sender and lab_code must not be empty")
        elif not _RPPS.match(rpps):
            r.problem(key, f"line {line_no}: RPPS must be 11 digits")
        elif (lab.lower(), code) in out and out[(lab.lower(), code)] != rpps:
            r.problem(key, f"line {line_no}: the same lab code is mapped twice to different RPPS")
        else:
            out[(lab.lower(), code)] = rpps
    return out


def _routing(r: Reader, spec: dict[str, Any]) -> RoutingSettings:
    prefix = "intake.routing."
    r.unknown(spec, _ROUTING_KEYS, prefix)
    unrouted: dict[str, str] = {}
    for sender, mailbox in r.table(spec, "unrouted", prefix).items():
        key = f"{prefix}unrouted.{sender}"
        if not valid_address(sender):
            r.problem(key, "the key must be a sender address")
        elif not isinstance(mailbox, str) or not valid_address(mailbox):
            r.problem(key, "expected the unrouted mailbox address")
        else:
            unrouted[sender.strip().lower()] = mailbox.strip().lower()
    lab_codes: dict[tuple[str, str], str] = {}
    codes_path = r.path(spec, "lab_codes", prefix, must_exist=True, nonempty=True)
    if codes_path is not None and codes_path.exists():
        lab_codes = load_lab_codes(codes_path, r, prefix + "lab_codes")
    source_id = r.string(spec, "xdm_source_id", prefix, None)
    if source_id is not None and not _OID.match(source_id):
        r.problem(prefix + "xdm_source_id", "must be an OID (digits and dots)")
        source_id = None
    return RoutingSettings(
        unrouted=unrouted,
        unrouted_default=r.address(spec, "unrouted_default", prefix, required=False),
        dedup_window=r.positive_duration(spec, "dedup_window", prefix, 7 * 86400.0),
        lab_codes=lab_codes,
        xdm=r.boolean(spec, "xdm", prefix, True),
        xdm_source_id=source_id,
        notify_sender=r.boolean(spec, "notify_sender", prefix, True),
        notice_from=r.address(spec, "notice_from", prefix, required=False),
        smtp_address=r.address(spec, "smtp_address", prefix, required=False),
        request_mdn=r.boolean(spec, "request_mdn", prefix, False),
    )


def read_intake(r: Reader, data: Mapping[str, Any]) -> IntakeConfig:
    """The ``[intake]`` table of the whole document, its problems recorded in ``r``."""
    return _intake(r, r.table(data, "intake"))


def parse_intake(raw: Mapping[str, Any], *, source: str, base: Path) -> IntakeConfig:
    """Validate the ``[intake]`` table (``raw`` is that table, or the whole document holding it).

    Raise :class:`ConfigError` listing every problem. An absent or empty table gives a disabled
    :class:`IntakeConfig`.
    """
    data: Any = raw.get("intake", {}) if "intake" in raw else raw
    if not isinstance(data, dict):
        raise ConfigError([(source, "intake", "expected a table")])
    r = Reader(source, base)
    config = _intake(r, data)
    r.raise_problems()
    return config


def _intake(r: Reader, data: dict[str, Any]) -> IntakeConfig:
    r.unknown(data, {"mllp", "drop", "routing", "cisis"}, "intake.")
    mllp = _mllp(r, r.table(data, "mllp", "intake.")) if "mllp" in data else None
    drops = _drops(r, r.table(data, "drop", "intake."))
    routing = _routing(r, r.table(data, "routing", "intake."))
    senders = ([("intake.mllp.sender", mllp.sender)] if mllp and mllp.sender else []) + [
        (f"intake.drop.{d.name}.sender", d.sender) for d in drops if d.sender]
    for key, sender in senders:
        if routing.unrouted_for(sender) is None:
            r.problem(key, "no unrouted mailbox for this sender: set intake.routing.unrouted or unrouted_default")
    cisis = read_cisis(r, r.table(data, "cisis", "intake."))
    return IntakeConfig(mllp=mllp, drops=drops, routing=routing, cisis=cisis)


__all__ = ["CompleteRule", "DropSettings", "IntakeConfig", "MllpSettings", "RoutingSettings", "load_lab_codes",
           "parse_intake", "read_intake", "valid_address"]
