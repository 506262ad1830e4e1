"""Integration MDNs (RFC 8098, ANS profile) and the "courriel standard" error notice."""

from __future__ import annotations

from datetime import datetime

from gateway.lps.model import IncomingMail


def build_mdn(original: bytes, mail: IncomingMail, *, reporting_host: str, from_address: str, now: datetime,
              error: tuple[str, str] | None = None) -> bytes:
    """multipart/report; report-type=disposition-notification."""
    raise NotImplementedError


def build_error_notice(original: bytes, mail: IncomingMail, *, from_address: str, now: datetime,
                       error: tuple[str, str]) -> bytes:
    """The courriel standard sent when no MDN was asked but integration failed."""
    raise NotImplementedError


def mdn_allowed(mail: IncomingMail) -> bool:
    """Asked, and (loop guard) to the return path."""
    raise NotImplementedError
