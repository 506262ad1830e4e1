"""Every refusal has its own typed error; garbage never raises anything but our errors."""

from __future__ import annotations

import base64
import datetime as dt
import random

import pytest
from asn1crypto import cms

from gateway.smime import errors as E
from gateway.smime.cms_sign import sign_content
from gateway.smime.engine import Verifier, encrypt_message, sign_message, unwrap_message, verify_message
from gateway.smime.mime import classify, multipart_signed
from gateway.smime.revocation import CrlSource
from tests.smime.support import MESSAGE, message_from

PERSON = "jean.test-dupont@cabinet-parc.sante.test"
ORG = "labo@labo-tests.sante.test"


def _replace_signature(signed: bytes, der: bytes) -> bytes:
    part = classify(signed)
    old = base64.b64encode(part.der)
    flat = signed.replace(b"\r\n", b"")
    assert old in flat
    return multipart_signed((b"From: <" + PERSON.encode() + b">\r\n",), part.signed_content, der, "sha-256")


@pytest.mark.parametrize("name,error", [
    ("expired", E.CertificateExpired),
    ("not_yet_valid", E.CertificateNotYetValid),
    ("revoked", E.CertificateRevoked),
    ("unknown_issuer", E.UnknownIssuer),
    ("wrong_usage", E.WrongKeyUsage),
])
async def test_certificate_refusals(key, verifier: Verifier, name: str, error: type[Exception]) -> None:
    address = PERSON if name == "revoked" else ORG
    signed = await sign_message(message_from(address), key(name), check_usage=False)
    with pytest.raises(error) as info:
        await verify_message(signed, verifier)
    assert type(info.value) is error


async def test_signing_refuses_a_non_signing_certificate(key) -> None:
    with pytest.raises(E.WrongKeyUsage):
        await sign_message(message_from(ORG), key("wrong_usage"))


async def test_not_valid_at_signing_time(key, verifier: Verifier) -> None:
    early = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)  # before the certificate's notBefore
    signed = await sign_message(MESSAGE, key("person_sign"), signing_time=early)
    with pytest.raises(E.CertificateNotYetValid):
        await verify_message(signed, verifier)


async def test_signing_time_in_future_refused(key, verifier: Verifier) -> None:
    late = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    signed = await sign_message(MESSAGE, key("person_sign"), signing_time=late)
    with pytest.raises(E.CertificateRefused):
        await verify_message(signed, verifier)


async def test_tampered_body(key, verifier: Verifier) -> None:
    signed = await sign_message(MESSAGE, key("person_sign"))
    tampered = signed.replace(b"TEST body line two.", b"TEST body line 2!!.")
    assert tampered != signed
    with pytest.raises(E.ContentTampered):
        await verify_message(tampered, verifier)


async def test_tampered_opaque_content(key, verifier: Verifier) -> None:
    signed = await sign_message(MESSAGE, key("person_sign"), opaque=True)
    info = cms.ContentInfo.load(classify(signed).der)
    info["content"]["encap_content_info"]["content"] = b"Content-Type: text/plain\r\n\r\nforged\r\n"
    forged = _replace_opaque(signed, info.dump(force=True))
    with pytest.raises(E.ContentTampered):
        await verify_message(forged, verifier)


def _replace_opaque(signed: bytes, der: bytes) -> bytes:
    head = signed.split(b"\r\n\r\n", 1)[0]
    return head + b"\r\n\r\n" + base64.encodebytes(der).replace(b"\n", b"\r\n")


@pytest.mark.parametrize("attribute", ["signing_time", "message_digest"])
async def test_tampered_signed_attributes(key, verifier: Verifier, attribute: str) -> None:
    signed = await sign_message(MESSAGE, key("person_sign"))
    info = cms.ContentInfo.load(classify(signed).der)
    si = info["content"]["signer_infos"][0]
    attrs = si["signed_attrs"]
    for attr in attrs:
        if attr["type"].native == attribute:
            if attribute == "signing_time":
                attr["values"] = [cms.Time({"utc_time": dt.datetime(2020, 1, 1, tzinfo=dt.UTC)})]
            else:
                attr["values"] = [b"\x00" * 32]
    si["signed_attrs"] = cms.CMSAttributes(list(attrs))
    with pytest.raises(E.SignatureInvalid) as err:
        await verify_message(_replace_signature(signed, info.dump(force=True)), verifier)
    assert type(err.value) is E.SignatureInvalid  # the signature itself, not the body


