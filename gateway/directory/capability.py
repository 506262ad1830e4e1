"""What a directory address can read (its *capability*), parsed once into a value.

The directory stores a capability as text (`smime`, `local`, `trusted-domain`,
`legacy:<codec>`); the stages used to slice that text (`capability[7:]`,
`startswith("legacy:")`) wherever they needed it. `Capability.parse` is the one reader: it
gives a kind and, for `legacy`, the codec, or raises a typed `InvalidCapability`. Pure, no I/O,
imports nothing of the gateway but its errors (the decision table and the directory both use it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from gateway.errors import PermanentError

CapabilityKind = Literal["smime", "local", "trusted-domain", "legacy"]
KINDS: tuple[CapabilityKind, ...] = ("smime", "local", "trusted-domain", "legacy")
LEGACY_PREFIX = "legacy:"
#: A codec name as the directory accepts it (`check_capability`).
_CODEC = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")


class InvalidCapability(PermanentError):
    """A capability text that is none of the known forms. Says which form was expected, and shows
    at most the first characters of what was given (a capability is configuration, not content)."""

    code = "capability"
    status = "5.3.0"


@dataclass(frozen=True)
class Capability:
    """A parsed capability: `kind`, and `codec` for `legacy` (None otherwise)."""

    kind: CapabilityKind
    codec: str | None = None

    @classmethod
    def parse(cls, text: str) -> Capability:
        """`"legacy:apicrypt1"` → Capability("legacy", "apicrypt1"); InvalidCapability otherwise."""
        value = text.strip()
        if value.startswith(LEGACY_PREFIX):
            codec = value[len(LEGACY_PREFIX):]
            if not _CODEC.match(codec):
                raise InvalidCapability("capability legacy:<codec> needs a codec name of [a-z0-9_.-] "
                                        f"(1-32 characters), got {codec[:40]!r}")
            return cls("legacy", codec)
        if value in ("smime", "local", "trusted-domain"):
            return cls(value)  # type: ignore[arg-type]  # narrowed by the membership test
        raise InvalidCapability(f"unknown capability {value[:40]!r} (use smime, local, trusted-domain or "
                                "legacy:<codec>)")

    @classmethod
    def read(cls, text: str | None) -> Capability | None:
        """A directory's stored value: None when the address has none (unknown to the directory)."""
        return None if text is None or not text.strip() else cls.parse(text)

    @classmethod
    def legacy(cls, codec: str) -> Capability:
        return cls.parse(LEGACY_PREFIX + codec)

    @property
    def is_legacy(self) -> bool:
        return self.kind == "legacy"

    def __str__(self) -> str:
        return f"{LEGACY_PREFIX}{self.codec}" if self.kind == "legacy" else self.kind
