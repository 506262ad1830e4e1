"""The CMS built from cached DER templates (cms_template, issue 15 item 1) is byte for byte what
the builders written wholly with asn1crypto (cms_reference, the oracle) encode from the same
inputs: signing time fixed, the CEK and IV from an injected source, the RSA key transport's
random padding taken from the template output (and checked by decrypting it with the real key).

Corpus: content sizes 0 B to 1 MB and sizes that put every nesting level of the output on each
side of the DER length-encoding boundaries (127/128, 255/256, 65535/65536); the TEST PKI's keys
(RSA 2048 person and organisation, ECDSA P-256, PSS) and a fresh self-signed RSA 2048 soft key
without chain; detached and opaque; one, two and three recipients; CBC and GCM; issuer+serial
and SKI recipients; PKCS#1 v1.5 and OAEP key transport. (A PKCS#11 key: tests/pkcs11/test_cms_template.py.)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Sequence

import pytest
from asn1crypto import cms
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from gateway.smime import cms_template
from gateway.smime.cms_envelope import encrypt_content
from gateway.smime.cms_reference import encrypt_content_reference, sign_content_reference
from gateway.smime.cms_sign import sign_content
from gateway.smime.cmsutil import matches_identifier
from gateway.smime.keyapi import HashName, SignaturePadding, SigningKey
from gateway.smime.softkeys import SoftKey, load_pem_key

WHEN = dt.datetime(2026, 12, 3, 16, 30, 5, 123456, tzinfo=dt.UTC)
SIZES = [0, 1, 15, 16, 17, 127, 128, 255, 256, 1024, 20 * 1024, 65535, 65536, 1024 * 1024]


class SameSignature:
    """A real key that answers the same bytes with the same signature (PSS and ECDSA signatures
    are random: to compare two builders, both must get one signature of one to-be-signed)."""

    def __init__(self, key: SigningKey) -> None:
        self.key = key
        self.signed: dict[bytes, bytes] = {}

    @property
    def certificate(self) -> x509.Certificate:
        return self.key.certificate

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        return self.key.chain

    async def sign(self, data: bytes, hash_name: HashName, padding: SignaturePadding) -> bytes:
        if data not in self.signed:
            self.signed[data] = await self.key.sign(data, hash_name, padding)
        return self.signed[data]


def _self_signed_rsa() -> SoftKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "TEST SOFT KEY")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(WHEN - dt.timedelta(days=1))
            .not_valid_after(WHEN + dt.timedelta(days=365)).sign(key, hashes.SHA256()))
    return SoftKey(key, cert)


@pytest.fixture(scope="module")
def soft_rsa() -> SoftKey:
    return _self_signed_rsa()


def _key(pki, name: str, chain: bool, soft_rsa: SoftKey) -> SameSignature:
    if name == "soft_rsa":
        return SameSignature(soft_rsa)
    entry = pki[name]
    return SameSignature(load_pem_key(entry.key_path, entry.cert_path, entry.chain_path if chain else None))


async def _both(content: bytes, key: SameSignature, **options) -> tuple[bytes, bytes]:
    fast = await sign_content(content, key, signing_time=WHEN, **options)
    oracle = await sign_content_reference(content, key, signing_time=WHEN, **options)
    assert len(key.signed) == 1  # both asked the key to sign the very same DER SET OF attributes
    return fast, oracle


@pytest.mark.parametrize("name,pss", [("org_sign", False), ("org_sign", True), ("person_sign", False),
                                      ("app_sign", False), ("org_sign_ec", False), ("soft_rsa", False),
                                      ("soft_rsa", True)])
@pytest.mark.parametrize("detached", [True, False], ids=["detached", "opaque"])
@pytest.mark.parametrize("size", SIZES)
async def test_signed_data_from_template_is_the_oracle_s(pki, soft_rsa, name, pss, detached, size) -> None:
    content = os.urandom(size)
    key = _key(pki, name, True, soft_rsa)
    fast, oracle = await _both(content, key, detached=detached, pss=pss)
    assert fast == oracle
    signed = cms.ContentInfo.load(fast)["content"]
    assert signed["encap_content_info"]["content"].native == (None if detached else content)
    attrs = {a["type"].native: a["values"][0].native for a in signed["signer_infos"][0]["signed_attrs"]}
    assert attrs["message_digest"] == hashlib.sha256(content).digest()
    assert attrs["signing_time"] == WHEN.replace(microsecond=0)


@pytest.mark.parametrize("hash_name", ["sha256", "sha384", "sha512"])
@pytest.mark.parametrize("chain", [True, False])
async def test_hashes_and_chains_match_the_oracle(pki, soft_rsa, hash_name, chain) -> None:
    for name in ("person_sign", "org_sign_ec"):
        key = _key(pki, name, chain, soft_rsa)
        fast, oracle = await _both(b"TEST content\r\n", key, hash_name=hash_name)
        assert fast == oracle


async def _opaque_overheads(pki) -> list[int]:
    """For an opaque signature, the content size at which each nesting level's length is 0."""
    key = load_pem_key(pki["org_sign"].key_path, pki["org_sign"].cert_path, pki["org_sign"].chain_path)
    der = await sign_content(b"", key, detached=False, signing_time=WHEN)
    info = cms.ContentInfo.load(der)
    levels = [info, info["content"], info["content"]["encap_content_info"],
              info["content"]["encap_content_info"]["content"]]
    # the contents length of each level when the content is empty (headers of the deeper levels are
    # at their 2-octet minimum there; the sweep's +-8 window absorbs their growth)
    return [len(level.contents) for level in levels] + [0]


