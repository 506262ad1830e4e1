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
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from gateway.smime.cmsutil import der_length, issuer_and_serial, subject_key_id
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


def _envelope_der(kind: str, version: str, infos: list[cms.RecipientInfo], eci_head: bytes,
                  ciphertext: Sequence[bytes], trailer: bytes = b"") -> bytes:
    """ContentInfo { kind, [0] { version, recipientInfos, EncryptedContentInfo { eci_head,
    [0] IMPLICIT OCTET STRING ciphertext }, trailer } } in DER, assembled around the ciphertext.

    Why by hand: asn1crypto copies the whole ciphertext at each of the four nesting levels it
    dumps; for a 50 MB message that was most of the gateway's peak memory. Only the headers are
    computed here (the small parts are still asn1crypto's), and the ciphertext is copied once,
    into the result. The tests compare this output with asn1crypto's, byte for byte.
    """
    ct_len = sum(len(c) for c in ciphertext)
    octet_head = b"\x80" + der_length(ct_len)  # encryptedContent [0] IMPLICIT OCTET STRING, primitive
    eci_len = len(eci_head) + len(octet_head) + ct_len
    eci_hdr = b"\x30" + der_length(eci_len)
    version_der = cms.CMSVersion(version).dump()
    infos_der = cms.RecipientInfos(infos).dump()
    inner_len = len(version_der) + len(infos_der) + len(eci_hdr) + eci_len + len(trailer)
    inner_hdr = b"\x30" + der_length(inner_len)
    explicit_hdr = b"\xa0" + der_length(len(inner_hdr) + inner_len)
    oid = cms.ContentType(kind).dump()
    outer_hdr = b"\x30" + der_length(len(oid) + len(explicit_hdr) + len(inner_hdr) + inner_len)
    return b"".join([outer_hdr, oid, explicit_hdr, inner_hdr, version_der, infos_der, eci_hdr, eci_head,
                     octet_head, *ciphertext, trailer])


def encrypt_content(content: bytes, recipients: Sequence[x509.Certificate], *, cipher: CipherName = "aes256-cbc",
                    key_transport: KeyTransport = "pkcs1v15", recipient_id: RecipientId = "issuer-serial") -> bytes:
    """DER ContentInfo(EnvelopedData | AuthEnvelopedData) of `content` for every recipient."""
    if not recipients:
        raise UnsupportedAlgorithm("at least one recipient certificate is needed")
    if cipher not in ("aes256-cbc", "aes256-gcm"):
        raise UnsupportedAlgorithm(f"cipher {cipher!r} not supported")
    cek = os.urandom(32)
    infos = [_recipient_info(c, cek, key_transport, recipient_id) for c in recipients]
    data_type = cms.ContentType("data").dump()
    if cipher == "aes256-gcm":
        nonce = os.urandom(12)
        gcm = Cipher(algorithms.AES(cek), modes.GCM(nonce)).encryptor()
        sealed = gcm.update(content)
        tail = gcm.finalize()
        alg = cms.EncryptionAlgorithm({"algorithm": "aes256_gcm",
                                       "parameters": GCMParameters({"aes_nonce": nonce, "aes_icvlen": 16})})
        return _envelope_der("authenticated_enveloped_data", "v0", infos, data_type + alg.dump(), [sealed, tail],
                             trailer=core.OctetString(gcm.tag).dump())
    iv = os.urandom(16)
    enc = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
    whole = len(content) - len(content) % 16
    pad = 16 - len(content) % 16  # PKCS#7: always 1 to 16 bytes
    body = enc.update(memoryview(content)[:whole])  # the one whole-size copy besides the result
    last = enc.update(content[whole:] + bytes([pad]) * pad) + enc.finalize()
    alg = cms.EncryptionAlgorithm({"algorithm": "aes256_cbc", "parameters": iv})
    version = "v2" if recipient_id == "ski" else "v0"
    return _envelope_der("enveloped_data", version, infos, data_type + alg.dump(), [body, last])
