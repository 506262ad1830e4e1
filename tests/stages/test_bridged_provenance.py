"""Item 4 of issue 11: legacy armor is bridged (decoded, signed by the organisation) only on the
paths configured for legacy traffic; anywhere else it is ordinary content, never signed by the
bridge key. When bridged, the provenance travels inside the signed entity: a protected header
and a visible French/English banner — checked with `openssl cms -verify`."""

from __future__ import annotations

import email
import email.policy
import time
from pathlib import Path

import pytest

from gateway.legacy.apicrypt1 import CODEC as APICRYPT1
from gateway.legacy.keystore import ApicryptKeyStore, make_key_file
from gateway.pipeline import Envelope, Pipeline
from gateway.smime.engine import unwrap_message
from gateway.smime.testpki import ORG_EMAIL, OTHER_EMAIL, PERSON_EMAIL, TestPKI, build_test_pki
from gateway.stages.banner import add_banner, banner_lines
from gateway.stages.bridge import LegacyInboundStage, relabel_bridged, sanitize
from gateway.stages.inbound import InboundStage
from gateway.stages.outbound import OutboundStage
from tests.conftest import require_tool
from tests.stages.envelope_support import (
    LEGACY_LAB,
    BridgeCtx,
    delivered_from,
    header_block,
    openssl_open,
    openssl_verify,
    signer_emails,
    signer_subject,
)
from tests.stages.test_protection import _key, _policy

YEAR = time.gmtime().tm_year
HPRIM = ("H|~^\\&|||LABO TEST|||||||ORU|H2.2|20261125\r\nP|1||||TESTPATIENT^INVENTEE||19700101|F\r\n"
         "OBX|1|NM|GLY^Glycémie||5.4|mmol/l|3.9-5.8||||F\r\nL|1|||3\r\n").encode("latin-1")
FR = "Message reçu d'une messagerie chiffrée ancienne (Apicrypt) et converti par la passerelle"
BRIDGE_EMAIL = OTHER_EMAIL  # the address of the bridge's signing certificate in these tests
EN = "Received from a legacy encrypted mail system (Apicrypt) and converted by the gateway; the sender was not " \
     "authenticated."


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return build_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "apicrypt"
    for user in ("Master", "msgw.bridge", "labo.test"):
        make_key_file(folder, user, YEAR, 65536)
    return folder


def legacy_mail(keys_dir: Path, to: str = PERSON_EMAIL, author: str = LEGACY_LAB) -> bytes:
    mime = (f"From: <{author}>\r\nTo: <{to}>\r\nSubject: Resultats TESTPATIENT\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n").encode() + HPRIM
    return APICRYPT1.encode(mime, "labo.test", ["msgw.bridge"], ApicryptKeyStore(keys_dir))


async def _run(ctx: BridgeCtx, env: Envelope, data: bytes):
    return await Pipeline([sanitize, LegacyInboundStage(ctx), InboundStage(ctx), OutboundStage(ctx)]).run(env, data)


async def test_armor_from_a_submission_account_is_ordinary_content(pki: TestPKI, keys_dir: Path,
                                                                   tmp_path: Path) -> None:
    """The attack of the issue: a submission user submits armor any key holder can write. It goes
    signed by the account's own key, armor and all, never decoded nor signed by the bridge."""
    openssl = require_tool("openssl")
    ctx = BridgeCtx(pki, _policy(), keys_dir=keys_dir)
    env = Envelope("B1", ORG_EMAIL, (PERSON_EMAIL,), auth_user=ORG_EMAIL, listener="submission")
    (out,) = (await _run(ctx, env, legacy_mail(keys_dir))).outgoing
    assert out.form == "smime"
    _, content, signer = openssl_open(openssl, pki, out.data, tmp_path)
    subject = signer_subject(openssl, signer, tmp_path)
    assert "TEST LABO MESSAGERIE SIGNATURE" in subject and "AUTRE" not in subject  # own key, not the bridge's
    assert b"#BINASCII1#" in content and b"X-Msgw-Bridged" not in content and FR.encode() not in content
    assert {(a["decision"], a.get("codec")) for a in ctx.audits} >= {("legacy-not-bridged", "apicrypt1")}
    refused = [a for a in ctx.audits if a["decision"] == "legacy-not-bridged"]
    assert all("submission" in a["reason"] for a in refused)


