"""TEST PKI shaped like IGC-Santé: CAs, CPS-like person and organisation certificates, CRLs.

Everything here is clearly marked TEST (``OU=IGC-SANTE TEST``, ``CN=TEST AC ...``,
``O=TEST ...``) and is generated on demand into a directory (a pytest tmp dir, or a
demo directory): no private key is ever committed. The generator lives in the package so
tests, ``msgw demo`` and ``certs/testpki.py`` (the command-line wrapper) share it.

Shapes follow ../shared/specs/french-health.md and the public samples:
root ``TEST AC RACINE IGC-SANTE ELEMENTAIRE`` -> ``TEST AC IGC-SANTE ELEMENTAIRE PERSONNES``
and ``... ORGANISATIONS``; person certificates carry
``title=<profession>, GN + CN=<8+RPPS>/<card id> + SN`` and a UPN ``<id>/<card>@carte-cps.fr``;
signing and encryption keys/certificates are separate; every non-root certificate has an
HTTP CRL distribution point under ``crl_base_url`` (served on loopback by the tests).
CPS card *authentication* certificates (``card_*``: EKU clientAuth + smartcard logon, KU
digitalSignature, person subject and UPN) also name an OCSP responder (``ocsp_url``), answered in
the tests by ``openssl ocsp`` signed by ``ocsp_signer`` (`write_ocsp_index` writes its index).
"""

from __future__ import annotations

import argparse
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from asn1crypto import core
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID, ObjectIdentifier

TEST_PASSWORD = "test-password-not-secret"  # noqa: S105 - TEST PKI only
UPN_OID = ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")
TEST_POLICY_OID = ObjectIdentifier("1.2.250.1.213.1.7.2.1.1.1.1")

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

PERSON_RPPS = "10101234567"
PERSON_CARD_ID = "8001234567"
PERSON_EMAIL = "jean.test-dupont@cabinet-parc.sante.test"
PERSON_PROFESSION = "Médecin"
ORG_SIRET = "12345678900013"
ORG_EMAIL = "labo@labo-tests.sante.test"
#: The lab's MSSanté application mailbox (BAL applicative: `From:` of the CI-SIS copies), named by
#: its own organisation signing certificate (``app_sign``).
APPLICATION_EMAIL = "pfi@labo-tests.sante.test"
OTHER_EMAIL = "someone.else@autre.sante.test"
PERSON_AUTH_CARD_ID = "8001234568"
CARD_OTHER_RPPS = "10107777777"
CARD_UNKNOWN_RPPS = "10106666666"
CARD_REVOKED_RPPS = "10109999998"
PARTNER_CN = "TEST MSS PARTENAIRE"
PARTNER_REVOKED_CN = "TEST MSS PARTENAIRE REVOQUE"
SMARTCARD_LOGON_OID = ObjectIdentifier("1.3.6.1.4.1.311.20.2.2")

_CA_DN = [
    (NameOID.COUNTRY_NAME, "FR"),
    (NameOID.ORGANIZATION_NAME, "ASIP-SANTE"),
    (NameOID.ORGANIZATIONAL_UNIT_NAME, "0002 187512751"),
    (NameOID.ORGANIZATIONAL_UNIT_NAME, "IGC-SANTE TEST"),
]


@dataclass(frozen=True)
class Issued:
    """One generated certificate with its private key and the files written for it."""

    name: str
    cert: x509.Certificate
    key: PrivateKey
    cert_path: Path
    key_path: Path
    p12_path: Path
    legacy_p12_path: Path
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def chain_path(self) -> Path:
        return self.cert_path.with_name(f"{self.name}.chain.pem")


@dataclass(frozen=True)
class TestPKI:
    """The generated TEST PKI. Look end entities up by name: ``pki["person_sign"]``.

    End entities: person_sign, person_encrypt (CPS-shaped, RSA), org_sign, org_encrypt (RSA),
    org_sign_ec (ECDSA P-256), revoked, expired, not_yet_valid, wrong_usage (keyEncipherment
    only, cannot sign), unknown_issuer (from a root that is not in the trust store),
    other_sign (a valid signer with another address); card authentication certificates (issue 17):
    card_auth (JEAN TEST-DUPONT, PERSON_RPPS), card_other (CARD_OTHER_RPPS), card_unknown
    (CARD_UNKNOWN_RPPS), card_revoked (in the persons CRL), card_expired, card_no_client_auth (no
    EKU), and ocsp_signer (the persons CA's delegated OCSP responder); mutual-TLS organisation
    certificates (EKU serverAuth + clientAuth) partner_tls and partner_revoked (in the orgs CRL).
    """

    __test__ = False  # not a pytest class

    directory: Path
    trust_dir: Path
    crl_dir: Path
    crl_base_url: str
    password: str
    root: Issued
    persons_ca: Issued
    orgs_ca: Issued
    unknown_root: Issued
    entities: dict[str, Issued] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Issued:
        return self.entities[name]

    @property
    def crl_paths(self) -> tuple[Path, ...]:
        return tuple(sorted(self.crl_dir.glob("*.crl")))


