"""Codec `openpgp`: PGP/MIME round trips and interop with the `gpg` command line, both directions."""

from __future__ import annotations

import email
import email.message

import pytest

from gateway.legacy import codec as registry
from gateway.legacy.codec import SignatureStatus
from gateway.legacy.errors import LegacyKeyError, MalformedPayload, NotForRecipient
from gateway.legacy.openpgp import CODEC, OpenPgpKeyring, parse_signature
from tests.legacy.conftest import GpgHome

HPRIM = b"H|^~\\&|||LABO^^^^|||||||H2.2^C|20260101\rOBX|1|NM|GLU^Glyc\xe9mie||5.2|mmol/l\rL|1|||\r"
MIME = (b"From: Bridge Passerelle <bridge@gw.example>\r\nTo: partner@lab.example\r\nSubject: CR\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="in"\r\n\r\n'
        b"--in\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nCompte rendu ci-joint, r\xc3\xa9sultat.\r\n"
        b'--in\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="r.hpr"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + email.base64mime.body_encode(HPRIM, eol="\r\n").encode() +
        b"--in--\r\n")
ENTITY = MIME[MIME.index(b"Content-Type: multipart/mixed"):]


def keyring(home: GpgHome) -> OpenPgpKeyring:
    return OpenPgpKeyring(home.home)


def pgp_mime(armored: bytes, sender: str = "partner@lab.example") -> bytes:
    """Wrap gpg's armored output in RFC 3156 multipart/encrypted, as a mail client would."""
    return (f"From: {sender}\r\nTo: bridge@gw.example\r\nSubject: res\r\nMIME-Version: 1.0\r\n".encode()
            + b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="b1"\r\n\r\n'
            + b"--b1\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n"
            + b"--b1\r\nContent-Type: application/octet-stream\r\n\r\n" + armored + b"\r\n--b1--\r\n")


def encrypted_part(message: bytes) -> bytes:
    parts = email.message_from_bytes(message).get_payload()
    assert parts[0].get_content_type() == "application/pgp-encrypted"
    return parts[1].get_payload(decode=True)


def test_round_trip(gpg_homes: dict[str, GpgHome]) -> None:
    bridge, partner = gpg_homes["bridge"], gpg_homes["partner"]
    encoded = CODEC.encode(MIME, bridge.email, [partner.email], keyring(bridge))
    msg = email.message_from_bytes(encoded)
    assert msg.get_content_type() == "multipart/encrypted" and msg.get_param("protocol") == "application/pgp-encrypted"
    assert msg["Subject"] == "CR" and b"Glyc" not in encoded
    assert CODEC.detect(encoded) and registry.detect_codec(encoded) is CODEC
    decoded = CODEC.decode(encoded, keyring(partner), recipient=partner.email)
    assert decoded.signature is SignatureStatus.VALID and decoded.sender_authenticated
    assert decoded.signer_fingerprint == bridge.fingerprint and decoded.sender == bridge.uid
    assert decoded.integrity_protected and decoded.recipients
    assert decoded.content.endswith(ENTITY)
    attachment = [p for p in email.message_from_bytes(decoded.content).walk() if p.get_filename()][0]
    assert attachment.get_payload(decode=True) == HPRIM


def test_gpg_decrypts_and_verifies_what_we_encode(gpg_homes: dict[str, GpgHome]) -> None:
    bridge, partner = gpg_homes["bridge"], gpg_homes["partner"]
    encoded = CODEC.encode(MIME, bridge.email, [partner.email], keyring(bridge))
    result = partner.run("--decrypt", data=encrypted_part(encoded))
    assert result.stdout == ENTITY
    status = result.stderr.decode()
    assert "[GNUPG:] GOODSIG" in status and f"VALIDSIG {bridge.fingerprint}" in status
    assert "[GNUPG:] GOODMDC" in status or "DECRYPTION_OKAY" in status


