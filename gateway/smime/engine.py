"""The S/MIME engine: sign, encrypt, verify, decrypt and unwrap whole messages (bytes in, bytes out).

Pure library: no SMTP, no routing, no network except CRL fetching through the injectable
fetcher of `CrlSource`. Keys are used only through the `keyapi` protocols, so soft keys and
PKCS#11 tokens are interchangeable. Outbound default: sign (multipart/signed, SHA-256) then
encrypt (RSA PKCS#1 v1.5 + AES-256-CBC + issuer+serial). Inbound: any nesting of signed and
enveloped layers is unwrapped; every signature is verified with strict trust or refused with
a typed error from `gateway.smime.errors`.
"""

from __future__ import annotations

import binascii
import datetime as dt
import io
import itertools
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from email.utils import getaddresses

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.rawmime import Pieces
from gateway.smime.cms_decrypt import decrypt_content, open_enveloped
from gateway.smime.cms_envelope import CipherName, KeyTransport, RecipientId, encrypt_content_sized
from gateway.smime.cms_sign import sign_content
from gateway.smime.cms_verify import check_signed_data
from gateway.smime.cmsutil import parse_content_info
from gateway.smime.errors import MalformedSmime, NotForUs, NotSigned, SignerMismatch, SmimeError
from gateway.smime.identity import dn, read_identity
from gateway.smime.keyapi import DecryptionKey, HashName, SigningKey
from gateway.smime.mime import (
    Split,
    classify,
    content_entity,
    entity_message,
    field_name,
    multipart_signed,
    outer_fields,
    pkcs7_mime,
    pkcs7_mime_head,
    split_message,
)
from gateway.smime.ocsp import OcspSource
from gateway.smime.result import UnwrapResult, VerificationResult
from gateway.smime.revocation import CrlSource
from gateway.smime.trust import PathCache, TrustStore, check_signing_usage, validate_signer

MAX_DEPTH = 8
_MICALG = {"sha256": "sha-256", "sha384": "sha-384", "sha512": "sha-512"}


async def sign_message(message: bytes, key: SigningKey, *, opaque: bool = False, pss: bool = False,
                       hash_name: HashName = "sha256", signing_time: dt.datetime | None = None,
                       check_usage: bool = True) -> bytes:
    """Sign a message: multipart/signed (default) or opaque application/pkcs7-mime signed-data.

    The signing certificate must allow signing (`check_usage=False` only to build refusal tests).
    """
    if check_usage:
        check_signing_usage(key.certificate)
    outer, entity = content_entity(message)
    der = await sign_content(entity, key, detached=not opaque, hash_name=hash_name, pss=pss,
                             signing_time=signing_time)
    if opaque:
        return pkcs7_mime(outer, der, "signed-data")
    return multipart_signed(outer, entity, der, _MICALG[hash_name])


def encrypt_message(message: bytes, recipients: Sequence[x509.Certificate], *, cipher: CipherName = "aes256-cbc",
                    key_transport: KeyTransport = "pkcs1v15", recipient_id: RecipientId = "issuer-serial",
                    sender_copy: x509.Certificate | None = None) -> bytes:
    """Encrypt a message to every recipient (plus `sender_copy`, so the sent copy stays readable)."""
    outer, entity = content_entity(message)
    return encrypt_entity(outer, entity, recipients, cipher=cipher, key_transport=key_transport,
                          recipient_id=recipient_id, sender_copy=sender_copy)


class Taken:
    """An entity handed over to `encrypt_entity`, which lets go of it as soon as it is encrypted
    (before joining the result): with no other reference left, a large message's entity is then
    freed before its encrypted copy is assembled (one size of the message less at the peak)."""

    def __init__(self, data: bytes | Pieces) -> None:
        self.data: bytes | Pieces | None = data

    def take(self) -> bytes | Pieces:
        data, self.data = self.data, None
        if data is None:
            raise ValueError("entity already taken")
        return data


