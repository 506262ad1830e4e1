"""Build CMS SignedData (RFC 5652) through the async `SigningKey` protocol.

Hand-built because `cryptography`'s PKCS7SignatureBuilder needs the private key object
in-process: a CPS card or an HSM only signs the DER of the signed attributes we hand it
(keyapi). So we build signedAttrs (contentType, messageDigest, signingTime,
smimeCapabilities, DER-sorted as a SET), ask the key to sign them, and assemble the
SignerInfo and SignedData ourselves. RSA PKCS#1 v1.5, RSA-PSS and ECDSA are supported.

The constant parts come from a template cached per certificate chain and options
(`cms_template.signer_template`): per message only signingTime, messageDigest and the
signature are encoded. `cms_reference.sign_content_reference` is the same signature built
wholly with asn1crypto, the oracle the tests compare this output with, byte for byte.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from gateway.rawmime import Pieces
from gateway.smime.cms_template import SMIME_CAPABILITIES, SignerTemplate, signature_algorithm, signer_template
from gateway.smime.cms_template import padding_for as _padding_for_certificate
from gateway.smime.keyapi import HashName, SignaturePadding, SigningKey

__all__ = ["SMIME_CAPABILITIES", "padding_for", "sign_content", "signature_algorithm"]

#: Content hashed on the event loop up to this size (about a millisecond); above, in a worker
#: thread: SHA-256 of 50 MB holds the event loop ~65 ms on this machine, and a thread hop costs
#: more than hashing a small message.
INLINE_HASH = 1 << 20


def padding_for(key: SigningKey, pss: bool = False) -> SignaturePadding:
    """The signature scheme the certificate's key type allows."""
    return _padding_for_certificate(key.certificate, pss)


async def sign_content(content: bytes | Pieces, key: SigningKey, *, detached: bool = True,
                       hash_name: HashName = "sha256", pss: bool = False, signing_time: dt.datetime | None = None
                       ) -> bytes:
    """DER ContentInfo(SignedData) over `content` (already canonical); detached or encapsulated.

    `content` may be `Pieces` (a large entity as views of the message: hashed piece by piece,
    never joined unless it is encapsulated). The key signs exactly the DER SET OF the signed
    attributes, as `keyapi` says."""
    template = _template(key.certificate, tuple(key.chain), hash_name, pss)
    when = (signing_time or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    digest = (_digest(template.hash_algorithm, content) if len(content) <= INLINE_HASH
              else await asyncio.to_thread(_digest, template.hash_algorithm, content))
    to_sign = template.signed_attributes(digest, when)
    signature = await key.sign(to_sign, hash_name, template.padding)
    if detached:
        return template.signed_data(to_sign, signature, None)
    return template.signed_data(to_sign, signature, content.join() if isinstance(content, Pieces) else content)


#: The templates last used, by the identity of the certificate objects (see `_template`).
_RECENT: dict[tuple[int, HashName, bool], tuple[x509.Certificate, tuple[x509.Certificate, ...], SignerTemplate]] = {}
_RECENT_SIZE = 16


def _template(certificate: x509.Certificate, chain: tuple[x509.Certificate, ...], hash_name: HashName,
              pss: bool) -> SignerTemplate:
    """`signer_template(...)`, found by the identity of the certificate objects first: a running
    gateway signs with the same loaded key object every time, and the LRU's key hashes and
    compares the certificates' DER on every call (issue 15: a few µs a message). An entry is used
    only for the very same objects (`is`, the entry holds them: their ids cannot be reused while
    it lives), the same hash and padding option: what decides the template. Bounded: cleared
    when full (a gateway has a few keys)."""
    entry = _RECENT.get((id(certificate), hash_name, pss))
    if entry is not None and entry[0] is certificate and len(entry[1]) == len(chain) \
            and all(a is b for a, b in zip(entry[1], chain, strict=True)):
        return entry[2]
    template = signer_template(certificate, chain, hash_name, pss)
    if len(_RECENT) >= _RECENT_SIZE:
        _RECENT.clear()
    _RECENT[(id(certificate), hash_name, pss)] = (certificate, chain, template)
    return template


def _digest(algorithm: hashes.HashAlgorithm, content: bytes | Pieces) -> bytes:
    """The message digest: a small entity's parts hashed as they are (no join), a large one a
    megabyte at a time, so that no single call holds the GIL for long. `hashlib` (the same
    OpenSSL digests, named alike: sha1, sha256, sha384, sha512) costs less per call than a
    `cryptography` Hash object, which matters at 1 KB; the bytes hashed are the same."""
    h = hashlib.new(algorithm.name)
    if len(content) <= INLINE_HASH:
        for part in content.parts if isinstance(content, Pieces) else (content,):
            h.update(part)
        return h.digest()
    for window in (content if isinstance(content, Pieces) else Pieces((content,))).windows(1 << 20):
        h.update(window)
    return h.digest()
