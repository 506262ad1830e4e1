"""Codec `apicrypt1`: the Apicrypt v1 text armor over the key-file XOR stream cipher.

The format is implemented from a PUBLIC REVERSE-ENGINEERING DESCRIPTION of the vendor's 2005
Linux encoder (../shared/specs/apicrypt-v1.md); it is NOT certified against the vendor's
software. It is WEAK cryptography: XOR with key material shared by every correspondent of a
user, no integrity (the checksum is not a MAC) and NO AUTHENTICATION of the sender: anyone
holding the year's master key and a user's key file (i.e. all of that user's correspondents)
can write in that user's name. The bridge uses it only for correspondents who cannot read
S/MIME, and every decode says so in its notes.

Constants and the armor live in `apicrypt1_format` (one place); key files in `keystore`.
Our encoder, unlike the public one, advances and persists indexCurrent (see keystore).
"""

from __future__ import annotations

import datetime
import email.message
import email.utils
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.header import Header
from pathlib import Path
from typing import Any

from gateway.legacy import prescan
from gateway.legacy.apicrypt1_format import (
    ATTACHMENT_LABEL,
    ATTACHMENT_SEPARATOR,
    BEGIN_MARKER,
    DEFAULT_TEXT_CHARSET,
    DEST_BEGIN,
    DEST_END,
    DEST_SEPARATOR,
    DEST_TERMINATOR,
    HEADER_SIZE,
    STATEMENT_PREFIX,
    TEXT_HEADER_BEGIN,
    TEXT_HEADER_END,
    TEXT_HEADER_LABELS,
    UTF8_BOM,
    KeyHeader,
    armor,
    dearmor,
    starts_armor,
    valid_user,
    xor,
)
from gateway.legacy.codec import (
    CodecOption,
    DecodedAttachment,
    DecodedMessage,
    EncodedFile,
    MessageInput,
    SignatureStatus,
    as_message,
)
from gateway.legacy.errors import DecryptionFailed, MalformedPayload, NotForRecipient
from gateway.legacy.keystore import ApicryptKeyStore, Reservation
from gateway.legacy.mimeutil import (
    assemble,
    binary_part,
    header_text,
    is_attachment,
    leaf_payload,
    neutral_name,
    outer_headers,
    part_filename,
    raw_header_fields,
    raw_text,
    safe_filename,
    subparts,
    text_part,
)

NAME = "apicrypt1"
#: What `starts_armor` compares a leaf's first bytes with (Latin-1: one byte a character).
BEGIN_MARKER_BYTES = BEGIN_MARKER.encode("latin-1")
NOTES = (
    "apicrypt1 authenticates nothing: the sender name is read from a key-file header that any holder of the "
    "master key and that user's key file can write",
    "apicrypt1 has no integrity protection: the checksum is not a MAC and the XOR ciphertext is malleable",
    "apicrypt1 is implemented from a public reverse-engineering description, not certified against the vendor",
)


@dataclass(frozen=True)
class Plaintext:
    """One decrypted armor: who the header names, the year, the text and the recipient list."""

    sender: str
    year: int
    text: bytes
    recipients: tuple[str, ...]


@dataclass(frozen=True)
class EncodeResult:
    """An encoded message and the key stream it consumed (for the audit trail: wraps)."""

    message: bytes
    reservations: tuple[Reservation, ...]

    @property
    def wrapped(self) -> tuple[str, ...]:
        """`user.year` of each key file whose stream wrapped to offset 0 (key material reused)."""
        return tuple(f"{r.user}.{r.year}" for r in self.reservations if r.wrapped)


def _check_names(sender: str, recipients: Sequence[str]) -> None:
    if not valid_user(sender):
        raise MalformedPayload("sender is not a valid Apicrypt user name")
    if not recipients:
        raise MalformedPayload("no recipients")
    for index, name in enumerate(recipients, 1):
        if not valid_user(name):
            raise MalformedPayload(f"recipient {index} is not a valid Apicrypt user name")


