"""The protection stages with real keys and real peers: what leaves is readable by
`openssl cms` for the right recipient only, refused recipients get nothing, and inbound
mail is decrypted and verified with a header nobody outside can forge."""

from __future__ import annotations

import email
import email.policy
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from gateway.config import DiscoveryConfig, PolicyConfig
from gateway.errors import PermanentError
from gateway.pipeline import Envelope, Pipeline
from gateway.smime.engine import Verifier, encrypt_message, sign_message
from gateway.smime.revocation import CrlSource
from gateway.smime.softkeys import SoftKey, load_key
from gateway.smime.testpki import ORG_EMAIL, PERSON_EMAIL, TestPKI, build_test_pki
from gateway.smime.trust import TrustStore
from gateway.stages.bridge import sanitize
from gateway.stages.context import RecipientView
from gateway.stages.headers import VERIFICATION_HEADER
from gateway.stages.inbound import InboundStage
from gateway.stages.outbound import OutboundStage
from tests.conftest import require_tool

MARKER = "PATIENT-MARKER-4412"
SUBJECT = "Résultat HbA1c de Mme TESTPATIENTE"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return build_test_pki(tmp_path_factory.mktemp("pki"))


def _key(pki: TestPKI, name: str) -> SoftKey:
    e = pki[name]
    return load_key(e.key_path, e.cert_path, e.chain_path)


def _policy(**kw: Any) -> PolicyConfig:
    base = dict(enabled=True, default="require-smime", destinations=(("refused.test", "refuse"),
                                                                     ("mss.test", "trust-space-tls")),
                sign_with=(), neutral_subject="Message sécurisé", sender_copy=True, inbound_unverified="flag",
                discovery=DiscoveryConfig(("directory",), None, None, False, 60, 60))
    base.update(kw)
    return PolicyConfig(**base)