@pytest.mark.parametrize("boundary", [127, 128, 255, 256, 65535, 65536])
async def test_opaque_lengths_across_der_boundaries_match_the_oracle(pki, soft_rsa, boundary) -> None:
    key = _key(pki, "org_sign", True, soft_rsa)
    for overhead in await _opaque_overheads(pki):
        for size in range(boundary - overhead - 8, boundary - overhead + 9):
            if size < 0:
                continue
            key.signed.clear()
            fast, oracle = await _both(os.urandom(size), key, detached=False)
            assert fast == oracle, size


class Draws:
    """A fixed source of 'random' bytes, as os.urandom is called: each call its own bytes."""

    def __init__(self, seed: bytes) -> None:
        self.seed = seed
        self.calls: list[bytes] = []

    def __call__(self, n: int) -> bytes:
        out = hashlib.shake_256(self.seed + len(self.calls).to_bytes(4, "big")).digest(n)
        self.calls.append(out)
        return out


def _oracle_for(der: bytes, content: bytes, recipients: Sequence, private_keys: Sequence, draws: Draws,
                **options) -> bytes:
    """The oracle's encoding of what the template path made: same CEK and IV, and the encrypted
    keys read back from `der`, each checked to unwrap to the CEK with its recipient's real key."""
    cek, iv = draws.calls
    body = cms.ContentInfo.load(der)["content"]
    infos = [i.chosen for i in body["recipient_infos"]]
    wrapped = []
    for cert, private in zip(recipients, private_keys, strict=True):
        (info,) = [i for i in infos if matches_identifier(i["rid"], cert)]
        encrypted = info["encrypted_key"].native
        pad = (asym_padding.PKCS1v15() if options["key_transport"] == "pkcs1v15" else
               asym_padding.OAEP(mgf=asym_padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None))
        assert private.decrypt(encrypted, pad) == cek
        wrapped.append(encrypted)
    return encrypt_content_reference(content, recipients, cek=cek, iv=iv, encrypted_keys=wrapped, **options)


RECIPIENTS = {1: ["person_encrypt"], 2: ["person_encrypt", "org_encrypt"],
              3: ["org_encrypt", "person_encrypt", "wrong_usage_ok"]}


def _recipients(pki, count: int, soft_rsa: SoftKey) -> tuple[list, list]:
    certs, keys = [], []
    for name in RECIPIENTS[count]:
        if name == "wrong_usage_ok":  # a third, certificate without KeyUsage: any use allowed
            certs.append(soft_rsa.certificate)
            keys.append(soft_rsa.private_key)
        else:
            certs.append(pki[name].cert)
            keys.append(pki[name].key)
    return certs, keys


@pytest.mark.parametrize("cipher", ["aes256-cbc", "aes256-gcm"])
@pytest.mark.parametrize("count", [1, 2, 3])
@pytest.mark.parametrize("size", SIZES)
async def test_enveloped_data_from_template_is_the_oracle_s(pki, soft_rsa, cipher, count, size) -> None:
    content = os.urandom(size)
    certs, keys = _recipients(pki, count, soft_rsa)
    draws = Draws(b"%d-%d" % (count, size))
    options = {"cipher": cipher, "key_transport": "pkcs1v15", "recipient_id": "issuer-serial"}
    der = encrypt_content(content, certs, random=draws, **options)  # type: ignore[arg-type]
    assert der == _oracle_for(der, content, certs, keys, draws, **options)


