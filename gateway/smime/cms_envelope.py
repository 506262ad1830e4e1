"""Build CMS EnvelopedData and AuthEnvelopedData (RFC 5652, RFC 5083) to many recipients.

Hand-built on cryptography primitives because `cryptography`'s PKCS7EnvelopeBuilder only does
RSA PKCS#1 v1.5 + AES-CBC to issuer+serial recipients: it has no RSA-OAEP, no AES-GCM
AuthEnvelopedData and no subjectKeyIdentifier recipients. One builder for every profile keeps
the default (PKCS#1 v1.5 + AES-256-CBC + issuer+serial, the only one OpenSSL, gpgsm 2.2 and
most clients all read) and the options on the same path.

Each recipient's public key and RecipientInfo prefix come from a template cached per
certificate (`cms_template.recipient_template`): per message only the CEK, the IV, the
encrypted keys and the ciphertext are new. `cms_reference.encrypt_content_reference` builds
the same structure wholly with asn1crypto: the tests compare both byte for byte.

`encrypt_content_pieces` gives the same DER as pieces (the header, the ciphertext a megabyte at a
time as it is encrypted, the trailer), so that a large message's S/MIME copy can be base64-encoded
as it is encrypted: its whole ciphertext and DER never exist as two more copies of the message.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives.ciphers import AEADEncryptionContext, Cipher, CipherContext, algorithms, modes

from gateway.rawmime import Pieces
from gateway.smime.cms_template import (
    CBC_IV_SIZE,
    GCM_NONCE_SIZE,
    GCMParameters,
    RecipientTemplate,
    cbc_content_head,
    check_encryption_usage,
    envelope_head,
    gcm_content_head,
    oaep_sha256_algorithm,
    recipient_template,
)
from gateway.smime.errors import UnsupportedAlgorithm

CipherName = Literal["aes256-cbc", "aes256-gcm"]
KeyTransport = Literal["pkcs1v15", "oaep"]
RecipientId = Literal["issuer-serial", "ski"]
#: Where the CEK and IV come from: os.urandom; tests inject a fixed source to compare outputs.
RandomSource = Callable[[int], bytes]

__all__ = ["CipherName", "GCMParameters", "KeyTransport", "RandomSource", "RecipientId", "check_encryption_usage",
           "encrypt_content", "encrypt_content_pieces", "encrypt_content_sized",
           "oaep_sha256_algorithm"]

#: Plaintext encrypted per piece: a multiple of the AES block, small beside a large message.
PIECE = 1 << 20
_GCM_TAG_HEAD = b"\x04\x10"  # the AuthEnvelopedData mac: OCTET STRING of 16 bytes


def encrypt_content(content: bytes, recipients: Sequence[x509.Certificate], *, cipher: CipherName = "aes256-cbc",
                    key_transport: KeyTransport = "pkcs1v15", recipient_id: RecipientId = "issuer-serial",
                    random: RandomSource = os.urandom) -> bytes:
    """DER ContentInfo(EnvelopedData | AuthEnvelopedData) of `content` for every recipient."""
    return b"".join(encrypt_content_pieces(content, recipients, cipher=cipher, key_transport=key_transport,
                                           recipient_id=recipient_id, random=random))


def encrypt_content_pieces(content: bytes | Pieces, recipients: Sequence[x509.Certificate], *,
                           cipher: CipherName = "aes256-cbc", key_transport: KeyTransport = "pkcs1v15",
                           recipient_id: RecipientId = "issuer-serial",
                           random: RandomSource = os.urandom) -> Iterator[bytes]:
    """`encrypt_content`'s DER as consecutive pieces, the ciphertext encrypted as they are taken.

    Everything that can fail (recipients, algorithms, key wrapping) and every draw from `random`
    happens here, before the first piece: only the symmetric encryption is left to the iterator."""
    return encrypt_content_sized(content, recipients, cipher=cipher, key_transport=key_transport,
                                 recipient_id=recipient_id, random=random)[1]


def encrypt_content_sized(content: bytes | Pieces, recipients: Sequence[x509.Certificate], *,
                          cipher: CipherName = "aes256-cbc", key_transport: KeyTransport = "pkcs1v15",
                          recipient_id: RecipientId = "issuer-serial",
                          random: RandomSource = os.urandom) -> tuple[int, Iterator[bytes]]:
    """`encrypt_content_pieces` with the DER's total length, known before any piece is made (from
    the content length, the padding or GCM tag and the head): so that the S/MIME message can be
    written into one buffer of its final size (`engine.encrypt_entity`). `content` may be
    `Pieces` (views of a large message: encrypted a megabyte at a time, never joined)."""
    if not recipients:
        raise UnsupportedAlgorithm("at least one recipient certificate is needed")
    if cipher not in ("aes256-cbc", "aes256-gcm"):
        raise UnsupportedAlgorithm(f"cipher {cipher!r} not supported")
    templates = [_template(c, key_transport, recipient_id) for c in recipients]
    cek = random(32)
    infos = [t.recipient_info(t.wrap(cek)) for t in templates]
    if cipher == "aes256-gcm":
        nonce = random(GCM_NONCE_SIZE)
        trailer = len(_GCM_TAG_HEAD) + 16
        head = envelope_head("authenticated_enveloped_data", "v0", infos, gcm_content_head(nonce), len(content),
                             trailer)
        return (len(head) + len(content) + trailer,
                _gcm_pieces(head, Cipher(algorithms.AES(cek), modes.GCM(nonce)).encryptor(), content))
    iv = random(CBC_IV_SIZE)
    whole = len(content) - len(content) % 16
    version = "v2" if recipient_id == "ski" else "v0"
    head = envelope_head("enveloped_data", version, infos, cbc_content_head(iv), whole + 16)
    return (len(head) + whole + 16,
            _cbc_pieces(head, Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor(), content))


#: The templates last used, by the identity of the certificate object (see `_template`).
_RECENT: dict[tuple[int, str, str], tuple[x509.Certificate, RecipientTemplate]] = {}
_RECENT_SIZE = 256


def _template(cert: x509.Certificate, key_transport: str, recipient_id: str) -> RecipientTemplate:
    """`recipient_template(...)`, found by the identity of the certificate object first: the
    stages encrypt to the certificate objects the discovery cache keeps, and the LRU's key hashes
    and compares the certificate's DER on every call (issue 15: a few µs per recipient and
    message). An entry serves only the very same object (`is`; the entry holds it, so its id
    cannot be reused while it lives) with the same options: what decides the template. Bounded:
    cleared when full; a miss falls back to the LRU, which still checks the key usage once."""
    entry = _RECENT.get((id(cert), key_transport, recipient_id))
    if entry is not None and entry[0] is cert:
        return entry[1]
    template = recipient_template(cert, key_transport, recipient_id)
    if len(_RECENT) >= _RECENT_SIZE:
        _RECENT.clear()
    _RECENT[(id(cert), key_transport, recipient_id)] = (cert, template)
    return template


def _windows(content: bytes | Pieces) -> Iterator[bytes | memoryview]:
    """`content` PIECE bytes at a time (views where they can be: `Pieces.windows`); a small
    entity as its parts, unjoined (the cipher contexts buffer what does not fill a block, so the
    ciphertext is the same whatever the cuts: issue 15, one copy of every message less)."""
    if len(content) <= PIECE:
        return iter(content.parts if isinstance(content, Pieces) else (content,))
    return (content if isinstance(content, Pieces) else Pieces((content,))).windows(PIECE)


def _cbc_pieces(head: bytes, enc: CipherContext, content: bytes | Pieces) -> Iterator[bytes]:
    """The head, then the ciphertext as the windows are encrypted: CBC's context keeps an
    incomplete last block until more comes, so the windows may be cut anywhere."""
    yield head
    for window in _windows(content):
        yield enc.update(window)
    pad = 16 - len(content) % 16  # PKCS#7: always 1 to 16 bytes
    yield enc.update(bytes((pad,)) * pad) + enc.finalize()


def _gcm_pieces(head: bytes, gcm: AEADEncryptionContext, content: bytes | Pieces) -> Iterator[bytes]:
    yield head
    for window in _windows(content):
        yield gcm.update(window)
    yield gcm.finalize() + _GCM_TAG_HEAD + gcm.tag
