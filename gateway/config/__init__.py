"""TOML configuration → typed, validated, immutable objects.

The only place that reads configuration: one module per section (`listeners`, `accounts`,
`spool`, `delivery`, `local`, `log`, `keys`, `trust`, `policy`, `legacy`, `intake`, `audit`,
`directory`, `routing`, `console`, `storage`), the whole document in `gateway.config.gateway`, and one problem
collector, `gateway.config.reader.Reader`. Validation collects *every* problem (file, key,
message) before raising `ConfigError`, so `msgw check` can print them all at once.
Secrets (passwords of outbound connections, PINs) are never written in the TOML: a key names a
file (`*_file`) or an environment variable (`*_env`) and `Secret.read()` fetches it when needed.
Relative paths are resolved against the config file's folder (the embedded default resolves
against the working directory, so `./var` is where you ran `msgw`). Loading creates no file.

Import the names from here (`from gateway.config import GatewayConfig, load_config`); the section
modules import each other by their own names, never this package (no cycle).
"""

from gateway.config.accounts import Account, AuthConfig, PartnerConfig
from gateway.config.audit import AuditConfig
from gateway.config.console import ConsoleConfig, Operator
from gateway.config.delivery import DeliveryConfig, RouteConfig, TlsPolicy, TlsSettings
from gateway.config.directory import DirectoryConfig
from gateway.config.gateway import (
    DEFAULT_FILES,
    DEFAULT_SOURCE,
    GatewayConfig,
    default_config_text,
    load_config,
    load_default_config,
    parse_config,
)
from gateway.config.intake import IntakeConfig
from gateway.config.legacy import LegacyCodecConfig, LegacyConfig
from gateway.config.listeners import ListenerConfig
from gateway.config.local import LocalConfig, LocalMode
from gateway.config.log import LogConfig
from gateway.config.metrics import MetricsConfig
from gateway.config.policy import _POLICIES, DestinationPolicy, DiscoveryConfig, PolicyConfig
from gateway.config.reader import Reader, Secret, is_address, is_domain, parse_duration, parse_size
from gateway.config.routing import RoutingConfig
from gateway.config.spool import SpoolConfig
from gateway.config.storage import StorageConfig
from gateway.config.trust import TrustConfig
from gateway.errors import ConfigError

__all__ = [
    "DEFAULT_FILES", "DEFAULT_SOURCE", "Account", "AuditConfig", "AuthConfig", "ConfigError", "ConsoleConfig",
    "DeliveryConfig", "DestinationPolicy", "DirectoryConfig", "DiscoveryConfig", "GatewayConfig", "IntakeConfig",
    "LegacyCodecConfig", "LegacyConfig", "ListenerConfig", "LocalConfig", "LocalMode", "LogConfig", "Operator",
    "PartnerConfig", "PolicyConfig",
    "Reader", "RouteConfig", "RoutingConfig", "Secret", "SpoolConfig", "StorageConfig", "TlsPolicy", "TlsSettings",
    "TrustConfig",
    "_POLICIES", "default_config_text", "is_address", "is_domain", "load_config",
    "load_default_config", "parse_config", "parse_duration", "parse_size",
    "MetricsConfig",
]
