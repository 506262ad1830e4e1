"""The CMS builders written wholly with asn1crypto: the oracle of the template builders.

`cms_sign.sign_content` and `cms_envelope.encrypt_content` assemble DER from cached templates
(`cms_template`) for speed; these functions build the same structures the slow, obvious way —
every element an asn1crypto object, the whole ContentInfo dumped by asn1crypto — so that the
tests (tests/smime/test_cms_template*.py) can demand byte-identical output from both, and
bench/cms_build.py can time both in the same run. Not used on the gateway's path.

Deterministic given its inputs: the signing time is an argument, and the encryption takes the
CEK, the IV (nonce) and the encrypted keys (RSA key transport pads at random) as arguments.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from asn1crypto import cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.padding import PKCS7

from gateway.smime.cms_template import (
    GCMParameters,
    capabilities,
    key_encryption_algorithm,
    padding_for,
    recipient_identifier,
    signature_algorithm,
)
from gateway.smime.cmsutil import issuer_and_serial
from gateway.smime.keyapi import HashName, SigningKey
from gateway.smime.softkeys import hash_for


def signed_attributes_reference(content: bytes, hash_name: HashName, when: dt.datetime) -> cms.CMSAttributes:
    h = hashes.Hash(hash_for(hash_name))
    h.update(content)
    return cms.CMSAttributes([
        cms.CMSAttribute({"type": "content_type", "values": ["data"]}),
        cms.CMSAttribute({"type": "signing_time", "values": [cms.Time({"utc_time": when})]}),
        cms.CMSAttribute({"type": "message_digest", "values": [h.finalize()]}),
        cms.CMSAttribute({"type": "smime_capabilities", "values": [capabilities()]}),
    ])


async def sign_content_reference(content: bytes, key: SigningKey, *, detached: bool = True,
                                 hash_name: HashName = "sha256", pss: bool = False,
                                 signing_time: dt.datetime) -> bytes:
    """DER ContentInfo(SignedData), every part encoded by asn1crypto; the key signs the DER
    SET OF the signed attributes (for PSS and ECDSA, whose signatures are random, give a key
    that answers the same bytes with the same signature to compare outputs)."""
    padding = padding_for(key.certificate, pss)
    attrs = signed_attributes_reference(content, hash_name, signing_time.replace(microsecond=0))
    signature = await key.sign(attrs.dump(), hash_name, padding)
    signer_info = cms.SignerInfo({
        "version": "v1",
        "sid": cms.SignerIdentifier({"issuer_and_serial_number": issuer_and_serial(key.certificate)}),
        "digest_algorithm": {"algorithm": hash_name},
        "signed_attrs": attrs,
        "signature_algorithm": signature_algorithm(padding, hash_name),
        "signature": signature,
    })
    encap: dict[str, object] = {"content_type": "data"}
    if not detached:
        encap["content"] = content
    certs = [cms.CertificateChoices({"certificate": asn1_x509.Certificate.load(
        c.public_bytes(serialization.Encoding.DER))}) for c in (key.certificate, *key.chain)]
    signed = cms.SignedData({
        "version": "v1",
        "digest_algorithms": [{"algorithm": hash_name}],
        "encap_content_info": encap,
        "certificates": certs,
        "signer_infos": [signer_info],
    })
    return cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump(force=True)


def encrypt_content_reference(content: bytes, recipients: Sequence[x509.Certificate], *, cipher: str,
                              key_transport: str, recipient_id: str, cek: bytes, iv: bytes,
                              encrypted_keys: Sequence[bytes]) -> bytes:
    """DER ContentInfo(EnvelopedData | AuthEnvelopedData), every part encoded by asn1crypto."""
    infos = []
    for cert, wrapped in zip(recipients, encrypted_keys, strict=True):
        version, rid = recipient_identifier(cert, recipient_id)
        infos.append(cms.RecipientInfo({"ktri": cms.KeyTransRecipientInfo({
            "version": version, "rid": rid, "key_encryption_algorithm": key_encryption_algorithm(key_transport),
            "encrypted_key": wrapped})}))
    if cipher == "aes256-gcm":
        gcm = Cipher(algorithms.AES(cek), modes.GCM(iv)).encryptor()
        sealed = gcm.update(content) + gcm.finalize()
        alg = cms.EncryptionAlgorithm({"algorithm": "aes256_gcm",
                                       "parameters": GCMParameters({"aes_nonce": iv, "aes_icvlen": 16})})
        auth = cms.AuthEnvelopedData({
            "version": "v0", "recipient_infos": infos,
            "auth_encrypted_content_info": {"content_type": "data", "content_encryption_algorithm": alg,
                                            "encrypted_content": sealed},
            "mac": gcm.tag})
        return cms.ContentInfo({"content_type": "authenticated_enveloped_data", "content": auth}).dump(force=True)
    padder = PKCS7(128).padder()
    padded = padder.update(content) + padder.finalize()
    enc = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
    alg = cms.EncryptionAlgorithm({"algorithm": "aes256_cbc", "parameters": iv})
    enveloped = cms.EnvelopedData({
        "version": "v2" if recipient_id == "ski" else "v0", "recipient_infos": infos,
        "encrypted_content_info": {"content_type": "data", "content_encryption_algorithm": alg,
                                   "encrypted_content": enc.update(padded) + enc.finalize()}})
    return cms.ContentInfo({"content_type": "enveloped_data", "content": enveloped}).dump(force=True)


__all__ = ["encrypt_content_reference", "sign_content_reference", "signed_attributes_reference"]
