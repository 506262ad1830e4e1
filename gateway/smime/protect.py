"""S/MIME protection of an outgoing message, as one public call per form.

* `protect_smime`: sign (when a key is given) then encrypt, with header protection — the outer
  allow-list of `headers.allowed_outer_fields` outside, every original header inside.
* `sign_protected`: the trust-space-TLS copy — signed, not encrypted, every original header
  copied inside what is signed.

The stages call these; they never assemble a protected message from the CMS and MIME
internals themselves. The MIME and CMS work is CPU-bound and grows with the message: it runs in
a worker thread so that a 50 MB message does not stall every SMTP session of the event loop;
signing is awaited (a smart card or an HSM signs off the loop).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from cryptography import x509

from gateway.rawmime import Raw
from gateway.smime.cms_sign import sign_content
from gateway.smime.engine import encrypt_entity, encrypt_message
from gateway.smime.headers import NEVER_COPIED, OUR_PREFIX, allowed_outer_fields, name_of, protected_entity
from gateway.smime.keyapi import SigningKey
from gateway.smime.mime import content_entity, multipart_signed
from gateway.smime.trust import check_signing_usage

__all__ = ["protect_smime", "sign_protected"]


async def protect_smime(message: Raw, key: SigningKey | None, certs: Sequence[x509.Certificate], *,
                        neutral_subject: str, sender_copy: x509.Certificate | None) -> bytes:
    """Sign (when `key` is given) then encrypt to `certs` (+ `sender_copy`, so the sent copy stays
    readable by its sender), with header protection: the outer allow-list outside (neutral
    Subject, fresh Message-ID...), every original header inside."""
    def prepare() -> tuple[tuple[bytes, ...], bytes]:
        _, entity = content_entity(message)
        outer = tuple(allowed_outer_fields(message, neutral_subject=neutral_subject))
        return outer, protected_entity(message, entity)

    outer, entity = await asyncio.to_thread(prepare)
    recipients = list(certs)
    if key is not None:
        der = await sign_content(entity, key, detached=True)
        inner = multipart_signed(outer, entity, der, "sha-256")
        return await asyncio.to_thread(encrypt_message, inner, recipients, sender_copy=sender_copy)
    return await asyncio.to_thread(encrypt_entity, outer, entity, recipients, sender_copy=sender_copy)


async def sign_protected(message: Raw, key: SigningKey) -> bytes:
    """The trust-space-TLS copy: signed, not encrypted, every original header copied inside the
    signed entity (protected headers, as `protect_smime` does) so that what the reader is shown —
    From, Subject, a bridge's provenance — is what the signature covers. Outside, the message's
    own fields as they are (the copy travels in clear over mutual TLS), except our `X-Msgw-*`
    statements (inside only: nobody signed the outer ones) and Bcc (never copied)."""
    check_signing_usage(key.certificate)

    def prepare() -> tuple[tuple[bytes, ...], bytes]:
        outer, entity = content_entity(message)
        shown = tuple(f for f in outer if not name_of(f).startswith(OUR_PREFIX) and name_of(f) not in NEVER_COPIED)
        return shown, protected_entity(message, entity)

    outer, entity = await asyncio.to_thread(prepare)
    der = await sign_content(entity, key, detached=True)
    return await asyncio.to_thread(multipart_signed, outer, entity, der, "sha-256")
