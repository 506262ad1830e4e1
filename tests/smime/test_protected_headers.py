"""Unwrapping gives one header block (issue 11, item 5): header fields carried inside the signed
or encrypted entity ("protected headers", as mutt, Thunderbird and our own outbound write them)
replace the outer ones of the same names, and the From checked against the signer is the one
delivered. Signed messages are built with `openssl cms -sign` (an independent peer) and with the
gateway's own outbound format."""

from __future__ import annotations

import email
import email.policy
import subprocess
from pathlib import Path

import pytest

from gateway.smime import errors as E
from gateway.smime.cms_envelope import encrypt_content
from gateway.smime.engine import Verifier, sign_message, unwrap_message
from gateway.smime.mime import pkcs7_mime, split_message
from gateway.smime.protect import protect_smime
from gateway.smime.testpki import ORG_EMAIL, OTHER_EMAIL, PERSON_EMAIL, TestPKI
from tests.conftest import require_tool

INNER_SUBJECT = "Compte rendu TEST-INNER"
OUTER_SUBJECT = "Message securise"


def _entity(from_: str, subject: str = INNER_SUBJECT) -> bytes:
    """A mutt-style protected-headers entity: the real From/To/Subject on the root MIME entity."""
    return (f'Content-Type: text/plain; charset=us-ascii; protected-headers="v1"\r\n'
            f"From: {from_}\r\nTo: {ORG_EMAIL}\r\nSubject: {subject}\r\n"
            f"Message-ID: <inner-1@cabinet-parc.sante.test>\r\n\r\nTEST compte rendu body.\r\n").encode()


def openssl_sign(pki: TestPKI, tmp_path: Path, signer: str, entity: bytes, *, outer_from: str | None,
                 outer_subject: str = OUTER_SUBJECT, opaque: bool = False) -> bytes:
    """multipart/signed (or opaque signed-data) made by `openssl cms -sign`, with the outer
    From/To/Subject set by openssl (no From when `outer_from` is None)."""
    openssl = require_tool("openssl")
    src, out = tmp_path / f"{signer}-entity.eml", tmp_path / f"{signer}-signed.eml"
    src.write_bytes(entity)
    s = pki[signer]
    r = subprocess.run([openssl, "cms", "-sign", *(["-nodetach"] if opaque else []), "-in", str(src), "-signer",
                        str(s.cert_path), "-inkey", str(s.key_path), "-certfile", str(s.chain_path),
                        *(["-from", outer_from] if outer_from else []), "-to", ORG_EMAIL,
                        "-subject", outer_subject, "-out", str(out)], capture_output=True)
    assert r.returncode == 0, r.stderr
    return out.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _headers(message: bytes) -> email.message.Message:
    return email.message_from_bytes(message, policy=email.policy.compat32)


def _values(message: bytes, name: str) -> list[str]:
    return [" ".join(str(v).split()) for v in _headers(message).get_all(name) or []]


async def test_openssl_signed_protected_headers_give_one_header_block(pki, tmp_path, verifier: Verifier) -> None:
    signed = openssl_sign(pki, tmp_path, "person_sign", _entity(f"Dr Jean TEST <{PERSON_EMAIL}>"),
                          outer_from="relay-bounce@cabinet-parc.sante.test")
    result = await unwrap_message(signed, verifier=verifier)
    assert _values(result.message, "From") == [f"Dr Jean TEST <{PERSON_EMAIL}>"]
    assert _values(result.message, "Subject") == [INNER_SUBJECT]
    assert len(_values(result.message, "To")) == 1
    sig = result.signatures[0]
    assert sig.from_address == PERSON_EMAIL and sig.from_matched is True
    displaced = {f.split(b":", 1)[0].lower(): f for f in result.displaced}
    assert b"relay-bounce@" in displaced[b"from"] and OUTER_SUBJECT.encode() in displaced[b"subject"]
    assert b"to" not in displaced  # same value inside and outside: nothing to diagnose
    assert b"TEST compte rendu body." in result.content


async def test_inner_from_substitution_by_another_signer_is_a_mismatch(pki, tmp_path, verifier: Verifier) -> None:
    """The attack: signed by someone.else, outer From someone.else (it matched), inner From the doctor."""
    signed = openssl_sign(pki, tmp_path, "other_sign", _entity(f"Dr Jean TEST <{PERSON_EMAIL}>"),
                          outer_from=OTHER_EMAIL)
    with pytest.raises(E.SignerMismatch):
        await unwrap_message(signed, verifier=verifier)
    # The same signer with no inner From: the outer From is the delivered one, and it matches.
    plain = openssl_sign(pki, tmp_path, "other_sign", b"Content-Type: text/plain\r\n\r\nTEST\r\n",
                         outer_from=OTHER_EMAIL)
    result = await unwrap_message(plain, verifier=verifier)
    assert result.signatures[0].from_matched and _values(result.message, "From") == [OTHER_EMAIL]
    assert result.displaced == ()