async def test_armor_from_an_account_without_key_or_a_partner_is_never_signed(pki: TestPKI, keys_dir: Path) -> None:
    ctx = BridgeCtx(pki, _policy(), keys_dir=keys_dir, account_keys={})
    for n, env in enumerate((Envelope("B2", ORG_EMAIL, (PERSON_EMAIL,), auth_user="demo@msgw.test",
                                      listener="submission"),
                             Envelope("B3", LEGACY_LAB, (PERSON_EMAIL,), listener="relay"))):
        (out,) = (await _run(ctx, env, legacy_mail(keys_dir))).outgoing
        opened = await unwrap_message(out.data, keys=[_key(pki, "person_encrypt")], verifier=ctx.verifier)
        assert opened.layers == ("enveloped",) and not opened.signatures, n
        assert b"#BINASCII1#" in opened.content


async def test_a_known_correspondent_address_does_not_carry_another_author(pki: TestPKI, keys_dir: Path) -> None:
    """Anyone may type a known legacy lab's address in MAIL FROM on the relay listener: armor whose
    own From names someone else is not bridged (nor signed by the bridge key) on that path."""
    ctx = BridgeCtx(pki, _policy(), keys_dir=keys_dir, legacy_senders=(LEGACY_LAB,))
    env = Envelope("B5", LEGACY_LAB, (PERSON_EMAIL,), listener="relay")
    (out,) = (await _run(ctx, env, legacy_mail(keys_dir, author="dr.someone@elsewhere.test"))).outgoing
    opened = await unwrap_message(out.data, keys=[_key(pki, "person_encrypt")], verifier=ctx.verifier)
    assert opened.layers == ("enveloped",) and not opened.signatures
    assert b"#BINASCII1#" in opened.content


@pytest.mark.parametrize("listener, known", [("legacy", ()), ("relay", (LEGACY_LAB,))])
async def test_bridged_provenance_and_banner_inside_the_signature(pki: TestPKI, keys_dir: Path, tmp_path: Path,
                                                                  listener: str, known: tuple[str, ...]) -> None:
    """On the legacy listener, or from a sender the directory knows as a legacy correspondent."""
    openssl = require_tool("openssl")
    ctx = BridgeCtx(pki, _policy(), keys_dir=keys_dir, legacy_senders=known)
    env = Envelope("B4", LEGACY_LAB, (PERSON_EMAIL,), listener=listener)
    (out,) = (await _run(ctx, env, legacy_mail(keys_dir))).outgoing
    head = header_block(out.data)
    assert b"X-Msgw-Bridged" not in head and b"codec=" not in head and b"TESTPATIENT" not in head
    signed, content, signer = openssl_open(openssl, pki, out.data, tmp_path)
    assert "TEST AUTRE SIGNATAIRE" in signer_subject(openssl, signer, tmp_path)
    _assert_relabelled(openssl, out.data, content, signer, tmp_path)
    inner = email.message_from_bytes(content, policy=email.policy.default)
    provenance = str(inner["X-Msgw-Bridged"])
    assert "codec=apicrypt1" in provenance and "sender-authenticated=no" in provenance
    assert str(inner["Subject"]) == "Resultats TESTPATIENT" and inner.get_param("protected-headers") == "v1"
    text = next(p for p in inner.walk() if p.get_content_type() == "text/plain").get_payload(decode=True)
    banner = text[:-len(HPRIM)].decode("latin-1")
    assert text.endswith(HPRIM) and banner.startswith(FR) and EN in banner  # HPRIM byte for byte after it


