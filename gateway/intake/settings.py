"""The intake doors' settings, under the name they import them by.

The ``[intake]`` table is a configuration section like the others: its types and parser live in
:mod:`gateway.config.intake` (one reader, one problem collector for the whole file). This module
only re-exports them, so the doors (MLLP, drop folders, payloads by mail) keep importing their
settings from their own package and never the whole configuration.
"""

from __future__ import annotations

from gateway.config.intake import (
    CompleteRule,
    DropSettings,
    IntakeConfig,
    MllpSettings,
    RoutingSettings,
    load_lab_codes,
    parse_intake,
    valid_address,
)

__all__ = ["CompleteRule", "DropSettings", "IntakeConfig", "MllpSettings", "RoutingSettings", "load_lab_codes",
           "parse_intake", "valid_address"]