def test_we_decode_what_gpg_encrypts_and_report_the_signer(gpg_homes: dict[str, GpgHome]) -> None:
    bridge, partner = gpg_homes["bridge"], gpg_homes["partner"]
    inner = b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + HPRIM
    armored = partner.run("--trust-model", "always", "--armor", "--encrypt", "--sign", "-r", bridge.email,
                          "-u", partner.email, data=inner).stdout
    decoded = CODEC.decode(pgp_mime(armored), keyring(bridge), recipient=bridge.email)
    assert decoded.sender_authenticated and decoded.signature is SignatureStatus.VALID
    assert decoded.signer_fingerprint == partner.fingerprint and decoded.sender == partner.uid
    body = email.message_from_bytes(decoded.content)
    assert body.get_payload(decode=True) == HPRIM and body["From"] == "partner@lab.example"
    assert not any("not a uid" in note for note in decoded.notes)
    spoofed = CODEC.decode(pgp_mime(armored, sender="chief@hospital.example"), keyring(bridge))
    assert any("From address is not a uid of the signing key" in note for note in spoofed.notes)


def test_unsigned_message_is_not_authenticated(gpg_homes: dict[str, GpgHome]) -> None:
    bridge, partner = gpg_homes["bridge"], gpg_homes["partner"]
    armored = partner.run("--trust-model", "always", "--armor", "--encrypt", "-r", bridge.email,
                          data=b"Content-Type: text/plain\r\n\r\nhello\r\n").stdout
    decoded = CODEC.decode(pgp_mime(armored), keyring(bridge))
    assert decoded.signature is SignatureStatus.NONE and not decoded.sender_authenticated
    assert decoded.sender == "partner@lab.example"
    assert any("NOT authenticated" in note for note in decoded.notes)


def test_signer_not_in_our_keyring(gpg_homes: dict[str, GpgHome]) -> None:
    bridge, stranger = gpg_homes["bridge"], gpg_homes["stranger"]
    armored = stranger.run("--trust-model", "always", "--armor", "--encrypt", "--sign", "-r", bridge.email,
                           data=b"Content-Type: text/plain\r\n\r\nhello\r\n").stdout
    decoded = CODEC.decode(pgp_mime(armored, "stranger@elsewhere.example"), keyring(bridge))
    assert decoded.signature is SignatureStatus.UNKNOWN_KEY and not decoded.sender_authenticated


def test_not_for_us(gpg_homes: dict[str, GpgHome]) -> None:
    bridge, partner = gpg_homes["bridge"], gpg_homes["partner"]
    armored = partner.run("--trust-model", "always", "--armor", "--encrypt", "-r", partner.email,
                          data=b"Content-Type: text/plain\r\n\r\nsecret\r\n").stdout
    with pytest.raises(NotForRecipient):
        CODEC.decode(pgp_mime(armored), keyring(bridge))


def test_unknown_recipient_and_signer_are_key_errors(gpg_homes: dict[str, GpgHome]) -> None:
    bridge = gpg_homes["bridge"]
    with pytest.raises(LegacyKeyError):
        CODEC.encode(MIME, bridge.email, ["nobody@nowhere.example"], keyring(bridge))
    with pytest.raises(LegacyKeyError, match="0 secret keys"):
        CODEC.encode(MIME, "partner@lab.example", ["bridge@gw.example"], keyring(bridge))


def test_inline_pgp_detected_and_decoded(gpg_homes: dict[str, GpgHome]) -> None:
    bridge, partner = gpg_homes["bridge"], gpg_homes["partner"]
    armored = partner.run("--trust-model", "always", "--armor", "--encrypt", "--sign", "-r", bridge.email,
                          data=HPRIM).stdout
    mail = (b"From: partner@lab.example\r\nTo: bridge@gw.example\r\nSubject: r\r\nContent-Type: text/plain\r\n\r\n"
            + b"\r\n" + armored)
    assert CODEC.detect(mail) and registry.detect_codec(mail) is CODEC
    decoded = CODEC.decode(mail, keyring(bridge))
    assert decoded.text == HPRIM and decoded.sender_authenticated and decoded.sender == partner.uid
    assert email.message_from_bytes(decoded.content).get_payload(decode=True) == HPRIM
    assert any("inline PGP" in note for note in decoded.notes)
    assert CODEC.decode(armored, keyring(bridge)).text == HPRIM  # a bare armored message


