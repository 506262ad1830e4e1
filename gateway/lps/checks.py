"""Checks before the consumer sees anything (ANS codes 900-906)."""

from __future__ import annotations

from collections.abc import Callable

from gateway.lps.model import Delivered, IncomingMail
from gateway.routing.xdm import XdmPackage


def check(mail: IncomingMail, package: XdmPackage, previous: Callable[[str], Delivered | None]) -> None:
    """Raise IntegrationError when a document must not be integrated automatically."""
    raise NotImplementedError
