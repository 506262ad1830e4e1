"""Choosing the PKCS#11 mechanism for a signature or a key unwrap, and shaping the data.

Tokens differ: SoftHSM and most HSMs hash and pad themselves (CKM_SHA256_RSA_PKCS), many
smart cards only offer raw RSA (CKM_RSA_PKCS), for which we hash here and build the
PKCS#1 v1.5 DigestInfo ourselves; EC keys sign a digest with CKM_ECDSA and return r||s,
which CMS wants as a DER ECDSA-Sig-Value. Everything here is pure (no token calls), so the
hashing runs off the module thread.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import MGF, KeyType, Mechanism

from gateway.smime.pkcs11.errors import MechanismRefused

#: DER prefix of DigestInfo { AlgorithmIdentifier { hash OID, NULL }, OCTET STRING (digest) }.
DIGEST_INFO_PREFIX = {
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "sha512": bytes.fromhex("3051300d060960864801650304020305000440"),
}
_HASH_SIGN = {"sha256": Mechanism.SHA256_RSA_PKCS, "sha384": Mechanism.SHA384_RSA_PKCS,
              "sha512": Mechanism.SHA512_RSA_PKCS}
_HASH_PSS = {"sha256": Mechanism.SHA256_RSA_PKCS_PSS, "sha384": Mechanism.SHA384_RSA_PKCS_PSS,
             "sha512": Mechanism.SHA512_RSA_PKCS_PSS}
_HASH_MECH = {"sha256": Mechanism.SHA256, "sha384": Mechanism.SHA384, "sha512": Mechanism.SHA512}
_HASH_MGF = {"sha256": MGF.SHA256, "sha384": MGF.SHA384, "sha512": MGF.SHA512}
_HASH_ECDSA = {"sha256": Mechanism.ECDSA_SHA256, "sha384": Mechanism.ECDSA_SHA384,
               "sha512": Mechanism.ECDSA_SHA512}
_DIGEST_LEN = {"sha256": 32, "sha384": 48, "sha512": 64}


@dataclass(frozen=True)
class SignPlan:
    """What to hand to C_Sign: mechanism, its parameter, the bytes, and how to post-process."""

    mechanism: Mechanism
    param: Any
    data: bytes
    ecdsa_raw: bool = False

    def finish(self, signature: bytes) -> bytes:
        if self.ecdsa_raw:
            return ecdsa_raw_to_der(signature)
        return signature


def plan_signature(data: bytes, hash_name: str, padding: str, key_type: KeyType,
                   offered: frozenset[Mechanism], prefer_raw: bool = False) -> SignPlan:
    """Pick the best mechanism the token offers for (hash, padding); hash here when raw.

    `prefer_raw` forces the raw-RSA path (tokens that misreport, and tests of that path)."""
    if hash_name not in _DIGEST_LEN:
        raise MechanismRefused(f"hash {hash_name!r} is not supported for token signatures")
    if key_type == KeyType.EC or padding == "ecdsa":
        if key_type != KeyType.EC or padding != "ecdsa":
            raise MechanismRefused(f"padding {padding!r} does not fit a {key_type.name} key")
        if _HASH_ECDSA[hash_name] in offered and not prefer_raw:
            return SignPlan(_HASH_ECDSA[hash_name], None, data, ecdsa_raw=True)
        if Mechanism.ECDSA in offered:
            return SignPlan(Mechanism.ECDSA, None, _digest(hash_name, data), ecdsa_raw=True)
        raise MechanismRefused("the token offers no ECDSA mechanism")
    if key_type != KeyType.RSA:
        raise MechanismRefused(f"key type {key_type.name} cannot sign here")
    if padding == "pkcs1v15":
        if _HASH_SIGN[hash_name] in offered and not prefer_raw:
            return SignPlan(_HASH_SIGN[hash_name], None, data)
        if Mechanism.RSA_PKCS in offered:
            digest_info = DIGEST_INFO_PREFIX[hash_name] + _digest(hash_name, data)
            return SignPlan(Mechanism.RSA_PKCS, None, digest_info)
        raise MechanismRefused("the token offers neither CKM_SHA*_RSA_PKCS nor CKM_RSA_PKCS")
    if padding == "pss":
        # Salt length = digest length, the CMS/RFC 4056 convention the verifier expects.
        param = (_HASH_MECH[hash_name], _HASH_MGF[hash_name], _DIGEST_LEN[hash_name])
        if _HASH_PSS[hash_name] in offered and not prefer_raw:
            return SignPlan(_HASH_PSS[hash_name], param, data)
        if Mechanism.RSA_PKCS_PSS in offered:
            return SignPlan(Mechanism.RSA_PKCS_PSS, param, _digest(hash_name, data))
        raise MechanismRefused("the token offers no RSA-PSS mechanism")
    raise MechanismRefused(f"unknown signature padding {padding!r}")


def plan_key_transport(padding: str, offered: frozenset[Mechanism]) -> tuple[Mechanism, Any]:
    """Mechanism and parameter to unwrap a CEK (RSA key transport)."""
    if padding == "pkcs1v15":
        mech, param = Mechanism.RSA_PKCS, None
    elif padding == "oaep-sha1":
        mech, param = Mechanism.RSA_PKCS_OAEP, (Mechanism.SHA_1, MGF.SHA1, None)
    elif padding == "oaep-sha256":
        # SoftHSM 2.6 refuses this (ArgumentsBad) -> MechanismRefused; real HSMs accept it.
        mech, param = Mechanism.RSA_PKCS_OAEP, (Mechanism.SHA256, MGF.SHA256, None)
    else:
        raise MechanismRefused(f"unknown key transport padding {padding!r}")
    if mech not in offered:
        raise MechanismRefused(f"the token does not offer {mech.name}")
    return mech, param


def ecdsa_raw_to_der(signature: bytes) -> bytes:
    """PKCS#11 returns r||s (each half the length); CMS carries SEQUENCE { r, s }."""
    if not signature or len(signature) % 2:
        raise MechanismRefused("malformed ECDSA signature from the token")
    half = len(signature) // 2
    r, s = int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
    return encode_dss_signature(r, s)


def _digest(hash_name: str, data: bytes) -> bytes:
    return hashlib.new(hash_name, data).digest()
