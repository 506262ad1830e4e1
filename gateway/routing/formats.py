"""The payload format registry: which formats the gateway reads, in which order they are tried.

Why a registry: detection, reading and wrapping ask the format (a
:class:`~gateway.routing.model.PayloadFormat`) instead of switching on its name, so a new
format is its own module (a ``PayloadFormat`` subclass and ``FORMAT = ...``) plus one
``register`` line below. This module imports the format modules; they import only
:mod:`gateway.routing.model` (and each other's readers), never this module.
"""

from __future__ import annotations

from gateway.routing import cda, hl7, hprim, pdf, xdm
from gateway.routing.model import PayloadFormat, PayloadInfo, UnsupportedPayload

_FORMATS: list[PayloadFormat] = []


def register(fmt: PayloadFormat) -> PayloadFormat:
    """Add a format; its place breaks detection ties (first registered wins). A taken kind is refused."""
    if any(f.kind == fmt.kind for f in _FORMATS):
        raise ValueError(f"a payload format named {fmt.kind!r} is already registered")
    _FORMATS.append(fmt)
    return fmt


def unregister(kind: str) -> None:
    """Remove a format (tests that register one of their own put things back with it)."""
    _FORMATS[:] = [f for f in _FORMATS if f.kind != kind]


# The built-in formats, one line each.
register(hprim.FORMAT)
register(hl7.FORMAT)
register(cda.FORMAT)
register(pdf.FORMAT)
register(xdm.FORMAT)


def all_formats() -> tuple[PayloadFormat, ...]:
    return tuple(_FORMATS)


def kinds() -> tuple[str, ...]:
    return tuple(f.kind for f in _FORMATS)


def get(kind: str) -> PayloadFormat:
    """The format of a kind; an unknown kind is an :class:`UnsupportedPayload`."""
    for fmt in _FORMATS:
        if fmt.kind == kind:
            return fmt
    raise UnsupportedPayload(f"no payload format named {kind!r}", "kind")


def of(info: PayloadInfo) -> PayloadFormat:
    """The format that read ``info``."""
    return get(info.kind)


def detect(data: bytes) -> PayloadFormat | None:
    """The format most sure that ``data`` is its own (ties: the first registered), or None."""
    best: PayloadFormat | None = None
    best_score = 0
    for fmt in _FORMATS:
        score = fmt.detect(data)
        if score > best_score:
            best, best_score = fmt, score
    return best


def by_extension(filename: str | None) -> PayloadFormat | None:
    """The first format claiming the file name's extension (when the bytes said nothing)."""
    if not filename or "." not in filename:
        return None
    ext = filename.lower().rsplit(".", 1)[-1]
    return next((f for f in _FORMATS if ext in f.extensions), None)


def names_text() -> str:
    """"HPRIM, HL7 v2, CDA, PDF or IHE XDM": the registered formats, for messages."""
    labels = [f.label for f in _FORMATS]
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " or " + labels[-1]


def is_lab_result(info: PayloadInfo) -> bool:
    return of(info).is_lab_result(info)


__all__ = ["all_formats", "by_extension", "detect", "get", "is_lab_result", "kinds", "names_text", "of",
           "register", "unregister"]
