"""Codec `openpgp`: PGP/MIME (RFC 3156) out and in, inline PGP on the way in, through GnuPG.

Why GnuPG through python-gnupg rather than pysequoia: `gpg` is the Debian-packaged, audited
OpenPGP implementation operators already run, it is the interop peer our tests drive anyway,
and python-gnupg is a thin pure-Python wrapper (no compiled extension to vet). It runs gpg as a
subprocess with an argument list (never a shell); we add batch-safe options so gpg never prompts:
`--pinentry-mode loopback` (a passphrase, when a key has one, comes from a file or environment
variable and is fed on a pipe), no key-server lookups, and the trust model `always` because the
keyring the configuration names IS the trust decision (the gateway does no web of trust).

Signature status is read from gpg's machine-readable status lines (GOODSIG/VALIDSIG/BADSIG/
ERRSIG/...), not from prose. A decode reports whether a signature verified and by which key
(fingerprint and uid); only a good signature sets `sender_authenticated`. Decryption without
integrity protection (no MDC/AEAD) is refused. Pass messages as bytes: a multipart/signed
signature covers the exact bytes of its first part.
"""

from __future__ import annotations

import base64
import dataclasses
import email.message
import email.utils
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gnupg

from gateway.legacy import prescan
from gateway.legacy.codec import CodecOption, DecodedMessage, EncodedFile, MessageInput, SignatureStatus, as_message
from gateway.legacy.errors import DecryptionFailed, LegacyKeyError, MalformedPayload, NotForRecipient, ToolError
from gateway.legacy.mimeutil import (
    binary_part,
    leaf_payload,
    outer_headers,
    param_text,
    raw_body,
    raw_header_fields,
    raw_multipart_parts,
    subparts,
    to_bytes,
    to_crlf,
)
from gateway.rawmime import lstrip_start

NAME = "openpgp"
BEGIN_MESSAGE = b"-----BEGIN PGP MESSAGE-----"
END_MESSAGE = b"-----END PGP MESSAGE-----"
ENCRYPTED_PROTOCOL = "application/pgp-encrypted"
SIGNATURE_PROTOCOL = "application/pgp-signature"
DIGEST = "SHA256"
MICALG = "pgp-sha256"
GPG_OPTIONS = ["--pinentry-mode", "loopback", "--no-auto-key-retrieve", "--trust-model", "always",
               "--no-auto-key-locate", "--keyid-format", "long", "--no-greeting"]
_CONTENT_HEADERS = ("content-type", "content-transfer-encoding", "content-disposition", "content-description",
                    "content-id", "content-language")
_NOT_PROTECTED = ("mime-version", "bcc", "resent-bcc")

# python-gnupg logs data excerpts at DEBUG level: keep health content out of the logs even when
# an operator turns debugging on for the gateway.
logging.getLogger("gnupg").setLevel(logging.WARNING)


class OpenPgpKeyring:
    """A GnuPG home folder (GNUPGHOME) the caller names, and how to get a key's passphrase."""

    def __init__(self, home: str | os.PathLike[str], *, passphrase_file: str | None = None,
                 passphrase_env: str | None = None, identities: Sequence[str] = (), gpgbinary: str = "gpg") -> None:
        self.home = Path(home)
        self.identities = tuple(identities)
        self._passphrase_file = passphrase_file
        self._passphrase_env = passphrase_env
        self._gpgbinary = gpgbinary
        self._gpg: gnupg.GPG | None = None

    @property
    def gpg(self) -> gnupg.GPG:
        if self._gpg is None:
            if not self.home.is_dir():
                raise LegacyKeyError(f"OpenPGP keyring folder {self.home.name!r} does not exist")
            try:
                self._gpg = gnupg.GPG(gpgbinary=self._gpgbinary, gnupghome=str(self.home), options=list(GPG_OPTIONS))
            except (OSError, ValueError) as exc:
                raise ToolError(f"cannot run gpg ({type(exc).__name__})") from None
        return self._gpg

    def passphrase(self) -> str | None:
        if self._passphrase_file:
            try:
                return Path(self._passphrase_file).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise LegacyKeyError(f"cannot read the passphrase file ({exc.strerror})") from None
        if self._passphrase_env:
            value = os.environ.get(self._passphrase_env)
            if value is None:
                raise LegacyKeyError(f"passphrase variable {self._passphrase_env} is not set")
            return value
        return None

    def secret_key(self, user: str) -> dict[str, Any]:
        """The one secret key matching `user` (uid, e-mail or fingerprint)."""
        found = self.gpg.list_keys(secret=True, keys=[user])
        if len(found) != 1:
            raise LegacyKeyError(f"{len(found)} secret keys match {user!r} in the keyring (need exactly one)")
        return dict(found[0])

    def key_ids(self, key: dict[str, Any]) -> set[str]:
        ids = {str(key.get("keyid", "")).upper()}
        ids |= {str(sub[0]).upper() for sub in key.get("subkeys", []) if sub}
        return ids - {""}

    def uids_of(self, fingerprint: str) -> list[str]:
        return [u for k in self.gpg.list_keys(keys=[fingerprint]) for u in k.get("uids", [])]