def test_sign_only_multipart_signed(gpg_homes: dict[str, GpgHome], tmp_path) -> None:  # type: ignore[no-untyped-def]
    bridge, partner = gpg_homes["bridge"], gpg_homes["partner"]
    signed = CODEC.encode(MIME, bridge.email, [], keyring(bridge), sign_only=True)
    msg = email.message_from_bytes(signed)
    assert msg.get_content_type() == "multipart/signed" and msg.get_param("micalg") == "pgp-sha256"
    decoded = CODEC.decode(signed, keyring(partner))
    assert decoded.signature is SignatureStatus.VALID and decoded.signer_fingerprint == bridge.fingerprint
    # gpg verifies the exact first body part against the detached signature
    boundary = msg.get_boundary().encode()
    first = signed.split(b"--" + boundary + b"\r\n")[1].rsplit(b"\r\n", 1)[0]
    signature = tmp_path / "sig.asc"
    signature.write_bytes(msg.get_payload()[1].get_payload(decode=True))
    result = partner.run("--verify", str(signature), "-", data=first)
    assert f"VALIDSIG {bridge.fingerprint}" in result.stderr.decode()
    tampered = signed.replace(b"fHx8", b"fHx9", 1)
    assert tampered != signed
    assert CODEC.decode(tampered, keyring(partner)).signature is SignatureStatus.BAD


def test_rfc2231_protocol_parameter_is_read_as_text(gpg_homes: dict[str, GpgHome]) -> None:
    """An RFC 2231-encoded protocol= (get_param gives a tuple) is detected and verified, not an AttributeError."""
    bridge, partner = gpg_homes["bridge"], gpg_homes["partner"]
    signed = CODEC.encode(MIME, bridge.email, [], keyring(bridge), sign_only=True)
    assert b'protocol="application/pgp-signature"' in signed
    encoded = signed.replace(b'protocol="application/pgp-signature"',
                             b"protocol*=us-ascii''application%2Fpgp-signature", 1)
    assert isinstance(email.message_from_bytes(encoded).get_param("protocol"), tuple)
    assert CODEC.detect(encoded) and registry.detect_codec(encoded) is CODEC
    decoded = CODEC.decode(encoded, keyring(partner))
    assert decoded.signature is SignatureStatus.VALID and decoded.signer_fingerprint == bridge.fingerprint


def test_signed_then_encrypted_by_gpg(gpg_homes: dict[str, GpgHome]) -> None:
    """RFC 3156 6.1: a multipart/signed entity inside multipart/encrypted."""
    bridge, partner = gpg_homes["bridge"], gpg_homes["partner"]
    signed = CODEC.encode(MIME, partner.email, [], keyring(partner), sign_only=True)
    entity = signed[signed.index(b"Content-Type: multipart/signed"):]
    armored = partner.run("--trust-model", "always", "--armor", "--encrypt", "-r", bridge.email, data=entity).stdout
    decoded = CODEC.decode(pgp_mime(armored), keyring(bridge))
    assert decoded.signature is SignatureStatus.VALID and decoded.signer_fingerprint == partner.fingerprint
    assert leaves(decoded.content) == leaves(MIME)  # 8-bit text was re-encoded 7-bit for signing: same bytes


def leaves(message: bytes) -> list[bytes]:
    return [p.get_payload(decode=True) for p in email.message_from_bytes(message).walk() if not p.is_multipart()]


