"""Soft keys: private keys in PEM or PKCS#12 files, behind the `keyapi` protocols.

The password comes from a file or an environment variable (never from the command line
or the config text). Soft keys compute inline (no thread): an RSA-2048 signature is well
under a millisecond. Failures raise `KeyLoadError` without echoing the password or path
contents.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm as CryptoUnsupported
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12

from gateway.smime.errors import DecryptionFailed, KeyLoadError, UnsupportedAlgorithm
from gateway.smime.keyapi import HashName, KeyTransportPadding, SignaturePadding

SoftPrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512, "sha1": hashes.SHA1}


def hash_for(name: str) -> hashes.HashAlgorithm:
    try:
        return _HASHES[name]()
    except KeyError:
        raise UnsupportedAlgorithm(f"hash {name!r} not supported") from None


#: The hash and padding objects a soft key signs with, made once: they hold no state (the key
#: hashes into its own context), and making them again cost a few µs a message (issue 15).
_SIGN_HASHES: dict[str, hashes.HashAlgorithm] = {name: algorithm() for name, algorithm in _HASHES.items()}
_PKCS1V15 = asym_padding.PKCS1v15()


@dataclass(frozen=True)
class SoftKey:
    """A private key with its certificate and chain; implements SigningKey and DecryptionKey."""

    private_key: SoftPrivateKey
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()

    async def sign(self, data: bytes, hash_name: HashName, padding: SignaturePadding) -> bytes:
        h = _SIGN_HASHES.get(hash_name) or hash_for(hash_name)  # (an unknown name: hash_for's refusal)
        key = self.private_key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            if padding != "ecdsa":
                raise UnsupportedAlgorithm("an EC key signs with ECDSA only")
            return key.sign(data, ec.ECDSA(h))
        if padding == "pss":
            return key.sign(data, asym_padding.PSS(mgf=asym_padding.MGF1(h), salt_length=h.digest_size), h)
        if padding == "pkcs1v15":
            return key.sign(data, _PKCS1V15, h)
        raise UnsupportedAlgorithm("an RSA key signs with PKCS#1 v1.5 or PSS")

    async def decrypt_key(self, encrypted_key: bytes, padding: KeyTransportPadding) -> bytes:
        key = self.private_key
        if not isinstance(key, rsa.RSAPrivateKey):
            raise UnsupportedAlgorithm("key transport needs an RSA key")
        if padding == "pkcs1v15":
            pad: asym_padding.PKCS1v15 | asym_padding.OAEP = asym_padding.PKCS1v15()
        elif padding in ("oaep-sha1", "oaep-sha256"):
            h = hash_for("sha1" if padding == "oaep-sha1" else "sha256")
            pad = asym_padding.OAEP(mgf=asym_padding.MGF1(h), algorithm=h, label=None)
        else:
            raise UnsupportedAlgorithm("unknown key transport padding")
        try:
            return key.decrypt(encrypted_key, pad)
        except ValueError:
            raise DecryptionFailed("decryption failed") from None


def read_password(password_file: str | Path | None = None, password_env: str | None = None) -> bytes | None:
    """The password from a file (first line, no trailing newline) or an environment variable."""
    if password_file is not None:
        try:
            return Path(password_file).read_bytes().splitlines()[0] if Path(password_file).stat().st_size else b""
        except OSError as exc:
            raise KeyLoadError(f"cannot read password file ({exc.strerror})") from None
    if password_env is not None:
        value = os.environ.get(password_env)
        if value is None:
            raise KeyLoadError(f"environment variable {password_env} is not set")
        return value.encode()
    return None


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise KeyLoadError(f"cannot read {what} file {Path(path).name} ({exc.strerror})") from None


def load_certificates(path: str | Path) -> list[x509.Certificate]:
    """All certificates of a PEM (one or many) or DER file."""
    data = _read(path, "certificate")
    if not data.strip():
        return []
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise KeyLoadError(f"{Path(path).name} is not a certificate file") from None


def _check_key(key: object) -> SoftPrivateKey:
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise KeyLoadError("only RSA and EC private keys are supported")
    return key


def load_pem_key(key_path: str | Path, cert_path: str | Path, chain_path: str | Path | None = None, *,
                 password: bytes | None = None) -> SoftKey:
    """A PEM (or DER PKCS#8) private key plus its certificate (and optional chain file)."""
    data = _read(key_path, "key")
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password)
        else:
            key = serialization.load_der_private_key(data, password)
    except (ValueError, TypeError, CryptoUnsupported):
        raise KeyLoadError("cannot load private key (wrong password or format)") from None
    certs = load_certificates(cert_path)
    if not certs:
        raise KeyLoadError(f"{Path(cert_path).name} holds no certificate")
    chain = tuple(load_certificates(chain_path)) if chain_path else tuple(certs[1:])
    return _matched(_check_key(key), certs[0], chain)


def load_pkcs12(path: str | Path, password: bytes | None) -> SoftKey:
    """A PKCS#12 file (modern PBES2 or legacy 3DES) with key, certificate and chain."""
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(_read(path, "PKCS#12"), password)
    except (ValueError, TypeError, CryptoUnsupported):
        raise KeyLoadError("cannot load PKCS#12 (wrong password or format)") from None
    if key is None or cert is None:
        raise KeyLoadError("PKCS#12 file has no private key or no certificate")
    return _matched(_check_key(key), cert, tuple(extra))


def same_public_key(public_key: PublicKeyTypes, cert: x509.Certificate) -> bool:
    """Whether a key (given by its public half) is the one the certificate certifies."""
    fmt, enc = serialization.PublicFormat.SubjectPublicKeyInfo, serialization.Encoding.DER
    return public_key.public_bytes(enc, fmt) == cert.public_key().public_bytes(enc, fmt)


def _matched(key: SoftPrivateKey, cert: x509.Certificate, chain: tuple[x509.Certificate, ...]) -> SoftKey:
    if not same_public_key(key.public_key(), cert):
        raise KeyLoadError("private key does not match its certificate")
    return SoftKey(key, cert, chain)


def load_key(key_path: str | Path, cert_path: str | Path | None = None, chain_path: str | Path | None = None,
             *, password_file: str | Path | None = None, password_env: str | None = None) -> SoftKey:
    """Load a soft key by file type: ``.p12``/``.pfx`` is PKCS#12, anything else PEM/DER."""
    password = read_password(password_file, password_env)
    if str(key_path).lower().endswith((".p12", ".pfx")):
        key = load_pkcs12(key_path, password)
        if chain_path:
            key = SoftKey(key.private_key, key.certificate, tuple(load_certificates(chain_path)))
        return key
    if cert_path is None:
        raise KeyLoadError("a PEM key needs its certificate (--cert)")
    return load_pem_key(key_path, cert_path, chain_path, password=password)
