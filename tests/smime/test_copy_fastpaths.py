"""The S/MIME copy's fast paths (issue 15, fourth round: CPU per message) give what the full paths
gave, byte for byte, and keep every refusal: base64 by one C call and slicing (against
`base64.encodebytes`), the copy under one block made by one join (against `mime.pkcs7_mime` of the
asn1crypto oracle's DER), the templates found by certificate identity (against the oracle, with
chains, hashes, paddings and recipient options changing between calls on the same objects), the
digest over the entity's parts (against the digest of the joined bytes), the signing key's validity
read once (against `keycheck.current` at the edges), and the signer usage remembered only when it
passed. Real TEST-PKI keys and certificates throughout; nothing mocked."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os

import pytest
from asn1crypto import cms
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.rawmime import Pieces
from gateway.smime import cms_envelope, cms_sign, engine, keycheck, protect
from gateway.smime.cms_envelope import encrypt_content, encrypt_content_sized
from gateway.smime.cms_reference import sign_content_reference
from gateway.smime.cms_sign import INLINE_HASH, sign_content
from gateway.smime.errors import WrongKeyUsage
from gateway.smime.keystore import KeyUnavailable
from gateway.smime.mime import pkcs7_mime
from gateway.smime.softkeys import SoftKey
from gateway.smime.testpki import ORG_EMAIL
from gateway.stages.build import GuardedKey
from tests.smime.test_cms_template import WHEN, Draws, SameSignature, _oracle_for
from tests.unit.test_key_unavailable import context

OUTER = (b"From: <labo@labo-tests.sante.test>\r\n", b"Subject: Message securise\r\n")
BLOCK = engine._B64_BLOCK
EDGES = [0, 1, 2, 3, 55, 56, 57, 58, 113, 114, 1024, 4000, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK + 57]


def _encodebytes(data: bytes) -> bytes:
    """The encoder the fast paths replaced: base64.encodebytes, CRLF line ends."""
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


@pytest.mark.parametrize("n", EDGES)
def test_b64_block_is_encodebytes_with_crlf(n: int) -> None:
    data = os.urandom(n)
    assert engine._b64_block(data) == _encodebytes(data)
    assert engine._b64_block(memoryview(data)) == _encodebytes(data)


def test_lines_cut_by_struct_are_the_slices() -> None:
    """`_line_list` cuts 32 lines at a time, then slices the rest: the lines slicing gives, at
    every length around a line and a 32-line group."""
    group = engine._LINES.size
    for n in sorted({0, 1, 4, 75, 76, 77, 152, group - 76, group - 4, group - 1, group, group + 1, group + 76,
                     2 * group, 3 * group + 75, 1024 * 76, 1024 * 76 + 4}):
        encoded = base64.b64encode(os.urandom(n))[:n]  # any text of length n
        assert engine._line_list(encoded) == [encoded[i:i + 76] for i in range(0, n, 76)], n


@pytest.mark.parametrize("n", EDGES)
def test_b64_message_is_head_and_the_lines_on_both_sides_of_a_block(n: int) -> None:
    """Under one block the message is one join; above, the presized buffer: the same bytes, from
    pieces cut anywhere (a piece boundary inside a line, at a line, at a block)."""
    data = os.urandom(n)
    head = b"H: v\r\n\r\n"
    for cuts in ([], [1], [n // 3, n // 2], [57, 114], [BLOCK - 1, BLOCK + 2]):
        bounds = [0, *sorted(c for c in cuts if c <= n), n]
        pieces = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
        assert engine._b64_message(head, iter(pieces), n) == head + _encodebytes(data), (n, cuts)


@pytest.mark.parametrize("n", [100, 4000, BLOCK + 100])
def test_a_wrong_size_is_refused_on_both_sides_of_a_block(n: int) -> None:
    for claimed in (n - 50, n + 50):
        with pytest.raises(RuntimeError):
            engine._b64_message(b"H: v\r\n\r\n", iter([b"x" * n]), claimed)


@pytest.mark.parametrize("size", [0, 1, 15, 16, 1024, 20 * 1024, 40 * 1024])
@pytest.mark.parametrize("cipher", ["aes256-cbc", "aes256-gcm"])
def test_small_copies_are_pkcs7_mime_of_the_oracle_s_der(pki, size: int, cipher: str) -> None:
    """The copy of every message under ~40 KB (the one-join path) is `pkcs7_mime` of the DER the
    asn1crypto oracle builds with the same CEK and IV."""
    content = os.urandom(size)
    certs, keys = [pki["person_encrypt"].cert], [pki["person_encrypt"].key]
    options = {"cipher": cipher, "key_transport": "pkcs1v15", "recipient_id": "issuer-serial"}
    draws = Draws(b"small-%d" % size)
    der_size, pieces = encrypt_content_sized(content, certs, random=draws, **options)  # type: ignore[arg-type]
    seen: list[bytes] = []

    def recorded():  # type: ignore[no-untyped-def]
        for piece in pieces:
            seen.append(bytes(piece))
            yield piece

    smime_type = "authEnveloped-data" if cipher == "aes256-gcm" else "enveloped-data"
    message = engine._b64_message(engine.pkcs7_mime_head(OUTER, smime_type), recorded(), der_size)
    der = b"".join(seen)
    assert der == _oracle_for(der, content, certs, keys, draws, **options)
    assert message == pkcs7_mime(OUTER, der, smime_type)


async def test_signer_template_by_identity_follows_chain_hash_and_padding(key) -> None:
    """The same certificate object signs with another chain, hash or padding between calls, and a
    fresh object of the same DER: each signature is the oracle's for what was asked."""
    org = key("org_sign")
    bare = SoftKey(org.private_key, org.certificate, ())
    copy = x509.load_der_x509_certificate(org.certificate.public_bytes(serialization.Encoding.DER))
    reloaded = SoftKey(org.private_key, copy, tuple(org.chain))
    content = b"TEST content\r\n"
    for signer, options in [(org, {}), (bare, {}), (org, {"hash_name": "sha384"}), (org, {"pss": True}),
                            (bare, {"hash_name": "sha512", "pss": True}), (reloaded, {}), (org, {})]:
        same = SameSignature(signer)
        fast = await sign_content(content, same, signing_time=WHEN, **options)
        assert fast == await sign_content_reference(content, same, signing_time=WHEN, **options), options
        certificates = cms.ContentInfo.load(fast)["content"]["certificates"]
        assert len(certificates) == 1 + len(signer.chain)