def encrypt_entity(outer: tuple[bytes, ...], entity: bytes | Pieces | Taken, recipients: Sequence[x509.Certificate], *,
                   cipher: CipherName = "aes256-cbc", key_transport: KeyTransport = "pkcs1v15",
                   recipient_id: RecipientId = "issuer-serial", sender_copy: x509.Certificate | None = None) -> bytes:
    """Encrypt a canonical entity as it is, with `outer` fields around the envelope: for an entity
    whose own header block carries protected headers (`encrypt_message` would take them for the
    message's outer fields). `Pieces` are encrypted as they are (views of a message: no join)."""
    certs = list(recipients)
    if sender_copy is not None and sender_copy not in certs:
        certs.append(sender_copy)
    content = entity.take() if isinstance(entity, Taken) else entity
    der_size, pieces = encrypt_content_sized(content, certs, cipher=cipher, key_transport=key_transport,
                                             recipient_id=recipient_id)
    del content  # (a Taken entity: now only the pieces' iterator holds it, until it is exhausted)
    head = pkcs7_mime_head(outer, "authEnveloped-data" if cipher == "aes256-gcm" else "enveloped-data")
    # = pkcs7_mime(outer, encrypt_content(...)), byte for byte, with the ciphertext base64-encoded
    # as it is encrypted, straight into the buffer returned: no whole ciphertext, DER or list of
    # base64 blocks beside the result (a large message's peak).
    return _b64_message(head, pieces, der_size)


