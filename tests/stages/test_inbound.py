"""The inbound stage with real keys (issue 11, items 5, 13, 14, 8): what the reader of a local
mailbox sees after unwrapping. One header block (protected headers win, the outer ones kept
only as X-Msgw-Outer-*), a signer that does not name the delivered From fails, weak
algorithms are named and refusable, harvested certificates are filed under the address the
certificate names, and recipients whose copies are identical share one copy."""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.pipeline import Envelope, Pipeline
from gateway.smime.engine import encrypt_message, sign_message
from gateway.smime.softkeys import SoftKey
from gateway.smime.testpki import ORG_EMAIL, OTHER_EMAIL, PERSON_EMAIL, TestPKI
from gateway.stages.bridge import sanitize
from gateway.stages.headers import VERIFICATION_HEADER
from gateway.stages.inbound import InboundStage
from tests.smime.support import shared_pki
from tests.smime.test_protected_headers import INNER_SUBJECT, OUTER_SUBJECT, openssl_sign
from tests.smime.test_weak_algorithms import openssl_encrypt
from tests.stages.test_protection import Ctx, _key, _policy

LAB = "labo-tests.sante.test"
DR_JEAN = f"Dr Jean TEST <{PERSON_EMAIL}>"


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return shared_pki().pki


@dataclass
class LocalCtx(Ctx):
    """Several local mailboxes; `keyed` says which hold a decryption key (address -> TEST PKI name)."""

    keyed: dict[str, str] = field(default_factory=lambda: {ORG_EMAIL: "org_encrypt"})
    loaded: dict[str, SoftKey] = field(default_factory=dict)

    async def decryption_key(self, address: str) -> SoftKey | None:
        name = self.keyed.get(address)
        if name is None:
            return None
        if name not in self.loaded:  # one object per key, as the gateway's key cache
            self.loaded[name] = _key(self.pki, name)
        return self.loaded[name]


def _entity(from_: str = DR_JEAN, subject: str = INNER_SUBJECT, extra: str = "") -> bytes:
    """A protected-headers entity (mutt / Thunderbird style)."""
    return (f'Content-Type: text/plain; charset=us-ascii; protected-headers="v1"\r\n'
            f"From: {from_}\r\nTo: {ORG_EMAIL}\r\nSubject: {subject}\r\n{extra}\r\nTEST compte rendu.\r\n").encode()


def _parse(data: bytes) -> email.message.Message:
    return email.message_from_bytes(data, policy=email.policy.compat32)


def _all(data: bytes, name: str) -> list[str]:
    return [" ".join(str(v).split()) for v in _parse(data).get_all(name) or []]


async def _run(ctx: Ctx, data: bytes, rcpts: tuple[str, ...] = (ORG_EMAIL,), sender: str = PERSON_EMAIL):
    env = Envelope("Q-in", sender, rcpts, listener="relay")
    return await Pipeline([sanitize, InboundStage(ctx)]).run(env, data)


async def test_protected_headers_are_delivered_once(pki: TestPKI, tmp_path: Path) -> None:
    signed = openssl_sign(pki, tmp_path, "person_sign", _entity(), outer_from="relay-bounce@cabinet-parc.sante.test")
    (out,) = (await _run(Ctx(pki, _policy()), signed)).outgoing
    assert out.form == "local-verified"
    assert _all(out.data, "From") == [DR_JEAN]
    assert _all(out.data, "Subject") == [INNER_SUBJECT]
    assert _all(out.data, "X-Msgw-Outer-From") == ["relay-bounce@cabinet-parc.sante.test"]
    assert _all(out.data, "X-Msgw-Outer-Subject") == [OUTER_SUBJECT]
    (verdict,) = _all(out.data, VERIFICATION_HEADER)
    assert verdict.startswith("pass;") and "from-match=yes" in verdict


async def test_gateway_own_format_after_decryption_is_one_header_block(pki: TestPKI) -> None:
    from gateway.smime.protect import protect_smime

    original = (f"From: <{PERSON_EMAIL}>\r\nTo: <{ORG_EMAIL}>\r\nSubject: {INNER_SUBJECT}\r\n"
                "Date: Wed, 25 Nov 2026 09:00:00 +0100\r\nMessage-ID: <m1@cabinet-parc.sante.test>\r\n"
                "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nTEST\r\n").encode()
    sealed = await protect_smime(original, _key(pki, "person_sign"), [pki["org_encrypt"].cert],
                                 neutral_subject=OUTER_SUBJECT, sender_copy=None)
    (out,) = (await _run(LocalCtx(pki, _policy()), sealed)).outgoing
    assert out.form == "local-verified"
    for name in ("From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type"):
        assert len(_all(out.data, name)) == 1, name
    assert _all(out.data, "Subject") == [INNER_SUBJECT]
    assert _all(out.data, "X-Msgw-Outer-Subject") == [OUTER_SUBJECT]


@pytest.mark.parametrize("encrypted", [False, True])
async def test_inner_from_substitution_is_a_signer_mismatch(pki: TestPKI, tmp_path: Path, encrypted: bool) -> None:
    """Signed by someone.else (whose outer From matches), signed content From: Dr Jean."""
    data = openssl_sign(pki, tmp_path, "other_sign", _entity(), outer_from=OTHER_EMAIL)
    if encrypted:
        data = encrypt_message(data, [pki["org_encrypt"].cert])
    (out,) = (await _run(LocalCtx(pki, _policy()), data, sender=OTHER_EMAIL)).outgoing
    assert out.form == "local-flagged"
    (verdict,) = _all(out.data, VERIFICATION_HEADER)
    assert verdict.startswith("fail; reason=smime-signer-mismatch")
    assert len(_all(out.data, "From")) == 1
    refused = await _run(LocalCtx(pki, _policy(inbound_unverified="refuse")), data, sender=OTHER_EMAIL)
    assert not refused.outgoing
    assert [(r.recipient, r.status, r.temporary) for r in refused.refusals] == [(ORG_EMAIL, "5.7.7", False)]