def legacy_p12(name: str, key: PrivateKey, cert: x509.Certificate, chain: tuple[x509.Certificate, ...]) -> bytes:
    """PKCS#12 with PBES1 3DES/SHA-1 (fresh salt and IV each call): the only form gpgsm 2.2 reads.

    gpgsm 2.2.40 fails to parse about one such file in twenty ("possibly bad passphrase given",
    whatever the salt drew), so the gpgsm tests write the file again when an import fails."""
    legacy = (serialization.PrivateFormat.PKCS12.encryption_builder().kdf_rounds(2048)
              .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
              .hmac_hash(hashes.SHA1()).build(TEST_PASSWORD.encode()))  # noqa: S303 - gpgsm 2.2 reads only this
    return pkcs12.serialize_key_and_certificates(name.encode(), key, cert, list(chain), legacy)


def _name(attrs: list[tuple[ObjectIdentifier, str]]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in attrs])


def _ca_name(cn: str) -> x509.Name:
    return _name([*_CA_DN, (NameOID.COMMON_NAME, cn)])


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _ku(*, sign: bool = False, encipher: bool = False, ca: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign, content_commitment=sign, key_encipherment=encipher,
        data_encipherment=encipher, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False)


class _Builder:
    def __init__(self, directory: Path, crl_base_url: str, now: dt.datetime, ocsp_url: str = "") -> None:
        self.dir = directory
        self.ocsp_url = ocsp_url
        self.crl_base_url = crl_base_url.rstrip("/")
        self.now = now
        self.serial = 0x1000

    def next_serial(self) -> int:
        self.serial += 1
        return self.serial

    def cert(self, name: str, subject: x509.Name, key: PrivateKey, issuer: Issued | None, *,
             ca: bool = False, ku: x509.KeyUsage, eku: list[ObjectIdentifier] | None = None,
             san: list[x509.GeneralName] | None = None, crl_slug: str | None = None,
             not_before: dt.datetime | None = None, not_after: dt.datetime | None = None,
             path_len: int | None = None, ocsp: bool = False, ocsp_nocheck: bool = False) -> Issued:
        signer_key = issuer.key if issuer else key
        issuer_name = issuer.cert.subject if issuer else subject
        nb = not_before or self.now - dt.timedelta(days=1)
        na = not_after or self.now + dt.timedelta(days=3 * 365 if not ca else 10 * 365)
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
             .public_key(key.public_key()).serial_number(self.next_serial())
             .not_valid_before(nb).not_valid_after(na)
             .add_extension(x509.BasicConstraints(ca=ca, path_length=path_len if ca else None), critical=True)
             .add_extension(ku, critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
        if issuer is not None:
            b = b.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False)
        if eku:
            b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        if crl_slug:
            uri = f"{self.crl_base_url}/{crl_slug}.crl"
            b = b.add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier(uri)], relative_name=None, reasons=None,
                crl_issuer=None)]), critical=False)
        if ocsp_nocheck:  # RFC 6960 4.2.2.2.1: a delegated responder's own status is not asked
            b = b.add_extension(x509.OCSPNoCheck(), critical=False)
        if ocsp and self.ocsp_url:
            b = b.add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
                AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(self.ocsp_url))]), critical=False)
        if not ca:
            b = b.add_extension(x509.CertificatePolicies([x509.PolicyInformation(TEST_POLICY_OID, None)]),
                                critical=False)
        cert = b.sign(signer_key, hashes.SHA256())
        chain: tuple[x509.Certificate, ...] = ()
        if issuer is not None and issuer.cert.issuer != issuer.cert.subject:
            chain = (issuer.cert, *issuer.chain)
        return self.write(name, cert, key, chain)

    def write(self, name: str, cert: x509.Certificate, key: PrivateKey,
              chain: tuple[x509.Certificate, ...]) -> Issued:
        cert_path = self.dir / f"{name}.pem"
        key_path = self.dir / f"{name}.key.pem"
        p12_path = self.dir / f"{name}.p12"
        legacy_path = self.dir / f"{name}.legacy.p12"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_path.chmod(0o600)
        pw = TEST_PASSWORD.encode()
        p12_path.write_bytes(pkcs12.serialize_key_and_certificates(
            name.encode(), key, cert, list(chain), serialization.BestAvailableEncryption(pw)))
        legacy_path.write_bytes(legacy_p12(name, key, cert, chain))
        issued = Issued(name, cert, key, cert_path, key_path, p12_path, legacy_path, chain)
        issued.chain_path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
        return issued

    def crl(self, slug: str, ca: Issued, revoked: list[x509.Certificate]) -> Path:
        b = (x509.CertificateRevocationListBuilder().issuer_name(ca.cert.subject)
             .last_update(self.now - dt.timedelta(hours=1)).next_update(self.now + dt.timedelta(days=7))
             .add_extension(x509.CRLNumber(1), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                            critical=False))
        for cert in revoked:
            b = b.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(cert.serial_number)
                .revocation_date(self.now - dt.timedelta(minutes=30))
                .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False).build())
        crl = b.sign(ca.key, hashes.SHA256())
        path = self.dir / "crl" / f"{slug}.crl"
        path.write_bytes(crl.public_bytes(serialization.Encoding.DER))
        return path