def _assert_relabelled(openssl: str, sent: bytes, content: bytes, signer: bytes, folder: Path) -> None:
    """The bridge signs under its own address (issue 11, item 5: a signature never re-labels its
    sender): From is the address the signer's certificate names (as `openssl x509 -email` reads
    it), outside and inside alike, with the legacy author's name in the display name; replies go
    to the author (Reply-To), whose original From is kept inside; no Sender: anywhere."""
    outer = email.message_from_bytes(sent, policy=email.policy.default)
    inner = email.message_from_bytes(content, policy=email.policy.default)
    assert delivered_from(content) == signer_emails(openssl, signer, folder) == [BRIDGE_EMAIL]
    assert delivered_from(sent) == [BRIDGE_EMAIL] and str(outer["From"]) == str(inner["From"])
    name = inner["From"].addresses[0].display_name
    assert name == f"{LEGACY_LAB.replace('@', ' at ')} (via la passerelle / via gateway)", name
    assert [a.addr_spec for a in inner["Reply-To"].addresses] == [LEGACY_LAB]
    assert LEGACY_LAB in str(inner["X-Original-From"]) and inner.get_param("protected-headers") == "v1"
    assert outer["Sender"] is None and inner["Sender"] is None
    assert outer["Reply-To"] is None or str(outer["Reply-To"]) == str(inner["Reply-To"])  # None: the allow-list


async def test_bridged_copy_passes_a_strict_reader(pki: TestPKI, keys_dir: Path) -> None:
    """Our own verifier checks the signer against the From it delivers, with no Sender fallback:
    the bridged copy passes it (`from-match=yes`) and the reader gets one From, the bridge's."""
    ctx = BridgeCtx(pki, _policy(), keys_dir=keys_dir)
    env = Envelope("B5", LEGACY_LAB, (PERSON_EMAIL,), listener="legacy")
    (out,) = (await _run(ctx, env, legacy_mail(keys_dir))).outgoing
    opened = await unwrap_message(out.data, keys=[_key(pki, "person_encrypt")], verifier=ctx.verifier)
    assert opened.layers == ("enveloped", "signed") and opened.signatures[-1].from_matched is True
    delivered = email.message_from_bytes(opened.message, policy=email.policy.default)
    assert [a.addr_spec for a in delivered["From"].addresses] == [BRIDGE_EMAIL]
    assert len(delivered.get_all("From")) == 1 and delivered["Sender"] is None


async def test_bridged_trust_space_tls_copy_carries_its_provenance_inside_the_signature(
        pki: TestPKI, keys_dir: Path, tmp_path: Path) -> None:
    """The trust-space-TLS copy is signed, not encrypted: every header (the bridge's provenance,
    the relabelled From, the real Subject) is inside what the signature covers, as in the S/MIME
    copy; outside, no X-Msgw-* statement that nobody signed."""
    openssl = require_tool("openssl")
    ctx = BridgeCtx(pki, _policy(), keys_dir=keys_dir)
    env = Envelope("B6", LEGACY_LAB, ("dr@mss.test",), listener="legacy")
    (out,) = (await _run(ctx, env, legacy_mail(keys_dir, to="dr@mss.test"))).outgoing
    assert out.form == "trust-space-tls" and out.require_tls
    head = header_block(out.data)
    assert b"X-Msgw-Bridged" not in head and b"codec=" not in head
    content, signer = openssl_verify(openssl, pki, out.data, tmp_path, tag="tls")
    assert "TEST AUTRE SIGNATAIRE" in signer_subject(openssl, signer, tmp_path)
    _assert_relabelled(openssl, out.data, content, signer, tmp_path)
    inner = email.message_from_bytes(content, policy=email.policy.default)
    provenance = str(inner["X-Msgw-Bridged"])
    assert "codec=apicrypt1" in provenance and "sender-authenticated=no" in provenance
    assert str(inner["Subject"]) == "Resultats TESTPATIENT"
    text = next(p for p in inner.walk() if p.get_content_type() == "text/plain").get_payload(decode=True)
    assert text.endswith(HPRIM) and text.startswith(FR.encode("latin-1"))
    opened = await unwrap_message(out.data, verifier=ctx.verifier)
    assert opened.layers == ("signed",) and opened.signatures[-1].from_matched is True