@dataclass(frozen=True)
class SignatureReport:
    status: SignatureStatus
    fingerprint: str | None = None
    uid: str | None = None


def parse_signature(status_text: str) -> SignatureReport:
    """Signature outcome from gpg status lines (any BADSIG wins; then a good one; then the rest)."""
    lines = [line[9:].split(" ") for line in status_text.splitlines() if line.startswith("[GNUPG:] ")]
    keywords = {line[0] for line in lines}
    if "BADSIG" in keywords:
        return SignatureReport(SignatureStatus.BAD)
    good = next((line for line in lines if line[0] == "GOODSIG"), None)
    valid = next((line for line in lines if line[0] == "VALIDSIG"), None)
    if good and valid:
        fingerprint = valid[10] if len(valid) > 10 else valid[1]
        return SignatureReport(SignatureStatus.VALID, fingerprint.upper(), " ".join(good[2:]) or None)
    if "ERRSIG" in keywords and "NO_PUBKEY" in keywords:
        return SignatureReport(SignatureStatus.UNKNOWN_KEY)
    if keywords & {"ERRSIG", "EXPKEYSIG", "REVKEYSIG", "EXPSIG"}:
        return SignatureReport(SignatureStatus.ERROR)
    return SignatureReport(SignatureStatus.NONE)


# libgpg-error codes (low 16 bits of gpg's ERROR status) meaning "no usable passphrase":
# GPG_ERR_BAD_PASSPHRASE, GPG_ERR_CANCELED, GPG_ERR_NO_PASSPHRASE.
_PASSPHRASE_ERRORS = frozenset({11, 99, 177})


def _passphrase_problem(status_text: str) -> bool:
    """gpg needed a passphrase it did not get, or got a wrong one (from status lines only)."""
    if any(f"[GNUPG:] {word}" in status_text for word in ("BAD_PASSPHRASE", "MISSING_PASSPHRASE")):
        return True
    if "[GNUPG:] NEED_PASSPHRASE " in status_text and "[GNUPG:] GOOD_PASSPHRASE" not in status_text \
            and "[GNUPG:] DECRYPTION_OKAY" not in status_text:
        return True
    for line in status_text.splitlines():
        fields = line.split()
        if line.startswith("[GNUPG:] ERROR ") and len(fields) > 3 and fields[3].isdigit():
            if int(fields[3]) & 0xFFFF in _PASSPHRASE_ERRORS:
                return True
    return False


def _integrity(status_text: str) -> bool:
    for line in status_text.splitlines():
        if line.startswith("[GNUPG:] GOODMDC"):
            return True
        if line.startswith("[GNUPG:] DECRYPTION_INFO "):
            fields = line.split()
            if (len(fields) > 2 and fields[2] != "0") or (len(fields) > 4 and fields[4] != "0"):
                return True
    return False


