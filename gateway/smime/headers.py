"""Header protection (RFC 7508 style, as Thunderbird and mutt read it): the one definition of
what a protected copy shows outside its envelope, and of the protected headers inside.

Byte-level: Python's `email` refolds and re-encodes headers when it serialises, which breaks
signatures and changes what the recipient sees; these helpers slice the raw header block.

Outside an envelope (S/MIME, the client-encrypted pass-through, legacy copies) only an
allow-list shows: From, To, Cc and Date rebuilt from their parsed values (7-bit, no comment), a
fresh random Message-ID, the neutral Subject, and `Disposition-Notification-To` reduced to
addresses when the original asked for an MDN; the envelope adds its own MIME-Version and
Content-* (reduced to its structure).
Everything else (Message-ID, threading, X-*, Comments, raw 8-bit fields...) exists only
inside, where *every* original header is copied onto the root entity of the cryptographic
payload as protected headers (`protected-headers="v1"`), so the reader's client still shows
the real Subject and threads the conversation.

Pure, no I/O; imports nothing of the gateway outside `gateway.smime` (`protect.py` and the
stages use it).
"""

from __future__ import annotations

import email.errors
import email.header
import email.utils
import functools
import re
import secrets
from email.header import Header

from gateway.rawmime import FIELD_START, Raw, header_text, raw_split, raw_text, split_raw
from gateway.rawmime import field_name as name_of
from gateway.rawmime import join_raw as join_raw  # re-exported: the stages import it from here
from gateway.smime.datefield import outer_date

#: Headers only this gateway may write: every `X-Msgw-*` field (the verdict, the bridge's
#: provenance, the displaced `X-Msgw-Outer-*` fields) is stripped from anything arriving.
OUR_PREFIX = "x-msgw-"
#: Original fields kept outside an envelope (made 7-bit); the rest of the list is written fresh.
OUTER_KEPT = ("from", "to", "cc", "date")
#: Never copied anywhere, not even inside: every recipient would see who else got a blind copy.
NEVER_COPIED = ("bcc", "resent-bcc")
MAX_LINE = 998  # RFC 5322 2.1.1, without the CRLF

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
#: One mailbox in its plain forms (`addr`, `<addr>`, `Atom Words <addr>`, `"quoted" <addr>`, no
#: comment, no escape, dot-atom parts): what almost every From/To is. `email.utils.getaddresses`
#: spends ~0.1 ms of the event loop on each; this match gives the very same pair
#: (`tests/smime/test_header_addresses.py` compares them on generated and hand-picked values).
#: Every other form goes to getaddresses as before.
_SIMPLE_MAILBOX = re.compile(
    rf'(?:(?:(?P<phrase>{_ATEXT}+(?: {_ATEXT}+)*) |"(?P<quoted>[^"\\]*)" ?)?<(?P<angle>{_DOT_ATOM}@{_DOT_ATOM})>'
    rf'|(?P<bare>{_DOT_ATOM}@{_DOT_ATOM}))')



def header_field(name: str, value: str) -> bytes:
    """A folded, 7-bit header field (RFC 2047 when the value is not ASCII)."""
    try:
        value.encode("ascii")
        text = value
    except UnicodeEncodeError:
        text = Header(value, "utf-8").encode(linesep="\r\n")
    # Only the folding we put in ourselves (CRLF + space) survives; any other line break is flattened.
    safe = text.replace("\r\n ", "\0").replace("\r", " ").replace("\n", " ").replace("\0", "\r\n ")
    return f"{name}: {safe}\r\n".encode("ascii")

@functools.lru_cache(maxsize=16)
def subject_field(neutral_subject: str) -> bytes:
    """`header_field("Subject", neutral_subject)`, made once per configured subject: the same for
    every protected copy of a policy, and its RFC 2047 encoding (the default subject is not ASCII)
    cost ~110 µs, half of the outer header block (issue 15). Only the configured neutral subjects
    pass here, never a message's own (bounded anyway)."""
    return header_field("Subject", neutral_subject)

def is_seven_bit(field: bytes) -> bool:
    return field.isascii() and all(len(line) <= MAX_LINE for line in field.split(b"\r\n"))

def folded_field(name: str, value: str) -> bytes:
    """A 7-bit field folded under 78 columns: RFC 2047 words when the value is not ASCII or
    has a token too long to fold (a 2,000-character References without spaces)."""
    try:
        value.encode("ascii")
        charset = "us-ascii"
    except UnicodeEncodeError:
        charset = "utf-8"
    out = Header(value, charset, header_name=name).encode(linesep="\r\n")
    if charset == "us-ascii" and any(len(line) > MAX_LINE - len(name) - 2 for line in out.split("\r\n")):
        out = Header(value, "utf-8", header_name=name).encode(linesep="\r\n")
    return f"{name}: {out}\r\n".encode("ascii")