def _person_subject(rpps: str, card: str, given: str, surname: str, profession: str) -> x509.Name:
    return x509.Name([
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR")]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "Paris (75)")]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.ORGANIZATION_NAME,
                                                           "TEST CABINET MEDICAL DU PARC")]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "499700001234")]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.TITLE, profession)]),
        x509.RelativeDistinguishedName([
            x509.NameAttribute(NameOID.GIVEN_NAME, given),
            x509.NameAttribute(NameOID.COMMON_NAME, f"8{rpps}/{card}"),
            x509.NameAttribute(NameOID.SURNAME, surname),
        ]),
    ])


def _org_subject(cn: str) -> x509.Name:
    return _name([(NameOID.COUNTRY_NAME, "FR"), (NameOID.STATE_OR_PROVINCE_NAME, "Rhone (69)"),
                  (NameOID.ORGANIZATION_NAME, "TEST LABORATOIRE DES TESTS"),
                  (NameOID.ORGANIZATIONAL_UNIT_NAME, f"3{ORG_SIRET}"), (NameOID.COMMON_NAME, cn)])


def _upn(value: str) -> x509.OtherName:
    return x509.OtherName(UPN_OID, core.UTF8String(value).dump())


def build_test_pki(directory: str | Path, crl_base_url: str = "http://127.0.0.1:8080/crl",
                   now: dt.datetime | None = None, ocsp_url: str = "http://127.0.0.1:8081/ocsp") -> TestPKI:
    """Generate the whole TEST PKI into `directory` (certificates, keys, PKCS#12, CRLs, trust dir).

    `crl_base_url` is where the ``crl/`` subdirectory will be served: the CDP of each
    certificate is ``<crl_base_url>/<ca>.crl``; `ocsp_url` is the OCSP responder the card
    authentication certificates name.
    """
    d = Path(directory)
    (d / "crl").mkdir(parents=True, exist_ok=True)
    (d / "trust").mkdir(exist_ok=True)
    now = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    b = _Builder(d, crl_base_url, now, ocsp_url)

    root = b.cert("root", _ca_name("TEST AC RACINE IGC-SANTE ELEMENTAIRE"), _rsa(), None, ca=True,
                  ku=_ku(ca=True))
    persons = b.cert("persons_ca", _ca_name("TEST AC IGC-SANTE ELEMENTAIRE PERSONNES"), _rsa(), root, ca=True,
                     ku=_ku(ca=True), crl_slug="root", path_len=0)
    orgs = b.cert("orgs_ca", _ca_name("TEST AC IGC-SANTE ELEMENTAIRE ORGANISATIONS"), _rsa(), root, ca=True,
                  ku=_ku(ca=True), crl_slug="root", path_len=0)
    unknown_root = b.cert("unknown_root", _name([(NameOID.COUNTRY_NAME, "FR"),
                                                 (NameOID.ORGANIZATION_NAME, "TEST INCONNU"),
                                                 (NameOID.COMMON_NAME, "TEST AC INCONNUE")]),
                          _rsa(), None, ca=True, ku=_ku(ca=True))

    email_eku = [ExtendedKeyUsageOID.EMAIL_PROTECTION]
    upn = f"8{PERSON_RPPS}/{PERSON_CARD_ID}@carte-cps.fr"
    person_san: list[x509.GeneralName] = [x509.RFC822Name(PERSON_EMAIL), _upn(upn)]
    psubj = _person_subject(PERSON_RPPS, PERSON_CARD_ID, "JEAN", "TEST-DUPONT", PERSON_PROFESSION)
    ent: dict[str, Issued] = {}
    # CPS signature certificates carry KU digitalSignature+nonRepudiation and no EKU.
    ent["person_sign"] = b.cert("person_sign", psubj, _rsa(), persons, ku=_ku(sign=True), san=person_san,
                                crl_slug="persons")
    ent["person_encrypt"] = b.cert("person_encrypt", psubj, _rsa(), persons, ku=_ku(encipher=True),
                                   eku=email_eku, san=person_san, crl_slug="persons")
    org_san: list[x509.GeneralName] = [x509.RFC822Name(ORG_EMAIL)]
    ent["org_sign"] = b.cert("org_sign", _org_subject("TEST LABO MESSAGERIE SIGNATURE"), _rsa(), orgs,
                             ku=_ku(sign=True), eku=email_eku, san=org_san, crl_slug="orgs")
    # The lab's MSSanté application mailbox has its own organisation signing certificate.
    ent["app_sign"] = b.cert("app_sign", _org_subject("TEST LABO BAL APPLICATIVE SIGNATURE"), _rsa(), orgs,
                             ku=_ku(sign=True), eku=email_eku, san=[x509.RFC822Name(APPLICATION_EMAIL)],
                             crl_slug="orgs")
    ent["org_encrypt"] = b.cert("org_encrypt", _org_subject("TEST LABO MESSAGERIE CHIFFREMENT"), _rsa(), orgs,
                                ku=_ku(encipher=True), eku=email_eku, san=org_san, crl_slug="orgs")
    ent["org_sign_ec"] = b.cert("org_sign_ec", _org_subject("TEST LABO MESSAGERIE SIGNATURE EC"),
                                ec.generate_private_key(ec.SECP256R1()), orgs, ku=_ku(sign=True),
                                eku=email_eku, san=org_san, crl_slug="orgs")
    ent["other_sign"] = b.cert("other_sign", _org_subject("TEST AUTRE SIGNATAIRE"), _rsa(), orgs,
                               ku=_ku(sign=True), eku=email_eku, san=[x509.RFC822Name(OTHER_EMAIL)],
                               crl_slug="orgs")
    bad_key = _rsa()
    ent["revoked"] = b.cert("revoked", _person_subject("10109999999", "8009999999", "REVOQUE", "TEST-REVOQUE",
                                                       PERSON_PROFESSION), bad_key, persons, ku=_ku(sign=True),
                            san=[x509.RFC822Name(PERSON_EMAIL)], crl_slug="persons")
    ent["expired"] = b.cert("expired", _org_subject("TEST CERTIFICAT EXPIRE"), bad_key, orgs, ku=_ku(sign=True),
                            eku=email_eku, san=org_san, crl_slug="orgs",
                            not_before=now - dt.timedelta(days=400), not_after=now - dt.timedelta(days=2))
    ent["not_yet_valid"] = b.cert("not_yet_valid", _org_subject("TEST CERTIFICAT PAS ENCORE VALIDE"), bad_key,
                                  orgs, ku=_ku(sign=True), eku=email_eku, san=org_san, crl_slug="orgs",
                                  not_before=now + dt.timedelta(days=2), not_after=now + dt.timedelta(days=400))
    ent["wrong_usage"] = b.cert("wrong_usage", _org_subject("TEST MAUVAIS USAGE"), bad_key, orgs,
                                ku=_ku(encipher=True), eku=[ExtendedKeyUsageOID.SERVER_AUTH], san=org_san,
                                crl_slug="orgs")
    ent["unknown_issuer"] = b.cert("unknown_issuer", _org_subject("TEST EMETTEUR INCONNU"), bad_key,
                                   unknown_root, ku=_ku(sign=True), eku=email_eku, san=org_san,
                                   crl_slug="unknown")

    _cards(b, persons, ent, now)
    tls_eku = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    for name, cn in (("partner_tls", PARTNER_CN), ("partner_revoked", PARTNER_REVOKED_CN)):
        ent[name] = b.cert(name, _org_subject(cn), _rsa(), orgs, ku=_auth_ku(), eku=tls_eku,
                           san=[x509.DNSName(cn.lower().replace(" ", "-") + ".sante.test")], crl_slug="orgs")

    b.crl("root", root, [])
    b.crl("persons", persons, [ent["revoked"].cert, ent["card_revoked"].cert])
    b.crl("orgs", orgs, [ent["partner_revoked"].cert])
    b.crl("unknown", unknown_root, [])
    for ca in (root, persons, orgs):
        (d / "trust" / f"{ca.name}.pem").write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    return TestPKI(directory=d, trust_dir=d / "trust", crl_dir=d / "crl", crl_base_url=b.crl_base_url,
                   password=TEST_PASSWORD, root=root, persons_ca=persons, orgs_ca=orgs,
                   unknown_root=unknown_root, entities=ent)