def encrypt(text: bytes, sender: str, recipients: Sequence[str], keys: ApicryptKeyStore,
            year: int) -> tuple[bytes, tuple[Reservation, Reservation]]:
    """`outer` bytes for `text` (spec steps 1-3) and the two key-stream reservations used."""
    _check_names(sender, recipients)
    names = DEST_SEPARATOR.join(r.encode("ascii") for r in recipients)
    payload = text + DEST_BEGIN + names + DEST_TERMINATOR + DEST_END
    master = keys.reserve_master(year, len(payload))
    inner = master.sent_header.raw + xor(payload, master.stream)
    user = keys.reserve(sender, year, len(inner))
    return user.sent_header.raw + xor(inner, user.stream), (master, user)


def decrypt(outer: bytes, keys: ApicryptKeyStore) -> Plaintext:
    """Reverse `encrypt`: sender header -> sender key file -> master header -> master key -> trailer."""
    if len(outer) < 2 * HEADER_SIZE:
        raise MalformedPayload(f"decoded armor is {len(outer)} bytes, shorter than the two {HEADER_SIZE}-byte "
                               "key headers")
    header = KeyHeader(outer[:HEADER_SIZE])
    problems = header.problems()
    if problems:
        raise MalformedPayload("sender key header: " + "; ".join(problems))
    sender = header.user
    if not valid_user(sender):
        raise MalformedPayload("sender key header: user name is not a valid Apicrypt user name")
    year = header.year
    key = keys.load(sender, year)
    if key.header.index_max != header.index_max:
        raise DecryptionFailed(f"the key file of {sender} for {year} is not the one this message was encrypted "
                               f"with (indexMax {key.header.index_max}, message says {header.index_max})")
    body = outer[HEADER_SIZE:]
    inner = xor(body, key.stream(header.index_current, len(body)))
    master = keys.master(year)
    inner_header = KeyHeader(inner[:HEADER_SIZE])
    if (inner_header.problems() or inner_header.year != year or inner_header.index_max != master.header.index_max
            or inner_header.raw[44:88] != master.header.raw[44:88]):
        raise DecryptionFailed(f"the key file of {sender} for {year} does not decrypt this message "
                               "(inner master header invalid: wrong key file or altered message)")
    sealed = inner[HEADER_SIZE:]
    payload = xor(sealed, master.stream(inner_header.index_current, len(sealed)))
    start = payload.rfind(DEST_BEGIN)
    if start < 0 or not payload.endswith(DEST_END):
        raise DecryptionFailed(f"the master key of {year} does not decrypt this message (recipient list missing)")
    names = payload[start + len(DEST_BEGIN):len(payload) - len(DEST_END)]
    if not names.endswith(DEST_TERMINATOR) or names == DEST_TERMINATOR:
        raise MalformedPayload("recipient list does not end with ',,' or is empty")
    recipients = []
    for index, raw in enumerate(names[:-len(DEST_TERMINATOR)].split(DEST_SEPARATOR), 1):
        name = raw.decode("ascii", "replace")
        if not valid_user(name):
            raise MalformedPayload(f"recipient list: entry {index} is not a valid Apicrypt user name")
        recipients.append(name)
    return Plaintext(sender=sender, year=year, text=payload[:start], recipients=tuple(recipients))


def text_charset(text: bytes, declared: str | None = None) -> str:
    """Spec: ISO-8859-1 unless UTF-8 with a BOM or declared otherwise (by the caller)."""
    if text.startswith(UTF8_BOM):
        return "utf-8"
    return declared or DEFAULT_TEXT_CHARSET


def to_legacy_text(data: bytes, charset: str | None) -> bytes:
    """Body bytes as legacy clients read them: ISO-8859-1 when possible, else UTF-8 with a BOM.

    US-ASCII / ISO-8859-1 / undeclared bodies are kept byte for byte.
    """
    name = (charset or "").lower()
    if name in ("", "us-ascii", "ascii", "iso-8859-1", "latin-1", "latin1"):
        return data
    try:
        decoded = data.decode(name)
    except (LookupError, UnicodeDecodeError):
        return data
    try:
        return decoded.encode("iso-8859-1")
    except UnicodeEncodeError:
        return UTF8_BOM + decoded.encode("utf-8")


