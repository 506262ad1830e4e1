"""Item 2 and 3 of issue 11: around an envelope only the outer allow-list shows (From, To, Cc,
Date, a fresh Message-ID, the neutral Subject, MIME-Version, Content-*, Disposition-Notification-To
reduced to addresses), all 7-bit; every original header travels inside — checked with
`openssl cms` for S/MIME, with the legacy doctor's keys for Apicrypt-v1 copies."""

from __future__ import annotations

import email
import email.headerregistry
import email.policy
import time
from pathlib import Path

import pytest

from gateway.legacy.apicrypt1 import CODEC as APICRYPT1
from gateway.legacy.apicrypt1 import decrypt
from gateway.legacy.apicrypt1_format import dearmor
from gateway.legacy.keystore import ApicryptKeyStore, make_key_file
from gateway.pipeline import Envelope, Pipeline
from gateway.smime.engine import encrypt_message
from gateway.smime.headers import allowed_outer_fields, protected_entity
from gateway.smime.testpki import ORG_EMAIL, PERSON_EMAIL, TestPKI
from gateway.stages.bridge import LegacyInboundStage, sanitize
from gateway.stages.headers import restrict_outer
from gateway.stages.inbound import InboundStage
from gateway.stages.outbound import OutboundStage
from tests.conftest import require_tool
from tests.stages.envelope_support import (
    ATTACHMENT,
    BODY,
    ENVELOPE_MARKER,
    LEGACY_DOCTOR,
    LEGACY_LAB,
    PDF,
    BridgeCtx,
    client_sealed,
    header_block,
    marked_message,
    missing_inside,
    openssl_open,
    outside,
    with_part_description,
    without_armor,
)
from tests.stages.test_protection import _policy

YEAR = time.gmtime().tm_year


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    from gateway.smime.testpki import build_test_pki

    return build_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "apicrypt"
    for user in ("Master", "msgw.bridge", "labo.test", "dr.legacy"):
        make_key_file(folder, user, YEAR, 65536)
    return folder


async def _run(ctx: BridgeCtx, env: Envelope, data: bytes):
    return await Pipeline([sanitize, LegacyInboundStage(ctx), InboundStage(ctx), OutboundStage(ctx)]).run(env, data)


async def test_smime_copy_shows_only_the_allow_list_and_carries_every_header_inside(pki: TestPKI,
                                                                                     tmp_path: Path) -> None:
    openssl = require_tool("openssl")
    ctx = BridgeCtx(pki, _policy())
    env = Envelope("H1", ORG_EMAIL, (PERSON_EMAIL,), auth_user=ORG_EMAIL, listener="submission")
    result = await _run(ctx, env, marked_message(ORG_EMAIL, PERSON_EMAIL))
    (out,) = result.outgoing
    assert out.form == "smime"
    seen = outside(out.data)
    assert seen.clean, (seen, header_block(out.data))
    assert seen.names.count("subject") == 1 and seen.names.count("message-id") == 1
    outer = email.message_from_bytes(out.data, policy=email.policy.default)
    assert str(outer["Subject"]) == "Message sécurisé"
    assert str(outer["Disposition-Notification-To"]) == "<labo@labo-tests.sante.test>"
    assert outer["From"].addresses[0].addr_spec == ORG_EMAIL and "Élise" in str(outer["From"])
    assert "MRK" not in str(outer["Message-ID"])
    signed, content, signer = openssl_open(openssl, pki, out.data, tmp_path)
    assert missing_inside(content) == []
    inner = email.message_from_bytes(content, policy=email.policy.default)
    assert inner.get_param("protected-headers") == "v1"
    assert "Résultat MRK-SUBJECT de Mme DUPONT" == str(inner["Subject"])
    assert "Résultat MRK-RAW8BIT établi" == str(inner["X-Raw-8bit"])
    assert str(inner["Message-ID"]) == "<MRK-MSGID.4412@labo-tests.sante.test>"
    assert b"MRK-BCC" not in content and inner["Bcc"] is None
    names = [p.get_filename() for p in inner.walk() if p.get_filename()]
    assert names == [ATTACHMENT]
    assert max(map(len, signed.split(b"\n"))) <= 999 and signed.isascii()


