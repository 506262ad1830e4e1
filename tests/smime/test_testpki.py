"""The TEST PKI has the IGC-Santé shapes the engine and the other tests rely on."""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.smime.testpki import build_test_pki


def test_ca_names_are_marked_test(pki) -> None:
    for ca in (pki.root, pki.persons_ca, pki.orgs_ca):
        ous = [a.value for a in ca.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
        assert "IGC-SANTE TEST" in ous
        assert ca.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value.startswith("TEST AC ")
    assert pki.root.cert.subject.rfc4514_string().startswith("CN=TEST AC RACINE IGC-SANTE")


def test_every_non_root_has_an_http_crl_distribution_point(pki) -> None:
    for issued in [pki.persons_ca, pki.orgs_ca, *pki.entities.values()]:
        cdp = issued.cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        url = cdp[0].full_name[0].value
        assert url.startswith(pki.crl_base_url + "/") and url.endswith(".crl")


def test_separate_signing_and_encryption_certificates(pki) -> None:
    sign = pki["person_sign"].cert.extensions.get_extension_for_class(x509.KeyUsage).value
    enc = pki["person_encrypt"].cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert sign.digital_signature and sign.content_commitment and not sign.key_encipherment
    assert enc.key_encipherment and not enc.digital_signature
    assert pki["person_sign"].cert.public_key() != pki["person_encrypt"].cert.public_key()
    eku = pki["org_sign"].cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.EMAIL_PROTECTION in eku


def test_crl_lists_the_revoked_certificate(pki) -> None:
    crl = x509.load_der_x509_crl((pki.crl_dir / "persons.crl").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(pki["revoked"].cert.serial_number) is not None
    assert crl.get_revoked_certificate_by_serial_number(pki["person_sign"].cert.serial_number) is None


def test_generator_writes_a_fresh_pki(tmp_path) -> None:
    other = build_test_pki(tmp_path, "http://127.0.0.1:1/crl")
    assert other.root.cert.public_key() != build_test_pki(tmp_path / "b").root.cert.public_key()  # new keys
    assert sorted(p.name for p in other.trust_dir.iterdir()) == ["orgs_ca.pem", "persons_ca.pem", "root.pem"]
    assert (tmp_path / "person_sign.key.pem").stat().st_mode & 0o077 == 0
