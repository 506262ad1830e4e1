"""Read any payload: detect its format (:mod:`gateway.routing.formats`) and let that format read it.

The shared types live in :mod:`gateway.routing.model`; each format is a module of this
package (``hprim``, ``hl7``, ``cda``, ``pdf``, ``xdm``).
"""

from __future__ import annotations

from gateway.routing import formats
from gateway.routing.model import MAX_PAYLOAD_BYTES, PayloadError, PayloadInfo, UnsupportedPayload


def detect_payload(data: bytes) -> str | None:
    """Guess the payload kind from its bytes ("hprim", "hl7v2", "cda", "pdf", "xdm"...) or None."""
    fmt = formats.detect(data)
    return fmt.kind if fmt is not None else None


def read_payload(data: bytes, filename: str | None = None) -> PayloadInfo:
    """Detect and read a payload; the file name only breaks ties (``.hpr``/``.hpm`` text layouts)."""
    if len(data) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"payload larger than {MAX_PAYLOAD_BYTES} bytes", "byte 0")
    fmt = formats.detect(data) or formats.by_extension(filename)
    if fmt is None:
        raise UnsupportedPayload(f"unrecognised payload (not {formats.names_text()})", "byte 0")
    return fmt.read(data, filename)


__all__ = ["detect_payload", "read_payload"]
