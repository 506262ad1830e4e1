"""The key interface the S/MIME engine signs and decrypts through.

Soft keys (PEM, PKCS#12) and PKCS#11 tokens (CPS cards, HSMs) implement the same two small
protocols, so the CMS code never knows where a private key lives. Operations are async
because a smart card takes 10-500 ms per signature and must never block the event loop;
soft keys simply compute inline. Failures raise `gateway.errors.GatewayError` subclasses
(`temporary=True` when a token is absent, permanent for a wrong PIN or a refused mechanism).
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

from cryptography import x509

HashName = Literal["sha256", "sha384", "sha512"]
SignaturePadding = Literal["pkcs1v15", "pss", "ecdsa"]
KeyTransportPadding = Literal["pkcs1v15", "oaep-sha1", "oaep-sha256"]


@runtime_checkable
class SigningKey(Protocol):
    """A private key that signs, with the certificate (and chain) that goes with it."""

    @property
    def certificate(self) -> x509.Certificate: ...

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """Intermediate CA certificates to include in the SignedData (may be empty)."""
        ...

    async def sign(self, data: bytes, hash_name: HashName, padding: SignaturePadding) -> bytes:
        """Sign `data` (the DER of the signed attributes as a SET): hash then sign."""
        ...


@runtime_checkable
class DecryptionKey(Protocol):
    """A private key that unwraps content-encryption keys (key transport)."""

    @property
    def certificate(self) -> x509.Certificate: ...

    async def decrypt_key(self, encrypted_key: bytes, padding: KeyTransportPadding) -> bytes:
        """Return the content-encryption key, or raise a GatewayError (one generic message
        on RSA failure: callers continue with a random key against padding oracles)."""
        ...