async def test_outer_diagnosis_headers_cannot_be_forged(pki: TestPKI, tmp_path: Path) -> None:
    forged = "X-Msgw-Outer-From: <dr.forged@cabinet-parc.sante.test>\r\n"
    signed = openssl_sign(pki, tmp_path, "person_sign", _entity(extra=forged), outer_from=PERSON_EMAIL)
    data = forged.replace("Outer-From", "Outer-Subject").encode() + forged.encode() + signed
    (out,) = (await _run(Ctx(pki, _policy()), data)).outgoing
    assert out.form == "local-verified"
    assert b"dr.forged" not in out.data
    assert _all(out.data, "X-Msgw-Outer-Subject") == [OUTER_SUBJECT]  # ours: the real outer Subject
    # Not verified (plain message): the forged field is stripped from what is delivered as it came.
    plain = forged.encode() + b"From: <x@y.test>\r\nSubject: TEST\r\n\r\nTEST\r\n"
    (flagged,) = (await _run(Ctx(pki, _policy()), plain)).outgoing
    assert b"dr.forged" not in flagged.data


async def test_3des_envelope_is_marked_weak_or_refused(pki: TestPKI, tmp_path: Path) -> None:
    signed = await sign_message(_entity(from_=f"<{PERSON_EMAIL}>"), _key(pki, "person_sign"))
    sealed = openssl_encrypt(pki, tmp_path, signed, "des3")
    (out,) = (await _run(LocalCtx(pki, _policy()), sealed)).outgoing
    assert out.form == "local-verified"
    (verdict,) = _all(out.data, VERIFICATION_HEADER)
    assert verdict.startswith("pass;") and "weak=3des-cbc" in verdict
    # weak_algorithms = "refuse": handled as not verified: flagged (the original, still encrypted) ...
    (flagged,) = (await _run(LocalCtx(pki, _policy(weak_algorithms="refuse")), sealed)).outgoing
    assert flagged.form == "local-flagged"
    (verdict,) = _all(flagged.data, VERIFICATION_HEADER)
    assert verdict.startswith("fail; reason=weak-algorithm") and "3des-cbc" in verdict
    assert _parse(flagged.data).get_content_type() == "application/pkcs7-mime"
    # ... or refused with inbound_unverified = "refuse" (5.7.6: cryptographic algorithm not accepted).
    refused = await _run(LocalCtx(pki, _policy(weak_algorithms="refuse", inbound_unverified="refuse")), sealed)
    assert not refused.outgoing and [r.status for r in refused.refusals] == ["5.7.6"]
    # AES is not weak.
    aes = openssl_encrypt(pki, tmp_path, signed, "aes256")
    (strong,) = (await _run(LocalCtx(pki, _policy(weak_algorithms="refuse")), aes)).outgoing
    assert strong.form == "local-verified" and "weak=" not in _all(strong.data, VERIFICATION_HEADER)[0]


async def test_harvest_files_the_certificate_under_the_matched_address(pki: TestPKI) -> None:
    ctx = Ctx(pki, _policy())
    signed = await sign_message(_entity(from_=f"<{PERSON_EMAIL}>"), _key(pki, "person_sign"))
    # The envelope sender is whatever the relaying client typed: never where a certificate is filed.
    (out,) = (await _run(ctx, signed, sender="bounces@relay.cabinet-parc.sante.test")).outgoing
    assert out.form == "local-verified"
    assert [(a, c.serial_number) for a, c in ctx.harvested] == [(PERSON_EMAIL, pki["person_sign"].cert.serial_number)]
    # Triple wrap: the outer (organisation) signer names no delivered address: not harvested.
    ctx = Ctx(pki, _policy())
    triple = await sign_message(signed, _key(pki, "other_sign"))
    (out,) = (await _run(ctx, triple, sender=OTHER_EMAIL)).outgoing
    assert out.form == "local-verified"
    assert [a for a, _ in ctx.harvested] == [PERSON_EMAIL]
    # A signer that does not name the delivered From: nothing harvested.
    ctx = Ctx(pki, _policy())
    other = await sign_message(_entity(), _key(pki, "other_sign"))
    await _run(ctx, other, sender=OTHER_EMAIL)
    assert ctx.harvested == []


async def test_identical_local_copies_are_shared(pki: TestPKI) -> None:
    many = tuple(f"box{n}@{LAB}" for n in range(100))
    signed = await sign_message(_entity(from_=f"<{PERSON_EMAIL}>"), _key(pki, "person_sign"))
    ctx = LocalCtx(pki, _policy())
    result = await _run(ctx, signed, rcpts=many)
    (out,) = result.outgoing
    assert out.recipients == many and out.form == "local-verified"
    assert len([a for a in ctx.audits if a["decision"] == "local-verified"]) == 100
    assert len(ctx.harvested) == 1
    # Encrypted: the mailboxes holding the same key share one decrypted copy; the others share
    # the copy that is passed on still encrypted.
    ctx = LocalCtx(pki, _policy(), keyed={ORG_EMAIL: "org_encrypt", f"secretariat@{LAB}": "org_encrypt"})
    sealed = encrypt_message(signed, [pki["org_encrypt"].cert])
    result = await _run(ctx, sealed, rcpts=(ORG_EMAIL, *many[:3], f"secretariat@{LAB}"))
    forms = {o.form: o.recipients for o in result.outgoing}
    assert forms == {"local-verified": (ORG_EMAIL, f"secretariat@{LAB}"), "local-encrypted": many[:3]}