def test_relabel_keeps_the_author_inside_and_only_the_bridge_as_from() -> None:
    """What any key holder wrote (a Sender, its own X-Original-From, a second From) cannot come
    out as the author or as the sender: one From (the bridge's), the author's name in it, the
    author first in Reply-To, the original fields kept under X-Original-*."""
    legacy = ("From: Dr Élise Légacy <dr.legacy@medical99.apicrypt.org>\r\nSender: <famous@hospital.example>\r\n"
              "Reply-To: <secretariat@medical99.apicrypt.org>\r\nX-Original-From: <forged@hospital.example>\r\n"
              "To: <dr@cabinet.test>\r\nSubject: Resultats\r\nContent-Type: text/plain\r\n\r\nbody\r\n").encode()
    out = relabel_bridged(legacy, BRIDGE_EMAIL)
    msg = email.message_from_bytes(out, policy=email.policy.default)
    assert len(msg.get_all("From")) == 1 and msg["Sender"] is None
    assert msg["From"].addresses[0].addr_spec == BRIDGE_EMAIL
    assert msg["From"].addresses[0].display_name == "Dr Élise Légacy (via la passerelle / via gateway)"
    assert [a.addr_spec for a in msg["Reply-To"].addresses] == ["dr.legacy@medical99.apicrypt.org",
                                                               "secretariat@medical99.apicrypt.org"]
    assert msg.get_all("X-Original-From") == ["Dr Élise Légacy <dr.legacy@medical99.apicrypt.org>"]
    assert msg.get_all("X-Original-Sender") == ["<famous@hospital.example>"]
    assert out.endswith(b"\r\n\r\nbody\r\n") and str(msg["Subject"]) == "Resultats"


def test_banner_in_plain_html_alternatives_and_when_there_is_no_text() -> None:
    lines = banner_lines("apicrypt1", False)
    assert lines[0].startswith(FR) and lines[1] == EN
    alt = (b"Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=a\r\n\r\n"
           b"--a\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nplain body\r\n"
           b"--a\r\nContent-Type: text/html; charset=iso-8859-1\r\n\r\n<html><BODY class=x>html \xe9</body></html>\r\n"
           b"--a--\r\n")
    msg = email.message_from_bytes(add_banner(alt, lines), policy=email.policy.default)
    plain, rich = (p for p in msg.walk() if not p.is_multipart())
    assert plain.get_content().startswith(FR) and "plain body" in plain.get_content()
    assert plain.get_content_charset() == "utf-8"
    html = rich.get_content()
    assert html.startswith("<html><BODY class=x><div") and "re&#231;u" in html and "html é" in html
    pdf = (b"Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: application/pdf; name=r.pdf\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQ=\r\n")
    msg = email.message_from_bytes(add_banner(pdf, lines), policy=email.policy.default)
    first, second = msg.iter_parts()
    assert msg.get_content_type() == "multipart/mixed" and first.get_content().startswith(FR)
    assert second.get_content_type() == "application/pdf" and second.get_content() == b"%PDF-1.4"
    utf16 = "Résultat".encode("utf-16")
    leaf = (b"Subject: x\r\nContent-Type: text/plain; charset=utf-16\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + __import__("base64").b64encode(utf16) + b"\r\n")
    text = email.message_from_bytes(add_banner(leaf, lines), policy=email.policy.default).get_content()
    assert text.startswith(FR) and text.endswith("Résultat")


@pytest.mark.parametrize("charset", ["base64", "hex", "zlib", "bz2", "rot13", "x-unknown-charset"])
def test_banner_on_a_text_part_whose_charset_names_a_non_text_codec(charset: str) -> None:
    """`charset=base64` (or hex, zlib...) names a bytes-to-bytes codec, not a text encoding: it
    raised an untyped TypeError and the message went to quarantine. Read as an unknown charset
    (an ASCII superset): the banner goes on top in ASCII, the text bytes after it unchanged."""
    lines = banner_lines("apicrypt1", False)
    for kind in ("plain", "html"):
        leaf = (f"Subject: x\r\nContent-Type: text/{kind}; charset={charset}\r\n\r\nHPRIM body\r\n").encode()
        part = email.message_from_bytes(add_banner(leaf, lines), policy=email.policy.compat32)
        data = part.get_payload(decode=True)
        assert data.endswith(b"HPRIM body\r\n") and data.isascii(), (charset, kind)
        assert (b"Message recu d'une messagerie" if kind == "plain" else b"Message re&#231;u") in data, (charset, kind)
