"""The whole configuration document: `[gateway]`, `GatewayConfig`, the checks across sections,
and loading a TOML file (or the embedded default).

Why here and not in each section: a section module reads its own table; what involves two
sections (a trust-space destination needs a mutual-TLS route, `network:` signers need a listener
with senders...) is checked once the whole document is read. Loading has no side effect: the
embedded default names files under `./var/default` that `msgw init` / `msgw serve` / `msgw demo`
create (`gateway.default_setup`) *before* they load it; a missing one is a reported problem.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from gateway.config.accounts import Account, AuthConfig, PartnerConfig, read_accounts, read_auth, read_partners
from gateway.config.audit import AuditConfig, read_audit
from gateway.config.console import ConsoleConfig, read_console
from gateway.config.consumers import check_local as check_consumers_local
from gateway.config.delivery import DeliveryConfig, read_delivery
from gateway.config.directory import DirectoryConfig, read_directory
from gateway.config.intake import IntakeConfig, read_intake
from gateway.config.keys import read_keys
from gateway.config.legacy import LegacyConfig, read_legacy
from gateway.config.listeners import ListenerConfig, read_listeners
from gateway.config.local import LocalConfig, read_local
from gateway.config.log import LogConfig, read_log
from gateway.config.metrics import MetricsConfig, read_metrics
from gateway.config.policy import PolicyConfig, read_policy
from gateway.config.ports import shift_ports
from gateway.config.reader import Reader, is_domain
from gateway.config.routing import RoutingConfig, read_routing
from gateway.config.spool import SpoolConfig, read_spool
from gateway.config.storage import StorageConfig, read_storage
from gateway.config.trust import TrustConfig, read_trust
from gateway.errors import ConfigError
from gateway.smime.keystore import KeyRef

DEFAULT_SOURCE = "<embedded default>"
#: Where the embedded default's first-run files live, relative to its base (the working directory).
DEFAULT_FILES = Path("var") / "default"

_TOP_KEYS = {"gateway", "listeners", "accounts", "spool", "delivery", "local", "log",
             "keys", "directory", "trust", "routing", "legacy", "policy", "audit", "intake", "partners", "auth",
             "console", "operators", "metrics", "storage"}


@dataclass(frozen=True)
class GatewayConfig:
    source: str
    hostname: str
    postmaster: str
    listeners: tuple[ListenerConfig, ...]
    accounts: tuple[Account, ...]
    spool: SpoolConfig
    delivery: DeliveryConfig
    local: LocalConfig
    log: LogConfig
    audit: AuditConfig
    directory: DirectoryConfig
    trust: TrustConfig | None = None
    policy: PolicyConfig | None = None
    legacy: LegacyConfig | None = None
    partners: tuple[PartnerConfig, ...] = ()
    auth: AuthConfig = field(default_factory=AuthConfig)
    intake: IntakeConfig = field(default_factory=IntakeConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    #: `[storage]`: SQLite beside the spool (default) or a shared PostgreSQL (issue 18).
    storage: StorageConfig = field(default_factory=StorageConfig)
    #: `[console]` + `[operators]`: the supervision console in the browser (issue 16).
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    #: `[metrics]`: Prometheus endpoint and health checks (issue 16; off without the section).
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    keys: dict[str, KeyRef] = field(default_factory=dict, compare=False)
    #: `[gateway] workers`: processes serving mail (None: "auto", one per core; see gateway.workers).
    workers: int | None = None
    #: `[gateway] event_loop`: "auto" (uvloop when importable), "asyncio" or "uvloop".
    event_loop: str = "auto"
    base: Path = field(default_factory=Path.cwd, compare=False)

    def path(self, value: str) -> Path:
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else self.base / p

    @property
    def state_dir(self) -> Path:
        """Where the embedded stores live by default (directory, audit, harvest): beside the spool."""
        return self.spool.path.parent

    def is_local(self, domain: str) -> bool:
        return domain.lower() in self.local.domains

    def account(self, username: str) -> Account | None:
        for acc in self.accounts:
            if acc.username.lower() == username.lower():
                return acc
        return None

    def partner(self, subject: str) -> PartnerConfig | None:
        for p in self.partners:
            if p.subject == subject:
                return p
        return None


EVENT_LOOPS = ("auto", "asyncio", "uvloop")


def _names(r: Reader, data: dict[str, Any]) -> tuple[str, str]:
    """`[gateway]`: the host name (HELO, Message-IDs, DSNs) and the postmaster address."""
    gw = r.table(data, "gateway")
    r.unknown(gw, {"hostname", "postmaster", "workers", "event_loop"}, "gateway.")
    hostname = r.get(gw, "hostname", "gateway.", str, "msgw.localhost")
    if not is_domain(hostname):
        r.problem("gateway.hostname", f"not a host name: {hostname!r}")
    return hostname, r.get(gw, "postmaster", "gateway.", str, f"postmaster@{hostname}")


def _processes(r: Reader, data: dict[str, Any]) -> tuple[int | None, str]:
    """`[gateway] workers = "auto" | N` (None: auto) and `event_loop` (how the gateway runs)."""
    gw = r.table(data, "gateway")
    value = gw.get("workers", "auto")
    workers: int | None = None
    if isinstance(value, bool) or not (value == "auto" or isinstance(value, int)):
        r.problem("gateway.workers", 'expected "auto" or a number of processes')
    elif isinstance(value, int):
        if not 1 <= value <= 64:
            r.problem("gateway.workers", "expected a number of processes from 1 to 64")
        else:
            workers = value
    return workers, r.choice(gw, "event_loop", "gateway.", EVENT_LOOPS, "auto")


def parse_config(data: dict[str, Any], *, source: str, base: Path) -> GatewayConfig:
    """Validate a parsed TOML document; raise ConfigError listing every problem."""
    r = Reader(source, base)
    r.unknown(data, _TOP_KEYS, "")
    hostname, postmaster = _names(r, data)
    workers, event_loop = _processes(r, data)
    keys = read_keys(r, data)
    intake = read_intake(r, data)
    listeners = read_listeners(r, data)
    spool = read_spool(r, data)
    config = GatewayConfig(
        source=source, hostname=hostname, postmaster=postmaster,
        listeners=listeners,
        accounts=read_accounts(r, data),
        spool=spool,
        delivery=read_delivery(r, data),
        local=read_local(r, data),
        log=read_log(r, data),
        audit=read_audit(r, data, spool.path.parent),
        directory=read_directory(r, data, spool.path.parent),
        trust=read_trust(r, data),
        policy=read_policy(r, data, keys),
        legacy=read_legacy(r, data, keys),
        partners=read_partners(r, data, listeners),
        auth=read_auth(r, data),
        intake=intake,
        routing=read_routing(r, data),
        storage=read_storage(r, data),
        console=read_console(r, data),
        metrics=read_metrics(r, data),
        keys=keys,
        workers=workers,
        event_loop=event_loop,
        base=base,
    )
    _check_across(r, config)
    r.raise_problems()
    return config


def _check_across(r: Reader, config: GatewayConfig) -> None:
    """What involves more than one section."""
    if config.policy is not None and config.policy.enabled and config.trust is None:
        r.problem("trust", "the protection policy needs a [trust] table (anchors)")
    if not config.listeners:
        r.problem("listeners", "at least one listener is needed")
    _check_trust_space_routes(r, config)
    check_consumers_local(r, config.delivery.consumers, config.local.domains)
    _check_network_signers(r, config)
    if config.legacy is not None:
        names = {lc.name for lc in config.listeners}
        for i, name in enumerate(config.legacy.listeners):
            if name not in names:
                r.problem(f"legacy.listeners[{i}]", f"no listener named {name!r}")
    if any(lc.kind == "submission" for lc in config.listeners) and not config.accounts:
        r.problem("accounts", "a submission listener needs at least one account")


def _check_network_signers(r: Reader, config: GatewayConfig) -> None:
    """`network:<listener>` in sign_with needs that listener's `senders`: an organisation key
    signs for a trusted network only the addresses the operator listed."""
    if config.policy is None:
        return
    listeners = {lc.name: lc for lc in config.listeners}
    for who, _ in config.policy.sign_with:
        if who.startswith("network:"):
            lc = listeners.get(who[len("network:"):])
            if lc is None or not lc.allowed_networks or not lc.senders:
                r.problem(f'policy.sign_with."{who}"', "needs a listener of that name with allowed_networks and "
                          "senders = [...] (the addresses the key may sign for)")


def _check_trust_space_routes(r: Reader, config: GatewayConfig) -> None:
    """A `trust-space-tls` copy is protected by mutual TLS only: its route must require TLS and
    present our client certificate (a route's own, or `[delivery]`'s), or it would go anonymous."""
    policy = config.policy
    if policy is None or not policy.enabled:
        return
    d = config.delivery
    wanted: list[tuple[str, str | None]] = [(f'policy.destinations."{p}"', p) for p, v in policy.destinations
                                            if v == "trust-space-tls"]
    if policy.default == "trust-space-tls":
        wanted.append(("policy.default", None))
    for key, pattern in wanted:
        route = d.route_for("x" + pattern if pattern and pattern.startswith(".") else pattern) if pattern else None
        where = f'delivery.routes."{route.domain}"' if route is not None else "delivery"
        problem = d.tls_for(route).mutual_tls_problem(where)
        if problem is not None:
            r.problem(key, f"trust-space-tls: {problem} (tls = \"required\", client_cert, client_key)")


def load_config(path: str | Path) -> GatewayConfig:
    """Read and validate a TOML config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([(str(p), "-", f"cannot read: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([(str(p), "-", "not UTF-8 text")]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([(str(p), "-", f"TOML syntax error: {exc}")]) from None
    return parse_config(data, source=str(p), base=p.resolve().parent)


def default_config_text() -> str:
    return resources.files("gateway").joinpath("defaults/default.toml").read_text(encoding="utf-8")


def load_default_config(base: Path | None = None, *, listen_base: int | None = None) -> GatewayConfig:
    """The embedded default: loopback listeners, ./var spool and Maildir, demo accounts, TEST PKI.

    Reads only: the TLS pair, the demo password hash, the TEST PKI and legacy keys it names under
    `./var/default/` are made by `msgw init`, `msgw serve` or `msgw demo` (`gateway.default_setup`).
    Without that folder, the one problem says how to make it (the list of every file it lacks
    would only repeat it); with it, a missing file is reported like any other."""
    base = (base or Path.cwd()).resolve()
    if not (base / DEFAULT_FILES).is_dir():
        raise ConfigError([(DEFAULT_SOURCE, "-", f"the first-run files under {base / DEFAULT_FILES} do not exist: "
                            "run `msgw init` (or `msgw serve` once) in this folder first")])
    data = tomllib.loads(default_config_text())
    if listen_base is not None:
        data = shift_ports(data, listen_base)
    return parse_config(data, source=DEFAULT_SOURCE, base=base)
