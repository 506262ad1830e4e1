"""Errors raised by the PKCS#11 key store.

They subclass the gateway's two kinds so the SMTP layer and the DSN builder know what to do
without knowing about tokens: an absent or busy token is *temporary* (the message waits in
the spool until the card is back), a refused PIN or a missing key is *permanent* (retrying
would not help and, for a PIN, would lock the card). Messages never contain a PIN.
"""

from __future__ import annotations

from gateway.errors import PermanentError, TemporaryError


class TokenAbsent(TemporaryError):
    """The token is not in any slot (card pulled out, HSM unreachable): retry later."""

    code = "pkcs11-token-absent"
    status = "4.3.0"


class TokenBusy(TemporaryError):
    """The per-token request queue is full: retry later rather than queue without bound."""

    code = "pkcs11-token-busy"
    status = "4.3.2"


class TokenDeviceError(TemporaryError):
    """The token or its module failed in a way that may pass (device error, memory)."""

    code = "pkcs11-device"
    status = "4.3.0"


class PinRejected(PermanentError):
    """The token refused the PIN, or it was refused before and is not tried again.

    Cards lock after a few wrong tries, so a refused PIN is remembered for the life of the
    process and never presented again; the operator must fix the PIN source (a different
    PIN is tried once) or restart the gateway.
    """

    code = "pkcs11-pin-rejected"
    status = "5.7.0"


class PinUnavailable(PermanentError):
    """The PIN source (file, environment variable, stdin) gave no PIN."""

    code = "pkcs11-pin-unavailable"
    status = "5.3.5"


class TokenLocked(PermanentError):
    """The user PIN is locked (or on its final try and never seen to work): an operator must act."""

    code = "pkcs11-pin-locked"
    status = "5.7.0"


class KeyNotFound(PermanentError):
    """No (or more than one) key or certificate matches the PKCS#11 URI."""

    code = "pkcs11-key-not-found"
    status = "5.3.5"


class MechanismRefused(PermanentError):
    """The token does not offer, or refused, the mechanism asked for."""

    code = "pkcs11-mechanism"
    status = "5.7.4"


class KeyOperationFailed(PermanentError):
    """The key operation failed on the data (one generic message for decryption failures,
    so a padding oracle learns nothing from the text)."""

    code = "pkcs11-operation-failed"
    status = "5.7.5"


class ModuleError(PermanentError):
    """The PKCS#11 module cannot be loaded or initialised (wrong path, not a PKCS#11 library)."""

    code = "pkcs11-module"
    status = "5.3.5"


class UriError(PermanentError):
    """A PKCS#11 URI (RFC 7512) that cannot be parsed or is refused (e.g. a PIN inside it)."""

    code = "pkcs11-uri"
    status = "5.3.5"
