"""CMS SignedData and EnvelopedData assembled from cached DER templates.

Everything in a signature that depends only on the signing key (its certificate chain, the
signer identifier, the digest and signature algorithms, the constant signed attributes) and
everything in a RecipientInfo that depends only on the recipient certificate (rid, key
encryption algorithm, the parsed public key) is encoded **once**, by asn1crypto, and cached
(bounded LRU caches keyed by the certificate objects, which compare and hash by their DER).
Per message only signingTime, messageDigest, the signature, the encrypted CEK, the IV and the
ciphertext are new, and they are put around the cached bytes with `tlv`.

Why the TLV concatenation is hand-written: asn1crypto has no cheap re-serialisation. Building
one SignerInfo with it re-encodes and re-sorts every element each time (~475 `_set_contents`
and ~900 `dump` calls a message, about a third of the gateway's CPU per 1 KB message in the
issue 15 profile), and it re-parses each recipient certificate. What is hand-written here is
only X.690 tag + length + contents (`tlv`, with `cmsutil.der_length`); every constant piece,
and the fixed-size prefix of every per-message element, is cut from asn1crypto's own encoding.
`gateway.smime.cms_reference` builds the same structures wholly with asn1crypto: the tests
(tests/smime/test_cms_template*.py) compare both byte for byte.

Pure: no I/O, no randomness (the caller draws the CEK and IV), no key operations.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from dataclasses import dataclass

from asn1crypto import algos, cms, core
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding

from gateway.smime.cmsutil import der_length, issuer_and_serial, subject_key_id
from gateway.smime.errors import UnsupportedAlgorithm, WrongKeyUsage
from gateway.smime.keyapi import HashName, SignaturePadding
from gateway.smime.softkeys import hash_for

#: What we announce we can read (RFC 8551 2.5.2), strongest first.
SMIME_CAPABILITIES = ("2.16.840.1.101.3.4.1.46", "2.16.840.1.101.3.4.1.42", "2.16.840.1.101.3.4.1.2",
                      "1.2.840.113549.1.1.7", "1.2.840.113549.1.1.1")

#: Bounds of the template caches: a gateway signs with a few keys and encrypts to a few hundred
#: correspondents; an entry is a few KB (certificates) and a public key object.
SIGNER_CACHE_SIZE = 64
RECIPIENT_CACHE_SIZE = 1024


def tlv(tag: int, contents: bytes) -> bytes:
    """One DER element: its (single-octet) tag, the DER length of `contents`, `contents`."""
    return bytes((tag,)) + der_length(len(contents)) + contents


def set_of(encodings: Sequence[bytes], tag: int = 0x31) -> bytes:
    """A DER SET OF: elements sorted by their encodings (X.690 11.6), as asn1crypto's SetOf does."""
    return tlv(tag, b"".join(sorted(encodings)))


# --- SignedData ----------------------------------------------------------------------------------


def padding_for(certificate: x509.Certificate, pss: bool = False) -> SignaturePadding:
    """The signature scheme the certificate's key type allows."""
    pub = certificate.public_key()
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


def capabilities() -> cms.SMIMECapabilites:
    return cms.SMIMECapabilites([cms.SMIMECapabilityIdentifier({"capability_id": oid})
                                 for oid in SMIME_CAPABILITIES])


_TIME_SAMPLE = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
_UTC_TIME_LEN = 13  # YYMMDDHHMMSSZ


@functools.cache
def _signing_time_prefix() -> bytes:
    """The DER of the signingTime attribute before its UTCTime's 13 value octets.

    The value has a fixed size, so every length before it is constant: cut from asn1crypto's
    encoding of a sample time (as `_message_digest_prefix`)."""
    der = cms.CMSAttribute({"type": "signing_time", "values": [cms.Time({"utc_time": _TIME_SAMPLE})]}).dump()
    return der[:-_UTC_TIME_LEN]


@functools.cache
def _message_digest_prefix(digest_size: int) -> bytes:
    """The DER of the messageDigest attribute before the digest (of the hash's fixed size)."""
    return cms.CMSAttribute({"type": "message_digest", "values": [bytes(digest_size)]}).dump()[:-digest_size]


