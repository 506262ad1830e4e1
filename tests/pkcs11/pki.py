"""A tiny CPS-shaped test PKI (clearly TEST): root, intermediate, a doctor's signing and
encryption certificates (separate keys, as on real cards), and a lab organisation key.

Built with cryptography so these tests do not depend on the certs/ generator being ready.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

UPN = ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")
RPPS = "10101234567"
NATIONAL_ID = "8" + RPPS
CARD_ID = "1234567890"
EMAIL = "jean.dupont@test.mssante.fr"
PROFESSION = "Médecin"


@dataclass
class Issued:
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    def key_der(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def cert_der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class CpsPki:
    root: Issued
    intermediate: Issued
    sign: Issued  # doctor's signature certificate (KU digitalSignature + nonRepudiation)
    encrypt: Issued  # doctor's encryption certificate (KU keyEncipherment)
    lab: Issued  # a lab's organisation signing certificate
    ec_sign: Issued  # an EC signing key (HSMs often hold EC keys)

    def write(self, directory: Path) -> None:
        for name in ("root", "intermediate", "sign", "encrypt", "lab", "ec_sign"):
            issued: Issued = getattr(self, name)
            (directory / f"{name}.key.der").write_bytes(issued.key_der())
            (directory / f"{name}.cert.der").write_bytes(issued.cert_der())
            (directory / f"{name}.cert.pem").write_bytes(issued.cert_pem())


def _name(*attrs: tuple[ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in attrs])


def _issue(
    subject: x509.Name,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    issuer: Issued | None,
    *,
    ca: bool,
    ku: dict[str, bool],
    eku: list[ObjectIdentifier] | None = None,
    san: list[x509.GeneralName] | None = None,
) -> Issued:
    now = dt.datetime.now(dt.UTC)
    usage = dict.fromkeys(
        (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    usage.update(ku)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(**usage), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    signer = issuer.key if issuer else key
    return Issued(key, builder.sign(signer, hashes.SHA256()))


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _person(cn_suffix: str, key: rsa.RSAPrivateKey, issuer: Issued, ku: dict[str, bool]) -> Issued:
    subject = x509.Name(
        [
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR")]),
            x509.RelativeDistinguishedName(
                [x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "Paris (75)")]
            ),
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CABINET TEST")]),
            x509.RelativeDistinguishedName(
                [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "499700000000000")]
            ),
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.TITLE, PROFESSION)]),
            x509.RelativeDistinguishedName(
                [
                    x509.NameAttribute(NameOID.GIVEN_NAME, "JEAN"),
                    x509.NameAttribute(NameOID.COMMON_NAME, f"{NATIONAL_ID}/{CARD_ID}{cn_suffix}"),
                    x509.NameAttribute(NameOID.SURNAME, "DUPONT"),
                ]
            ),
        ]
    )
    upn = f"{NATIONAL_ID}/{CARD_ID}@carte-cps.fr".encode()
    san: list[x509.GeneralName] = [
        x509.RFC822Name(EMAIL),
        x509.OtherName(UPN, b"\x0c" + bytes([len(upn)]) + upn),
    ]
    return _issue(subject, key, issuer, ca=False, ku=ku, eku=[ExtendedKeyUsageOID.EMAIL_PROTECTION], san=san)


def make_pki() -> CpsPki:
    ca_ku = {"key_cert_sign": True, "crl_sign": True}
    base = [
        (NameOID.COUNTRY_NAME, "FR"),
        (NameOID.ORGANIZATION_NAME, "ASIP-SANTE"),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, "IGC-SANTE TEST"),
    ]
    root = _issue(
        _name(*base, (NameOID.COMMON_NAME, "TEST AC RACINE IGC-SANTE FORTE")), _rsa(), None, ca=True, ku=ca_ku
    )
    inter = _issue(
        _name(*base, (NameOID.COMMON_NAME, "TEST AC IGC-SANTE FORTE PERSONNES")),
        _rsa(),
        root,
        ca=True,
        ku=ca_ku,
    )
    sign = _person("", _rsa(), inter, {"digital_signature": True, "content_commitment": True})
    encrypt = _person("", _rsa(), inter, {"key_encipherment": True, "data_encipherment": True})
    lab_subject = _name(
        (NameOID.COUNTRY_NAME, "FR"),
        (NameOID.ORGANIZATION_NAME, "LABORATOIRE TEST"),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, "499700000000001"),
        (NameOID.COMMON_NAME, "labo-test.mssante.fr"),
    )
    lab = _issue(
        lab_subject,
        _rsa(),
        inter,
        ca=False,
        ku={"digital_signature": True, "content_commitment": True, "key_encipherment": True},
        eku=[ExtendedKeyUsageOID.EMAIL_PROTECTION],
        san=[x509.RFC822Name("resultats@labo-test.mssante.fr")],
    )
    ec_subject = _name((NameOID.COUNTRY_NAME, "FR"), (NameOID.COMMON_NAME, "ec-sign.test"))
    ec_sign = _issue(
        ec_subject, ec.generate_private_key(ec.SECP256R1()), inter, ca=False, ku={"digital_signature": True}
    )
    return CpsPki(root, inter, sign, encrypt, lab, ec_sign)
