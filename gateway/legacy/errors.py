"""Typed errors of the legacy codecs, all inside the gateway hierarchy (gateway.errors).

Why separate classes: the pipeline maps them to SMTP replies / DSNs through `temporary`
and `status`, and the CLI maps them to exit codes (1 = "no": checksum, not for us, wrong
key; 2 = bad input or usage). Messages say what and where, never message content or key
material (a single ciphertext armor character may be named: it is not health data).
"""

from __future__ import annotations

from gateway.errors import MalformedInput, PermanentError, TemporaryError


class ArmorError(MalformedInput):
    """Bad legacy armor. `kind` is a stable tag (e.g. "checksum"), `line`/`column` 1-based or 0."""

    code = "legacy-armor"

    def __init__(self, kind: str, what: str, *, line: int = 0, column: int = 0) -> None:
        self.kind = kind
        self.line = line
        self.column = column
        where = ""
        if line:
            where = f"armor line {line}" + (f", column {column}" if column else "")
        super().__init__(what, where)


class ChecksumMismatch(ArmorError):
    """The armor is well formed but its checksum does not match the data (a "no" answer)."""

    code = "legacy-checksum"


class MalformedPayload(MalformedInput):
    """The decoded payload or the MIME structure around it is not what the format describes."""

    code = "legacy-malformed"


class DecryptionFailed(PermanentError):
    """The keys at hand do not decrypt this message (wrong key file, wrong year, not our key)."""

    code = "legacy-decrypt"
    status = "5.7.5"


class NotForRecipient(PermanentError):
    """The message decrypts but does not name the identity we act for among its recipients."""

    code = "legacy-not-for-us"
    status = "5.7.1"


class LegacyKeyError(PermanentError):
    """A key is missing, unusable or refused (names the user and year or the key id, never the key)."""

    code = "legacy-key"
    status = "5.7.0"


class KeyPermissionError(LegacyKeyError):
    """A key file is readable by group or others: refused until the operator makes it 0600."""

    code = "legacy-key-permissions"


class KeyStoreUnavailable(TemporaryError):
    """The key store could not be read or updated right now (I/O error, lock): retry later."""

    code = "legacy-keystore"
    status = "4.3.0"


class ToolError(TemporaryError):
    """An external tool (gpg) failed in a way that is not about the message itself."""

    code = "legacy-tool"


class UnknownCodec(PermanentError):
    """No codec registered under that name."""

    code = "legacy-unknown-codec"
