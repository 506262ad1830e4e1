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
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from gateway.smime.cms_template import (
    CBC_IV_SIZE,
    GCM_NONCE_SIZE,
    GCMParameters,
    cbc_content_head,
    check_encryption_usage,
    envelope,
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
           "encrypt_content", "oaep_sha256_algorithm"]


def encrypt_content(content: bytes, recipients: Sequence[x509.Certificate], *, cipher: CipherName = "aes256-cbc",
                    key_transport: KeyTransport = "pkcs1v15", recipient_id: RecipientId = "issuer-serial",
                    random: RandomSource = os.urandom) -> bytes:
    """DER ContentInfo(EnvelopedData | AuthEnvelopedData) of `content` for every recipient."""
    if not recipients:
        raise UnsupportedAlgorithm("at least one recipient certificate is needed")
    if cipher not in ("aes256-cbc", "aes256-gcm"):
        raise UnsupportedAlgorithm(f"cipher {cipher!r} not supported")
    templates = [recipient_template(c, key_transport, recipient_id) for c in recipients]
    cek = random(32)
    infos = [t.recipient_info(t.wrap(cek)) for t in templates]
    if cipher == "aes256-gcm":
        nonce = random(GCM_NONCE_SIZE)
        gcm = Cipher(algorithms.AES(cek), modes.GCM(nonce)).encryptor()
        sealed = gcm.update(content)
        tail = gcm.finalize()
        return envelope("authenticated_enveloped_data", "v0", infos, gcm_content_head(nonce), [sealed, tail],
                        trailer=b"\x04\x10" + gcm.tag)
    iv = random(CBC_IV_SIZE)
    enc = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
    whole = len(content) - len(content) % 16
    pad = 16 - len(content) % 16  # PKCS#7: always 1 to 16 bytes
    body = enc.update(memoryview(content)[:whole])  # the one whole-size copy besides the result
    last = enc.update(content[whole:] + bytes([pad]) * pad) + enc.finalize()
    version = "v2" if recipient_id == "ski" else "v0"
    return envelope("enveloped_data", version, infos, cbc_content_head(iv), [body, last])