def test_malformed_pgp_mime(gpg_homes: dict[str, GpgHome]) -> None:
    bridge = gpg_homes["bridge"]
    with pytest.raises(MalformedPayload):
        CODEC.decode(pgp_mime(b"not armor"), keyring(bridge))
    broken = pgp_mime(b"-----BEGIN PGP MESSAGE-----\r\n\r\nAAAA\r\n-----END PGP MESSAGE-----")
    with pytest.raises(MalformedPayload):
        CODEC.decode(broken, keyring(bridge))
    assert registry.detect_codec(b"Content-Type: text/plain\r\n\r\nhello\r\n") is None


def test_parse_signature_status_lines() -> None:
    assert parse_signature("[GNUPG:] BADSIG 1234 Eve\n[GNUPG:] GOODSIG 99 X\n").status is SignatureStatus.BAD
    assert parse_signature("[GNUPG:] ERRSIG 1 2 3 4 5 9\n[GNUPG:] NO_PUBKEY 1\n").status is SignatureStatus.UNKNOWN_KEY
    assert parse_signature("[GNUPG:] EXPKEYSIG 1 Old <o@x>\n").status is SignatureStatus.ERROR
    assert parse_signature("gpg: some prose GOODSIG\n").status is SignatureStatus.NONE


def test_fuzz_only_typed_errors(gpg_homes: dict[str, GpgHome]) -> None:
    import random

    from gateway.errors import GatewayError

    bridge, partner = gpg_homes["bridge"], gpg_homes["partner"]
    signed = CODEC.encode(MIME, partner.email, [], keyring(partner), sign_only=True)
    encrypted = CODEC.encode(MIME, partner.email, [bridge.email], keyring(partner))
    rng = random.Random(3156)
    ring = keyring(bridge)
    for round_ in range(60):
        data = bytearray(signed if round_ % 2 else encrypted)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(data))
            if rng.random() < 0.5:
                data[at] = rng.randrange(256)
            else:
                del data[at:at + rng.randint(1, 200)]
        try:
            decoded = CODEC.decode(bytes(data), ring)
        except GatewayError as exc:
            assert str(exc)
        else:
            assert decoded.signature in tuple(SignatureStatus)


