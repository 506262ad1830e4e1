"""Public real samples (MSGW_CORPUS=/work/shared/samples): identities and S/MIME mails.

The samples are read in place, never copied. Their signatures chain to foreign or expired
PKIs, so the assertions are about typed outcomes and about what we can check exactly.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from asn1crypto import cms

from gateway.smime import errors as E
from gateway.smime.cms_verify import check_signed_data
from gateway.smime.engine import Verifier, decrypt_message, unwrap_message
from gateway.smime.identity import read_identity
from gateway.smime.mime import classify
from gateway.smime.revocation import CrlSource
from gateway.smime.softkeys import load_certificates
from tests.conftest import corpus_dir


@pytest.fixture(scope="module")
def corpus() -> Path:
    return corpus_dir()


def test_every_sample_certificate_parses(corpus: Path) -> None:
    files = sorted((corpus / "certs").iterdir())
    assert files
    for path in files:
        for cert in load_certificates(path):
            ident = read_identity(cert)
            assert ident.subject


def test_sample_identities(corpus: Path) -> None:
    cpe_file = corpus / "certs/ansforge-esignsante_TEST_CPE_auth_HOPITAL-DES-3-DAMES.crt"
    cpe = read_identity(load_certificates(cpe_file)[0])
    assert cpe.national_id == "30B0057881" and cpe.national_id_type == "structure-staff"
    assert cpe.card_id == "CPET0002" and cpe.profession == "Personnel santé ou social"
    assert cpe.organisation_ids == (("finess", "0B0057881"),)
    assert cpe.upns == ("30B0057881/CPET0002@carte-cps.fr",)
    org = read_identity(load_certificates(corpus / "certs/ansforge-esignsante_TEST_ORG_SIGN_testsign.crt.pem")[0])
    assert org.organisation_ids == (("siret", "00000000077081"),) and not org.is_person


async def test_sample_mails_give_typed_outcomes(corpus: Path, trust, key) -> None:
    verifier = Verifier(trust, CrlSource())
    outcomes: dict[str, str] = {}
    for path in sorted((corpus / "mail").iterdir()):
        raw = path.read_bytes()
        try:
            result = await unwrap_message(raw, keys=[key("person_encrypt")], verifier=verifier)
            outcomes[path.name] = "plain" if not result.layers else "ok"
        except E.SmimeError as exc:
            outcomes[path.name] = type(exc).__name__
    assert outcomes["direct_SMIMEMessage_enveloped.eml"] == "NotForUs"
    assert outcomes["direct_EncryptedMessage_x-pkcs7.eml"] == "NotForUs"  # x-pkcs7-mime, BER
    assert outcomes["direct_envelopeSignature.eml"] == "NotForUs"
    assert outcomes["mimekit_thunderbird-signed.eml"] == "UnsupportedAlgorithm"  # SHA-1 refused
    assert outcomes["ans_mss_MDN_processed_error_902.eml"] == "plain"


async def test_enveloped_samples_name_their_recipients(corpus: Path, key) -> None:
    for name in ("direct_SMIMEMessage_enveloped.eml", "direct_EncryptedMessage_x-pkcs7.eml"):
        part = classify((corpus / "mail" / name).read_bytes())
        info = cms.ContentInfo.load(part.der)
        assert info["content_type"].native == "enveloped_data"
        assert len(info["content"]["recipient_infos"]) >= 1
        with pytest.raises(E.NotForUs):
            await decrypt_message((corpus / "mail" / name).read_bytes(), [key("person_encrypt")])


def test_thunderbird_canonical_content_matches_its_digest(corpus: Path) -> None:
    """Our raw slicing of multipart/signed reproduces what Thunderbird hashed."""
    part = classify((corpus / "mail/mimekit_thunderbird-signed.eml").read_bytes())
    si = cms.ContentInfo.load(part.der)["content"]["signer_infos"][0]
    md = next(a for a in si["signed_attrs"] if a["type"].native == "message_digest")["values"][0].native
    assert hashlib.sha1(part.signed_content).digest() == md  # noqa: S324 - checking a legacy sample


def test_detached_signature_sample(corpus: Path) -> None:
    text = (corpus / "mail/direct_msgSig_detached_signature.txt").read_bytes()
    der = base64.b64decode(b"".join(text.split()))
    with pytest.raises(E.SmimeError):
        check_signed_data(der, b"not the signed content")