def signing_time_attribute(when: dt.datetime) -> bytes:
    """The signingTime attribute (UTCTime), as asn1crypto encodes it; outside 1950-2049 or for a
    naive time, asn1crypto itself decides (it refuses both, as it always did here)."""
    if when.tzinfo is not None:
        utc = when.astimezone(dt.UTC)
        if 1950 <= utc.year <= 2049:
            return _signing_time_prefix() + utc.strftime("%y%m%d%H%M%SZ").encode("ascii")
    return cms.CMSAttribute({"type": "signing_time", "values": [cms.Time({"utc_time": when})]}).dump()


def message_digest_attribute(digest: bytes) -> bytes:
    return _message_digest_prefix(len(digest)) + digest


@dataclass(frozen=True, slots=True)
class SignerTemplate:
    """The DER of a signature's constant parts, for one certificate chain, hash and padding."""

    hash_name: HashName
    padding: SignaturePadding
    hash_algorithm: hashes.HashAlgorithm
    constant_attributes: tuple[bytes, ...]  # contentType data, smimeCapabilities
    signer_head: bytes  # SignerInfo: version, sid, digestAlgorithm
    signature_algorithm: bytes  # SignerInfo: signatureAlgorithm
    signed_data_head: bytes  # SignedData: version, digestAlgorithms
    certificates: bytes  # SignedData: [0] IMPLICIT CertificateSet

    def signed_attributes(self, digest: bytes, when: dt.datetime) -> bytes:
        """The DER SET OF signed attributes: exactly the bytes the key signs."""
        return set_of([*self.constant_attributes, signing_time_attribute(when), message_digest_attribute(digest)])

    def signed_data(self, signed_attributes: bytes, signature: bytes, content: bytes | None) -> bytes:
        """ContentInfo(SignedData) around the signature; `content` None for a detached signature."""
        signer_info = tlv(0x30, b"".join([self.signer_head, tlv(0xA0, _contents(signed_attributes)),
                                          self.signature_algorithm, tlv(0x04, signature)]))
        if content is None:
            encap = [_DETACHED_ENCAP]
        else:
            octets_head = b"\x04" + der_length(len(content))
            explicit_head = b"\xa0" + der_length(len(octets_head) + len(content))
            encap_len = len(_DATA_OID) + len(explicit_head) + len(octets_head) + len(content)
            encap = [b"\x30" + der_length(encap_len), _DATA_OID, explicit_head, octets_head, content]
        signer_infos = tlv(0x31, signer_info)
        body_len = (len(self.signed_data_head) + sum(len(p) for p in encap) + len(self.certificates)
                    + len(signer_infos))
        signed_head = b"\x30" + der_length(body_len)
        explicit = b"\xa0" + der_length(len(signed_head) + body_len)
        outer = b"\x30" + der_length(len(_SIGNED_DATA_OID) + len(explicit) + len(signed_head) + body_len)
        # one join: an encapsulated content is copied once, into the result
        return b"".join([outer, _SIGNED_DATA_OID, explicit, signed_head, self.signed_data_head, *encap,
                         self.certificates, signer_infos])


def _contents(element: bytes) -> bytes:
    """The contents octets of one DER element with a single-octet tag."""
    first = element[1]
    skip = 2 if first < 0x80 else 2 + (first & 0x7F)
    return element[skip:]


_DATA_OID = cms.ContentType("data").dump()
_SIGNED_DATA_OID = cms.ContentType("signed_data").dump()
_DETACHED_ENCAP = cms.EncapsulatedContentInfo({"content_type": "data"}).dump()


