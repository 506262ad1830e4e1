"""Build CMS EnvelopedData and AuthEnvelopedData (RFC 5652, RFC 5083) to many recipients.

Hand-built with asn1crypto + cryptography primitives because `cryptography`'s
PKCS7EnvelopeBuilder only does RSA PKCS#1 v1.5 + AES-CBC to issuer+serial recipients: it
has no RSA-OAEP, no AES-GCM AuthEnvelopedData and no subjectKeyIdentifier recipients. One
builder for every profile keeps the default (PKCS#1 v1.5 + AES-256-CBC + issuer+serial, the
only one OpenSSL, gpgsm 2.2 and most clients all read) and the options on the same path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

from asn1crypto import algos, cms, core
from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.smime.cmsutil import issuer_and_serial, subject_key_id
from gateway.smime.errors import UnsupportedAlgorithm, WrongKeyUsage

CipherName = Literal["aes256-cbc", "aes256-gcm"]
KeyTransport = Literal["pkcs1v15", "oaep"]
RecipientId = Literal["issuer-serial", "ski"]


class GCMParameters(core.Sequence):
    """RFC 5084 GCMParameters (asn1crypto has the OID but not the parameter type)."""

    _fields = [("aes_nonce", core.OctetString), ("aes_icvlen", core.Integer, {"default": 12})]


def oaep_sha256_algorithm() -> cms.KeyEncryptionAlgorithm:
    return cms.KeyEncryptionAlgorithm({"algorithm": "rsaes_oaep", "parameters": algos.RSAESOAEPParams({
        "hash_algorithm": {"algorithm": "sha256"},
        "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": "sha256"}}})})


def check_encryption_usage(cert: x509.Certificate) -> rsa.RSAPublicKey:
    """A recipient certificate must hold an RSA key allowed for key encipherment."""
    pub = cert.public_key()
    if not isinstance(pub, rsa.RSAPublicKey):
        raise UnsupportedAlgorithm("recipient key is not RSA (key agreement is not supported)")
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.key_encipherment:
            raise WrongKeyUsage("recipient certificate is not for key encipherment")
    except x509.ExtensionNotFound:
        pass
    return pub


def _recipient_info(cert: x509.Certificate, cek: bytes, key_transport: KeyTransport,
                    recipient_id: RecipientId) -> cms.RecipientInfo:
    pub = check_encryption_usage(cert)
    if key_transport == "oaep":
        h = hashes.SHA256()
        encrypted = pub.encrypt(cek, asym_padding.OAEP(mgf=asym_padding.MGF1(h), algorithm=h, label=None))
        alg = oaep_sha256_algorithm()
    else:
        encrypted = pub.encrypt(cek, asym_padding.PKCS1v15())
        alg = cms.KeyEncryptionAlgorithm({"algorithm": "rsaes_pkcs1v15", "parameters": core.Null()})
    if recipient_id == "ski":
        rid = cms.RecipientIdentifier({"subject_key_identifier": subject_key_id(cert)})
        version = "v2"
    else:
        rid = cms.RecipientIdentifier({"issuer_and_serial_number": issuer_and_serial(cert)})
        version = "v0"
    return cms.RecipientInfo({"ktri": cms.KeyTransRecipientInfo({
        "version": version, "rid": rid, "key_encryption_algorithm": alg, "encrypted_key": encrypted})})


def encrypt_content(content: bytes, recipients: Sequence[x509.Certificate], *, cipher: CipherName = "aes256-cbc",
                    key_transport: KeyTransport = "pkcs1v15", recipient_id: RecipientId = "issuer-serial") -> bytes:
    """DER ContentInfo(EnvelopedData | AuthEnvelopedData) of `content` for every recipient."""
    if not recipients:
        raise UnsupportedAlgorithm("at least one recipient certificate is needed")
    cek = os.urandom(32)
    infos = [_recipient_info(c, cek, key_transport, recipient_id) for c in recipients]
    if cipher == "aes256-gcm":
        nonce = os.urandom(12)
        sealed = AESGCM(cek).encrypt(nonce, content, None)
        eci = cms.EncryptedContentInfo({
            "content_type": "data",
            "content_encryption_algorithm": {"algorithm": "aes256_gcm",
                                             "parameters": GCMParameters({"aes_nonce": nonce, "aes_icvlen": 16})},
            "encrypted_content": sealed[:-16]})
        auth = cms.AuthEnvelopedData({"version": "v0", "recipient_infos": infos,
                                      "auth_encrypted_content_info": eci, "mac": sealed[-16:]})
        return cms.ContentInfo({"content_type": "authenticated_enveloped_data", "content": auth}).dump()
    if cipher != "aes256-cbc":
        raise UnsupportedAlgorithm(f"cipher {cipher!r} not supported")
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(content) + padder.finalize()
    enc = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
    eci = cms.EncryptedContentInfo({
        "content_type": "data",
        "content_encryption_algorithm": {"algorithm": "aes256_cbc", "parameters": iv},
        "encrypted_content": enc.update(padded) + enc.finalize()})
    version = "v2" if recipient_id == "ski" else "v0"
    env = cms.EnvelopedData({"version": version, "recipient_infos": infos, "encrypted_content_info": eci})
    return cms.ContentInfo({"content_type": "enveloped_data", "content": env}).dump()