def _leaves(message: email.message.Message) -> tuple[email.message.Message | None, list[email.message.Message]]:
    """The body text/plain leaf and the other leaves (text/html alternatives of the body dropped)."""
    body: email.message.Message | None = None
    others: list[email.message.Message] = []
    alternatives: list[email.message.Message] = []

    def visit(part: email.message.Message, in_alternative: bool) -> None:
        nonlocal body
        kind = part.get_content_type()
        if part.is_multipart() and kind != "message/rfc822":
            for sub in subparts(part):
                visit(sub, kind == "multipart/alternative")
            return
        attachment = is_attachment(part)
        if body is None and kind == "text/plain" and not attachment:
            body = part
        elif in_alternative and not attachment and kind.startswith("text/"):
            alternatives.append(part)
        else:
            others.append(part)

    visit(message, False)
    if body is None:
        others = alternatives + others
    return body, others


@dataclass(frozen=True)
class TextHeader:
    """What our text header at the top of a decrypted text said: the real Subject and the real
    name of each attachment (keyed by the neutral name its MIME part shows outside the armor)."""

    subject: str | None
    names: dict[str, str]


def write_text_header(mime: bytes, names: Sequence[tuple[str, str]]) -> str:
    """The original header the bridge puts at the top of the text (see apicrypt1_format)."""
    fields = raw_header_fields(mime)
    labels = dict(TEXT_HEADER_LABELS)
    lines = [TEXT_HEADER_BEGIN]
    for key, label in TEXT_HEADER_LABELS:
        lines += [f"{label}: {header_text(raw.split(b':', 1)[1])}" for name, raw in fields if name == key]
    lines += [f"{ATTACHMENT_LABEL}: {neutral}{ATTACHMENT_SEPARATOR}{real}" for neutral, real in names]
    for name, raw in fields:
        if name.startswith(STATEMENT_PREFIX) and name not in labels:
            head, _, value = raw.partition(b":")
            lines.append(f"{header_text(head)}: {header_text(value)}")
    lines += [TEXT_HEADER_END, ""]
    return "\r\n".join(lines) + "\r\n"


def with_text_header(text: bytes, header: str) -> bytes:
    """`header` before legacy text bytes, in the text's own encoding (UTF-8 after a BOM, else
    ISO-8859-1; a character it lacks becomes '?', the text itself is never re-encoded)."""
    if text.startswith(UTF8_BOM):
        return UTF8_BOM + header.encode("utf-8") + text[len(UTF8_BOM):]
    return header.encode("iso-8859-1", "replace") + text


def read_text_header(text: bytes) -> tuple[bytes, TextHeader | None]:
    """(text without our header, what it said) when the text starts with our header, else (text, None).
    Only the Subject and the attachment names are taken from it: nothing else of a text that any
    key holder can write becomes a header of ours."""
    bom = UTF8_BOM if text.startswith(UTF8_BOM) else b""
    encoding = "utf-8" if bom else "iso-8859-1"
    begin = (TEXT_HEADER_BEGIN + "\r\n").encode("ascii")
    end = ("\r\n" + TEXT_HEADER_END + "\r\n\r\n").encode("ascii")
    body = text[len(bom):]
    stop = body.find(end)
    if not body.startswith(begin) or stop < 0:
        return text, None
    lines = body[len(begin):stop].decode(encoding, "replace").split("\r\n")
    subject_label = dict(TEXT_HEADER_LABELS)["subject"] + ": "
    subject = next((line[len(subject_label):] for line in lines if line.startswith(subject_label)), None)
    names = {}
    for line in lines:
        if line.startswith(ATTACHMENT_LABEL + ": ") and ATTACHMENT_SEPARATOR in line:
            neutral, _, real = line[len(ATTACHMENT_LABEL) + 2:].partition(ATTACHMENT_SEPARATOR)
            names[neutral] = real
    return bom + body[stop + len(end):], TextHeader(subject, names)


