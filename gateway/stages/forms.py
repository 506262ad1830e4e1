"""What form a message is already in (pure checks shared by the stages)."""

from __future__ import annotations

from gateway.errors import GatewayError
from gateway.rawmime import Raw
from gateway.smime.cmsutil import parse_content_info
from gateway.smime.mime import classify


def is_encrypted(data: Raw) -> bool:
    """Already S/MIME-encrypted by the client (enveloped or auth-enveloped CMS)? Given a
    `MessageView`, its split and parse (the legacy detector's) are read, not made again."""
    try:
        part = classify(data)
        if part.kind != "pkcs7-mime":
            return False
        kind = parse_content_info(part.der)["content_type"].native
    except GatewayError:
        return False
    return kind in ("enveloped_data", "authenticated_enveloped_data")