async def test_unsigned_smime_copy_uses_the_same_list(pki: TestPKI, tmp_path: Path) -> None:
    """An account with no signing key: encrypted only, same outer list, headers inside."""
    ctx = BridgeCtx(pki, _policy(), account_keys={})
    env = Envelope("H2", ORG_EMAIL, (PERSON_EMAIL,), auth_user=ORG_EMAIL, listener="submission")
    (out,) = (await _run(ctx, env, marked_message(ORG_EMAIL, PERSON_EMAIL))).outgoing
    assert outside(out.data).clean, header_block(out.data)
    from gateway.smime.engine import unwrap_message
    from tests.stages.test_protection import _key

    opened = await unwrap_message(out.data, keys=[_key(pki, "person_encrypt")], verifier=ctx.verifier)
    assert opened.layers == ("enveloped",) and missing_inside(opened.content) == []


async def test_client_encrypted_pass_through_is_stripped_to_the_list(pki: TestPKI, tmp_path: Path) -> None:
    openssl = require_tool("openssl")
    ctx = BridgeCtx(pki, _policy())
    sealed = client_sealed(marked_message(ORG_EMAIL, PERSON_EMAIL), pki["person_encrypt"].cert)
    assert b"MRK-XPATIENT" in header_block(sealed)  # what a client that encrypts itself leaves outside
    assert header_block(sealed).count(ENVELOPE_MARKER.encode()) == 3  # and what it names its envelope
    env = Envelope("H3", ORG_EMAIL, (PERSON_EMAIL,), auth_user=ORG_EMAIL, listener="submission")
    (out,) = (await _run(ctx, env, sealed)).outgoing
    assert out.form == "client-encrypted"
    seen = outside(out.data)
    assert seen.clean, (seen, header_block(out.data))
    assert out.data.split(b"\r\n\r\n", 1)[1] == sealed.split(b"\r\n\r\n", 1)[1]  # the envelope itself untouched
    outer = email.message_from_bytes(out.data, policy=email.policy.default)
    assert outer.get_content_type() == "application/pkcs7-mime" and str(outer["Subject"]) == "Message sécurisé"
    assert outer.get_param("smime-type") == "enveloped-data" and outer.get_filename() == "smime.p7m"
    assert outer.get_param("name") == "smime.p7m" and outer.get_param("x-document") is None
    (tmp_path / "ce.eml").write_bytes(out.data)
    import subprocess

    person = pki["person_encrypt"]
    dec = subprocess.run([openssl, "cms", "-decrypt", "-in", str(tmp_path / "ce.eml"), "-recip",
                          str(person.cert_path), "-inkey", str(person.key_path)], capture_output=True)
    assert dec.returncode == 0, dec.stderr
    text = next(p for p in email.message_from_bytes(dec.stdout, policy=email.policy.default).walk()
                if p.get_content_type() == "text/plain")
    assert text.get_content().strip() == BODY.strip()


