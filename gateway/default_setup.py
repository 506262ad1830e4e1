"""First-run files for the embedded default config: a self-signed loopback TLS certificate,
a demo account whose random password is written beside it (mode 0600), the TEST PKI and the
TEST doctor's key that opens what the capture mode writes to var/outbox.

Made by `msgw init`, `msgw demo` and `msgw serve` without --config, before they load the default
(loading a config never creates files); a real deployment names its own
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
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEMO_USER = "demo@msgw.localhost"
LOCAL_DOCTOR = "dr.local@msgw.localhost"
LOCAL_DOCTOR_RPPS = "10100000002"
LEGACY_DOCTOR = "dr.legacy@medical99.apicrypt.org"
LEGACY_LAB = "labo.legacy@medical99.apicrypt.org"
APICRYPT_USERS = ("Master", "msgw.bridge", "labo.legacy", "dr.legacy")
#: The TEST doctor's decryption key and certificate (JEAN TEST-DUPONT, the default directory's
#: S/MIME correspondent), copied out of the TEST PKI under names the README gives: in real life it
#: stays in the doctor's mail client; here it opens what the capture mode wrote to var/outbox.
TEST_DOCTOR_KEY = "TEST-doctor.key.pem"
TEST_DOCTOR_CERT = "TEST-doctor.cert.pem"
#: The console operator `admin`'s password file, beside demo.password (issue 16).
CONSOLE_PASSWORD = "console-admin.password"  # noqa: S105 - a file name


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


#: The TEST structure identifier in the loopback certificate's OU (type digit 3, SIRET, + a TEST SIRET).
TEST_STRUCTURE_ID = "399999999900001"


def make_self_signed(hostname: str = "localhost") -> tuple[bytes, bytes]:
    """A self-signed loopback TLS certificate (cert PEM, key PEM) shaped like an IGC-Santé SERV
    SSL one: RSA-2048, `C=FR, O=, OU=<structure id>, CN=<host>`, serverAuth + clientAuth.
    RSA because the Référentiel #2 suites (the default `tls_policy`) are ECDHE-RSA only."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "msgw TEST self-signed"),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, TEST_STRUCTURE_ID),
                      x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName(hostname), x509.DNSName("msgw.localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _is_rsa(cert: Path) -> bool:
    """The loopback certificate has an RSA key (the one a Référentiel #2 client can use)."""
    try:
        return isinstance(x509.load_pem_x509_certificate(cert.read_bytes()).public_key(), rsa.RSAPublicKey)
    except ValueError:
        return False


def _pki_fresh(pki_dir: Path) -> bool:
    """The TEST PKI exists and its CRLs (7 days) are good for at least another day."""
    crls = sorted((pki_dir / "crl").glob("*.crl")) if (pki_dir / "crl").is_dir() else []
    if len(crls) < 3 or not (pki_dir / "app_sign.pem").exists():  # made by an older msgw: make it again
        return False
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    for path in crls:
        crl = x509.load_der_x509_crl(path.read_bytes())
        if crl.next_update_utc is None or crl.next_update_utc < soon:
            return False
    return True


def prepare_test_pki(folder: Path, state_dir: Path) -> None:
    """Generate the TEST PKI (again when its CRLs run out) and seed the directory with the
    demo correspondents: the lab's own mailbox (local, decrypted with the TEST org key) and
    a doctor elsewhere who reads S/MIME (the TEST CPS-shaped person's encryption certificate)."""
    from gateway.directory.directory import Identity, SqliteDirectory, operator_item
    from gateway.smime.testpki import ORG_EMAIL, PERSON_EMAIL, PERSON_RPPS, build_test_pki

    pki_dir = folder / "pki"
    if _pki_fresh(pki_dir):
        return
    pki = build_test_pki(pki_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    person = pki["person_encrypt"].cert.public_bytes(serialization.Encoding.DER)
    lab = pki["org_encrypt"].cert.public_bytes(serialization.Encoding.DER)
    with SqliteDirectory(state_dir / "directory.sqlite") as directory:
        # The lab's certificate is listed too: outgoing mail gets a copy encrypted to it.
        directory.put(operator_item(ORG_EMAIL, "local", key_ref="labo-decrypt", mailbox_type="APP",
                                    certificates=[lab]))
        directory.put(operator_item(PERSON_EMAIL, "smime", certificates=[person], mailbox_type="PER",
                                    identity=Identity(kind="person", rpps=PERSON_RPPS, last_name="TEST-DUPONT",
                                                      first_name="JEAN")))
        # A doctor served here whose key stays in their own mail client, and one who reads only
        # the legacy format (the bridge encodes for them).
        directory.put(operator_item(LOCAL_DOCTOR, "local", key_ref="in-client", mailbox_type="PER",
                                    identity=Identity(kind="person", rpps=LOCAL_DOCTOR_RPPS, last_name="TEST-LOCAL",
                                                      first_name="ANNE")))
        directory.put(operator_item(LEGACY_DOCTOR, "legacy:apicrypt1", key_ref="dr.legacy", mailbox_type="PER",
                                    identity=Identity(kind="person", rpps="10100000003", last_name="TEST-LEGACY",
                                                      first_name="PAUL")))


def _copy_test_doctor(folder: Path) -> None:
    """The TEST doctor's key pair beside the demo password (again when the TEST PKI was remade)."""
    pki_dir = folder / "pki"
    for source, name, private in (("person_encrypt.key.pem", TEST_DOCTOR_KEY, True),
                                  ("person_encrypt.pem", TEST_DOCTOR_CERT, False)):
        data, target = (pki_dir / source).read_bytes(), folder / name
        if target.exists() and target.read_bytes() == data:
            continue
        if private:
            _write_private(target, data)
        else:
            target.write_bytes(data)


def prepare_legacy_keys(folder: Path) -> None:
    """TEST Apicrypt-style key files for this year (made once per year, mode 0600)."""
    from gateway.legacy.keystore import make_key_file

    year = dt.datetime.now(dt.UTC).year
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for user in APICRYPT_USERS:
        if not (folder / f"{user}.{year - 1900}").exists():
            make_key_file(folder, user, year, 1 << 20)


def prepare_console_operator(folder: Path) -> None:
    """The console's `admin` operator (issue 16): a random password of its own, never the mail
    accounts' (an operator is not a mail account), and its argon2id hash."""
    from gateway.server.passwords import hash_password

    pw_file, hash_file = folder / CONSOLE_PASSWORD, folder / "console-admin.hash"
    if not (pw_file.exists() and hash_file.exists()):
        password = secrets.token_urlsafe(12)
        _write_private(pw_file, password.encode() + b"\n")
        _write_private(hash_file, hash_password(password, "argon2").encode() + b"\n")


def prepare_default_files(folder: Path) -> None:
    """Create the TLS pair, the demo account and the TEST PKI once; later runs reuse them."""
    from gateway.server.passwords import hash_password

    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert, key = folder / "tls-cert.pem", folder / "tls-key.pem"
    if not (cert.exists() and key.exists()) or not _is_rsa(cert):  # an older msgw's ECDSA pair: made again
        cert_pem, key_pem = make_self_signed()
        _write_private(key, key_pem)
        cert.write_bytes(cert_pem)
    pw_file, hash_file = folder / "demo.password", folder / "demo.hash"
    if not (pw_file.exists() and hash_file.exists()):
        password = secrets.token_urlsafe(12)
        _write_private(pw_file, password.encode() + b"\n")
        _write_private(hash_file, hash_password(password).encode() + b"\n")
    prepare_console_operator(folder)
    prepare_test_pki(folder, folder.parent)
    _copy_test_doctor(folder)
    prepare_legacy_keys(folder / "apicrypt")
    (folder.parent / "drop" / "lis").mkdir(parents=True, exist_ok=True)
