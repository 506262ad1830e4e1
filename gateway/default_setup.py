"""First-run files for the embedded default config: a self-signed loopback TLS certificate
and a demo account whose random password is written beside it (mode 0600).

Only used by `msgw serve`/`msgw demo` without --config; a real deployment names its own
certificate and account hashes in its TOML file.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEMO_USER = "demo@msgw.localhost"


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def make_self_signed(hostname: str = "localhost") -> tuple[bytes, bytes]:
    """A self-signed EC certificate for loopback TLS (cert PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "msgw TEST self-signed")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName(hostname), x509.DNSName("msgw.localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def prepare_default_files(folder: Path) -> None:
    """Create the TLS pair and the demo account once; later runs reuse them."""
    from gateway.server.passwords import hash_password

    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert, key = folder / "tls-cert.pem", folder / "tls-key.pem"
    if not (cert.exists() and key.exists()):
        cert_pem, key_pem = make_self_signed()
        _write_private(key, key_pem)
        cert.write_bytes(cert_pem)
    pw_file, hash_file = folder / "demo.password", folder / "demo.hash"
    if not (pw_file.exists() and hash_file.exists()):
        password = secrets.token_urlsafe(12)
        _write_private(pw_file, password.encode() + b"\n")
        _write_private(hash_file, hash_password(password).encode() + b"\n")
