"""Open CMS EnvelopedData and AuthEnvelopedData through the async `DecryptionKey` protocol.

Hand-built with asn1crypto + cryptography primitives because `cryptography`'s
pkcs7_decrypt_* rejects what real clients send: RSA-OAEP, AuthEnvelopedData (AES-GCM),
subjectKeyIdentifier recipients and BER indefinite lengths (gpgsm); and because the key may
live on a token that only unwraps the CEK. Against padding-oracle probing (RFC 3218), an RSA
failure is not reported: we go on with a random CEK and every failure after that point is
the same generic `DecryptionFailed`; content decrypted with our stand-in key is never returned.
Limit: with PKCS#1 v1.5, OpenSSL >= 3.2 (implicit rejection) does not fail a bad unwrap but
returns a synthetic key; when its length happens to be the CEK's, CBC content may "decrypt" to
garbage (about 1 in 60,000 corrupted messages). Nothing tells garbage from content in CBC: the
signature inside (always present on our outbound mail) or AES-GCM is what proves integrity.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from asn1crypto import cms
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.errors import GatewayError
from gateway.smime.cms_envelope import GCMParameters
from gateway.smime.cmsutil import PARSE_ERRORS, der_set, matches_identifier, octets, parse_content_info
from gateway.smime.errors import DecryptionFailed, MalformedSmime, NotForUs, UnsupportedAlgorithm
from gateway.smime.keyapi import DecryptionKey, KeyTransportPadding

_KEY_SIZES = {"aes128_cbc": 16, "aes192_cbc": 24, "aes256_cbc": 32, "tripledes_3key": 24,
              "aes128_gcm": 16, "aes192_gcm": 24, "aes256_gcm": 32}
_GENERIC = "decryption failed"


def _transport_padding(alg: cms.KeyEncryptionAlgorithm) -> KeyTransportPadding:
    name = alg["algorithm"].native
    if name == "rsaes_pkcs1v15":
        return "pkcs1v15"
    if name == "rsaes_oaep":
        params = alg["parameters"]
        h = params["hash_algorithm"]["algorithm"].native
        mgf = params["mask_gen_algorithm"]
        if mgf["algorithm"].native != "mgf1" or mgf["parameters"]["algorithm"].native != h:
            raise UnsupportedAlgorithm("OAEP with a different MGF hash is not supported")
        if params["p_source_algorithm"]["parameters"].native not in (b"", None):
            raise UnsupportedAlgorithm("OAEP labels are not supported")
        if h == "sha1":
            return "oaep-sha1"
        if h == "sha256":
            return "oaep-sha256"
        raise UnsupportedAlgorithm("OAEP hash not supported")
    raise UnsupportedAlgorithm("key transport algorithm not supported")


async def _content_key(infos: cms.RecipientInfos, keys: Sequence[DecryptionKey], size: int) -> tuple[bytes, bool]:
    """The content key and whether it is a stand-in for a key that failed to unwrap."""
    for ri in infos:
        if ri.name != "ktri":
            continue  # key agreement / KEK recipients are not ours
        ktri = ri.chosen
        for key in keys:
            if not matches_identifier(ktri["rid"], key.certificate):
                continue
            padding_name = _transport_padding(ktri["key_encryption_algorithm"])
            try:
                cek = await key.decrypt_key(ktri["encrypted_key"].native, padding_name)
            except GatewayError as exc:
                if exc.temporary:
                    raise  # token absent or busy: retry later, this is no oracle
                cek = b""
            if len(cek) != size:
                # RFC 3218: no oracle. Decrypt the content with a random key anyway (same work, same
                # timing) and report the one generic error at the end, even if the padding happens
                # to look valid (1 in 256 with CBC).
                return os.urandom(size), True
            return cek, False
    raise NotForUs("message is not encrypted for any key we hold")


def _cbc(name: str, cek: bytes, iv: bytes, data: bytes) -> bytes:
    algo = TripleDES(cek) if name == "tripledes_3key" else algorithms.AES(cek)
    block = 64 if name == "tripledes_3key" else 128
    if len(iv) != block // 8 or not data or len(data) % (block // 8):
        raise DecryptionFailed(_GENERIC)
    dec = Cipher(algo, modes.CBC(iv)).decryptor()
    padded = dec.update(data) + dec.finalize()
    unpadder = padding.PKCS7(block).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise DecryptionFailed(_GENERIC) from None


def cipher_name(oid_name: str) -> str:
    """Our short name of a content-encryption algorithm ("aes256-cbc", "3des-cbc"), for verdicts."""
    return "3des-cbc" if oid_name == "tripledes_3key" else oid_name.replace("_", "-")


async def decrypt_content(der: bytes, keys: Sequence[DecryptionKey]) -> bytes:
    """The plaintext of an EnvelopedData/AuthEnvelopedData (DER or BER) for one of `keys`."""
    return (await open_enveloped(der, keys))[0]


async def open_enveloped(der: bytes, keys: Sequence[DecryptionKey]) -> tuple[bytes, str]:
    """(plaintext, content-encryption algorithm) of an EnvelopedData/AuthEnvelopedData: the
    algorithm is reported so that a weak one (3DES) can be named in the verdict."""
    info = parse_content_info(der)
    kind = info["content_type"].native
    if kind not in ("enveloped_data", "authenticated_enveloped_data"):
        raise MalformedSmime("not a CMS EnvelopedData or AuthEnvelopedData")
    try:
        return await _decrypt(kind, info["content"], keys)
    except PARSE_ERRORS as exc:
        raise MalformedSmime("enveloped data cannot be read") from exc


async def _decrypt(kind: str, env: cms.EnvelopedData | cms.AuthEnvelopedData,
                   keys: Sequence[DecryptionKey]) -> tuple[bytes, str]:
    eci = env["encrypted_content_info" if kind == "enveloped_data" else "auth_encrypted_content_info"]
    alg = eci["content_encryption_algorithm"]
    name = alg["algorithm"].native
    if name not in _KEY_SIZES or (kind == "authenticated_enveloped_data") != name.endswith("_gcm"):
        raise UnsupportedAlgorithm("content encryption algorithm not supported")
    data = octets(eci["encrypted_content"])
    if not name.endswith("_gcm"):
        iv = alg["parameters"].native
        if not isinstance(iv, bytes):
            raise MalformedSmime("content encryption parameters missing")
        cek, stand_in = await _content_key(env["recipient_infos"], keys, _KEY_SIZES[name])
        plain = _cbc(name, cek, iv, data)
        if stand_in:
            raise DecryptionFailed(_GENERIC)
        return plain, cipher_name(name)
    params = GCMParameters.load(alg["parameters"].dump())
    nonce, icvlen, mac = params["aes_nonce"].native, params["aes_icvlen"].native, env["mac"].native
    aad = der_set(env["auth_attrs"].contents) if isinstance(env["auth_attrs"], cms.CMSAttributes) else None
    if icvlen != 16 or len(mac) != 16 or len(nonce) < 12:
        raise UnsupportedAlgorithm("only 16-byte GCM tags and 96-bit or longer nonces are supported")
    cek, _stand_in = await _content_key(env["recipient_infos"], keys, _KEY_SIZES[name])
    try:
        return AESGCM(cek).decrypt(nonce, data + mac, aad), cipher_name(name)  # a stand-in never passes the tag
    except (InvalidTag, ValueError):
        raise DecryptionFailed(_GENERIC) from None