@pytest.mark.parametrize("cipher", ["aes256-cbc", "aes256-gcm"])
@pytest.mark.parametrize("key_transport", ["pkcs1v15", "oaep"])
@pytest.mark.parametrize("recipient_id", ["issuer-serial", "ski"])
async def test_envelope_options_match_the_oracle(pki, soft_rsa, cipher, key_transport, recipient_id) -> None:
    certs, keys = _recipients(pki, 2, soft_rsa)
    draws = Draws(b"options")
    options = {"cipher": cipher, "key_transport": key_transport, "recipient_id": recipient_id}
    der = encrypt_content(b"TEST content\r\n", certs, random=draws, **options)  # type: ignore[arg-type]
    assert der == _oracle_for(der, b"TEST content\r\n", certs, keys, draws, **options)


@pytest.mark.parametrize("cipher", ["aes256-cbc", "aes256-gcm"])
@pytest.mark.parametrize("boundary", [127, 128, 255, 256, 65535, 65536])
async def test_envelope_lengths_across_der_boundaries_match_the_oracle(pki, soft_rsa, cipher, boundary) -> None:
    certs, keys = _recipients(pki, 1, soft_rsa)
    options = {"cipher": cipher, "key_transport": "pkcs1v15", "recipient_id": "issuer-serial"}
    empty = cms.ContentInfo.load(encrypt_content(b"", certs, cipher=cipher))  # type: ignore[arg-type]
    eci = empty["content"]["encrypted_content_info" if cipher == "aes256-cbc" else "auth_encrypted_content_info"]
    ciphertext_at_empty = len(eci["encrypted_content"].contents)  # 16 (a padding block) or 0
    overheads = [len(empty["content"].contents), len(eci.contents), len(empty.contents)]
    sizes = {s for o in [*overheads, 0] for s in range(boundary - (o - ciphertext_at_empty) - 20,
                                                       boundary - (o - ciphertext_at_empty) + 21) if s >= 0}
    for size in sorted(sizes):
        draws = Draws(b"%d" % size)
        content = os.urandom(size)
        der = encrypt_content(content, certs, random=draws, **options)  # type: ignore[arg-type]
        assert der == _oracle_for(der, content, certs, keys, draws, **options), size


def test_recipient_template_is_computed_once_per_certificate(pki) -> None:
    """The certificate is parsed and checked once, whichever object carries the same DER."""
    cert = pki["org_encrypt"].cert
    again = x509.load_der_x509_certificate(cert.public_bytes(cms_template.serialization.Encoding.DER))
    first = cms_template.recipient_template(cert, "pkcs1v15", "issuer-serial")
    assert cms_template.recipient_template(again, "pkcs1v15", "issuer-serial") is first
    assert cms_template.recipient_template(cert, "oaep", "issuer-serial") is not first
    assert cms_template.recipient_template(pki["person_encrypt"].cert, "pkcs1v15", "issuer-serial") is not first
    assert cms_template.recipient_template.cache_info().maxsize == cms_template.RECIPIENT_CACHE_SIZE


def test_signer_template_is_computed_once_per_chain_and_options(pki) -> None:
    entry = pki["org_sign"]
    key = load_pem_key(entry.key_path, entry.cert_path, entry.chain_path)
    first = cms_template.signer_template(key.certificate, key.chain, "sha256", False)
    assert cms_template.signer_template(key.certificate, tuple(key.chain), "sha256", False) is first
    assert cms_template.signer_template(key.certificate, (), "sha256", False) is not first
    assert cms_template.signer_template(key.certificate, key.chain, "sha256", True).padding == "pss"
    assert cms_template.signer_template.cache_info().maxsize == cms_template.SIGNER_CACHE_SIZE


async def test_signing_time_outside_utctime_is_refused_as_before(pki) -> None:
    """asn1crypto decides outside 1950-2049 and for a naive time, as it always did here."""
    entry = pki["org_sign"]
    key = load_pem_key(entry.key_path, entry.cert_path)
    for when in (dt.datetime(2050, 1, 1, tzinfo=dt.UTC), dt.datetime(2026, 1, 1)):
        with pytest.raises(ValueError):
            await sign_content(b"x", key, signing_time=when)
    paris = dt.timezone(dt.timedelta(hours=1))
    key2 = SameSignature(key)
    local = dt.datetime(2026, 12, 3, 17, 30, 5, tzinfo=paris)
    assert await sign_content(b"x", key2, signing_time=local) == await sign_content_reference(
        b"x", key2, signing_time=local)
