"""Identity reader: addresses, RPPS/ADELI from the card CN, profession, organisation ids."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.smime.identity import read_identity
from gateway.smime.testpki import ORG_EMAIL, PERSON_EMAIL


def _cert(subject: x509.Name, san: list[x509.GeneralName] | None = None) -> x509.Certificate:
    k = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(k.public_key())
         .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1)))
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return b.sign(k, hashes.SHA256())


def test_person_card_certificate(pki) -> None:
    ident = read_identity(pki["person_sign"].cert)
    assert ident.is_person
    assert ident.national_id == "810101234567" and ident.national_id_type == "rpps"
    assert ident.rpps == "10101234567" and ident.adeli is None
    assert ident.card_id == "8001234567"
    assert ident.profession == "Médecin"
    assert (ident.given_name, ident.surname) == ("JEAN", "TEST-DUPONT")
    assert ident.emails == (PERSON_EMAIL,)
    assert ident.upns == ("810101234567/8001234567@carte-cps.fr",)
    assert "rpps:10101234567" in ident.identifiers
    assert ident.names_address(PERSON_EMAIL.upper())


def test_organisation_certificate(pki) -> None:
    ident = read_identity(pki["org_sign"].cert)
    assert not ident.is_person and ident.rpps is None
    assert ident.organisation == "TEST LABORATOIRE DES TESTS"
    assert ident.organisation_ids == (("siret", "12345678900013"),)
    assert ident.emails == (ORG_EMAIL,)


def test_adeli_and_staff_identifiers() -> None:
    adeli = _cert(x509.Name([x509.RelativeDistinguishedName([
        x509.NameAttribute(NameOID.COMMON_NAME, "0751234567/CPS0001"),
        x509.NameAttribute(NameOID.SURNAME, "TEST")]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.TITLE, "Infirmier")])]))
    ident = read_identity(adeli)
    assert (ident.national_id_type, ident.adeli, ident.rpps) == ("adeli", "751234567", None)
    assert ident.profession == "Infirmier"
    # Establishment staff (CPE), as in the ANS sample: CN=3<structure id>/<internal id>, OU=1<FINESS>.
    staff = _cert(x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "10B0057881"),
                             x509.NameAttribute(NameOID.COMMON_NAME, "30B0057881/CPET0002")]))
    ident = read_identity(staff)
    assert ident.national_id_type == "structure-staff" and ident.rpps is None
    assert ident.organisation_ids == (("finess", "0B0057881"),)


def test_identifier_from_upn_when_cn_is_plain() -> None:
    upn = x509.OtherName(x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3"),
                         b"\x0c" + bytes([len("810101234567/CPS1@carte-cps.fr")]) + b"810101234567/CPS1@carte-cps.fr")
    cert = _cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Jean TEST")]),
                 [upn, x509.RFC822Name("Jean@Example.TEST")])
    ident = read_identity(cert)
    assert ident.rpps == "10101234567"
    assert ident.emails == ("jean@example.test",)


def test_no_identifiers_in_a_plain_certificate() -> None:
    ident = read_identity(_cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "www.example.test")])))
    assert ident.identifiers == () and not ident.is_person


def test_iso_6523_siren_of_an_igc_sante_ca_is_a_siren() -> None:
    """IGC-Santé CA certificates write `OU=0002 187512751` (ISO 6523 ICD 0002 + SIREN); read as
    type digit 0 it became `adeli-cabinet:002187512751`."""
    for ou in ("0002 187512751", "0002187512751"):
        ca = _cert(x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
                              x509.NameAttribute(NameOID.COMMON_NAME, "TEST AC IGC-SANTE")]))
        ident = read_identity(ca)
        assert ident.organisation_ids == (("siren", "187512751"),)
        assert "siren:187512751" in ident.identifiers
    cabinet = _cert(x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "0751234567")]))
    assert read_identity(cabinet).organisation_ids == (("adeli-cabinet", "751234567"),)