class Apicrypt1Codec:
    """The `apicrypt1` LegacyCodec (keys: an ApicryptKeyStore)."""

    name = NAME
    display_name = "Apicrypt"
    config_fields: tuple[CodecOption, ...] = ()
    keys_option = "keys"
    keys_help = "apicrypt1 key folder (files <user>.<YY>, Master.<YY>; mode 0600)"
    encode_options = (CodecOption("year", "int", "apicrypt1: key year (default: the current year)"),
                      CodecOption("raw", "bool", "apicrypt1: input is bare text, output a bare armor"))

    def __init__(self, *, clock: datetime.datetime | None = None) -> None:
        self._clock = clock

    def _year(self) -> int:
        return (self._clock or datetime.datetime.now(datetime.UTC)).year

    def open_keys(self, keys_path: str | Path, identity: str | None, options: Mapping[str, Any]) -> ApicryptKeyStore:
        return ApicryptKeyStore(keys_path, identities=[identity] if identity else ())

    def encode_file(self, data: bytes, sender: str, recipients: Sequence[str], keys: ApicryptKeyStore,
                    options: Mapping[str, Any]) -> EncodedFile:
        """A MIME message (or, with ``raw``, bare text into a bare armor); warns when a key stream wrapped."""
        encode = self.encode_text if options.get("raw") else self.encode_with_report
        result = encode(data, sender, recipients, keys, year=options.get("year"))
        return EncodedFile(result.message, tuple(f"the key stream of {name} wrapped (key material reused)"
                                                 for name in result.wrapped))

    def rules_out(self, raw: bytes) -> bool:
        """Cheap proof that `detect(raw)` is False (no begin marker where a leaf could hold it),
        asked by `detect_codec` before the parse `detect` walks."""
        return prescan.rules_out(raw, (BEGIN_MARKER_BYTES,))

    def detect(self, message: MessageInput) -> bool:
        """The spec's rule (a text/plain part starting with #BINASCII1# and ending with #ENDBINASCII1#),
        relaxed to "starts with": a truncated armor must be reported as such, not passed on as plain text."""
        if isinstance(message, bytes) and starts_armor(message):
            return True
        msg = as_message(message)
        for part in msg.walk():
            if part.get_content_type() == "text/plain" and not part.is_multipart() and starts_armor(leaf_payload(part)):
                return True
        return False

    def decode(self, message: MessageInput, keys: ApicryptKeyStore, *, recipient: str | None = None,
               declared_charset: str | None = None) -> DecodedMessage:
        """Decode every armored part; `recipient` (or keys.identities) must be among the recipients."""
        if isinstance(message, bytes) and starts_armor(message):
            msg = None
            parts: list[tuple[email.message.Message | None, bytes]] = [(None, message)]
        else:
            msg = as_message(message)
            parts = [(p, leaf_payload(p)) for p in msg.walk() if not p.is_multipart()]
        body: Plaintext | None = None
        attachments: list[DecodedAttachment] = []
        senders: list[tuple[int, Plaintext]] = []
        notes = list(NOTES)
        for index, (part, data) in enumerate(parts):
            if not starts_armor(data):
                notes.append(f"part {index + 1} was not encrypted by the sender and was left out")
                continue
            plain = decrypt(dearmor(data), keys)
            if body is None and not (part is not None and is_attachment(part)):
                body = plain
                continue
            senders.append((index + 1, plain))
            name = part_filename(part, index + 1) if part is not None else f"part-{index + 1}.bin"
            attachments.append(DecodedAttachment(name, plain.text))
        if body is None:
            raise MalformedPayload("no apicrypt1 armor in the text body")
        for number, plain in senders:
            if plain.sender != body.sender:
                raise MalformedPayload(f"armor of part {number} names another sender than the body")
            if set(plain.recipients) != set(body.recipients):
                notes.append(f"part {number} lists other recipients than the body")
        wanted = (recipient,) if recipient else keys.identities
        if wanted and not set(wanted) & set(body.recipients):
            raise NotForRecipient(f"the message names {len(body.recipients)} recipient(s), not the identity "
                                  "we act for")
        if msg is not None:
            local = (email.utils.parseaddr(str(msg.get("From", "")))[1].partition("@")[0]).lower()
            if local and local != body.sender.lower():
                notes.append("the From address differs from the sender named in the key header")
        text, original = read_text_header(body.text)
        headers = outer_headers(msg) if msg is not None else []
        if original is not None:
            notes.append("the text began with the original header a bridge writes: its Subject and attachment "
                         "names were restored (as unauthenticated as the rest)")
            attachments = [DecodedAttachment(safe_filename(original.names.get(a.filename, a.filename), n),
                                             a.data, a.content_type) for n, a in enumerate(attachments, 2)]
            if original.subject is not None:
                headers = [(k, v) for k, v in headers if k.lower() != "subject"]
                subject = raw_text(original.subject)  # written by any key holder: one line, no break
                if not subject.isascii():
                    subject = Header(subject, "utf-8").encode(maxlinelen=0)
                headers.append(("Subject", subject))
        charset = text_charset(text, declared_charset)
        shown = text[len(UTF8_BOM):] if text.startswith(UTF8_BOM) else text
        leaves = [binary_part(shown, "text/plain", charset=charset)]
        leaves += [binary_part(a.data, a.content_type, filename=a.filename, disposition="attachment")
                   for a in attachments]
        content = assemble(headers, leaves if attachments else leaves[0])
        return DecodedMessage(codec=NAME, content=content, sender=body.sender, recipients=body.recipients,
                              sender_authenticated=False, notes=tuple(notes),
                              signature=SignatureStatus.NOT_SUPPORTED, integrity_protected=False,
                              text=text, text_charset=charset, attachments=tuple(attachments))

    def encode(self, mime: bytes, sender: str, recipients: Sequence[str], keys: ApicryptKeyStore, *,
               year: int | None = None, protect_headers: bool = False) -> bytes:
        return self.encode_with_report(mime, sender, recipients, keys, year=year,
                                       protect_headers=protect_headers).message

    def encode_with_report(self, mime: bytes, sender: str, recipients: Sequence[str], keys: ApicryptKeyStore, *,
                           year: int | None = None, protect_headers: bool = False) -> EncodeResult:
        """Body text in one armor, each attachment in its own armor (file name kept in the MIME part).

        `protect_headers` (the bridge): the original header (From, To, Date, the real Subject, the
        real attachment names, the gateway's statements) goes at the top of the armored text, and
        the attachment parts outside the armor get neutral names; the caller trims the outer
        headers. The armor cannot carry anything else (Message-ID, threading, X-*)."""
        _check_names(sender, recipients)
        when = year or self._year()
        msg = as_message(mime)
        body, others = _leaves(msg)
        text = to_legacy_text(leaf_payload(body), body.get_content_charset()) if body is not None else b""
        names = [(part_filename(part, index), part_filename(part, index)) for index, part in enumerate(others, 2)]
        if protect_headers:
            names = [(neutral_name(real, index), real) for index, (_, real) in enumerate(names, 2)]
            text = with_text_header(text, write_text_header(mime, names))
        used: list[Reservation] = []
        outer, reserved = encrypt(text, sender, recipients, keys, when)
        used += reserved
        parts = [text_part(armor(outer))]
        for part, (shown, _) in zip(others, names, strict=True):
            data = part.as_bytes() if part.get_content_type() == "message/rfc822" else leaf_payload(part)
            outer, reserved = encrypt(data, sender, recipients, keys, when)
            used += reserved
            parts.append(text_part(armor(outer), filename=shown, disposition="attachment"))
        message = assemble(outer_headers(msg), parts if len(parts) > 1 else parts[0])
        return EncodeResult(message=message, reservations=tuple(used))

    def encode_text(self, text: bytes, sender: str, recipients: Sequence[str], keys: ApicryptKeyStore, *,
                    year: int | None = None) -> EncodeResult:
        """Bare armor (no MIME) of raw text bytes, as the vendor's command-line encoder produces."""
        outer, reserved = encrypt(text, sender, recipients, keys, year or self._year())
        return EncodeResult(message=armor(outer).encode("ascii"), reservations=reserved)


CODEC = Apicrypt1Codec()
