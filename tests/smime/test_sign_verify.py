"""Sign then verify with our own engine: forms, algorithms, attributes, canonicalisation."""

from __future__ import annotations

import base64
import email
import email.policy

import pytest
from asn1crypto import cms

from gateway.smime import errors as E
from gateway.smime.engine import Verifier, sign_message, verify_message
from gateway.smime.mime import classify
from tests.smime.support import MESSAGE, message_from

ORG = "labo@labo-tests.sante.test"


@pytest.mark.parametrize("opaque", [False, True], ids=["detached", "opaque"])
@pytest.mark.parametrize("name,pss,scheme", [("person_sign", False, "rsa-pkcs1v15"),
                                             ("person_sign", True, "rsassa-pss"),
                                             ("org_sign_ec", False, "ecdsa")])
async def test_sign_verify_roundtrip(key, verifier: Verifier, name, pss, scheme, opaque) -> None:
    msg = MESSAGE if name == "person_sign" else message_from(ORG)
    signed = await sign_message(msg, key(name), opaque=opaque, pss=pss)
    result = await verify_message(signed, verifier)
    sig = result.signatures[0]
    assert sig.signature_algorithm == scheme
    assert sig.digest_algorithm == "sha256"
    assert sig.detached is not opaque
    assert sig.from_matched is True and sig.revocation_status == "good"
    assert sig.chain[-1].startswith("CN=TEST AC RACINE IGC-SANTE ELEMENTAIRE")
    assert len(sig.chain) == 3
    assert result.layers == (("signed-opaque",) if opaque else ("signed",))
    assert b"TEST body" in result.content


async def test_detached_headers_and_attributes(key) -> None:
    signed = await sign_message(MESSAGE, key("person_sign"))
    msg = email.message_from_bytes(signed, policy=email.policy.compat32)
    assert msg.get_content_type() == "multipart/signed"
    assert msg.get_param("protocol") == "application/pkcs7-signature"
    assert msg.get_param("micalg") == "sha-256"
    assert msg["From"] and msg["Subject"] == "TEST message"  # outer headers kept outside
    part = classify(signed)
    assert part.signed_content.startswith(b"Content-Type: text/plain")
    info = cms.ContentInfo.load(part.der)
    sd = info["content"]
    attrs = {a["type"].native for a in sd["signer_infos"][0]["signed_attrs"]}
    assert {"content_type", "message_digest", "signing_time", "smime_capabilities"} <= attrs
    subjects = [c.chosen.subject.human_friendly for c in sd["certificates"]]
    assert any("TEST AC IGC-SANTE ELEMENTAIRE PERSONNES" in s for s in subjects)  # chain included
    assert sd["encap_content_info"]["content"].native is None  # detached


async def test_opaque_form(key) -> None:
    signed = await sign_message(MESSAGE, key("person_sign"), opaque=True)
    msg = email.message_from_bytes(signed, policy=email.policy.compat32)
    assert msg.get_content_type() == "application/pkcs7-mime"
    assert msg.get_param("smime-type") == "signed-data"
    der = base64.b64decode(msg.get_payload())
    assert b"TEST body line one." in der


async def test_lf_input_and_relay_line_endings(key, verifier: Verifier) -> None:
    lf = MESSAGE.replace(b"\r\n", b"\n")
    signed = await sign_message(lf, key("person_sign"))
    assert b"\n" not in signed.replace(b"\r\n", b"")  # output is canonical CRLF
    # A relay that stores with LF (Unix MTA) must not break the signature.
    relayed = signed.replace(b"\r\n", b"\n")
    result = await verify_message(relayed, verifier)
    assert result.signatures[0].from_matched


async def test_8bit_body_becomes_7bit_safe(key, verifier: Verifier) -> None:
    body = "Résultats: hémoglobine normale\r\n".encode()
    msg = message_from("jean.test-dupont@cabinet-parc.sante.test", body=body,
                       headers=b"Content-Transfer-Encoding: 8bit\r\n").replace(
        b"charset=us-ascii", b"charset=utf-8")
    signed = await sign_message(msg, key("person_sign"))
    assert all(b < 128 for b in signed)
    result = await verify_message(signed, verifier)
    inner = email.message_from_bytes(result.content, policy=email.policy.compat32)
    assert inner["Content-Transfer-Encoding"] == "base64"
    assert inner.get_payload(decode=True) == body


async def test_long_folded_header_and_rfc2231_params_survive(key, verifier: Verifier) -> None:
    entity = (b"From: <jean.test-dupont@cabinet-parc.sante.test>\r\nSubject: TEST\r\n"
              b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
              b"--b1\r\nContent-Type: text/plain\r\n\r\nTEST\r\n"
              b"--b1\r\nContent-Type: application/pdf;\r\n name=\"" + b"a" * 90 + b".pdf\"\r\n"
              b"Content-Disposition: attachment; filename=\"" + b"a" * 90 + b".pdf\"\r\n"
              b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b1--\r\n")
    signed = await sign_message(entity, key("person_sign"))
    assert b"filename*0" not in signed  # never rewritten as RFC 2231
    result = await verify_message(signed, verifier)
    assert b"a" * 90 + b".pdf\"" in result.content


async def test_org_certificate_signs(key, verifier: Verifier) -> None:
    signed = await sign_message(message_from(ORG), key("org_sign"))
    sig = (await verify_message(signed, verifier)).signatures[0]
    assert ("siret", "12345678900013") in sig.identity.organisation_ids
    assert sig.as_dict()["valid"] is True


async def test_only_8bit_parts_are_reencoded(key, verifier: Verifier) -> None:
    msg = (b"From: <jean.test-dupont@cabinet-parc.sante.test>\r\nSubject: TEST\r\n"
           b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
           b"--b1\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nTEST ascii part\r\n"
           b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
           + "TEST partie accentuée\r\n".encode() + b"--b1--\r\n")
    signed = await sign_message(msg, key("person_sign"))
    assert all(b < 128 for b in signed)
    result = await verify_message(signed, verifier)
    assert b"\r\n\r\nTEST ascii part\r\n" in result.content  # untouched
    parts = list(email.message_from_bytes(result.content, policy=email.policy.compat32).walk())
    assert parts[2]["Content-Transfer-Encoding"] == "base64"
    assert parts[2].get_payload(decode=True) == "TEST partie accentuée".encode()  # CRLF is the boundary's


async def test_unusable_charset_in_content_to_sign_is_a_typed_error(key) -> None:
    """Found by atheris: the stdlib raised ValueError decoding a part whose charset holds a NUL."""
    raw = b"From: a@b.test\r\nContent-Type: text/plain; charset=\"a\x00b\"\r\n\r\ncaf\xc3\xa9\r\n"
    with pytest.raises(E.MalformedSmime, match="charset"):
        await sign_message(raw, key("person_sign"))



async def test_content_the_stdlib_cannot_fold_is_a_typed_error(key) -> None:
    """Found by atheris: a nested header broken by vertical tabs made the stdlib generator raise
    HeaderParseError ("embedded header") while re-encoding 8-bit content for signing."""
    raw = (b"From: a@b.test\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n"
           b"Content-Type: message/rfc822\r\n\r\nFrom: Con" + b"\x0b" * 80 + b"tent-Type: m\r\n\r\n"
           b"caf\xc3\xa9\r\n--x--\r\n")
    with pytest.raises(E.MalformedSmime, match="re-encoded"):
        await sign_message(raw, key("person_sign"))