async def test_legacy_copy_neutral_outside_real_names_inside_the_armor(pki: TestPKI, keys_dir: Path) -> None:
    ctx = BridgeCtx(pki, _policy(), keys_dir=keys_dir)
    env = Envelope("H4", ORG_EMAIL, (LEGACY_DOCTOR,), auth_user=ORG_EMAIL, listener="submission")
    (out,) = (await _run(ctx, env, marked_message(ORG_EMAIL, LEGACY_DOCTOR))).outgoing
    assert out.form == "legacy:apicrypt1"
    clear = without_armor(out.data)
    seen = outside(out.data, clear)
    assert seen.clean, (seen, clear.decode("latin-1"))
    assert b"DUPONT" not in clear and b"X-Msgw-Bridged" not in clear and b"smime-verification" not in clear
    outer = email.message_from_bytes(out.data, policy=email.policy.default)
    assert str(outer["Subject"]) == "Message sécurisé"
    assert [p.get_filename() for p in outer.walk() if p.get_filename()] == ["piece-jointe-2.pdf"]
    # Inside: the armored text starts with the original header the bridge adds (spec: "the original
    # sender is named in the decrypted text header"), real Subject and attachment name included.
    armor = next(p for p in outer.walk() if p.get_content_type() == "text/plain" and not p.get_filename())
    plain = decrypt(dearmor(armor.get_payload(decode=True)), ApicryptKeyStore(keys_dir)).text.decode("latin-1")
    assert "Résultat MRK-SUBJECT de Mme DUPONT" in plain and f"piece-jointe-2.pdf = {ATTACHMENT}" in plain
    text = BODY.rstrip("\r\n")  # the CRLF before the boundary belongs to the boundary
    assert "smime-verification=none" in plain and plain.endswith("\r\n\r\n" + text)
    # Our decoder gives the real ones back, and the original text byte for byte.
    decoded = APICRYPT1.decode(out.data, ApicryptKeyStore(keys_dir), recipient="dr.legacy")
    assert decoded.text == text.encode("latin-1")
    assert [(a.filename, a.data) for a in decoded.attachments] == [(ATTACHMENT, PDF)]
    back = email.message_from_bytes(decoded.content, policy=email.policy.default)
    assert str(back["Subject"]) == "Résultat MRK-SUBJECT de Mme DUPONT" and back["X-Msgw-Bridged"] is None


async def test_legacy_pass_through_gets_the_allow_list_and_neutral_names(pki: TestPKI, keys_dir: Path) -> None:
    """Legacy mail for a reader of the same format goes on in that format (not re-encoded): its
    outer headers are cut to the list and its attachment names made neutral all the same."""
    store = ApicryptKeyStore(keys_dir)
    legacy = with_part_description(APICRYPT1.encode(marked_message(LEGACY_LAB, LEGACY_DOCTOR), "labo.test",
                                                    ["msgw.bridge", "dr.legacy"], store))
    assert b"MRK-XPATIENT" in legacy and ATTACHMENT.encode() in legacy  # as a legacy client sends it
    assert b"MRK-DESCRIPTION" in legacy and b"MRK-DATE" in legacy
    ctx = BridgeCtx(pki, _policy(), keys_dir=keys_dir)
    env = Envelope("H5", LEGACY_LAB, (LEGACY_DOCTOR,), listener="legacy")
    (out,) = (await _run(ctx, env, legacy)).outgoing
    assert out.form == "legacy:apicrypt1"
    seen = outside(out.data, without_armor(out.data))
    assert seen.clean, (seen, without_armor(out.data).decode("latin-1"))
    decoded = APICRYPT1.decode(out.data, store, recipient="dr.legacy")
    assert decoded.sender == "labo.test" and [(a.filename, a.data) for a in decoded.attachments] == \
        [("piece-jointe-2.pdf", PDF)]