def _header_block(headers: list[tuple[str, str]]) -> bytes:
    return b"".join(_raw(f"{name}: {value}").replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + b"\r\n"
                    for name, value in headers)


def _raw(text: str) -> bytes:
    """A header line as bytes: raw 8-bit bytes read from a message come back as they were."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


def inner_entity(raw: bytes, *, seven_bit: bool = False, protect_headers: bool = False) -> bytes:
    """The MIME entity to protect: the message's exact content headers and body, CRLF canonical.

    Sliced from the raw bytes (a parse/re-serialise round trip may alter 8-bit bodies). With
    `seven_bit` (required inside multipart/signed, RFC 3156 section 5) every 8-bit leaf is
    re-encoded as base64 (bytes preserved) before signing. With `protect_headers` every other
    header of the message (Subject, threading, X-*...; never Bcc) is copied onto the entity as
    protected headers (`protected-headers="v1"`, as Thunderbird reads them in PGP/MIME too).
    """
    all_fields = raw_header_fields(raw)
    fields = [value for name, value in all_fields if name in _CONTENT_HEADERS]
    if not any(name == "content-type" for name, _ in all_fields):
        fields.insert(0, b'Content-Type: text/plain; charset="us-ascii"')
    if protect_headers:
        fields = [f + b';\r\n protected-headers="v1"' if f[:13].lower() == b"content-type:" else f for f in fields]
        fields += [value for name, value in all_fields
                   if name not in _CONTENT_HEADERS and name not in _NOT_PROTECTED]
    body = raw_body(raw)
    entity = to_crlf(b"\r\n".join(fields) + b"\r\n\r\n" + body)
    if seven_bit and any(byte > 0x7F for byte in entity):
        entity = _seven_bit_entity(as_message(entity))
    return entity


def _unprotected(headers: list[tuple[str, str]], entity: bytes) -> list[tuple[str, str]]:
    """The outer headers a protected-headers entity does not carry itself: one header block after
    decoding, with the protected (inner) From/Subject/... rather than the outer ones."""
    fields = raw_header_fields(entity)
    content_type = next((value for name, value in fields if name == "content-type"), b"")
    if b"protected-headers" not in content_type.lower():
        return headers
    inner = {name for name, _ in fields if name not in _CONTENT_HEADERS}
    return [(name, value) for name, value in headers if name.lower() not in inner]


def _seven_bit_entity(entity: email.message.Message) -> bytes:
    for part in entity.walk():
        if part.is_multipart():
            continue
        payload = part.get_payload()
        if isinstance(payload, str) and any(ord(c) > 0x7F for c in payload):
            data = leaf_payload(part)
            del part["Content-Transfer-Encoding"]
            part["Content-Transfer-Encoding"] = "base64"
            part.set_payload(base64.encodebytes(data).decode("ascii"))
    return to_crlf(to_bytes(entity))


def _boundary() -> str:
    return "=_msgw_pgp_" + os.urandom(12).hex()


class OpenPgpCodec:
    """The `openpgp` LegacyCodec (keys: an OpenPgpKeyring)."""

    name = NAME
    display_name = "OpenPGP"
    config_fields = (CodecOption("passphrase_file", "path", "openpgp: file holding our secret key's passphrase",
                                 must_exist=True),
                     CodecOption("passphrase_env", "str", "openpgp: environment variable holding that passphrase"))
    keys_option = "keyring"
    keys_help = "openpgp: GnuPG home folder"
    encode_options = (CodecOption("sign_only", "bool", "openpgp: multipart/signed, not encrypted"),)

    def open_keys(self, keys_path: str | Path, identity: str | None, options: Mapping[str, Any]) -> OpenPgpKeyring:
        passphrase_file = options.get("passphrase_file")
        return OpenPgpKeyring(keys_path, passphrase_file=str(passphrase_file) if passphrase_file else None,
                              passphrase_env=options.get("passphrase_env"),
                              identities=[identity] if identity else ())

    def encode_file(self, data: bytes, sender: str, recipients: Sequence[str], keys: OpenPgpKeyring,
                    options: Mapping[str, Any]) -> EncodedFile:
        return EncodedFile(self.encode(data, sender, recipients, keys, sign_only=bool(options.get("sign_only"))))

    def rules_out(self, raw: bytes) -> bool:
        """Cheap proof that `detect(raw)` is False, asked by `detect_codec` before the parse
        `detect` walks: no armour marker where a leaf could hold it, and a top-level
        multipart/signed or multipart/encrypted (the only kinds whose protocol is read) with no
        `pgp` in its header block, nor a `*` (RFC 2231 continuations and %-escapes need one)."""
        if not prescan.rules_out(raw, (BEGIN_MESSAGE,)):
            return False
        head = prescan.top_header_block(raw).lower()
        if b"multipart/signed" in head or b"multipart/encrypted" in head:
            return b"pgp" not in head and b"*" not in head
        return True

    def detect(self, message: MessageInput) -> bool:
        if isinstance(message, bytes) and message.startswith(BEGIN_MESSAGE, lstrip_start(message)):
            return True
        msg = as_message(message)
        kind = msg.get_content_type()
        protocol = param_text(msg, "protocol").lower() if msg.is_multipart() else ""
        if kind == "multipart/encrypted" and protocol == ENCRYPTED_PROTOCOL:
            return True
        if kind == "multipart/signed" and protocol == SIGNATURE_PROTOCOL:
            return True
        return self._inline_part(msg) is not None

    @staticmethod
    def _inline_part(msg: email.message.Message) -> email.message.Message | None:
        for part in msg.walk():
            if part.get_content_type() == "text/plain" and not part.is_multipart():
                if leaf_payload(part).lstrip().startswith(BEGIN_MESSAGE):
                    return part
        return None

    # --- encode -----------------------------------------------------------------------------
    def encode(self, mime: bytes, sender: str, recipients: Sequence[str], keys: OpenPgpKeyring, *,
               sign_only: bool = False, protect_headers: bool = False) -> bytes:
        """PGP/MIME: signed and encrypted in one OpenPGP message (RFC 3156 6.2), or multipart/signed.

        `protect_headers` (the bridge): every header also travels inside as a protected header;
        the caller trims the outer ones."""
        msg = as_message(mime)
        entity = inner_entity(mime, seven_bit=sign_only, protect_headers=protect_headers)
        signer = keys.secret_key(sender)["fingerprint"]
        headers = outer_headers(msg) + [("MIME-Version", "1.0")]
        boundary = _boundary()
        if sign_only:
            signed = keys.gpg.sign(entity, keyid=signer, detach=True, binary=False, passphrase=keys.passphrase(),
                                   extra_args=["--digest-algo", DIGEST])
            if not signed.data:
                raise LegacyKeyError(f"gpg could not sign with the key of {sender!r} ({signed.status})")
            content_type = (f'multipart/signed; micalg={MICALG}; protocol="{SIGNATURE_PROTOCOL}";\r\n'
                            f' boundary="{boundary}"')
            body = (b"This is an OpenPGP/MIME signed message (RFC 3156).\r\n--" + boundary.encode() + b"\r\n"
                    + entity + b"\r\n--" + boundary.encode() + b"\r\n"
                    + b'Content-Type: application/pgp-signature; name="signature.asc"\r\n'
                    + b"Content-Description: OpenPGP digital signature\r\n\r\n"
                    + to_crlf(signed.data) + b"\r\n--" + boundary.encode() + b"--\r\n")
        else:
            if not recipients:
                raise MalformedPayload("no recipients")
            result = keys.gpg.encrypt(entity, list(recipients), sign=signer, armor=True, always_trust=True,
                                      passphrase=keys.passphrase(), extra_args=["--digest-algo", DIGEST])
            if not result.ok:
                raise LegacyKeyError(f"gpg could not sign and encrypt for the {len(recipients)} recipient(s) "
                                     f"({result.status}): is every recipient's key in the keyring?")
            content_type = f'multipart/encrypted; protocol="{ENCRYPTED_PROTOCOL}";\r\n boundary="{boundary}"'
            body = (b"This is an OpenPGP/MIME encrypted message (RFC 3156).\r\n--" + boundary.encode() + b"\r\n"
                    + b"Content-Type: application/pgp-encrypted\r\n"
                    + b"Content-Description: PGP/MIME version identification\r\n\r\nVersion: 1\r\n\r\n--"
                    + boundary.encode() + b"\r\n"
                    + b'Content-Type: application/octet-stream; name="encrypted.asc"\r\n'
                    + b"Content-Description: OpenPGP encrypted message\r\n"
                    + b'Content-Disposition: inline; filename="encrypted.asc"\r\n\r\n'
                    + to_crlf(result.data) + b"\r\n--" + boundary.encode() + b"--\r\n")
        return _header_block(headers + [("Content-Type", content_type)]) + b"\r\n" + body

    # --- decode -----------------------------------------------------------------------------
    def decode(self, message: MessageInput, keys: OpenPgpKeyring, *, recipient: str | None = None) -> DecodedMessage:
        """Decrypt and/or verify; `recipient` (our uid/fingerprint) must be one the message is encrypted to."""
        if isinstance(message, bytes) and message.lstrip().startswith(BEGIN_MESSAGE):
            raw, msg = message, None
        else:
            raw = message if isinstance(message, bytes) else message.as_bytes()
            msg = as_message(message)
        notes: list[str] = []
        headers = outer_headers(msg) if msg is not None else []
        plain: bytes | None = None
        if msg is None:
            text, report, targets, protected = self._decrypt(raw, keys, recipient)
            content, plain = self._inline_content(headers, text, None), text
        elif msg.get_content_type() == "multipart/encrypted":
            text, report, targets, protected = self._decrypt(self._encrypted_payload(msg), keys, recipient)
            entity = text
            inner = as_message(text)
            if inner.get_content_type() == "multipart/signed":
                entity, inner_report = self._verify_signed(text, inner, keys)
                notes.append("signed then encrypted (RFC 3156 6.1)")
                report = inner_report if report.status is SignatureStatus.NONE else report
            content = _header_block(_unprotected(headers, entity) + [("MIME-Version", "1.0")]) + entity
        elif msg.get_content_type() == "multipart/signed":
            entity, report = self._verify_signed(raw, msg, keys)
            targets, protected = (), report.status is SignatureStatus.VALID
            notes.append("signed only: the content travelled in clear")
            content = _header_block(_unprotected(headers, entity) + [("MIME-Version", "1.0")]) + entity
        else:
            part = self._inline_part(msg)
            if part is None:
                raise MalformedPayload("no PGP/MIME structure and no inline PGP message")
            text, report, targets, protected = self._decrypt(leaf_payload(part), keys, recipient)
            notes.append("inline PGP: only the text body was protected, headers and other parts were not")
            content, plain = self._inline_content(headers, text, part.get_content_charset()), text
        decoded = self._result(msg, content, report, targets, protected, notes, keys)
        return dataclasses.replace(decoded, text=plain) if plain is not None else decoded

    def _result(self, msg: email.message.Message | None, content: bytes, report: SignatureReport,
                targets: tuple[str, ...], protected: bool, notes: list[str], keys: OpenPgpKeyring) -> DecodedMessage:
        notes.insert(0, f"signature: {report.status.value}" + (f" by key {report.fingerprint}" if report.fingerprint
                                                                 else ""))
        authenticated = report.status is SignatureStatus.VALID
        sender = report.uid if authenticated else None
        if msg is not None:
            address = email.utils.parseaddr(str(msg.get("From", "")))[1].lower()
            if not authenticated:
                sender = address or None
                notes.append("the sender is NOT authenticated: the From header is unverified")
            elif address and report.fingerprint:
                uids = " ".join(keys.uids_of(report.fingerprint)).lower()
                if f"<{address}>" not in uids and address != uids:
                    notes.append("the From address is not a uid of the signing key")
        return DecodedMessage(codec=NAME, content=content, sender=sender, recipients=targets,
                              sender_authenticated=authenticated, notes=tuple(notes), signature=report.status,
                              signer_fingerprint=report.fingerprint, integrity_protected=protected)

    @staticmethod
    def _inline_content(headers: list[tuple[str, str]], text: bytes, charset: str | None) -> bytes:
        declared = charset if charset and charset.lower() not in ("us-ascii", "ascii") else "utf-8"
        part = binary_part(text, "text/plain", charset=declared)
        return _header_block(headers + [("MIME-Version", "1.0")]) + to_bytes(part)

    @staticmethod
    def _encrypted_payload(msg: email.message.Message) -> bytes:
        parts = subparts(msg)
        if len(parts) != 2:
            raise MalformedPayload("multipart/encrypted must have exactly 2 parts (RFC 3156 section 4)")
        control, data = parts
        if control.get_content_type() != ENCRYPTED_PROTOCOL or b"Version: 1" not in leaf_payload(control):
            raise MalformedPayload("first part of multipart/encrypted is not 'application/pgp-encrypted' Version: 1")
        if data.get_content_type() != "application/octet-stream":
            raise MalformedPayload("second part of multipart/encrypted is not application/octet-stream")
        return leaf_payload(data)

    def _decrypt(self, data: bytes, keys: OpenPgpKeyring,
                 recipient: str | None) -> tuple[bytes, SignatureReport, tuple[str, ...], bool]:
        if BEGIN_MESSAGE not in data or END_MESSAGE not in data:
            raise MalformedPayload("OpenPGP armor begin or end line missing")
        result = keys.gpg.decrypt(data, passphrase=keys.passphrase(), always_trust=True)
        status = result.stderr or ""
        targets = tuple(sorted({line.split()[2] for line in status.splitlines()
                                if line.startswith("[GNUPG:] ENC_TO ") and len(line.split()) > 2}))
        if not result.ok:
            if _passphrase_problem(status):
                raise LegacyKeyError("the secret key's passphrase is missing or wrong")
            if "NO_SECKEY" in status and "DECRYPTION_OKAY" not in status:
                raise NotForRecipient(f"not encrypted to a key of our keyring ({len(targets)} recipient key(s))")
            if "NODATA" in status or "no valid OpenPGP data" in status:
                raise MalformedPayload("not a valid OpenPGP message")
            raise DecryptionFailed(f"gpg could not decrypt the message ({result.status or 'unknown error'})")
        if "BADMDC" in status or not _integrity(status):
            raise DecryptionFailed("the OpenPGP message has no valid integrity protection (MDC/AEAD): refused")
        if recipient:
            ours = keys.key_ids(keys.secret_key(recipient))
            if targets and not {t.upper() for t in targets} & ours:
                raise NotForRecipient("the message is not encrypted to the key we were asked to use")
        return bytes(result.data), parse_signature(status), targets, True

    def _verify_signed(self, raw: bytes, msg: email.message.Message,
                       keys: OpenPgpKeyring) -> tuple[bytes, SignatureReport]:
        if param_text(msg, "protocol").lower() != SIGNATURE_PROTOCOL:
            raise MalformedPayload("multipart/signed with a protocol other than application/pgp-signature")
        boundary = msg.get_boundary()
        if not boundary:
            raise MalformedPayload("multipart/signed without a boundary")
        parts = raw_multipart_parts(raw_body(raw), boundary)
        if len(parts) != 2:
            raise MalformedPayload(f"multipart/signed must have exactly 2 parts (found {len(parts)})")
        signed, signature_part = parts
        signature = as_message(signature_part)
        if signature.get_content_type() != SIGNATURE_PROTOCOL:
            raise MalformedPayload("second part of multipart/signed is not application/pgp-signature")
        canonical = to_crlf(signed)
        with tempfile.TemporaryDirectory(prefix="msgw-sig-") as folder:
            path = Path(folder) / "signature.asc"
            path.write_bytes(leaf_payload(signature))
            result = keys.gpg.verify_data(str(path), canonical)
        return canonical, parse_signature(result.stderr or "")


CODEC = OpenPgpCodec()
