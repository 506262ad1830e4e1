"""The `LegacyCodec` interface, the result of a decode, and the codec registry.

Why an interface: the pipeline bridges legacy formats (Apicrypt v1, OpenPGP, ...) to and from
S/MIME without knowing any of them. A codec is pure with respect to the network: it gets the
message bytes and a key object (its own kind of key store) and returns bytes. Each format is
one module of this package exposing a module-level ``CODEC`` object; the registry discovers
those modules, so adding a format touches that one module only: the codec also says what it is
called in the banner (``display_name``), which keys of ``[legacy.<name>]`` it reads beyond
``keys`` and ``identity`` (``config_fields``), how to open its key store (``open_keys``) and how
`msgw legacy encode` drives it (``keys_option``, ``encode_options``, ``encode_file``). The
configuration, the bridge, the banner and the command line ask it; none of them names a codec.

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
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from gateway.legacy.errors import UnknownCodec
from gateway.rawmime import MessageView, parse_message, skeleton

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


@dataclass(frozen=True)
class CodecOption:
    """A codec-specific setting: a key of ``[legacy.<codec>]`` or an option of `msgw legacy`.

    On the command line it is ``--`` + the name with dashes (``passphrase_file`` →
    ``--passphrase-file``); ``help`` is shown there. A ``path`` is relative to the configuration
    file; ``must_exist`` makes a missing one a configuration problem.
    """

    name: str
    kind: Literal["str", "int", "bool", "path"] = "str"
    help: str = ""
    must_exist: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class EncodedFile:
    """What `msgw legacy encode` writes, and warnings for the operator (no content)."""

    message: bytes
    warnings: tuple[str, ...] = ()


@runtime_checkable
class LegacyCodec(Protocol):
    """A legacy format. `keys` is the codec's own key object (key store, keyring)."""

    name: str
    #: What people call the system ("Apicrypt"): shown in the provenance banner of bridged mail.
    display_name: str
    #: Keys of ``[legacy.<name>]`` this codec reads beyond ``keys`` and ``identity``.
    config_fields: tuple[CodecOption, ...]
    #: `msgw legacy`: the option naming the key store folder ("keys" → ``--keys DIR``) and its help.
    keys_option: str
    keys_help: str
    #: `msgw legacy encode` options of this codec only (``--year``, ``--sign-only``...).
    encode_options: tuple[CodecOption, ...]

    def open_keys(self, keys_path: str | Path, identity: str | None, options: Mapping[str, Any]) -> Any:
        """The key object ``decode``/``encode`` take: the store at ``keys_path``, acting for
        ``identity`` (None: whoever the caller names), with the ``config_fields`` values given."""
        ...

    def encode_file(self, data: bytes, sender: str, recipients: Sequence[str], keys: Any,
                    options: Mapping[str, Any]) -> EncodedFile:
        """`msgw legacy encode`: encode ``data`` with the ``encode_options`` values given."""
        ...

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


def unregister(name: str) -> None:
    """Remove a codec (tests that register one of their own put things back with it)."""
    _REGISTRY.pop(name, None)


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


def display_name(name: str) -> str:
    """The codec's display name, or ``name`` itself when no such codec is registered."""
    _discover()
    codec = _REGISTRY.get(name)
    return codec.display_name if codec is not None else name


class _Detecting:
    """The message `detect_codec` is asking about, parsed on first need and then shared by every
    codec's `detect` (even for a message too large for its view to keep the parse).

    Past `MessageView.KEEP_LIMIT` the parse is of the message's `skeleton` (its structure and the
    first bytes of each leaf: all a `detect` reads), not of the whole message: the full parse of a
    large message was the peak of its preparation (~3x the message, issue 15). When no skeleton
    can be built (odd framing the stdlib might read otherwise), the whole message is parsed."""

    def __init__(self, view: MessageView) -> None:
        self.view = view
        self._message: email.message.Message | None = None

    def message(self) -> email.message.Message:
        if self._message is None:
            data = self.view.data
            if len(data) > MessageView.KEEP_LIMIT and not self.view.has(parse_message):
                try:
                    self._message = parse_message(skeleton(data))
                except ValueError:
                    self._message = self.view.message
            else:
                self._message = self.view.message
        return self._message


_DETECTING: ContextVar[_Detecting | None] = ContextVar("msgw_legacy_detecting", default=None)


def detect_codec(message: MessageInput | MessageView) -> LegacyCodec | None:
    """The first registered codec (by name) that recognises the message, or None.

    Every codec is asked with the message as it was given (bytes stay bytes: a bare armor is
    recognised on the bytes), and while it is asked `as_message` hands each of them the same
    parse of those bytes (a `MessageView`'s, shared with the later stages) instead of one parse
    per codec. A `detect` only reads the tree it is given."""
    _discover()
    if isinstance(message, (bytes, MessageView)):
        view = message if isinstance(message, MessageView) else MessageView(message)
        token = _DETECTING.set(_Detecting(view))
        try:
            return _first_detecting(view.data, prescan=True)
        finally:
            _DETECTING.reset(token)
    return _first_detecting(message)


def _ruled_out(codec: LegacyCodec, raw: bytes) -> bool:
    """The codec's optional `rules_out(raw)`: a byte scan proving `detect(raw)` False without
    the parse (issue 15: nearly every message is not armour). A codec without one, or whose
    scan fails, is asked `detect`."""
    rules_out = getattr(codec, "rules_out", None)
    if rules_out is None:
        return False
    try:
        return bool(rules_out(raw))
    except Exception as exc:  # a scan must never hide armour
        _log.debug("legacy codec %s rules_out failed: %s", codec.name, type(exc).__name__)
        return False


def _first_detecting(message: MessageInput, *, prescan: bool = False) -> LegacyCodec | None:
    for name in sorted(_REGISTRY):
        codec = _REGISTRY[name]
        if prescan and isinstance(message, bytes) and _ruled_out(codec, message):
            continue
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
    detecting = _DETECTING.get()
    if detecting is not None and message is detecting.view.data:
        return detecting.message()  # the one parse `detect_codec` shares between the codecs
    return parse_message(bytes(message))