def test_passphrase_protected_key_never_prompts(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import require_tool

    gpg = require_tool("gpg")
    home = tmp_path / "locked"
    home.mkdir(mode=0o700)
    (home / "gpg-agent.conf").write_text("s2k-count 65536\n")  # TEST ONLY: fast key protection
    locked = GpgHome.__new__(GpgHome)
    locked.gpg, locked.home, locked.uid = gpg, home, "Cle Protegee <locked@gw.example>"
    try:
        locked.run("--pinentry-mode", "loopback", "--passphrase", "s3cret phrase", "--quick-gen-key", locked.uid,
                   "future-default", "default", "0")
        secret = tmp_path / "pass.txt"
        secret.write_text("s3cret phrase\n")
        with_file = OpenPgpKeyring(home, passphrase_file=str(secret))
        encoded = CODEC.encode(MIME, "locked@gw.example", ["locked@gw.example"], with_file)
        monkeypatch.setenv("MSGW_TEST_PGP_PASS", "s3cret phrase")
        decoded = CODEC.decode(encoded, OpenPgpKeyring(home, passphrase_env="MSGW_TEST_PGP_PASS"))
        assert decoded.sender_authenticated and decoded.content.endswith(ENTITY)
        locked.stop()  # forget the passphrase gpg-agent cached
        with pytest.raises(LegacyKeyError):
            CODEC.decode(encoded, OpenPgpKeyring(home))  # no passphrase: refused, no pinentry prompt
        with pytest.raises(LegacyKeyError):
            CODEC.encode(MIME, "locked@gw.example", [], OpenPgpKeyring(home), sign_only=True)
        monkeypatch.setenv("MSGW_TEST_PGP_PASS", "wrong")
        locked.stop()
        with pytest.raises(LegacyKeyError, match="passphrase"):
            CODEC.decode(encoded, OpenPgpKeyring(home, passphrase_env="MSGW_TEST_PGP_PASS"))
    finally:
        locked.stop()


def test_protected_headers_travel_inside_and_win_on_decode(gpg_homes: dict[str, GpgHome]) -> None:
    """The bridge's PGP/MIME copies carry every header inside (protected-headers="v1"); decoding
    gives one header block with the inner ones, whatever the outside says."""
    bridge, partner = gpg_homes["bridge"], gpg_homes["partner"]
    mime = MIME.replace(b"Subject: CR\r\n", b"Subject: CR de Mme DUPONT\r\nX-Patient-Name: DUPONT\r\n"
                                            b"Message-ID: <orig.1@gw.example>\r\nBcc: <hidden@gw.example>\r\n")
    encoded = CODEC.encode(mime, bridge.email, [partner.email], keyring(bridge), protect_headers=True)
    inner = partner.run("--decrypt", data=encrypted_part(encoded)).stdout
    head = inner.split(b"\r\n\r\n", 1)[0]
    assert b'protected-headers="v1"' in head and b"Subject: CR de Mme DUPONT" in head
    assert b"X-Patient-Name: DUPONT" in head and b"hidden@" not in inner
    outside = encoded.replace(b"Subject: CR de Mme DUPONT", b"Subject: Message securise")
    decoded = CODEC.decode(outside, keyring(partner), recipient=partner.email)
    msg = email.message_from_bytes(decoded.content)
    assert msg.get_all("Subject") == ["CR de Mme DUPONT"] and msg.get_all("Message-ID") == ["<orig.1@gw.example>"]
    attachment = [p for p in msg.walk() if p.get_filename()][0]
    assert attachment.get_payload(decode=True) == HPRIM


async def test_bridge_openpgp_copy_outer_allow_list_and_headers_inside(gpg_homes: dict[str, GpgHome]) -> None:
    """The bridge's PGP/MIME copy (issue 11, item 3): outside only the allow-list (no marker of any
    header kind, 8-bit included), inside every header, read back by the partner's keyring."""
    from types import SimpleNamespace

    from gateway.pipeline import Envelope, WorkItem
    from gateway.stages.bridge import legacy_copy
    from tests.stages.envelope_support import marked_message, missing_inside, outside

    bridge, partner = gpg_homes["bridge"], gpg_homes["partner"]
    ctx = SimpleNamespace(policy=SimpleNamespace(neutral_subject="Message sécurisé"),
                          legacy_keys=lambda codec: keyring(bridge), legacy_identity=lambda codec: bridge.email,
                          legacy_id=lambda address, codec: partner.email)
    item = WorkItem(Envelope("P1", bridge.email, (partner.email,), auth_user=bridge.email, listener="submission"),
                    marked_message(bridge.email, partner.email))
    data = await legacy_copy(ctx, item, "openpgp", [partner.email])  # type: ignore[arg-type]
    seen = outside(data)
    assert seen.clean, (seen, data.split(b"\r\n\r\n", 1)[0])
    decoded = CODEC.decode(data, keyring(partner), recipient=partner.email)
    assert decoded.signature is SignatureStatus.VALID and missing_inside(decoded.content) == []
    msg = email.message_from_bytes(decoded.content)
    assert len(msg.get_all("Subject")) == 1 and "smime-verification=none" in msg["X-Msgw-Bridged"]


def test_raw_8bit_outer_header_comes_back_as_its_bytes(gpg_homes: dict[str, GpgHome]) -> None:
    bridge, partner = gpg_homes["bridge"], gpg_homes["partner"]
    mime = MIME.replace(b"Subject: CR\r\n", "Subject: Résultat brut\r\n".encode())
    decoded = CODEC.decode(CODEC.encode(mime, bridge.email, [partner.email], keyring(bridge)), keyring(partner))
    assert "Subject: Résultat brut\r\n".encode() in decoded.content