def _auth_ku() -> x509.KeyUsage:
    """A card authentication key signs the TLS handshake only (no non-repudiation)."""
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                         encipher_only=False, decipher_only=False)


def _cards(b: _Builder, persons: Issued, ent: dict[str, Issued], now: dt.datetime) -> None:
    """CPS-shaped card authentication certificates (EKU clientAuth + smartcard logon, KU
    digitalSignature, person subject, UPN; CRL DP and OCSP AIA) and the persons CA's OCSP signer."""
    auth_eku = [ExtendedKeyUsageOID.CLIENT_AUTH, SMARTCARD_LOGON_OID]

    def card(name: str, rpps: str, card_id: str, given: str, surname: str, *, eku: list[ObjectIdentifier] | None,
             not_before: dt.datetime | None = None, not_after: dt.datetime | None = None) -> None:
        subject = _person_subject(rpps, card_id, given, surname, PERSON_PROFESSION)
        san: list[x509.GeneralName] = [_upn(f"8{rpps}/{card_id}@carte-cps.fr")]
        ent[name] = b.cert(name, subject, _rsa(), persons, ku=_auth_ku(), eku=eku, san=san, crl_slug="persons",
                           ocsp=True, not_before=not_before, not_after=not_after)

    card("card_auth", PERSON_RPPS, PERSON_AUTH_CARD_ID, "JEAN", "TEST-DUPONT", eku=auth_eku)
    card("card_other", CARD_OTHER_RPPS, "8007777777", "PAUL", "TEST-MARTIN", eku=auth_eku)
    card("card_unknown", CARD_UNKNOWN_RPPS, "8006666666", "LOUIS", "TEST-INCONNU", eku=auth_eku)
    card("card_revoked", CARD_REVOKED_RPPS, "8009999998", "REVOQUE", "TEST-REVOQUE", eku=auth_eku)
    card("card_expired", "10105555555", "8005555555", "EXPIRE", "TEST-EXPIRE", eku=auth_eku,
         not_before=now - dt.timedelta(days=400), not_after=now - dt.timedelta(days=2))
    card("card_no_client_auth", "10104444444", "8004444444", "SANS", "TEST-USAGE", eku=None)
    ent["ocsp_signer"] = b.cert("ocsp_signer", _ca_name("TEST REPONDEUR OCSP IGC-SANTE PERSONNES"), _rsa(), persons,
                                ku=_auth_ku(), eku=[ExtendedKeyUsageOID.OCSP_SIGNING], crl_slug="persons",
                                ocsp_nocheck=True)


