"""Cryptographic check of a CMS SignedData: every SignerInfo, its attributes and signature.

Hand-built with asn1crypto + cryptography primitives because `cryptography` has no CMS
verification API (its maintainers declined to add one). Rules (RFC 5652 5.4, 11):
signer found by issuer+serial or SKI in the CMS certificates or the caller's extra certs;
exactly one messageDigest equal to the digest of the content; exactly one contentType equal
to eContentType; the signature is checked over the *received* signedAttrs bytes with the
IMPLICIT [0] tag turned into a SET (0x31), never a re-encoding. Trust (path, revocation,
usage) is not decided here: see `trust.py`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from asn1crypto import algos, cms
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from gateway.smime.cmsutil import (
    PARSE_ERRORS,
    der_set,
    find_certificate,
    load_strict,
    octets,
    parse_content_info,
)
from gateway.smime.errors import (
    ContentTampered,
    MalformedSmime,
    SignatureInvalid,
    SignerCertificateMissing,
    UnsupportedAlgorithm,
)
from gateway.smime.softkeys import hash_for

ACCEPTED_DIGESTS = ("sha256", "sha384", "sha512")


@dataclass(frozen=True)
class SignerCheck:
    """One SignerInfo whose signature verified."""

    certificate: x509.Certificate
    signing_time: dt.datetime | None
    digest_algorithm: str
    signature_algorithm: str


@dataclass(frozen=True)
class SignedContent:
    """The content of a SignedData whose every signature verified cryptographically."""

    content: bytes
    content_type: str
    signers: tuple[SignerCheck, ...]
    certificates: tuple[x509.Certificate, ...]


def _single(attrs: cms.CMSAttributes, name: str) -> list[cms.CMSAttribute]:
    return [a for a in attrs if a["type"].native == name]


def _digest(name: str, data: bytes) -> bytes:
    if name not in ACCEPTED_DIGESTS:
        raise UnsupportedAlgorithm(f"digest algorithm {name} refused")
    h = hashes.Hash(hash_for(name))
    h.update(data)
    return h.finalize()


def _verify_signature(cert: x509.Certificate, alg: algos.SignedDigestAlgorithm, digest_name: str,
                      signature: bytes, data: bytes) -> str:
    """Check `signature` over `data` with the certificate's key; return the scheme name."""
    name = alg["algorithm"].native
    pub = cert.public_key()
    try:
        if name == "rsassa_pss":
            if not isinstance(pub, rsa.RSAPublicKey):
                raise SignatureInvalid("PSS signature with a non-RSA key")
            params = alg["parameters"]
            h_name = params["hash_algorithm"]["algorithm"].native
            mgf = params["mask_gen_algorithm"]
            if mgf["algorithm"].native != "mgf1" or mgf["parameters"]["algorithm"].native != h_name:
                raise UnsupportedAlgorithm("PSS mask generation not supported")
            _digest(h_name, b"")  # refuses weak hashes
            h = hash_for(h_name)
            pub.verify(signature, data, padding.PSS(mgf=padding.MGF1(h), salt_length=params["salt_length"].native),
                       h)
            return "rsassa-pss"
        if isinstance(pub, rsa.RSAPublicKey):
            if name not in ("rsassa_pkcs1v15", f"{digest_name}_rsa"):
                raise UnsupportedAlgorithm("signature algorithm does not match the RSA key")
            pub.verify(signature, data, padding.PKCS1v15(), hash_for(digest_name))
            return "rsa-pkcs1v15"
        if isinstance(pub, ec.EllipticCurvePublicKey):
            if name not in ("ecdsa", f"{digest_name}_ecdsa"):
                raise UnsupportedAlgorithm("signature algorithm does not match the EC key")
            pub.verify(signature, data, ec.ECDSA(hash_for(digest_name)))
            return "ecdsa"
    except InvalidSignature:
        raise SignatureInvalid("signature does not verify") from None
    raise UnsupportedAlgorithm("signer key type not supported")


def _check_signer(si: cms.SignerInfo, content: bytes, econtent_type: str,
                  certs: list[x509.Certificate]) -> SignerCheck:
    cert = find_certificate(si["sid"], certs)
    if cert is None:
        raise SignerCertificateMissing("signer certificate not found in the message or the store")
    digest_name = si["digest_algorithm"]["algorithm"].native
    digest = _digest(digest_name, content)
    attrs = si["signed_attrs"]
    signing_time = None
    if attrs.contents is None or len(attrs) == 0:
        if econtent_type != "data":
            raise MalformedSmime("signed attributes missing for non-data content")
        signed_bytes = content
    else:
        md = _single(attrs, "message_digest")
        ct = _single(attrs, "content_type")
        st = _single(attrs, "signing_time")
        if len(md) != 1 or len(md[0]["values"]) != 1:
            raise MalformedSmime("exactly one messageDigest attribute required")
        if len(ct) != 1 or len(ct[0]["values"]) != 1:
            raise MalformedSmime("exactly one contentType attribute required")
        if ct[0]["values"][0].native != econtent_type:
            raise SignatureInvalid("contentType attribute differs from the content type")
        if len(st) > 1:
            raise MalformedSmime("more than one signingTime attribute")
        if st:
            signing_time = st[0]["values"][0].native
        signed_bytes = der_set(attrs.contents)
        # The signature is checked first so that a tampered body and tampered attributes
        # are told apart: a good signature with a wrong digest means the body changed.
        scheme = _verify_signature(cert, si["signature_algorithm"], digest_name, si["signature"].native,
                                   signed_bytes)
        if md[0]["values"][0].native != digest:
            raise ContentTampered("content digest does not match the signed messageDigest")
        return SignerCheck(cert, signing_time, digest_name, scheme)
    scheme = _verify_signature(cert, si["signature_algorithm"], digest_name, si["signature"].native, signed_bytes)
    return SignerCheck(cert, signing_time, digest_name, scheme)


def check_signed_data(der: bytes, detached_content: bytes | None = None,
                      extra_certs: tuple[x509.Certificate, ...] = ()) -> SignedContent:
    """Verify every signature of a DER/BER ContentInfo(SignedData); raise a typed error otherwise."""
    info = parse_content_info(der)
    if info["content_type"].native != "signed_data":
        raise MalformedSmime("not a CMS SignedData")
    try:
        return _check(info["content"], detached_content, extra_certs)
    except PARSE_ERRORS as exc:
        raise MalformedSmime("signed data cannot be read") from exc


def _check(sd: cms.SignedData, detached_content: bytes | None,
           extra_certs: tuple[x509.Certificate, ...]) -> SignedContent:
    encap = sd["encap_content_info"]
    econtent_type = encap["content_type"].native
    if detached_content is not None:
        if encap["content"].native is not None:
            raise MalformedSmime("detached signature also carries content")
        content = detached_content
    else:
        content = octets(encap["content"])
        if encap["content"].native is None:
            raise MalformedSmime("signed data has no content")
    # A broken certificate in the bag is ignored (and so unusable as signer or intermediate).
    loaded = [load_strict(c.chosen.dump()) for c in sd["certificates"] if c.name == "certificate"] \
        if isinstance(sd["certificates"], cms.CertificateSet) else []
    certs = [c for c in loaded if c is not None]
    signer_infos = list(sd["signer_infos"])
    if not signer_infos:
        raise MalformedSmime("signed data has no signer")
    pool = certs + list(extra_certs)
    signers = tuple(_check_signer(si, content, econtent_type, pool) for si in signer_infos)
    return SignedContent(content, econtent_type, signers, tuple(certs))
