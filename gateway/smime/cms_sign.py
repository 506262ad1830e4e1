"""Build CMS SignedData (RFC 5652) through the async `SigningKey` protocol.

Hand-built with asn1crypto because `cryptography`'s PKCS7SignatureBuilder needs the private
key object in-process: a CPS card or an HSM only signs the DER of the signed attributes we
hand it (keyapi). So we build signedAttrs (contentType, messageDigest, signingTime,
smimeCapabilities, DER-sorted as a SET), ask the key to sign them, and assemble the
SignerInfo and SignedData ourselves. RSA PKCS#1 v1.5, RSA-PSS and ECDSA are supported.
"""

from __future__ import annotations

import datetime as dt
import functools

from asn1crypto import algos, cms, core
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.smime.cmsutil import der_length, issuer_and_serial
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


@functools.cache
def _constant_attributes() -> tuple[bytes, bytes]:
    """DER of the two signed attributes that never change (contentType data, our capabilities).

    Why cached: asn1crypto builds and DER-sorts the capabilities list anew each time, which cost
    more than the RSA signature itself (0.65 ms of 1.9 ms a signature, bench/relay_throughput.py);
    a loaded attribute is dumped back as the very bytes it was loaded from."""
    return (cms.CMSAttribute({"type": "content_type", "values": ["data"]}).dump(),
            cms.CMSAttribute({"type": "smime_capabilities", "values": [_capabilities()]}).dump())


def _digest(data: bytes, hash_name: HashName) -> bytes:
    h = hashes.Hash(hash_for(hash_name))
    h.update(data)
    return h.finalize()


async def sign_content(content: bytes, key: SigningKey, *, detached: bool = True, hash_name: HashName = "sha256",
                       pss: bool = False, signing_time: dt.datetime | None = None) -> bytes:
    """DER ContentInfo(SignedData) over `content` (already canonical); detached or encapsulated."""
    padding = padding_for(key, pss)
    when = (signing_time or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    content_type, capabilities = _constant_attributes()
    signed_attrs = cms.CMSAttributes([
        cms.CMSAttribute.load(content_type),
        cms.CMSAttribute({"type": "signing_time", "values": [cms.Time({"utc_time": when})]}),
        cms.CMSAttribute({"type": "message_digest", "values": [_digest(content, hash_name)]}),
        cms.CMSAttribute.load(capabilities),
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
    certs = tuple(c.public_bytes(serialization.Encoding.DER) for c in (key.certificate, *key.chain))
    encap: dict[str, object] = {"content_type": "data"}
    if not detached:
        encap["content"] = content
    return signed_data_der(hash_name, cms.EncapsulatedContentInfo(encap).dump(), certs, signer_info.dump())


def signed_data_der(hash_name: HashName, encap_der: bytes, certificates: tuple[bytes, ...],
                    signer_info_der: bytes) -> bytes:
    """ContentInfo { signedData, [0] SignedData { v1, digestAlgorithms, encapContentInfo,
    [0] IMPLICIT certificates, signerInfos } } in DER, from its parts' DER.

    Why by hand (as `cms_envelope._envelope_der`): asn1crypto re-encodes every certificate of the
    chain each time it dumps the structure, about 0.4 ms a signature on a 2-core machine, which is
    a third of what signing costs besides the RSA operation itself. Only the outer headers are
    computed here; the tests compare the result with asn1crypto's, byte for byte."""
    body = b"".join([_VERSION_1, _digest_algorithms(hash_name), encap_der, _certificate_set(certificates),
                     _set_of([signer_info_der])])
    signed = b"\x30" + der_length(len(body)) + body
    explicit = b"\xa0" + der_length(len(signed)) + signed
    inner = _SIGNED_DATA_OID + explicit
    return b"\x30" + der_length(len(inner)) + inner


_VERSION_1 = b"\x02\x01\x01"  # CMSVersion v1
_SIGNED_DATA_OID = cms.ContentType("signed_data").dump()


def _set_of(encodings: list[bytes], tag: bytes = b"\x31") -> bytes:
    """A DER SET OF: its elements sorted by their encodings (X.690 11.6), as asn1crypto does."""
    body = b"".join(sorted(encodings))
    return tag + der_length(len(body)) + body


@functools.lru_cache(maxsize=8)
def _digest_algorithms(hash_name: HashName) -> bytes:
    return cms.DigestAlgorithms([{"algorithm": hash_name}]).dump()


@functools.lru_cache(maxsize=64)
def _certificate_set(certificates: tuple[bytes, ...]) -> bytes:
    """certificates [0] IMPLICIT CertificateSet (a certificate choice is the certificate itself)."""
    return _set_of(list(certificates), tag=b"\xa0")