def write_ocsp_index(path: str | Path, certs: list[x509.Certificate], revoked: list[x509.Certificate],
                     now: dt.datetime | None = None) -> Path:
    """An ``openssl ca``/``openssl ocsp -index`` database: `certs` valid (V), `revoked` (R)."""
    now = now or dt.datetime.now(dt.UTC)

    def when(t: dt.datetime) -> str:
        return t.strftime("%y%m%d%H%M%SZ")

    lines = []
    for cert in [*certs, *revoked]:
        serial = f"{cert.serial_number:X}"
        serial = serial if len(serial) % 2 == 0 else "0" + serial
        status, rev = ("R", when(now - dt.timedelta(minutes=30))) if cert in revoked else ("V", "")
        subject = "/" + "/".join(cert.subject.rfc4514_string().split(",")[::-1])
        lines.append(f"{status}\t{when(cert.not_valid_after_utc)}\t{rev}\t{serial}\tunknown\t{subject}\n")
    target = Path(path)
    target.write_text("".join(lines))
    return target


def main(argv: list[str] | None = None) -> int:
    """Command line: generate the TEST PKI into a directory."""
    p = argparse.ArgumentParser(description="Generate the IGC-Santé-shaped TEST PKI (TEST ONLY).")
    p.add_argument("directory")
    p.add_argument("--crl-base-url", default="http://127.0.0.1:8080/crl")
    args = p.parse_args(argv)
    pki = build_test_pki(args.directory, args.crl_base_url)
    print(f"TEST PKI written to {pki.directory} (trust store: {pki.trust_dir}, CRLs: {pki.crl_dir})")
    return 0