def test_recipient_template_by_identity_follows_the_options(pki) -> None:
    certs, keys = [pki["person_encrypt"].cert], [pki["person_encrypt"].key]
    for key_transport, recipient_id in [("pkcs1v15", "issuer-serial"), ("oaep", "issuer-serial"),
                                        ("pkcs1v15", "ski"), ("oaep", "ski"), ("pkcs1v15", "issuer-serial")]:
        options = {"cipher": "aes256-cbc", "key_transport": key_transport, "recipient_id": recipient_id}
        draws = Draws(f"{key_transport}-{recipient_id}".encode())
        der = encrypt_content(b"TEST content\r\n", certs, random=draws, **options)  # type: ignore[arg-type]
        assert der == _oracle_for(der, b"TEST content\r\n", certs, keys, draws, **options)


def test_a_recipient_refused_once_is_refused_every_time(pki) -> None:
    """Only templates that were made are remembered: a certificate not for key encipherment is
    refused on every message, never served from the identity cache."""
    wrong = pki["person_sign"].cert
    for _ in range(3):
        with pytest.raises(WrongKeyUsage):
            encrypt_content(b"x", [wrong])


def test_identity_caches_are_bounded(pki) -> None:
    der = pki["person_encrypt"].cert.public_bytes(serialization.Encoding.DER)
    objects = [x509.load_der_x509_certificate(der) for _ in range(cms_envelope._RECENT_SIZE + 10)]
    for cert in objects:
        encrypt_content(b"x", [cert])
    assert len(cms_envelope._RECENT) <= cms_envelope._RECENT_SIZE
    assert len(cms_sign._RECENT) <= cms_sign._RECENT_SIZE


@pytest.mark.parametrize("sizes", [[0], [1, 0, 5], [700, 300, 24], [INLINE_HASH - 10, 100], [INLINE_HASH, 1, 3]])
async def test_digest_over_parts_is_the_digest_of_the_joined_bytes(key, sizes: list[int]) -> None:
    """A small entity's parts are hashed as they are, a large one by windows: the signature is
    the one over the joined bytes (and so the oracle's)."""
    parts = [os.urandom(n) for n in sizes]
    whole = b"".join(parts)
    same = SameSignature(key("org_sign"))
    as_pieces = await sign_content(Pieces([parts[0], *map(memoryview, parts[1:])]), same, signing_time=WHEN)
    assert as_pieces == await sign_content(whole, same, signing_time=WHEN)
    assert as_pieces == await sign_content_reference(whole, same, signing_time=WHEN)
    attrs = cms.ContentInfo.load(as_pieces)["content"]["signer_infos"][0]["signed_attrs"]
    digest = next(a for a in attrs if a["type"].native == "message_digest")["values"][0].native
    assert digest == hashlib.sha256(whole).digest()