def test_allow_list_function_alone() -> None:
    """One function makes the outer set for every protected form: 8-bit names RFC 2047-encoded,
    a non-ASCII address dropped, Disposition-Notification-To reduced to addresses."""
    msg = ("From: Élise <labo@labo-tests.sante.test>\r\nTo: Dr Ü <ü@exemple.test>, <dr@cabinet.test>\r\n"
           "Cc: <cc@cabinet.test> (MRK-COMMENT dossier DUPONT), Secretariat: <s@cabinet.test>;\r\n"
           "Date: Wed, 25 Nov 2026 09:00:00 +0100\r\nSubject: secret\r\n"
           "Disposition-Notification-To: Secrétariat <labo@labo-tests.sante.test>, bad\r\n"
           "Message-ID: <orig@x>\r\n\r\nbody\r\n").encode()
    fields = allowed_outer_fields(msg, neutral_subject="Message sécurisé")
    block = b"".join(fields)
    assert block.isascii() and b"secret" not in block and b"orig@x" not in block and b"MRK" not in block
    assert b"Cc: <cc@cabinet.test>,\r\n <s@cabinet.test>\r\n" in block
    text = block.decode()
    assert "To: <dr@cabinet.test>\r\n" in text and "=?utf-8?" in text.split("\r\n")[0]
    assert "Disposition-Notification-To: <labo@labo-tests.sante.test>\r\n" in text
    assert "Sender:" not in text  # the bridge signs under its own From (no Sender of ours)
    assert all(len(line) <= 998 for line in text.split("\r\n"))
    again = b"".join(allowed_outer_fields(msg, neutral_subject="x"))
    assert [f for f in again.split(b"\r\n") if f.startswith(b"Message-ID")] != \
        [f for f in block.split(b"\r\n") if f.startswith(b"Message-ID")]  # fresh and random each time


@pytest.mark.parametrize("date, kept", [
    (b"Thu, 3 Dec 2026 10:00 +0100 (Resultat DUPONT Jean)", "Thu, 03 Dec 2026 10:00:00 +0100"),
    (b"Thu, 3 Dec 2026 10:00:00 +0100 (MRK-DATE)\r\n (DUPONT)", "Thu, 03 Dec 2026 10:00:00 +0100"),
    (b"3 Dec 2026 10:00 -0000 (DUPONT)", "Thu, 03 Dec 2026 10:00:00 -0000"),
    (b"Thu, 3 Dec 2026 10:00:00 GMT", "Thu, 03 Dec 2026 10:00:00 +0000"),
])
def test_outer_date_is_rebuilt_from_its_value(date: bytes, kept: str) -> None:
    """A 7-bit Date went out verbatim, comment included (`(Resultat DUPONT Jean)`): the outer
    Date is always rebuilt from the parsed date; the original (comment and all) stays inside."""
    msg = b"From: <labo@labo-tests.sante.test>\r\nDate: " + date + b"\r\nSubject: x\r\n\r\nbody\r\n"
    (line,) = [f for f in allowed_outer_fields(msg, neutral_subject="x") if f.startswith(b"Date:")]
    assert line == f"Date: {kept}\r\n".encode()
    assert b"Date: " + date + b"\r\n" in protected_entity(msg, b"Content-Type: text/plain\r\n\r\nx\r\n")


def test_an_unparseable_date_goes_out_as_the_current_time() -> None:
    import datetime as dt
    import email.utils

    msg = b"From: <labo@labo-tests.sante.test>\r\nDate: (DUPONT Jean) le 3 decembre\r\n\r\nbody\r\n"
    (line,) = [f for f in allowed_outer_fields(msg, neutral_subject="x") if f.startswith(b"Date:")]
    when = email.utils.parsedate_to_datetime(line[6:].decode())
    assert b"DUPONT" not in line and abs(when - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=5)


def test_envelope_fields_keep_their_structure_only() -> None:
    """The envelope's own Content-* as a client wrote them: a disposition type, a name or a
    parameter of its own can name the document; only the structure goes on."""
    sealed = (b"From: <labo@labo-tests.sante.test>\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
              b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data;\r\n name=\"CR DUPONT.p7m\"\r\n"
              b"Content-Disposition: DUPONT-Jeanne; filename*=utf-8''CR%20DUPONT%20%C3%A9.p7m; size=12\r\n"
              b"Content-Description: CR DUPONT\r\nContent-Transfer-Encoding: base64\r\n\r\nMIIB\r\n")
    out = restrict_outer(sealed, neutral_subject="x", envelope_name="smime.p7m")
    head = header_block(out)
    assert b"dupont" not in head.lower() and b"size" not in head and b"Content-Description" not in head
    msg = email.message_from_bytes(out, policy=email.policy.default)
    assert msg.get_content_type() == "application/pkcs7-mime" and msg.get_param("smime-type") == "enveloped-data"
    assert msg.get_content_disposition() == "attachment" and msg.get_filename() == "smime.p7m"
    assert msg.get_param("name") == "smime.p7m" and out.endswith(b"\r\n\r\nMIIB\r\n")


