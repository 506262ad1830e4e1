"""Build CMS SignedData (RFC 5652) through the async `SigningKey` protocol.

Hand-built with asn1crypto because `cryptography`'s PKCS7SignatureBuilder needs the private
key object in-process: a CPS card or an HSM only signs the DER of the signed attributes we
hand it (keyapi). So we build signedAttrs (contentType, messageDigest, signingTime,
smimeCapabilities, DER-sorted as a SET), ask the key to sign them, and assemble the
SignerInfo and SignedData ourselves. RSA PKCS#1 v1.5, RSA-PSS and ECDSA are supported.
"""

from __future__ import annotations

import datetime as dt

from asn1crypto import algos, cms, core
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.smime.cmsutil import issuer_and_serial, to_asn1
from gateway.smime.errors import UnsupportedAlgorithm
from gateway.smime.keyapi import HashName, SignaturePadding, SigningKey
from gateway.smime.softkeys import hash_for

#: What we announce we can read (RFC 8551 2.5.2), strongest first.
SMIME_CAPABILITIES = ("2.16.840.1.101.3.4.1.46", "2.16.840.1.101.3.4.1.42", "2.16.840.1.101.3.4.1.2",
                      "1.2.840.113549.1.1.7", "1.2.840.113549.1.1.1")


def padding_for(key: SigningKey, pss: bool = False) -> SignaturePadding:
    """The signature scheme the certificate's key type allows."""
    pub = key.certificate.public_key()
    if isinstance(pub, ec.EllipticCurvePublicKey):
        return "ecdsa"
    if isinstance(pub, rsa.RSAPublicKey):
        return "pss" if pss else "pkcs1v15"
    raise UnsupportedAlgorithm("signing key type not supported (RSA or EC only)")


def signature_algorithm(padding: SignaturePadding, hash_name: HashName) -> algos.SignedDigestAlgorithm:
    if padding == "ecdsa":
        return algos.SignedDigestAlgorithm({"algorithm": f"{hash_name}_ecdsa"})
    if padding == "pss":
        size = hash_for(hash_name).digest_size
        return algos.SignedDigestAlgorithm({"algorithm": "rsassa_pss", "parameters": algos.RSASSAPSSParams({
            "hash_algorithm": {"algorithm": hash_name},
            "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": hash_name}},
            "salt_length": size})})
    return algos.SignedDigestAlgorithm({"algorithm": "rsassa_pkcs1v15", "parameters": core.Null()})


def _capabilities() -> cms.SMIMECapabilites:
    return cms.SMIMECapabilites([cms.SMIMECapabilityIdentifier({"capability_id": oid})
                                 for oid in SMIME_CAPABILITIES])


def _digest(data: bytes, hash_name: HashName) -> bytes:
    h = hashes.Hash(hash_for(hash_name))
    h.update(data)
    return h.finalize()


async def sign_content(content: bytes, key: SigningKey, *, detached: bool = True, hash_name: HashName = "sha256",
                       pss: bool = False, signing_time: dt.datetime | None = None) -> bytes:
    """DER ContentInfo(SignedData) over `content` (already canonical); detached or encapsulated."""
    padding = padding_for(key, pss)
    when = (signing_time or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    signed_attrs = cms.CMSAttributes([
        cms.CMSAttribute({"type": "content_type", "values": ["data"]}),
        cms.CMSAttribute({"type": "signing_time", "values": [cms.Time({"utc_time": when})]}),
        cms.CMSAttribute({"type": "message_digest", "values": [_digest(content, hash_name)]}),
        cms.CMSAttribute({"type": "smime_capabilities", "values": [_capabilities()]}),
    ])
    to_sign = signed_attrs.dump()  # a universal SET, DER-sorted by asn1crypto
    signature = await key.sign(to_sign, hash_name, padding)
    signer_info = cms.SignerInfo({
        "version": "v1",
        "sid": cms.SignerIdentifier({"issuer_and_serial_number": issuer_and_serial(key.certificate)}),
        "digest_algorithm": {"algorithm": hash_name},
        "signed_attrs": signed_attrs,
        "signature_algorithm": signature_algorithm(padding, hash_name),
        "signature": signature,
    })
    certs = [key.certificate, *key.chain]
    encap: dict[str, object] = {"content_type": "data"}
    if not detached:
        encap["content"] = content
    signed = cms.SignedData({
        "version": "v1",
        "digest_algorithms": [{"algorithm": hash_name}],
        "encap_content_info": encap,
        "certificates": [cms.CertificateChoices({"certificate": to_asn1(c)}) for c in certs],
        "signer_infos": [signer_info],
    })
    return cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump()
