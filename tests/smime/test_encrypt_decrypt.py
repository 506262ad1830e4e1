"""Encrypt then decrypt with our engine: profiles, many recipients, nesting, RFC 3218."""

from __future__ import annotations

import email
import email.policy

import pytest
from asn1crypto import cms

from gateway.smime import errors as E
from gateway.smime.cms_decrypt import decrypt_content
from gateway.smime.cms_envelope import encrypt_content
from gateway.smime.engine import (
    Verifier,
    decrypt_message,
    encrypt_message,
    sign_and_encrypt_message,
    sign_message,
    unwrap_message,
)
from gateway.smime.mime import classify
from tests.smime.support import MESSAGE


@pytest.mark.parametrize("cipher", ["aes256-cbc", "aes256-gcm"])
@pytest.mark.parametrize("transport", ["pkcs1v15", "oaep"])
@pytest.mark.parametrize("rid", ["issuer-serial", "ski"])
async def test_profiles_roundtrip(pki, key, cipher, transport, rid) -> None:
    enc = encrypt_message(MESSAGE, [pki["person_encrypt"].cert], cipher=cipher, key_transport=transport,
                          recipient_id=rid)
    msg = email.message_from_bytes(enc, policy=email.policy.compat32)
    assert msg.get_content_type() == "application/pkcs7-mime"
    assert msg.get_param("smime-type") == ("authEnveloped-data" if cipher == "aes256-gcm" else "enveloped-data")
    assert b"TEST body" not in enc
    info = cms.ContentInfo.load(classify(enc).der)
    assert info["content_type"].native == ("authenticated_enveloped_data" if cipher == "aes256-gcm"
                                           else "enveloped_data")
    ktri = info["content"]["recipient_infos"][0].chosen
    assert ktri["key_encryption_algorithm"]["algorithm"].native == (
        "rsaes_oaep" if transport == "oaep" else "rsaes_pkcs1v15")
    assert ktri["rid"].name == ("subject_key_identifier" if rid == "ski" else "issuer_and_serial_number")
    out = await decrypt_message(enc, [key("person_encrypt")])
    assert out.startswith(b"From: Jean")
    assert b"TEST body line two.\r\n" in out


async def test_default_profile_is_cbc_pkcs1_issuer_serial(pki) -> None:
    info = cms.ContentInfo.load(classify(encrypt_message(MESSAGE, [pki["org_encrypt"].cert])).der)
    env = info["content"]
    assert env["encrypted_content_info"]["content_encryption_algorithm"]["algorithm"].native == "aes256_cbc"
    ktri = env["recipient_infos"][0].chosen
    assert ktri["key_encryption_algorithm"]["algorithm"].native == "rsaes_pkcs1v15"
    assert ktri["rid"].name == "issuer_and_serial_number"


async def test_many_recipients_and_sender_copy(pki, key) -> None:
    enc = encrypt_message(MESSAGE, [pki["org_encrypt"].cert], sender_copy=pki["person_encrypt"].cert)
    assert len(cms.ContentInfo.load(classify(enc).der)["content"]["recipient_infos"]) == 2
    assert b"TEST body" in await decrypt_message(enc, [key("org_encrypt")])
    assert b"TEST body" in await decrypt_message(enc, [key("person_encrypt")])


async def test_not_for_us(pki, key) -> None:
    enc = encrypt_message(MESSAGE, [pki["org_encrypt"].cert])
    with pytest.raises(E.NotForUs):
        await decrypt_message(enc, [key("person_encrypt")])


async def test_refuses_to_encrypt_to_signing_certificate(pki) -> None:
    with pytest.raises(E.WrongKeyUsage):
        encrypt_message(MESSAGE, [pki["person_sign"].cert])


@pytest.mark.parametrize("transport", ["pkcs1v15", "oaep"])
async def test_rfc3218_one_generic_error(pki, key, transport) -> None:
    """A corrupted encrypted key and a corrupted ciphertext fail the same way."""
    der = encrypt_content(b"Content-Type: text/plain\r\n\r\nTEST\r\n", [pki["person_encrypt"].cert],
                          key_transport=transport)
    info = cms.ContentInfo.load(der)
    ktri = info["content"]["recipient_infos"][0].chosen
    bad_key = bytearray(ktri["encrypted_key"].native)
    bad_key[5] ^= 0xFF
    ktri["encrypted_key"] = bytes(bad_key)
    with pytest.raises(E.DecryptionFailed) as a:
        await decrypt_content(info.dump(force=True), [key("person_encrypt")])
    info = cms.ContentInfo.load(der)
    eci = info["content"]["encrypted_content_info"]
    data = bytearray(eci["encrypted_content"].native)
    data[-17] ^= 0x01  # flips the last padding byte: always invalid, whatever the padding length
    eci["encrypted_content"] = bytes(data)
    with pytest.raises(E.DecryptionFailed) as b:
        await decrypt_content(info.dump(force=True), [key("person_encrypt")])
    assert str(a.value) == str(b.value) == "decryption failed"
    assert type(a.value) is type(b.value)


