"""S/MIME protection of an outgoing message, as one public call per form.

* `protect_smime`: sign (when a key is given) then encrypt, with header protection — the outer
  allow-list of `headers.allowed_outer_fields` outside, every original header inside.
* `sign_protected`: the trust-space-TLS copy — signed, not encrypted, every original header
  copied inside what is signed.

The stages call these; they never assemble a protected message from the CMS and MIME
internals themselves. The MIME and CMS work is CPU-bound and grows with the message: above
`INLINE_LIMIT` (`INLINE_LIMIT_8BIT` for 8-bit content) it runs in a worker thread so that a
50 MB message does not stall every SMTP session of the event loop; below, on the loop (a
thread hand-off and its wake-up cost more than the work: issue 15). Signing is awaited (a
smart card or an HSM signs off the loop).

`message` may be a `MessageView` (the stages pass the one of their work item): its header split
and S/MIME split are then the ones the earlier stages already made.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from typing import TypeVar

from cryptography import x509

from gateway.rawmime import Pieces, Raw, header_block, raw_data
from gateway.smime.cms_sign import sign_content
from gateway.smime.engine import Taken, encrypt_entity
from gateway.smime.errors import MalformedSmime
from gateway.smime.headers import NEVER_COPIED, OUR_PREFIX, allowed_outer_fields, name_of, protected_entity
from gateway.smime.keyapi import SigningKey
from gateway.smime.mime import MAX_MESSAGE_SIZE, content_entity, multipart_signed, signed_entity
from gateway.smime.trust import check_signing_usage

__all__ = ["INLINE_LIMIT", "INLINE_LIMIT_8BIT", "protect_smime", "sign_protected"]

#: Up to this many bytes, a 7-bit message's MIME and CMS work (besides the signature) runs on the
#: event loop: under a millisecond (measured: 0.6 ms to prepare and 0.8 ms to encrypt 64 KB on
#: this 2-core machine), and a hand-off to a worker thread and back costs what the work does at 1 KB.
INLINE_LIMIT = 64 * 1024
#: The same for a message with 8-bit bytes: its parts are re-encoded with the stdlib `email`
#: (parse and generate), about 50 µs a KB, so only the small ones stay on the loop.
INLINE_LIMIT_8BIT = 16 * 1024

#: Up to this many bytes, work that only copies or scans the message once in C (the
#: multipart/signed entity around the signature) stays on the loop: about a millisecond a MiB.
#: Above, a 50 MB message would hold the loop for a third of a second (issue 15).
INLINE_COPY = 1 << 20

_T = TypeVar("_T")


def _on_loop(data: bytes | Pieces) -> bool:
    """Cheap enough to run on the event loop? (a scheduling estimate, never a behaviour)"""
    if len(data) > INLINE_LIMIT:
        return False
    return len(data) <= INLINE_LIMIT_8BIT or (data.join() if isinstance(data, Pieces) else data).isascii()


def _protected(message: Raw, entity: Pieces) -> Pieces:
    """`protected_entity` of the joined entity, as pieces: the protected headers go into its
    header block, the first piece (through its empty line: the first CRLF CRLF of the joined
    entity, where `protected_entity` cuts), and the body stays the view it is."""
    return Pieces((protected_entity(message, bytes(entity.parts[0])), *entity.parts[1:]))


async def _cpu(data: bytes | Pieces, work: Callable[[], _T]) -> _T:
    """`work()` (the MIME or CMS work of `data`) on the loop for a small message, in a worker
    thread for a large one."""
    if _on_loop(data):
        return work()
    return await asyncio.to_thread(work)


async def protect_smime(message: Raw, key: SigningKey | None, certs: Sequence[x509.Certificate], *,
                        neutral_subject: str, sender_copy: x509.Certificate | None) -> bytes:
    """Sign (when `key` is given) then encrypt to `certs` (+ `sender_copy`, so the sent copy stays
    readable by its sender), with header protection: the outer allow-list outside (neutral
    Subject, fresh Message-ID...), every original header inside.

    A large message's body is never copied on the way: the entity signed and encrypted is
    `Pieces` (the protected header block, views of the message's body, the signature part),
    hashed and encrypted a megabyte at a time (issue 15: 50 MB peaked at ~3.8x the message)."""
    def prepare() -> tuple[tuple[bytes, ...], Pieces]:
        _, entity = content_entity(message, pieces=True)
        headers = header_block(message)
        outer = tuple(allowed_outer_fields(headers, neutral_subject=neutral_subject))
        return outer, _protected(headers, entity)

    data = raw_data(message)
    outer, entity = prepare() if _on_loop(data) else await asyncio.to_thread(prepare)  # (= `_cpu`, inlined)
    recipients = certs
    if key is not None:
        der = await sign_content(entity, key, detached=True)
        if len(entity) <= INLINE_COPY:
            entity = signed_entity(entity, der, "sha-256")
        else:  # (no name kept for the call: it would keep the unsigned entity alive while encrypting)
            entity = await asyncio.to_thread(signed_entity, entity, der, "sha-256")
        # What encrypting the whole multipart/signed message refused (its size), refused the same.
        if sum(map(len, outer)) + len(b"MIME-Version: 1.0\r\n") + len(entity) > MAX_MESSAGE_SIZE:
            raise MalformedSmime("message too large")
    # Encrypting and base64 cost the same for 8-bit bytes (only `prepare`'s re-encoding does not):
    # the size alone decides, without joining a multipart/signed entity to ask `isascii`.
    inline = len(entity) <= INLINE_LIMIT
    # Handed over, not kept: encrypt_entity drops it once encrypted, before it joins the result.
    taken = Taken(entity)
    del entity
    work = functools.partial(encrypt_entity, outer, taken, recipients, sender_copy=sender_copy)
    return work() if inline else await asyncio.to_thread(work)


#: Signing certificates that passed `check_signing_usage`, by object identity (see `_check_signer`).
_USABLE_SIGNERS: dict[int, x509.Certificate] = {}
_USABLE_SIGNERS_SIZE = 16


def _check_signer(cert: x509.Certificate) -> None:
    """`check_signing_usage(cert)`, once per certificate object: its key usages are part of the
    certificate, so an object that passed passes again (the entry holds it: its id is not reused
    while the entry lives). A refusal is never remembered: it is raised on every call. Bounded:
    cleared when full (a gateway signs with a few keys)."""
    if _USABLE_SIGNERS.get(id(cert)) is cert:
        return
    check_signing_usage(cert)
    if len(_USABLE_SIGNERS) >= _USABLE_SIGNERS_SIZE:
        _USABLE_SIGNERS.clear()
    _USABLE_SIGNERS[id(cert)] = cert


async def sign_protected(message: Raw, key: SigningKey) -> bytes:
    """The trust-space-TLS copy: signed, not encrypted, every original header copied inside the
    signed entity (protected headers, as `protect_smime` does) so that what the reader is shown —
    From, Subject, a bridge's provenance — is what the signature covers. Outside, the message's
    own fields as they are (the copy travels in clear over mutual TLS), except our `X-Msgw-*`
    statements (inside only: nobody signed the outer ones) and Bcc (never copied)."""
    _check_signer(key.certificate)

    def prepare() -> tuple[tuple[bytes, ...], Pieces]:
        outer, entity = content_entity(message, pieces=True)
        shown = tuple(f for f in outer if not name_of(f).startswith(OUR_PREFIX) and name_of(f) not in NEVER_COPIED)
        return shown, _protected(header_block(message), entity)

    outer, entity = await _cpu(raw_data(message), prepare)
    der = await sign_content(entity, key, detached=True)
    return await _cpu(entity, lambda: multipart_signed(outer, entity, der, "sha-256"))
