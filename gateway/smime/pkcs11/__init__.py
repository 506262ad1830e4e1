"""Keys on PKCS#11 tokens (CPS smart cards, HSMs) behind the S/MIME key protocols.

- `parse_uri` / `Pkcs11Uri`: RFC 7512 URIs naming a token and a key.
- `open_token_key` / `open_token_key_async` -> `TokenKey` (a SigningKey and DecryptionKey).
- `list_tokens`: what is on a module, for `msgw certs tokens`.
- PIN sources: `FilePin`, `EnvPin`, `StdinPin`, `StaticPin`, `pin_source(...)`.

Every PKCS#11 call of a module runs on one dedicated thread (see worker.py for why).
"""

from gateway.smime.pkcs11.errors import (
    KeyNotFound,
    KeyOperationFailed,
    MechanismRefused,
    ModuleError,
    PinRejected,
    PinUnavailable,
    TokenAbsent,
    TokenBusy,
    TokenDeviceError,
    TokenLocked,
    UriError,
)
from gateway.smime.pkcs11.keys import TokenKey, open_token_key, open_token_key_async
from gateway.smime.pkcs11.pin import EnvPin, FilePin, PinSource, StaticPin, StdinPin, pin_source
from gateway.smime.pkcs11.uri import Pkcs11Uri, TokenSelector, format_uri, parse_uri
from gateway.smime.pkcs11.worker import ModuleWorker, get_worker

__all__ = [
    "EnvPin", "FilePin", "KeyNotFound", "KeyOperationFailed", "MechanismRefused", "ModuleError",
    "ModuleWorker", "PinRejected", "PinSource", "PinUnavailable", "Pkcs11Uri", "StaticPin", "StdinPin",
    "TokenAbsent", "TokenBusy",
    "TokenDeviceError", "TokenKey", "TokenLocked", "TokenSelector", "UriError", "format_uri", "get_worker",
    "open_token_key", "open_token_key_async", "parse_uri", "pin_source",
]
