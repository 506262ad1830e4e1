"""Read the MSSanté mail that reached an application mailbox."""

from __future__ import annotations

from gateway.lps.model import IncomingMail
from gateway.routing.xdm import XdmPackage


def read_incoming(data: bytes, *, recipient: str, return_path: str) -> tuple[IncomingMail, XdmPackage | None, tuple[bytes, ...]]:
    """The mail's facts, its IHE_XDM.ZIP (read) if any, the PDFs attached."""
    raise NotImplementedError
