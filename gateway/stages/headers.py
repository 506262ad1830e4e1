"""The stages' own header edits: our `X-Msgw-*` statements (stripped from whatever arrives,
written by us only), and the outer header block of a message that is already protected
(client-encrypted, legacy armor) cut down to the allow-list.

The allow-list itself and the protected headers inside an envelope are defined once, in
`gateway.smime.headers` (S/MIME protection uses them without importing the stages).
"""

from __future__ import annotations

import email
import email.policy

from gateway.legacy.mimeutil import structure_only
from gateway.rawmime import Raw, header_block, raw_data, raw_split_view
from gateway.smime.headers import (
    OUR_PREFIX,
    allowed_outer_fields,
    header_field,
    is_seven_bit,
    name_of,
    split_raw,  # noqa: F401 - the stages' name for it (tests compare it with the other readers')
)

VERIFICATION_HEADER = "X-Msgw-Verification"
BRIDGE_HEADER = "X-Msgw-Bridged"
#: The envelope's own fields that describe it (not its content) and stay outside with it.
ENVELOPE_FIELDS = ("mime-version", "content-type", "content-transfer-encoding", "content-disposition")


def strip_headers(message: Raw) -> bytes:
    """The message without any of our own `X-Msgw-*` fields (by prefix: no forged one survives);
    the very same bytes object when there is none (so a view of it stays valid). A large
    message's body is not copied to find out (`raw_split_view`), and copied once if there is."""
    fields, body = raw_split_view(message)
    kept = [f for f in fields if not name_of(f).startswith(OUR_PREFIX)]
    if len(kept) == len(fields):
        return raw_data(message)
    return b"".join([*kept, b"\r\n", body])  # = join_raw(kept, body), the body copied once


def prepend_header(message: bytes, name: str, value: str) -> bytes:
    return header_field(name, value) + message


def restrict_outer(message: Raw, *, neutral_subject: str, original: Raw | None = None,
                   envelope_name: str | None = None) -> bytes:
    """An already-protected message (client-encrypted, legacy armor) with its header block cut
    down to the allow-list; its own MIME-Version and Content-* stay, reduced to their structure
    (type, structural parameters, 7-bit), its body untouched. `original`: the message it was made
    from, whose raw headers the allow-list is taken from (an encoder may have re-serialised them).
    `envelope_name`: the one name the envelope shows (`smime.p7m`), whatever its client named it;
    without it, names are kept as the encoder wrote them (neutral)."""
    fields, body = raw_split_view(message)
    envelope = _envelope_fields([f for f in fields if name_of(f) in ENVELOPE_FIELDS], envelope_name)
    outer = allowed_outer_fields(header_block(message if original is None else original),
                                 neutral_subject=neutral_subject)
    return b"".join([*outer, *envelope, b"\r\n", body])  # = join_raw(outer + envelope, body), one copy


def _envelope_fields(fields: list[bytes], name: str | None) -> list[bytes]:
    """MIME-Version and Content-* of an envelope: Content-Type and Content-Disposition rebuilt from
    their parsed values (`structure_only`: a client's own name for the envelope or any other
    parameter can name the document); fields that are not 7-bit are left out."""
    msg = email.message_from_bytes(b"".join(fields) + b"\r\n", policy=email.policy.compat32)
    structure_only(msg, rename=(lambda real: real) if name is None else (lambda real: name), fields=False)
    rebuilt = [header_field(key, str(value)) for key, value in msg.items()]
    return [f for f in rebuilt if is_seven_bit(f)]