async def test_stand_in_key_never_yields_plaintext(pki, key) -> None:
    """After a failed unwrap the random stand-in key must never produce output, even when the CBC
    padding happens to look valid (about 1 try in 256). OAEP, because its failures are explicit:
    PKCS#1 v1.5 with implicit rejection (OpenSSL >= 3.2) hands back a synthetic key instead."""
    der = encrypt_content(b"Content-Type: text/plain\r\n\r\nTEST\r\n", [pki["person_encrypt"].cert],
                          key_transport="oaep")
    info = cms.ContentInfo.load(der)
    ktri = info["content"]["recipient_infos"][0].chosen
    bad_key = bytearray(ktri["encrypted_key"].native)
    bad_key[5] ^= 0xFF
    ktri["encrypted_key"] = bytes(bad_key)
    broken = info.dump(force=True)
    for _ in range(1024):
        with pytest.raises(E.DecryptionFailed):
            await decrypt_content(broken, [key("person_encrypt")])


async def test_gcm_tag_checked(pki, key) -> None:
    der = encrypt_content(b"Content-Type: text/plain\r\n\r\nTEST\r\n", [pki["person_encrypt"].cert],
                          cipher="aes256-gcm")
    info = cms.ContentInfo.load(der)
    mac = bytearray(info["content"]["mac"].native)
    mac[0] ^= 1
    info["content"]["mac"] = bytes(mac)
    with pytest.raises(E.DecryptionFailed):
        await decrypt_content(info.dump(force=True), [key("person_encrypt")])


async def test_sign_then_encrypt_default_outbound(pki, key, verifier: Verifier) -> None:
    out = await sign_and_encrypt_message(MESSAGE, key("person_sign"), [pki["org_encrypt"].cert],
                                         sender_copy=pki["person_encrypt"].cert)
    result = await unwrap_message(out, keys=[key("org_encrypt")], verifier=verifier)
    assert result.layers == ("enveloped", "signed")
    assert result.encrypted and result.signed
    assert result.signatures[0].identity.rpps == "10101234567"
    assert result.message.startswith(b"From: Jean")
    assert b"TEST body line one." in result.content


async def test_signed_then_encrypted_and_triple_wrapped(pki, key, verifier: Verifier) -> None:
    signed_outside = await sign_message(encrypt_message(MESSAGE, [pki["org_encrypt"].cert]), key("person_sign"))
    result = await unwrap_message(signed_outside, keys=[key("org_encrypt")], verifier=verifier)
    assert result.layers == ("signed", "enveloped")
    triple = await sign_message(
        await sign_and_encrypt_message(MESSAGE, key("person_sign"), [pki["org_encrypt"].cert], opaque=True),
        key("person_sign"))
    result = await unwrap_message(triple, keys=[key("org_encrypt")], verifier=verifier)
    assert result.layers == ("signed", "enveloped", "signed-opaque")
    assert len(result.signatures) == 2
    assert b"TEST body line two." in result.content


async def test_encrypted_layer_without_key_is_refused(pki, key, verifier: Verifier) -> None:
    out = await sign_and_encrypt_message(MESSAGE, key("person_sign"), [pki["org_encrypt"].cert])
    with pytest.raises(E.NotForUs):
        await unwrap_message(out, verifier=verifier)


async def test_inner_tampering_detected_after_decrypt(pki, key, verifier: Verifier) -> None:
    signed = await sign_message(MESSAGE, key("person_sign"))
    tampered = signed.replace(b"line one", b"line 0ne")
    enc = encrypt_message(tampered, [pki["org_encrypt"].cert])
    with pytest.raises(E.ContentTampered):
        await unwrap_message(enc, keys=[key("org_encrypt")], verifier=verifier)


async def test_rfc822_wrapped_inner_message(pki, key, verifier: Verifier) -> None:
    """RFC 8551 3.1: a client may wrap the whole signed message as message/rfc822 before encrypting."""
    signed = await sign_message(MESSAGE, key("person_sign"))
    wrapper = (b"From: Jean <jean.test-dupont@cabinet-parc.sante.test>\r\nContent-Type: message/rfc822\r\n\r\n"
               + signed)
    enc = encrypt_message(wrapper, [pki["org_encrypt"].cert])
    result = await unwrap_message(enc, keys=[key("org_encrypt")], verifier=verifier)
    assert result.layers == ("enveloped", "rfc822", "signed")
    assert b"TEST body line one." in result.content


async def test_several_from_addresses_never_match(key, verifier: Verifier) -> None:
    msg = MESSAGE.replace(b"From: Jean Test-Dupont <jean.test-dupont@cabinet-parc.sante.test>",
                          b"From: jean.test-dupont@cabinet-parc.sante.test, other@evil.test")
    signed = await sign_message(msg, key("person_sign"))
    with pytest.raises(E.SignerMismatch):
        await unwrap_message(signed, verifier=verifier)
    assert (await unwrap_message(msg, verifier=verifier)).layers == ()  # plain: nothing to match


async def test_triple_wrap_outer_signer_may_be_an_organisation(pki, key, verifier: Verifier) -> None:
    """RFC 2634: the author signs inside; an organisation or gateway may sign the outside."""
    inner = await sign_and_encrypt_message(MESSAGE, key("person_sign"), [pki["org_encrypt"].cert])
    triple = await sign_message(inner, key("other_sign"))
    result = await unwrap_message(triple, keys=[key("org_encrypt")], verifier=verifier)
    assert [s.from_matched for s in result.signatures] == [False, True]
    # The other way round (author signature by someone else) is refused.
    wrong = await sign_message(await sign_and_encrypt_message(MESSAGE, key("other_sign"),
                                                              [pki["org_encrypt"].cert]), key("person_sign"))
    with pytest.raises(E.SignerMismatch):
        await unwrap_message(wrong, keys=[key("org_encrypt")], verifier=verifier)