async def test_signer_address_differs_from_from(key, verifier: Verifier) -> None:
    signed = await sign_message(MESSAGE, key("other_sign"))  # From is the person, signer is another
    with pytest.raises(E.SignerMismatch):
        await verify_message(signed, verifier)


async def test_signer_matched_by_identifier(key, verifier: Verifier) -> None:
    msg = message_from("secretariat@cabinet-parc.sante.test")
    signed = await sign_message(msg, key("person_sign"))
    with pytest.raises(E.SignerMismatch):
        await verify_message(signed, verifier)
    result = await verify_message(signed, verifier, sender_ids={"rpps:10101234567"})
    assert result.signatures[0].from_matched is True


async def test_no_revocation_information_is_a_refusal(key, trust) -> None:
    signed = await sign_message(MESSAGE, key("person_sign"))
    with pytest.raises(E.RevocationUnavailable):
        await verify_message(signed, Verifier(trust, CrlSource()))  # no files, no fetcher


async def test_truncated_cms(key, verifier: Verifier) -> None:
    signed = await sign_message(MESSAGE, key("person_sign"))
    der = classify(signed).der
    with pytest.raises(E.MalformedSmime):
        await verify_message(_replace_signature(signed, der[: len(der) // 2]), verifier)
    opaque = await sign_message(MESSAGE, key("person_sign"), opaque=True)
    with pytest.raises(E.MalformedSmime):
        await verify_message(_replace_opaque(opaque, classify(opaque).der[:300]), verifier)


async def test_not_signed(verifier: Verifier) -> None:
    with pytest.raises(E.NotSigned):
        await verify_message(MESSAGE, verifier)


async def test_garbage_fuzz_only_typed_errors(key, verifier: Verifier, pki) -> None:
    """Random mutations of real CMS (signed and enveloped) and of the MIME around it."""
    rng = random.Random(20261125)
    signed_der = await sign_content(b"Content-Type: text/plain\r\n\r\nTEST\r\n", key("person_sign"), detached=False)
    env = encrypt_message(MESSAGE, [pki["person_encrypt"].cert])
    env_der = classify(env).der
    enc_key = key("person_encrypt")
    outcomes: dict[str, int] = {}
    for i in range(800):
        base = signed_der if i % 2 else env_der
        data = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            pos = rng.randrange(len(data))
            if op < 0.5:
                data[pos] = rng.randrange(256)
            elif op < 0.75:
                del data[pos:pos + rng.randint(1, 64)]
            else:
                data[pos:pos] = rng.randbytes(rng.randint(1, 16))
        if i % 7 == 0:
            data = bytearray(rng.randbytes(rng.randint(0, 200)))
        kind = "enveloped-data" if base is env_der else "signed-data"
        msg = (b"From: <" + PERSON.encode() + b">\r\nContent-Type: application/pkcs7-mime; smime-type="
               + kind.encode() + b"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(bytes(data)))
        try:
            await unwrap_message(msg, keys=[enc_key], verifier=verifier)
            outcomes["ok"] = outcomes.get("ok", 0) + 1
        except E.SmimeError as exc:
            outcomes[type(exc).__name__] = outcomes.get(type(exc).__name__, 0) + 1
    assert outcomes.get("MalformedSmime", 0) > 100
    for junk in (b"", b"\x00\xff" * 50, b"Content-Type: multipart/signed\r\n\r\n--x\r\n",
                 b"Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; boundary=x\r\n\r\n"
                 b"--x\r\nA\r\n--x\r\nContent-Type: application/pkcs7-signature\r\n\r\n!!!\r\n--x--\r\n"):
        with pytest.raises(E.SmimeError):
            await verify_message(junk, verifier)


async def test_signer_certificate_from_the_store(pki, key, trust) -> None:
    signed = await sign_message(MESSAGE, key("person_sign"))
    info = cms.ContentInfo.load(classify(signed).der)
    info["content"]["certificates"] = cms.CertificateSet([])  # a CMS without certificates
    bare = _replace_signature(signed, info.dump(force=True))
    with pytest.raises(E.SignerCertificateMissing):
        await verify_message(bare, Verifier(trust, CrlSource(files=pki.crl_paths)))
    known = Verifier(trust, CrlSource(files=pki.crl_paths), known_certificates=(pki["person_sign"].cert,))
    result = await verify_message(bare, known)
    assert result.signatures[0].identity.rpps == "10101234567"
