"""The `LegacyCodec` interface, the result of a decode, and the codec registry.

Why an interface: the pipeline bridges legacy formats (Apicrypt v1, OpenPGP, ...) to and from
S/MIME without knowing any of them. A codec is pure with respect to the network: it gets the
message bytes and a key object (its own kind of key store) and returns bytes. Each format is
one module of this package exposing a module-level ``CODEC`` object; the registry discovers
those modules, so adding a format touches that one module only.

A decode result always says what could and could NOT be established about the sender:
a bridge must never present an unauthenticated legacy sender as verified.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import enum
import importlib
import logging
import pkgutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from gateway.legacy.errors import UnknownCodec

MessageInput = bytes | email.message.Message


class SignatureStatus(enum.Enum):
    """What the codec found about a signature over the content."""

    NOT_SUPPORTED = "not-supported"  # the format has no signatures (apicrypt1)
    NONE = "none"  # the format supports them, the message had none
    VALID = "valid"  # verified with a key of our keyring
    BAD = "bad"  # a signature is present and does NOT match the content
    UNKNOWN_KEY = "unknown-key"  # signed, but the key is not in our keyring
    ERROR = "error"  # present but could not be checked (expired/revoked key, bad packet)


@dataclass(frozen=True)
class DecodedAttachment:
    """One decrypted attachment: its file name (kept outside the ciphertext) and exact bytes."""

    filename: str
    data: bytes
    content_type: str = "application/octet-stream"


@dataclass(frozen=True)
class DecodedMessage:
    """A decoded legacy message and what the codec could establish about it.

    `content` is a complete MIME message (the non-MIME headers of the input, the decrypted
    body and attachments); `text` and `attachments` give the exact decrypted bytes for callers
    that must preserve them byte for byte (HPRIM). `sender` is the identity *as found*
    (an Apicrypt user name from an unauthenticated header, or an OpenPGP signer's uid) and
    `sender_authenticated` says whether that identity was cryptographically established.
    """

    codec: str
    content: bytes
    sender: str | None
    recipients: tuple[str, ...]
    sender_authenticated: bool
    notes: tuple[str, ...]
    signature: SignatureStatus = SignatureStatus.NOT_SUPPORTED
    signer_fingerprint: str | None = None
    integrity_protected: bool = False
    text: bytes | None = None
    text_charset: str | None = None
    attachments: tuple[DecodedAttachment, ...] = field(default_factory=tuple)

    def provenance(self) -> str:
        """One header-safe line saying what was established (no content), e.g. for a bridged-from header."""
        parts = [f"codec={self.codec}", f"sender={_header_safe(self.sender or 'unknown')}",
                 f"sender-authenticated={'yes' if self.sender_authenticated else 'no'}",
                 f"signature={self.signature.value}"]
        if self.signer_fingerprint:
            parts.append(f"key={self.signer_fingerprint}")
        parts.append(f"integrity={'yes' if self.integrity_protected else 'no'}")
        return "; ".join(parts)


def _header_safe(value: str) -> str:
    """Printable ASCII without separators: a sender name from a message must not inject headers."""
    cleaned = "".join(c if 32 < ord(c) < 127 and c not in ';"\\' else "_" for c in value)
    return cleaned[:120]


@runtime_checkable
class LegacyCodec(Protocol):
    """A legacy format. `keys` is the codec's own key object (key store, keyring)."""

    name: str

    def detect(self, message: MessageInput) -> bool:
        """True when the message is in this format (cheap, never raises on odd input)."""
        ...

    def decode(self, message: MessageInput, keys: Any, *, recipient: str | None = None) -> DecodedMessage:
        """Decrypt/verify; raises gateway errors (MalformedInput, PermanentError, TemporaryError).

        `recipient`, when given, is the identity we act for: a message not addressed to it raises
        NotForRecipient.
        """
        ...

    def encode(self, mime: bytes, sender: str, recipients: Sequence[str], keys: Any, *,
               protect_headers: bool = False) -> bytes:
        """Encode a MIME message from `sender` (our legacy identity) for `recipients`.

        `protect_headers`: carry the message's headers inside the encryption as far as the format
        can (the bridge then trims what shows outside to the gateway's allow-list)."""
        ...


_log = logging.getLogger("gateway.legacy")
_REGISTRY: dict[str, LegacyCodec] = {}
_INFRASTRUCTURE = frozenset({"codec", "errors", "keystore", "mimeutil", "apicrypt1_format"})
_discovered = False


def register(codec: LegacyCodec) -> LegacyCodec:
    """Add a codec under its name; registering a second codec under a taken name is refused."""
    existing = _REGISTRY.get(codec.name)
    if existing is not None and existing is not codec:
        raise ValueError(f"a legacy codec named {codec.name!r} is already registered")
    _REGISTRY[codec.name] = codec
    return codec


def _discover() -> None:
    """Import the format modules of this package once and register their ``CODEC``."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = importlib.import_module("gateway.legacy")
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.name in _INFRASTRUCTURE or info.ispkg:
            continue
        module = importlib.import_module(f"gateway.legacy.{info.name}")
        codec = getattr(module, "CODEC", None)
        if codec is not None:
            register(codec)


def names() -> tuple[str, ...]:
    _discover()
    return tuple(sorted(_REGISTRY))


def get(name: str) -> LegacyCodec:
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise UnknownCodec(f"unknown legacy codec {name!r} (known: {known})") from None


def detect_codec(message: MessageInput) -> LegacyCodec | None:
    """The first registered codec (by name) that recognises the message, or None."""
    _discover()
    for name in sorted(_REGISTRY):
        codec = _REGISTRY[name]
        try:
            if codec.detect(message):
                return codec
        except Exception as exc:  # detection must never break classification
            _log.debug("legacy codec %s detect failed: %s", name, type(exc).__name__)
    return None


def as_message(message: MessageInput) -> email.message.Message:
    """Parse bytes with the compat32 policy (keeps raw header and body bytes as received)."""
    if isinstance(message, email.message.Message):
        return message
    return email.message_from_bytes(bytes(message), policy=email.policy.compat32)