def test_protected_entity_is_seven_bit_and_keeps_every_header() -> None:
    msg = marked_message(ORG_EMAIL, PERSON_EMAIL)
    entity = protected_entity(msg, b"Content-Type: text/plain; charset=us-ascii\r\n\r\nx\r\n")
    assert entity.isascii() and max(map(len, entity.split(b"\r\n"))) <= 998
    assert missing_inside(entity) == [] and b"MRK-BCC" not in entity
    assert b'protected-headers="v1"' in entity


#: RFC 2047 words a hostile client puts in display names: a broken base64 word, an unknown
#: charset, and words that decode to an address or to a list separator.
HOSTILE_NAMES = (b"=?utf-8?b?x?=", b"=?x-no-such-charset?q?Dr_X?=", b"=?utf-8?q?=3Cdr.forged=40evil.test=3E?=",
                 b"=?utf-8?q?Dr_X=2C_dr.forged=40evil.test?=", b"=?utf-8?b?PGRyLmZvcmdlZEBldmlsLnRlc3Q+?=")


def _hostile(name: bytes) -> bytes:
    return (b"From: " + name + f" <{ORG_EMAIL}>\r\nTo: ".encode() + name + f" <{PERSON_EMAIL}>\r\n".encode()
            + b"Cc: " + name + b" <cc@cabinet.test>\r\nDisposition-Notification-To: " + name
            + f" <{ORG_EMAIL}>\r\nSubject: x\r\nDate: Wed, 25 Nov 2026 09:00:00 +0100\r\nMIME-Version: 1.0\r\n"
              "Content-Type: text/plain; charset=us-ascii\r\n\r\nTEST\r\n".encode())


def _outer_addresses(raw: bytes) -> dict[str, list[str]]:
    """The addresses of each outer address field, read by the stdlib's strict parser (policy.default)."""
    outer = email.message_from_bytes(raw, policy=email.policy.default)
    found = {n: [a.addr_spec for a in outer[n].addresses] for n in ("From", "To", "Cc")}
    dnt = email.headerregistry.HeaderRegistry()("To", str(outer["Disposition-Notification-To"]))  # parsed as To
    return found | {"Disposition-Notification-To": [a.addr_spec for a in dnt.addresses]}


@pytest.mark.parametrize("name", HOSTILE_NAMES)
async def test_encoded_words_in_address_fields_are_decoded_after_parsing(pki: TestPKI, name: bytes) -> None:
    """A broken RFC 2047 word raised an untyped HeaderParseError (the message went to
    quarantine), and a word decoding to an address was parsed as one (an outer From naming
    dr.forged@evil.test first). Names are decoded after the addresses are read: each field
    shows exactly the addresses the client wrote, for the S/MIME copy and the pass-through."""
    expected = {"From": [ORG_EMAIL], "To": [PERSON_EMAIL], "Cc": ["cc@cabinet.test"],
                "Disposition-Notification-To": [ORG_EMAIL]}
    fields = b"".join(allowed_outer_fields(_hostile(name), neutral_subject="x")) + b"\r\n"
    assert _outer_addresses(fields) == expected
    ctx = BridgeCtx(pki, _policy())
    env = Envelope("H6", ORG_EMAIL, (PERSON_EMAIL,), auth_user=ORG_EMAIL, listener="submission")
    sealed = encrypt_message(_hostile(name), [pki["person_encrypt"].cert])
    for data, form in ((_hostile(name), "smime"), (sealed, "client-encrypted")):
        (out,) = (await _run(ctx, env, data)).outgoing
        assert out.form == form and _outer_addresses(out.data) == expected, form
