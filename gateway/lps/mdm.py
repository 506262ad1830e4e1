"""One HL7 v2.6 MDM per CDA of the archive (IG profils-messages)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from gateway.lps.model import ConsumerSettings, IncomingMail, Mdm
from gateway.routing.xdm import XdmPackage


def build_mdms(mail: IncomingMail, package: XdmPackage, pdfs: Sequence[bytes], consumer: ConsumerSettings, *,
               now: datetime, control_id: Callable[[], str]) -> list[Mdm]:
    """One MDM^T02/T10/T04 per CDA document of the package."""
    raise NotImplementedError


def read_consumer_ack(data: bytes) -> tuple[str, str, str | None]:
    """(MSA-1, MSA-2, "code^text" of ERR-5/ERR-3 if any)."""
    raise NotImplementedError