async def test_gateway_outbound_format_unwraps_to_one_header_block(pki, key, verifier: Verifier) -> None:
    original = (f"From: Labo TEST <{ORG_EMAIL}>\r\nTo: <{PERSON_EMAIL}>\r\nSubject: {INNER_SUBJECT}\r\n"
                f"Date: Wed, 25 Nov 2026 09:00:00 +0100\r\nMessage-ID: <own-1@labo-tests.sante.test>\r\n"
                f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nTEST result\r\n").encode()
    sealed = await protect_smime(original, key("org_sign"), [pki["person_encrypt"].cert],
                                 neutral_subject=OUTER_SUBJECT, sender_copy=None)
    result = await unwrap_message(sealed, keys=[key("person_encrypt")], verifier=verifier)
    assert result.layers == ("enveloped", "signed")
    for name in ("From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type"):
        assert len(_values(result.message, name)) == 1, name
    assert _values(result.message, "Subject") == [INNER_SUBJECT]
    assert result.signatures[0].from_matched is True
    names = {f.split(b":", 1)[0].lower() for f in result.displaced}
    assert b"subject" in names and b"from" not in names  # the neutral outer Subject, kept for diagnosis


async def test_decrypt_only_inner_subject_wins_but_never_its_from(pki, key) -> None:
    """Encryption authenticates nobody: an unsigned inner From (or Sender) cannot replace the
    outer From the listener checked (an authenticated account would slip another From past the
    sender binding inside an envelope to a mailbox whose key the gateway holds)."""
    inner = _entity(f"<{PERSON_EMAIL}>").replace(b"To:", f"Sender: <{PERSON_EMAIL}>\r\nTo:".encode(), 1)
    der = encrypt_content(inner, [pki["org_encrypt"].cert])
    outer = (f"From: <{OTHER_EMAIL}>\r\n".encode(), f"Subject: {OUTER_SUBJECT}\r\n".encode())
    result = await unwrap_message(pkcs7_mime(outer, der, "enveloped-data"), keys=[key("org_encrypt")])
    assert not result.signed
    assert _values(result.message, "From") == [f"<{OTHER_EMAIL}>"]
    assert _values(result.message, "Sender") == []
    assert _values(result.message, "Subject") == [INNER_SUBJECT]
    assert {f.split(b":", 1)[0] for f in result.displaced} == {b"Subject"}


async def test_rfc822_wrapped_headers_are_the_delivered_ones(pki, key, verifier: Verifier) -> None:
    """RFC 8551 3.1: the whole message wrapped as message/rfc822 inside the envelope; its headers
    (not only the innermost entity's) are what the sender protected."""
    signed = await sign_message((f"From: <{PERSON_EMAIL}>\r\nSubject: {INNER_SUBJECT}\r\n"
                                 "Content-Type: text/plain\r\n\r\nTEST\r\n").encode(), key("person_sign"))
    wrapper = b"Content-Type: message/rfc822\r\n\r\n" + signed
    der = encrypt_content(wrapper, [pki["org_encrypt"].cert])
    outer = (f"From: <{PERSON_EMAIL}>\r\n".encode(), f"Subject: {OUTER_SUBJECT}\r\n".encode())
    result = await unwrap_message(pkcs7_mime(outer, der, "enveloped-data"), keys=[key("org_encrypt")],
                                  verifier=verifier)
    assert result.layers == ("enveloped", "rfc822", "signed")
    assert _values(result.message, "Subject") == [INNER_SUBJECT]
    assert _values(result.message, "From") == [f"<{PERSON_EMAIL}>"]
    assert len(split_message(result.message).fields) == len(set(split_message(result.message).names()))


async def test_unsigned_wrapper_from_cannot_relabel_a_signature(pki, key, verifier: Verifier) -> None:
    """A From on an rfc822 wrapper inside the envelope but outside the signature is dropped: the
    reader sees the From the signer is checked against, not the one the encrypting party wrote."""
    signed = await sign_message(b"Content-Type: text/plain\r\n\r\nTEST\r\n", key("other_sign"))
    wrapper = (f"From: <{PERSON_EMAIL}>\r\nContent-Type: message/rfc822\r\n\r\n".encode() + signed)
    der = encrypt_content(wrapper, [pki["org_encrypt"].cert])
    message = pkcs7_mime((f"From: <{OTHER_EMAIL}>\r\n".encode(),), der, "enveloped-data")
    result = await unwrap_message(message, keys=[key("org_encrypt")], verifier=verifier)
    assert _values(result.message, "From") == [f"<{OTHER_EMAIL}>"]
    assert result.signatures[-1].from_matched is True


async def test_a_sender_field_never_rescues_a_signer_mismatch(pki, tmp_path, verifier: Verifier) -> None:
    """Signed by someone.else, From: Dr Jean and Sender: someone.else inside the signature: the
    reader would see Dr Jean; the signer is checked against that From only, so it is a mismatch
    (a Sender fallback let it pass as from-match=yes)."""
    inside = _entity(f"Dr Jean TEST <{PERSON_EMAIL}>").replace(
        b"From:", f"Sender: <{OTHER_EMAIL}>\r\nFrom:".encode(), 1)
    signed = openssl_sign(pki, tmp_path, "other_sign", inside, outer_from=OTHER_EMAIL)
    with pytest.raises(E.SignerMismatch):
        await unwrap_message(signed, verifier=verifier)