def seven_bit_field(field: bytes) -> bytes | None:
    """The field as it is when 7-bit with short lines; else re-encoded (RFC 2047); None when the
    field has no valid name (it cannot be copied faithfully)."""
    if not FIELD_START.match(field):
        return None
    if is_seven_bit(field):
        return field
    name, _, value = field.partition(b":")
    return folded_field(name.decode("ascii"), raw_text(value))

def addresses(field: bytes) -> list[tuple[str, str]]:
    """(display name, ASCII address) pairs of an address field; non-ASCII addresses are left out
    (they cannot travel 7-bit outside; the original field is inside). The addresses are parsed
    from the raw value and only then the names decoded (RFC 2047 6.1): a word that decodes to
    `<someone@else>` or a comma stays part of a name, never becomes an address."""
    value = raw_text(field.partition(b":")[2])
    simple = _SIMPLE_MAILBOX.fullmatch(value)
    pairs = ([(simple["phrase"] or simple["quoted"] or "", simple["angle"] or simple["bare"])] if simple
             else email.utils.getaddresses([value]))
    return [(header_text(name), addr) for name, addr in pairs
            if addr and addr.isascii() and "@" in addr and not re.search(r"[\s<>,;\"]", addr)]

def address_field(name: str, pairs: list[tuple[str, str]], *, names: bool = True) -> bytes | None:
    if not pairs:
        return None
    parts = []
    for display, addr in pairs:
        if names and display:
            parts.append(email.utils.formataddr((display, addr), charset="utf-8"))
        else:
            parts.append(f"<{addr}>")
    return f"{name}: ".encode() + ",\r\n ".join(parts).encode("ascii") + b"\r\n"

def _outer_field(field: bytes) -> bytes | None:
    """An original From/To/Cc/Date as it may leave, always rebuilt from its parsed value: a
    comment (`Date: ... (Resultat DUPONT Jean)`) or a group name is free text and stays inside.
    Address fields keep display name and address (RFC 2047 when needed); an unparseable Date
    becomes the current time."""
    name = name_of(field)
    label = {"from": "From", "to": "To", "cc": "Cc", "date": "Date"}[name]
    if name == "date":
        when = outer_date(field.partition(b":")[2])
        return f"Date: {when or email.utils.formatdate(usegmt=True)}\r\n".encode("ascii")
    return address_field(label, addresses(field))



def fresh_message_id(fields: list[bytes]) -> str:
    """A random Message-ID (nothing of the original one), in the From domain when it is ASCII."""
    domain = "msgw.invalid"
    for f in fields:
        if name_of(f) == "from":
            found = addresses(f)
            if found:
                domain = found[0][1].rpartition("@")[2] or domain
            break
    return f"<{secrets.token_hex(16)}@{domain}>"

def allowed_outer_fields(message: Raw, *, neutral_subject: str) -> list[bytes]:
    """The header fields a protected copy of `message` shows outside its envelope (without the
    envelope's MIME-Version and Content-*): the one allow-list of every protected form."""
    fields = raw_split(message)[0]  # the body's copy not kept
    out = [kept for f in fields if name_of(f) in OUTER_KEPT and (kept := _outer_field(f)) is not None]
    out.append(f"Message-ID: {fresh_message_id(fields)}\r\n".encode("ascii"))
    out.append(subject_field(neutral_subject))
    mdn = [pair for f in fields if name_of(f) == "disposition-notification-to" for pair in addresses(f)]
    dnt = address_field("Disposition-Notification-To", mdn, names=False)
    if dnt is not None:
        out.append(dnt)
    return out

def protected_entity(message: Raw, entity: bytes) -> bytes:
    """Copy every original header of the message onto the root entity of the crypto payload
    (protected headers), 7-bit; its own Content-* and MIME-Version are already the entity's."""
    fields = raw_split(message)[0]  # the body's copy not kept
    copies = []
    for f in fields:
        name = name_of(f)
        if name.startswith("content-") or name == "mime-version" or name in NEVER_COPIED:
            continue
        safe = seven_bit_field(f)
        if safe is not None:
            copies.append(safe)
    # Only the entity's header block is split; its body goes into the result as a view (one copy
    # of a large entity, where split_raw's body slice and join_raw's + made three).
    end = entity.find(b"\r\n\r\n")
    efields, ebody = split_raw(entity if end < 0 else entity[:end + 4])
    body = ebody if end < 0 else memoryview(entity)[end + 4:]
    out = []
    for f in efields:
        if name_of(f) == "content-type" and b"protected-headers" not in f.lower():
            f = f.rstrip(b"\r\n") + b';\r\n protected-headers="v1"\r\n'
        out.append(f)
    return b"".join([*out, *copies, b"\r\n", body])  # = join_raw(out + copies, body)
