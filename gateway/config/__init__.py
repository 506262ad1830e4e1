"""Configuration package (being split into one module per section)."""

from gateway.config.gateway import *  # noqa: F403
from gateway.config.gateway import (  # noqa: F401
    _LEGACY_CODECS,
    _POLICIES,
    _TOP_KEYS,
    _Reader,
)