@functools.lru_cache(maxsize=SIGNER_CACHE_SIZE)
def signer_template(certificate: x509.Certificate, chain: tuple[x509.Certificate, ...], hash_name: HashName,
                    pss: bool) -> SignerTemplate:
    """The cached template of one signing certificate (+ chain) and options.

    Keyed by the certificate objects, which hash and compare by their DER: a key whose
    certificate is renewed gets a new template; the old one ages out of the LRU."""
    padding = padding_for(certificate, pss)
    hash_algorithm = hash_for(hash_name)  # an unknown hash: UnsupportedAlgorithm, before asn1crypto sees it
    sid = cms.SignerIdentifier({"issuer_and_serial_number": issuer_and_serial(certificate)})
    head = b"".join([cms.CMSVersion("v1").dump(), sid.dump(),
                     algos.DigestAlgorithm({"algorithm": hash_name}).dump()])
    certs = [c.public_bytes(serialization.Encoding.DER) for c in (certificate, *chain)]
    return SignerTemplate(
        hash_name=hash_name, padding=padding, hash_algorithm=hash_algorithm,
        constant_attributes=(cms.CMSAttribute({"type": "content_type", "values": ["data"]}).dump(),
                             cms.CMSAttribute({"type": "smime_capabilities", "values": [capabilities()]}).dump()),
        signer_head=head, signature_algorithm=signature_algorithm(padding, hash_name).dump(),
        signed_data_head=cms.CMSVersion("v1").dump() + cms.DigestAlgorithms([{"algorithm": hash_name}]).dump(),
        certificates=set_of(certs, tag=0xA0))


# --- EnvelopedData -------------------------------------------------------------------------------


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


def oaep_sha256_algorithm() -> cms.KeyEncryptionAlgorithm:
    return cms.KeyEncryptionAlgorithm({"algorithm": "rsaes_oaep", "parameters": algos.RSAESOAEPParams({
        "hash_algorithm": {"algorithm": "sha256"},
        "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": "sha256"}}})})


def key_encryption_algorithm(key_transport: str) -> cms.KeyEncryptionAlgorithm:
    if key_transport == "oaep":
        return oaep_sha256_algorithm()
    return cms.KeyEncryptionAlgorithm({"algorithm": "rsaes_pkcs1v15", "parameters": core.Null()})


def recipient_identifier(cert: x509.Certificate, recipient_id: str) -> tuple[str, cms.RecipientIdentifier]:
    """(KeyTransRecipientInfo version, rid): v2 with a subjectKeyIdentifier, v0 with issuer+serial."""
    if recipient_id == "ski":
        return "v2", cms.RecipientIdentifier({"subject_key_identifier": subject_key_id(cert)})
    return "v0", cms.RecipientIdentifier({"issuer_and_serial_number": issuer_and_serial(cert)})


@dataclass(frozen=True, slots=True)
class RecipientTemplate:
    """One recipient's public key and the DER of its KeyTransRecipientInfo before encryptedKey."""

    public_key: rsa.RSAPublicKey
    padding: asym_padding.AsymmetricPadding
    head: bytes  # version, rid, keyEncryptionAlgorithm

    def recipient_info(self, encrypted_key: bytes) -> bytes:
        """RecipientInfo (the ktri choice is the untagged KeyTransRecipientInfo SEQUENCE)."""
        return tlv(0x30, self.head + tlv(0x04, encrypted_key))

    def wrap(self, cek: bytes) -> bytes:
        """The CEK encrypted to this recipient (random padding: a new value each call)."""
        return self.public_key.encrypt(cek, self.padding)


@functools.lru_cache(maxsize=RECIPIENT_CACHE_SIZE)
def recipient_template(cert: x509.Certificate, key_transport: str, recipient_id: str) -> RecipientTemplate:
    """The cached template of one recipient certificate (checked for key encipherment once)."""
    pub = check_encryption_usage(cert)
    if key_transport == "oaep":
        h = hashes.SHA256()
        pad: asym_padding.AsymmetricPadding = asym_padding.OAEP(mgf=asym_padding.MGF1(h), algorithm=h, label=None)
    else:
        pad = asym_padding.PKCS1v15()
    version, rid = recipient_identifier(cert, recipient_id)
    head = cms.CMSVersion(version).dump() + rid.dump() + key_encryption_algorithm(key_transport).dump()
    return RecipientTemplate(pub, pad, head)


class GCMParameters(core.Sequence):
    """RFC 5084 GCMParameters (asn1crypto has the OID but not the parameter type)."""

    _fields = [("aes_nonce", core.OctetString), ("aes_icvlen", core.Integer, {"default": 12})]


CBC_IV_SIZE = 16
GCM_NONCE_SIZE = 12