def b64_lines_size(n: int) -> int:
    """Length of `_b64_lines` of `n` bytes: 78 per 57 bytes (76 characters + CRLF), then the
    last, shorter line padded to a multiple of 4 characters, plus its CRLF."""
    lines, rest = divmod(n, 57)
    return lines * 78 + (-(-rest // 3) * 4 + 2 if rest else 0)


def _b64_message(head: bytes, pieces: Iterable[bytes], der_size: int) -> bytes:
    """`head` + `_b64_lines(pieces)` as one `bytes`, each block written into one buffer as
    it is encoded and freed at once: the message is never held as blocks beside their join.

    Why a `BytesIO`: a `bytearray` cannot become `bytes` without a whole copy, whereas
    `BytesIO.getvalue()` trims its buffer (a realloc: `mremap` for a large one, no copy) and
    returns that very object when nothing else refers to it (CPython; elsewhere it may copy,
    which costs memory, never correctness: `tests/smime/test_large_envelope.py` bounds the peak).
    Presized to the final size (known from `der_size`: one byte written at the end allocates it
    exactly, zero-filled): grown as written, it kept up to 1/8 more than the message, and those
    pages were touched (50 MB: 2.83x the message in RSS, 2.53x presized). This was measured
    worse (3.4x) while the step before still held a whole entity when the buffer was filled;
    since the entity is views of the message (`Pieces`), nothing that large is alive then.

    Up to one block of base64 (`_B64_BLOCK`: every S/MIME copy of a message under ~50 KB), the
    DER is encoded whole and the message made by one join of the head and the lines: the same
    bytes, without the buffer's set-up and the block's extra copies (issue 15, CPU per message)."""
    size = len(head) + b64_lines_size(der_size)
    if der_size <= _B64_BLOCK:
        lines = _line_list(binascii.b2a_base64(b"".join(pieces), newline=False))
        if lines:
            lines[0] = head + lines[0]
            lines.append(b"")  # the last line's CRLF
            message = b"\r\n".join(lines)
        else:
            message = head
        if len(message) != size:  # as below: the size computed from the lengths must be the size made
            raise RuntimeError(f"S/MIME message of {len(message)} bytes, {size} expected")
        return message
    out = io.BytesIO()
    if size:  # presized: the buffer is the message's size, no growth slack (see the docstring)
        out.seek(size - 1)
        out.write(b"\0")
        out.seek(0)
    out.write(head)
    for block in _b64_lines(pieces):
        out.write(block)
    if out.tell() != size:  # the size computed from the lengths alone must be the size written
        raise RuntimeError(f"S/MIME message of {out.tell()} bytes, {size} expected")
    return out.getvalue()


#: Bytes base64-encoded at a time: a multiple of 57, so every block is whole 76-character lines.
_B64_BLOCK = 57 * 1024


def _b64_lines(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """The base64 of the concatenated `pieces` in 76-character CRLF lines (`mime.pkcs7_mime`'s
    body), encoded block by block as the pieces come: each block is the same 57 KiB slice of
    the whole that `mime._b64_chunks` would encode, so the output is the same bytes; only the
    ends of the pieces (under a block) are copied to be joined with the next."""
    carry = b""
    for piece in pieces:
        view = memoryview(piece)
        if carry:
            need = _B64_BLOCK - len(carry)
            if len(view) < need:
                carry += view
                continue
            yield _b64_block(carry + view[:need])
            view = view[need:]
        full = len(view) - len(view) % _B64_BLOCK
        for start in range(0, full, _B64_BLOCK):
            yield _b64_block(view[start:start + _B64_BLOCK])
        carry = bytes(view[full:])
        view.release()
        del piece, view  # before the next piece is encrypted: one piece at a time, not two
    if carry:
        yield _b64_block(carry)


def _b64_block(data: bytes | memoryview) -> bytes:
    """One block in 76-character CRLF lines: encoded by one C call, then cut by slicing and
    joined with CRLF (what `base64.encodebytes(data).replace(b"\\n", b"\\r\\n")` gave, byte for
    byte, a third cheaper: that loops in Python over 57-byte slices, then copies it all again for
    the CRLFs; `tests/smime/test_copy_fastpaths.py` compares both)."""
    lines = _line_list(binascii.b2a_base64(data, newline=False))
    if lines:
        lines.append(b"")  # the last line's CRLF, in the same join
    return b"\r\n".join(lines)


#: 32 base64 lines of 76 characters, cut by one C call (`_line_list`).
_LINES = struct.Struct("76s" * 32)


def _line_list(encoded: bytes) -> list[bytes]:
    """Base64 text (no newlines) cut into 76-character lines: 32 lines at a time by `struct`
    (one C call each, a quarter of a slicing loop's cost: ~20 µs less per 20 KB message), the
    last few by slicing. The same lines as `[encoded[i:i + 76] for i in range(0, len, 76)]`."""
    whole = len(encoded) - len(encoded) % _LINES.size
    lines = list(itertools.chain.from_iterable(_LINES.iter_unpack(memoryview(encoded)[:whole]))) if whole else []
    lines += [encoded[i:i + 76] for i in range(whole, len(encoded), 76)]
    return lines


async def sign_and_encrypt_message(message: bytes, key: SigningKey, recipients: Sequence[x509.Certificate], *,
                                   opaque: bool = False, cipher: CipherName = "aes256-cbc",
                                   key_transport: KeyTransport = "pkcs1v15",
                                   sender_copy: x509.Certificate | None = None) -> bytes:
    """The default outbound form: sign, then encrypt the signed entity."""
    signed = await sign_message(message, key, opaque=opaque)
    return encrypt_message(signed, recipients, cipher=cipher, key_transport=key_transport, sender_copy=sender_copy)


def _single_from(fields: Sequence[bytes], name: str = "from") -> str | None:
    """The single From (or `name`) address among raw header fields, lowercased: None when there
    is none, "" when there are several (which never matches a signer)."""
    msg = Split(tuple(f for f in fields if field_name(f) == name), b"").message()
    addrs = [a for _, a in getaddresses([str(v) for v in msg.get_all(name) or []]) if a]
    if len(addrs) != 1:
        return None if not addrs else ""
    return addrs[0].strip().lower()


def _weak_key(cert: x509.Certificate) -> tuple[str, ...]:
    """A signer key below today's minimum (RSA 2048, EC 256 bits): accepted, but named.
    (MD5 and SHA-1 signatures are refused outright by `cms_verify`.)"""
    pub = cert.public_key()
    if isinstance(pub, rsa.RSAPublicKey) and pub.key_size < 2048:
        return (f"rsa-{pub.key_size}",)
    if isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.key_size < 256:
        return (f"ec-{pub.curve.key_size}",)
    return ()


@dataclass
class Verifier:
    """Strict signature verification policy: trust store, CRLs, From matching."""

    trust: TrustStore
    crls: CrlSource = field(default_factory=CrlSource)
    require_from_match: bool = True
    now: dt.datetime | None = None  # fixed clock for tests; None = real time
    cache: PathCache = field(default_factory=PathCache)
    #: OCSP responders asked beside the CRLs (``[trust] ocsp = true``); None: CRLs only.
    ocsp: OcspSource | None = None
    #: Correspondents' certificates known from the directory: used to find a signer whose
    #: message carries no certificate (they are not trusted for that: the path still is checked).
    known_certificates: tuple[x509.Certificate, ...] = ()

    async def verify_signers(self, der: bytes, detached_content: bytes | None,
                      ) -> tuple[bytes, tuple[VerificationResult, ...]]:
        """Signature, path, revocation and usage of every signer; the sender is matched later
        (by the caller, against the From that will be delivered)."""
        checked = check_signed_data(der, detached_content, self.known_certificates + self.trust.all)
        results = []
        for signer in checked.signers:
            path = await validate_signer(signer.certificate, trust=self.trust, crls=self.crls,
                                         extra_certs=checked.certificates + self.known_certificates,
                                         signing_time=signer.signing_time, now=self.now, cache=self.cache,
                                         ocsp=self.ocsp)
            reasons = ["signature verifies over the signed attributes", "content digest matches",
                       "path to a trusted root is valid now" + (" and at signing time" if signer.signing_time
                                                                else ""),
                       "CRLs: not revoked", "key usage allows signing"]
            results.append(VerificationResult(
                signer_subject=dn(signer.certificate.subject), identity=read_identity(signer.certificate),
                certificate=signer.certificate, chain=tuple(dn(c.subject) for c in path.chain),
                signing_time=signer.signing_time, revocation_status=path.revocation,
                digest_algorithm=signer.digest_algorithm, signature_algorithm=signer.signature_algorithm,
                detached=detached_content is not None, from_address=None, from_matched=None,
                reasons=tuple(reasons), weak=_weak_key(signer.certificate)))
        return checked.content, tuple(results)

    def match_sender(self, result: VerificationResult, sender: str | None,
                     sender_ids: Iterable[str] = ()) -> VerificationResult:
        """`result` with whether its certificate names `sender` (or one of `sender_ids`) recorded."""
        ids = set(sender_ids)
        reasons = list(result.reasons)
        matched: bool | None = None
        if sender is not None or ids:
            matched = bool((sender and result.identity.names_address(sender))
                           or ids.intersection(result.identifiers))
            reasons.append("signer matches From" if matched else "signer does not match From")
        elif self.require_from_match:
            reasons.append("no From address to match")
        return replace(result, from_address=sender, from_matched=matched, reasons=tuple(reasons))


#: Transport trace fields: those of the outside are the real path; inner ones never replace them.
_TRACE = frozenset({"received", "return-path", "delivered-to"})


def _unfolded(field_: bytes) -> bytes:
    return b" ".join(field_.partition(b":")[2].split())


@dataclass(frozen=True)
class _Headers:
    """The one header block of an unwrapped message (see `_deliverable`)."""

    fields: tuple[bytes, ...]  # the outer fields kept, then protected fields of intermediate layers
    displaced: tuple[bytes, ...]  # outer fields replaced by a different protected value


#: Fields that say who wrote or sent a message: taken from inside only where a verified
#: signature covers them (an encryption layer authenticates nobody: anyone can write one).
_IDENTITY = frozenset({"from", "sender"})


def _deliverable(outer: Split, inside: list[Split], covered: list[bool]) -> _Headers:
    """Merge the header fields found inside the layers (protected headers) over the outer ones.

    A name present inside replaces every outer field of that name (the deepest layer wins): the
    outer From/Subject of an S/MIME message are unprotected, and one reader must not see two.
    From and Sender come from inside only from an entity a signature covers (`covered`); an
    unsigned inner From is dropped and the outer one, which the listener checked, is kept.
    Outer fields whose value differs from the protected one are returned as `displaced`.
    """
    protected: dict[str, list[bytes]] = {}
    for split, signed in zip(inside, covered, strict=True):
        found: dict[str, list[bytes]] = {}
        for f in outer_fields(split):
            name = field_name(f)
            if name not in _TRACE and (signed or name not in _IDENTITY):
                found.setdefault(name, []).append(f)
        protected.update(found)
    innermost = inside[-1]
    in_content = {field_name(f) for f in outer_fields(innermost)}
    kept, displaced = [], []
    for f in outer_fields(outer):
        name = field_name(f)
        if name not in protected:
            kept.append(f)
        elif _unfolded(f) not in {_unfolded(p) for p in protected[name]}:
            displaced.append(f)
    between = [f for name, fs in protected.items() if name not in in_content for f in fs]
    return _Headers(tuple(kept + between), tuple(displaced))


async def unwrap_message(message: bytes, *, keys: Sequence[DecryptionKey] = (), verifier: Verifier | None = None,
                         sender: str | None = None, sender_ids: Iterable[str] = ()) -> UnwrapResult:
    """Peel every S/MIME layer (any nesting); verify every signature; decrypt with `keys`.

    The result has one header block: fields carried inside the layers (protected headers, an
    RFC 8551 message/rfc822 wrapper) replace the outer ones of the same names. `sender`
    defaults to the From of that block: the one the reader will see is the one checked.
    Every signature must verify with a trusted path; the innermost one (the author's) must name
    the sender, outer ones (RFC 2634 triple wrapping by an organisation or a gateway) need not.
    A signed layer without a verifier, or an encrypted layer without a matching key, is refused,
    never skipped.
    """
    outer = split_message(message)
    ids = tuple(sender_ids)
    entity = message
    layers: list[str] = []
    inside: list[Split] = []  # the header fields of every entity reached under a layer
    covered: list[bool] = []  # whether a verified signature covers that entity
    ciphers: list[str] = []
    signatures: list[VerificationResult] = []
    for _ in range(MAX_DEPTH):
        if layers:
            inside.append(split_message(entity))
            covered.append(bool(signatures))
        part = classify(entity)
        if part.kind == "rfc822" and layers:
            entity = part.signed_content  # RFC 8551 3.1: a whole message wrapped inside the layer
            layers.append("rfc822")
            continue
        if part.kind in ("plain", "rfc822"):
            break
        if part.kind == "multipart-signed":
            if verifier is None:
                raise SmimeError("signed message but no verifier configured")
            _, results = await verifier.verify_signers(part.der, part.signed_content)
            entity = part.signed_content
            layers.append("signed")
            signatures.extend(results)
            continue
        kind = parse_content_info(part.der)["content_type"].native
        if kind == "signed_data":
            if verifier is None:
                raise SmimeError("signed message but no verifier configured")
            entity, results = await verifier.verify_signers(part.der, None)
            layers.append("signed-opaque")
            signatures.extend(results)
        elif kind in ("enveloped_data", "authenticated_enveloped_data"):
            if not keys:
                raise NotForUs("encrypted message and no decryption key")
            entity, cipher = await open_enveloped(part.der, keys)
            layers.append("enveloped" if kind == "enveloped_data" else "auth-enveloped")
            ciphers.append(cipher)
        else:
            raise MalformedSmime("unsupported CMS content type")
    else:
        raise MalformedSmime("too many nested S/MIME layers")
    inner = inside[-1] if inside else split_message(entity)  # canonical and parseable, or MalformedSmime
    content = b"".join(inner.fields) + b"\r\n" + inner.body
    if not layers:
        return UnwrapResult(message, content, ())
    headers = _deliverable(outer, inside, covered)
    shown = inner.fields if covered[-1] else tuple(f for f in inner.fields if field_name(f) not in _IDENTITY)
    from_ = sender if sender is not None else _single_from(headers.fields + shown)
    if verifier is not None:
        signatures = [verifier.match_sender(s, from_, ids) for s in signatures]
        if verifier.require_from_match and signatures and (from_ is not None or ids) \
                and not signatures[-1].from_matched:
            raise SignerMismatch("signer certificate does not name the From address")
    version = () if "mime-version" in inner.names() else (b"MIME-Version: 1.0\r\n",)
    delivered = b"".join((*headers.fields, *version, *shown)) + b"\r\n" + inner.body
    return UnwrapResult(delivered, content, tuple(layers), tuple(signatures), headers.displaced, tuple(ciphers))


async def verify_message(message: bytes, verifier: Verifier, *, sender: str | None = None,
                         sender_ids: Iterable[str] = ()) -> UnwrapResult:
    """Verify a signed message (any nesting, must contain at least one signature)."""
    result = await unwrap_message(message, verifier=verifier, sender=sender, sender_ids=sender_ids)
    if not result.signatures:
        raise NotSigned("message is not signed")
    return result


async def decrypt_message(message: bytes, keys: Sequence[DecryptionKey]) -> bytes:
    """Decrypt the outer enveloped layer; return outer headers + the decrypted entity."""
    part = classify(message)
    if part.kind != "pkcs7-mime":
        raise MalformedSmime("message is not S/MIME encrypted")
    content = await decrypt_content(part.der, keys)
    return entity_message(outer_fields_of(message), content)


def outer_fields_of(message: bytes) -> tuple[bytes, ...]:
    return outer_fields(split_message(message))