@pytest.mark.parametrize("name", ["org_sign", "expired", "not_yet_valid"])
def test_signing_key_validity_read_once_is_keycheck_s_answer(key, name: str) -> None:
    """`GuardedKey.current` says what `keycheck.current` says, at the very edges of validity."""
    guarded = GuardedKey("labo-sign", key(name), lambda n, e: None)  # type: ignore[arg-type,return-value]
    cert = guarded.certificate
    not_before, not_after = cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
    now = dt.datetime.now(dt.UTC).timestamp()
    for t in (not_before - 1, not_before - 0.5, not_before, not_before + 1, not_after - 1, not_after - 0.5,
              not_after, not_after + 1, now):
        expected = keycheck.current(cert, dt.datetime.fromtimestamp(t, dt.UTC)) is None
        assert guarded.current(t) is expected, (name, t)
    assert guarded.current() is (keycheck.current(cert, dt.datetime.now(dt.UTC)) is None)


def test_validity_follows_the_key_s_certificate(key) -> None:
    """Keyed on the certificate object: a key that now shows another certificate is read again."""
    valid, expired = key("org_sign"), key("expired")
    guarded = GuardedKey("labo-sign", valid, lambda n, e: None)  # type: ignore[arg-type,return-value]
    assert guarded.current()
    guarded.key = expired
    assert not guarded.current()
    guarded.key = valid
    assert guarded.current()


async def test_signer_usage_is_remembered_only_when_it_passed(key) -> None:
    """The trust-space copy checks the signer's usage once per certificate object; a certificate
    not for signing is refused every time."""
    not_for_signing = key("person_encrypt")
    message = b"From: <a@b.test>\r\nSubject: x\r\n\r\nTEST body\r\n"
    for _ in range(2):
        with pytest.raises(WrongKeyUsage):
            await protect.sign_protected(message, not_for_signing)
    assert id(not_for_signing.certificate) not in protect._USABLE_SIGNERS
    signer = key("org_sign")
    for _ in range(2):
        signed = await protect.sign_protected(message, signer)
        assert b"application/pkcs7-signature" in signed
    assert protect._USABLE_SIGNERS[id(signer.certificate)] is signer.certificate


@pytest.mark.parametrize("sizes", [[0], [0, 0], [1, 15], [7, 0, 9, 16, 33], [1000, 1, 2, 3], [16, 16, 16],
                                   [cms_envelope.PIECE - 5, 3, 11], [cms_envelope.PIECE + 1, 15]])
@pytest.mark.parametrize("cipher", ["aes256-cbc", "aes256-gcm"])
def test_pieces_cut_anywhere_encrypt_as_the_joined_bytes(pki, sizes: list[int], cipher: str) -> None:
    """A small entity is encrypted part by part (no join), a large one by windows: the DER is the
    oracle's for the joined bytes with the same CEK and IV."""
    parts = [os.urandom(n) for n in sizes]
    whole = b"".join(parts)
    certs, keys = [pki["person_encrypt"].cert], [pki["person_encrypt"].key]
    options = {"cipher": cipher, "key_transport": "pkcs1v15", "recipient_id": "issuer-serial"}
    draws = Draws(b"cut")
    size, pieces = encrypt_content_sized(Pieces([memoryview(p) for p in parts]), certs, random=draws,
                                         **options)  # type: ignore[arg-type]
    der = b"".join(pieces)
    assert size == len(der)
    assert der == _oracle_for(der, whole, certs, keys, draws, **options)


async def test_a_loaded_key_whose_certificate_is_no_longer_current_is_not_answered(pki, key, tmp_path) -> None:
    """The loaded-key shortcut of `GatewayContext._key` answers only a current certificate: a key
    that now shows an expired one (what a certificate expiring while loaded looks like) takes the
    full path: temporary KeyUnavailable with the reason, and the files are read again next time."""
    entry, e = key("org_sign"), pki["org_sign"]
    ctx = context(tmp_path, pki, str(e.key_path), str(e.cert_path), str(e.chain_path))
    try:
        first = await ctx.signing_key(ORG_EMAIL)
        assert first is not None and first.certificate == entry.certificate
        assert await ctx.signing_key(ORG_EMAIL) is first  # the shortcut
        ctx._keys["labo-sign"].key = key("expired")
        with pytest.raises(KeyUnavailable) as raised:
            await ctx.signing_key(ORG_EMAIL)
        assert raised.value.temporary and "expired on" in str(raised.value)
        assert "labo-sign" not in ctx._keys
        again = await ctx.signing_key(ORG_EMAIL)  # read from the files again: the valid certificate
        assert again is not None and again is not first and again.certificate == entry.certificate
    finally:
        ctx.close()