@functools.cache
def _content_algorithm_parts() -> tuple[bytes, bytes, bytes]:
    """(CBC prefix before the IV, GCM prefix before the nonce, GCM suffix after it): contentType
    data + contentEncryptionAlgorithm, cut from asn1crypto's encodings of a zero IV/nonce."""
    cbc = cms.EncryptionAlgorithm({"algorithm": "aes256_cbc", "parameters": bytes(CBC_IV_SIZE)}).dump()
    gcm = cms.EncryptionAlgorithm({"algorithm": "aes256_gcm", "parameters": GCMParameters(
        {"aes_nonce": bytes(GCM_NONCE_SIZE), "aes_icvlen": 16})}).dump()
    icv = core.Integer(16).dump()
    assert gcm.endswith(bytes(GCM_NONCE_SIZE) + icv)  # noqa: S101 - the layout the slicing relies on
    return _DATA_OID + cbc[:-CBC_IV_SIZE], _DATA_OID + gcm[:-GCM_NONCE_SIZE - len(icv)], icv


def cbc_content_head(iv: bytes) -> bytes:
    """contentType + contentEncryptionAlgorithm of an EncryptedContentInfo (AES-256-CBC)."""
    if len(iv) != CBC_IV_SIZE:
        raise ValueError("AES-CBC IV must be 16 bytes")
    return _content_algorithm_parts()[0] + iv


def gcm_content_head(nonce: bytes) -> bytes:
    """contentType + contentEncryptionAlgorithm of an EncryptedContentInfo (AES-256-GCM, 16-byte tag)."""
    if len(nonce) != GCM_NONCE_SIZE:
        raise ValueError("AES-GCM nonce must be 12 bytes")
    parts = _content_algorithm_parts()
    return parts[1] + nonce + parts[2]


_ENVELOPED_OID = cms.ContentType("enveloped_data").dump()
_AUTH_ENVELOPED_OID = cms.ContentType("authenticated_enveloped_data").dump()
_VERSIONS = {v: cms.CMSVersion(v).dump() for v in ("v0", "v2")}


def envelope(kind: str, version: str, recipient_infos: Sequence[bytes], eci_head: bytes,
             ciphertext: Sequence[bytes], trailer: bytes = b"") -> bytes:
    """ContentInfo { kind, [0] { version, recipientInfos, EncryptedContentInfo { eci_head,
    [0] IMPLICIT OCTET STRING ciphertext }, trailer } } in DER, assembled around the ciphertext.

    The ciphertext is copied once, into the result (a 50 MB message is not copied at every
    nesting level, as asn1crypto's dump would)."""
    head = envelope_head(kind, version, recipient_infos, eci_head, sum(len(c) for c in ciphertext), len(trailer))
    return b"".join([head, *ciphertext, trailer])


def envelope_head(kind: str, version: str, recipient_infos: Sequence[bytes], eci_head: bytes, ct_len: int,
                  trailer_len: int = 0) -> bytes:
    """The DER of `envelope` up to the first ciphertext byte: the lengths are all it needs, so
    the ciphertext (and the trailer, e.g. a GCM tag) can follow in pieces made afterwards."""
    octet_head = b"\x80" + der_length(ct_len)  # encryptedContent [0] IMPLICIT OCTET STRING, primitive
    eci_len = len(eci_head) + len(octet_head) + ct_len
    eci_hdr = b"\x30" + der_length(eci_len)
    version_der = _VERSIONS[version]
    infos_der = set_of(recipient_infos)
    inner_len = len(version_der) + len(infos_der) + len(eci_hdr) + eci_len + trailer_len
    inner_hdr = b"\x30" + der_length(inner_len)
    explicit_hdr = b"\xa0" + der_length(len(inner_hdr) + inner_len)
    oid = _ENVELOPED_OID if kind == "enveloped_data" else _AUTH_ENVELOPED_OID
    outer_hdr = b"\x30" + der_length(len(oid) + len(explicit_hdr) + len(inner_hdr) + inner_len)
    return b"".join([outer_hdr, oid, explicit_hdr, inner_hdr, version_der, infos_der, eci_hdr, eci_head, octet_head])