@dataclass
class Ctx:
    """A real-key context: certificates and keys from the TEST PKI, no server."""

    pki: TestPKI
    policy: PolicyConfig
    local_domains: tuple[str, ...] = ("labo-tests.sante.test",)
    audits: list[dict] = field(default_factory=list)
    harvested: list[tuple[str, x509.Certificate]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.verifier = Verifier(TrustStore.from_directory(self.pki.trust_dir), CrlSource(files=self.pki.crl_paths))

    def is_local(self, domain: str) -> bool:
        return domain in self.local_domains

    def recipient(self, address: str) -> RecipientView:
        return RecipientView(address, "local" if address == ORG_EMAIL else None, "org" if address == ORG_EMAIL
                             else None)

    async def encryption_certificates(self, address: str) -> list[x509.Certificate]:
        if address == PERSON_EMAIL:
            return [self.pki["person_encrypt"].cert]
        if address == ORG_EMAIL:
            return [self.pki["org_encrypt"].cert]
        raise PermanentError(f"directory: no entry for {address}; harvested: none")

    async def signing_key(self, identity: str | None) -> SoftKey | None:
        return _key(self.pki, "org_sign") if identity == ORG_EMAIL else None

    async def decryption_key(self, address: str) -> SoftKey | None:
        return _key(self.pki, "org_encrypt") if address == ORG_EMAIL else None

    def authorised_domain(self, domain: str) -> bool:
        return domain == "mss.test"

    def audit(self, **fields: Any) -> None:
        self.audits.append(fields)

    def harvest(self, address: str, certificate: x509.Certificate) -> None:
        self.harvested.append((address, certificate))

    def legacy_keys(self, codec: str) -> None:
        return None  # bridging has its own tests

    def legacy_identity(self, codec: str) -> str:
        raise AssertionError("not used")

    def legacy_id(self, address: str, codec: str) -> str:
        raise AssertionError("not used")

    async def bridge_signing_key(self) -> None:
        return None

    async def bridge_unwrap(self, data: bytes) -> Any:
        raise AssertionError("not used")


def _message(sender: str, to: str) -> bytes:
    return (f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: =?utf-8?q?R=C3=A9sultat_HbA1c_de_Mme_TESTPATIENTE?=\r\n"
            f"Date: Wed, 25 Nov 2026 09:00:00 +0100\r\nMessage-ID: <r1@labo-tests.sante.test>\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            f"HbA1c 6,1 % — {MARKER}\r\n").encode()


async def test_outbound_encrypts_for_the_doctor_and_refuses_the_rest(pki: TestPKI, tmp_path: Path) -> None:
    openssl = require_tool("openssl")
    ctx = Ctx(pki, _policy())
    rcpts = (PERSON_EMAIL, "unknown@nowhere.test", "dr@refused.test", "dr@mss.test")
    env = Envelope("Q1", ORG_EMAIL, rcpts, auth_user=ORG_EMAIL, listener="submission")
    pipeline = Pipeline([sanitize, InboundStage(ctx), OutboundStage(ctx)])
    result = await pipeline.run(env, _message(ORG_EMAIL, PERSON_EMAIL))
    forms = {o.form: o for o in result.outgoing}
    assert set(forms) == {"smime", "trust-space-tls"}
    assert forms["smime"].recipients == (PERSON_EMAIL,)
    assert forms["trust-space-tls"].recipients == ("dr@mss.test",) and forms["trust-space-tls"].require_tls
    refused = {r.recipient: r for r in result.refusals}
    assert set(refused) == {"unknown@nowhere.test", "dr@refused.test"}
    assert "directory: no entry" in refused["unknown@nowhere.test"].reason
    assert refused["dr@refused.test"].status == "5.7.1"

    sent = forms["smime"].data
    head = sent.split(b"\r\n\r\n", 1)[0]
    assert MARKER.encode() not in sent and b"TESTPATIENTE" not in head and b"HbA1c" not in head
    outer = email.message_from_bytes(sent, policy=email.policy.default)
    assert str(outer["Subject"]) == "Message sécurisé"
    (tmp_path / "out.eml").write_bytes(sent)
    person = pki["person_encrypt"]
    dec = subprocess.run([openssl, "cms", "-decrypt", "-in", str(tmp_path / "out.eml"), "-recip",
                          str(person.cert_path), "-inkey", str(person.key_path), "-out", str(tmp_path / "signed.eml")],
                         capture_output=True)
    assert dec.returncode == 0, dec.stderr
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"".join(p.read_bytes() for p in sorted(pki.trust_dir.iterdir())))
    ver = subprocess.run([openssl, "cms", "-verify", "-in", str(tmp_path / "signed.eml"), "-CAfile", str(ca),
                          "-purpose", "any", "-out", str(tmp_path / "content.eml")], capture_output=True)
    assert ver.returncode == 0, ver.stderr
    content = (tmp_path / "content.eml").read_bytes()
    inner = email.message_from_bytes(content, policy=email.policy.default)
    assert MARKER in inner.get_content()
    assert inner.get_param("protected-headers") == "v1" and str(inner["Subject"]) == SUBJECT
    # The sender copy: the lab can read its own sent message with its encryption key.
    org = pki["org_encrypt"]
    own = subprocess.run([openssl, "cms", "-decrypt", "-in", str(tmp_path / "out.eml"), "-recip",
                          str(org.cert_path), "-inkey", str(org.key_path)], capture_output=True)
    assert own.returncode == 0, own.stderr
    decisions = {(a["recipient"], a["decision"]) for a in ctx.audits}
    assert (PERSON_EMAIL, "smime") in decisions and ("unknown@nowhere.test", "refused") in decisions
    assert not any(MARKER in str(a) or "TESTPATIENTE" in str(a) for a in ctx.audits)


async def test_inbound_decrypts_verifies_and_strips_forged_header(pki: TestPKI) -> None:
    ctx = Ctx(pki, _policy())
    person = _key(pki, "person_sign")
    original = _message(PERSON_EMAIL, ORG_EMAIL)
    forged = f"{VERIFICATION_HEADER}: pass; signer=\"forged\"\r\n".encode() + original
    signed = await sign_message(forged, person)
    sealed = encrypt_message(signed, [pki["org_encrypt"].cert])
    env = Envelope("Q2", PERSON_EMAIL, (ORG_EMAIL,), listener="relay")
    result = await Pipeline([sanitize, InboundStage(ctx), OutboundStage(ctx)]).run(env, sealed)
    (out,) = result.outgoing
    assert out.form == "local-verified"
    assert MARKER in email.message_from_bytes(out.data, policy=email.policy.default).get_content()
    headers = out.data.split(b"\r\n\r\n", 1)[0]
    assert headers.count(VERIFICATION_HEADER.encode()) == 1
    assert f"{VERIFICATION_HEADER}: pass;".encode() in headers and b"rpps:10101234567" in headers
    assert b"forged" not in out.data
    assert ctx.harvested and ctx.harvested[0][0] == PERSON_EMAIL


async def test_inbound_revoked_signer_is_flagged_or_refused(pki: TestPKI) -> None:
    revoked = _key(pki, "revoked")
    signed = await sign_message(_message(PERSON_EMAIL, ORG_EMAIL), revoked)
    env = Envelope("Q3", PERSON_EMAIL, (ORG_EMAIL,), listener="relay")
    flagged = await Pipeline([sanitize, InboundStage(Ctx(pki, _policy()))]).run(env, signed)
    (out,) = flagged.outgoing
    assert out.form == "local-flagged"
    assert f"{VERIFICATION_HEADER}: fail; reason=".encode() in out.data
    assert b"revoked" in out.data.split(b"\r\n\r\n", 1)[0].lower()
    refused = await Pipeline([sanitize, InboundStage(Ctx(pki, _policy(inbound_unverified="refuse")))]).run(env, signed)
    assert not refused.outgoing and refused.refusals[0].status == "5.7.7"


async def test_inbound_encrypted_for_a_key_we_do_not_hold_passes_untouched(pki: TestPKI) -> None:
    ctx = Ctx(pki, _policy(), local_domains=("labo-tests.sante.test", "cabinet-parc.sante.test"))
    sealed = encrypt_message(_message(ORG_EMAIL, PERSON_EMAIL), [pki["person_encrypt"].cert])
    env = Envelope("Q4", ORG_EMAIL, (PERSON_EMAIL,), listener="relay")
    (out,) = (await Pipeline([sanitize, InboundStage(ctx)]).run(env, sealed)).outgoing
    assert out.form == "local-encrypted" and out.data.endswith(sealed.split(b"\r\n\r\n", 1)[1])


async def test_protection_pipeline_never_passes_an_unhandled_recipient_through() -> None:
    from gateway.stages.build import fail_closed

    env = Envelope("Q5", ORG_EMAIL, ("a@x.test", "b@y.test"), listener="relay")
    handled = await Pipeline([lambda item: _give_copy(item, "a@x.test"), fail_closed]).run(env, b"data")
    assert [o.recipients for o in handled.outgoing] == [("a@x.test",)]
    assert [(r.recipient, r.status) for r in handled.refusals] == [("b@y.test", "5.7.1")]


async def _give_copy(item, rcpt):
    from dataclasses import replace

    from gateway.pipeline import Outgoing

    return replace(item, outgoing=(Outgoing((rcpt,), item.data, form="smime"),))
