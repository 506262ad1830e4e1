"""Codec `apicrypt1`: round trips, key years, indexCurrent persistence, refusals, fuzz, known answer."""

from __future__ import annotations

import datetime
import email
import logging
import os
import random
import stat
import struct
from pathlib import Path

import pytest

from gateway.errors import GatewayError, MalformedInput, PermanentError
from gateway.legacy import codec as registry
from gateway.legacy.apicrypt1 import CODEC, Apicrypt1Codec
from gateway.legacy.apicrypt1_format import HEADER_SIZE, KeyHeader, armor, dearmor
from gateway.legacy.errors import (
    ArmorError,
    ChecksumMismatch,
    DecryptionFailed,
    KeyPermissionError,
    LegacyKeyError,
    MalformedPayload,
    NotForRecipient,
)
from gateway.legacy.keystore import ApicryptKeyStore, make_key_file
from tests.legacy.conftest import KEY_SIZE, YEAR

SAMPLES = Path("/work/shared/samples/hprim")
HPRIM = (b"H|^~\\&|||LABO BIO^^^^|||||||H2.2^C|20260101120000\r"
         b"P|1||123|^|DUPONT^MARIE||19700101|F\rOBX|1|NM|GLU^Glyc\xe9mie||5.2|mmol/l\rL|1|||\r")
ACCEPTED = (ArmorError, MalformedPayload, DecryptionFailed, NotForRecipient, LegacyKeyError)


def body_only(text: bytes = "Résultats joints.\r\nBien confraternellement.\r\n".encode("latin-1")) -> bytes:
    return (b"From: labo.bio@medical44.apicrypt.org\r\nTo: dr.martin@medical44.apicrypt.org\r\n"
            b"Subject: resultats\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n\r\n" + text)


def with_attachments(*files: tuple[str, bytes]) -> bytes:
    parts = [b"--XYZ\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
             + HPRIM + b"\r\n"]
    for name, data in files:
        parts.append(b"--XYZ\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
                     b'Content-Disposition: attachment; filename="' + name.encode() + b'"\r\n\r\n'
                     + email.base64mime.body_encode(data).encode() + b"\r\n")
    return (b"From: labo.bio@medical44.apicrypt.org\r\nTo: dr.martin@medical44.apicrypt.org\r\nSubject: r\r\n"
            b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="XYZ"\r\n\r\n'
            + b"".join(parts) + b"--XYZ--\r\n")


def armors(message: bytes) -> list[bytes]:
    msg = email.message_from_bytes(message)
    return [p.get_payload(decode=True) for p in msg.walk() if not p.is_multipart()]


# --- round trips -------------------------------------------------------------------------
def test_body_only_round_trip(store: ApicryptKeyStore) -> None:
    text = "Résultats joints.\r\nBien confraternellement.\r\n".encode("latin-1")
    encoded = CODEC.encode(body_only(text), "labo.bio", ["dr.martin"], store, year=YEAR)
    msg = email.message_from_bytes(encoded)
    assert msg.get_content_type() == "text/plain" and msg["Subject"] == "resultats"
    assert CODEC.detect(encoded) and not CODEC.detect(body_only())
    assert registry.detect_codec(encoded) is CODEC
    decoded = CODEC.decode(encoded, store, recipient="dr.martin")
    assert decoded.text == text and decoded.text_charset == "iso-8859-1"
    assert decoded.sender == "labo.bio" and decoded.recipients == ("dr.martin",)
    assert decoded.sender_authenticated is False and decoded.integrity_protected is False
    assert any("authenticates nothing" in note for note in decoded.notes)
    rebuilt = email.message_from_bytes(decoded.content)
    assert rebuilt.get_payload(decode=True) == text and rebuilt.get_content_charset() == "iso-8859-1"
    assert rebuilt["From"] == "labo.bio@medical44.apicrypt.org"


def test_attachments_round_trip_byte_for_byte(store: ApicryptKeyStore) -> None:
    files = [(p.name, p.read_bytes()) for p in sorted(SAMPLES.glob("*.hp*"))[:2]] if SAMPLES.is_dir() else []
    files += [("result.hpr", HPRIM), ("scan.pdf", os.urandom(3000) + b"\r\n\x00")]
    encoded = CODEC.encode(with_attachments(*files), "labo.bio", ["dr.martin", "dr.durand"], store, year=YEAR)
    parts = [p for p in email.message_from_bytes(encoded).walk() if not p.is_multipart()]
    assert len(parts) == 1 + len(files)
    assert [p.get_filename() for p in parts[1:]] == [name for name, _ in files]  # names kept outside
    assert all(p.get_payload(decode=True).startswith(b"#BINASCII1#") for p in parts)
    for reader in ("dr.martin", "dr.durand"):
        decoded = CODEC.decode(encoded, store, recipient=reader)
        assert decoded.text == HPRIM
        assert [(a.filename, a.data) for a in decoded.attachments] == files
        rebuilt = [p for p in email.message_from_bytes(decoded.content).walk() if not p.is_multipart()]
        assert [p.get_payload(decode=True) for p in rebuilt] == [HPRIM] + [data for _, data in files]


def test_multiple_recipients_travel_inside_the_payload(store: ApicryptKeyStore) -> None:
    result = CODEC.encode_text(b"hello", "labo.bio", ["dr.martin", "dr.durand", "dr.x"], store, year=YEAR)
    assert CODEC.decode(result.message, store).recipients == ("dr.martin", "dr.durand", "dr.x")


def test_utf8_text_without_latin1_form_gets_a_bom(store: ApicryptKeyStore) -> None:
    mime = (b"Subject: x\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + "Dose 5 µg ≥ seuil\r\n".encode())
    decoded = CODEC.decode(CODEC.encode(mime, "labo.bio", ["dr.martin"], store, year=YEAR), store)
    assert decoded.text == b"\xef\xbb\xbf" + "Dose 5 µg ≥ seuil\r\n".encode() and decoded.text_charset == "utf-8"
    latin = b"Subject: x\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + "Glycémie\r\n".encode()
    assert CODEC.decode(CODEC.encode(latin, "labo.bio", ["dr.martin"], store, year=YEAR), store).text == \
        "Glycémie\r\n".encode("latin-1")


def test_bare_armor_and_from_mismatch_note(store: ApicryptKeyStore) -> None:
    armored = CODEC.encode_text(HPRIM, "labo.bio", ["dr.martin"], store, year=YEAR).message
    assert armored.startswith(b"#BINASCII1#\n") and CODEC.detect(armored)
    assert CODEC.decode(armored, store).text == HPRIM
    spoofed = b"From: dr.durand@medical44.apicrypt.org\r\nContent-Type: text/plain\r\n\r\n" + armored
    decoded = CODEC.decode(spoofed, store)
    assert decoded.sender == "labo.bio"
    assert any("From address differs" in note for note in decoded.notes)


# --- key years and key files -------------------------------------------------------------
def test_year_keys_are_named_master_yy(tmp_path: Path) -> None:
    folder = tmp_path / "k"
    for year in (2025, 2026):
        make_key_file(folder, "Master", year, 2048)
        make_key_file(folder, "labo.bio", year, 2048)
    assert sorted(p.name for p in folder.iterdir()) == ["Master.125", "Master.126", "labo.bio.125", "labo.bio.126"]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in folder.iterdir())
    store = ApicryptKeyStore(folder)
    assert store.years() == [2025, 2026]
    old = Apicrypt1Codec(clock=datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC))
    result = old.encode_text(b"x", "labo.bio", ["dr.martin"], store)
    assert KeyHeader(dearmor(result.message)[:HEADER_SIZE]).year == 2025
    assert old.decode(result.message, store).text == b"x"
    assert ApicryptKeyStore(folder).load("labo.bio", 2025).header.index_current > 0
    assert ApicryptKeyStore(folder).load("labo.bio", 2026).header.index_current == 0
    (folder / "Master.125").unlink()
    with pytest.raises(LegacyKeyError, match="'Master' and year 2025"):
        old.decode(result.message, store)
    with pytest.raises(LegacyKeyError, match=r"user 'Master' and year 2024 \(expected Master.124"):
        CODEC.encode_text(b"x", "labo.bio", ["dr.martin"], store, year=2024)
    make_key_file(folder, "Master", 2024, 2048)
    with pytest.raises(LegacyKeyError, match=r"user 'labo.bio' and year 2024 \(expected labo.bio.124"):
        CODEC.encode_text(b"x", "labo.bio", ["dr.martin"], store, year=2024)


def test_index_current_advances_and_is_persisted(store: ApicryptKeyStore, keydir: Path) -> None:
    text = b"abc" * 10
    first = CODEC.encode_text(text, "labo.bio", ["dr.martin"], store, year=YEAR)
    payload = len(text) + len(b"#DESTBEGIN#dr.martin,,#DESTEND#")
    master = ApicryptKeyStore(keydir).master(YEAR).header
    user = ApicryptKeyStore(keydir).load("labo.bio", YEAR).header
    assert (master.index_current, master.nb_crypt) == (payload, 1)
    assert (user.index_current, user.nb_crypt) == (HEADER_SIZE + payload, 1)
    sent = KeyHeader(dearmor(first.message)[:HEADER_SIZE])
    assert (sent.index_current, sent.nb_crypt) == (0, 1)  # the offset the stream started at
    second = CODEC.encode_text(text, "labo.bio", ["dr.martin"], store, year=YEAR)
    assert KeyHeader(dearmor(second.message)[:HEADER_SIZE]).index_current == HEADER_SIZE + payload
    assert [r.start for r in second.reservations] == [payload, HEADER_SIZE + payload]
    assert CODEC.decode(first.message, store).text == CODEC.decode(second.message, store).text == text
    assert sorted(p.name for p in keydir.iterdir() if p.name.endswith(".tmp")) == []
    assert stat.S_IMODE((keydir / "labo.bio.126").stat().st_mode) == 0o600


def test_key_wrap_is_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "k"
    make_key_file(folder, "Master", YEAR, 4096)
    make_key_file(folder, "labo.bio", YEAR, 1000)
    store = ApicryptKeyStore(folder)
    caplog.set_level(logging.WARNING, logger="gateway.legacy")
    results = [CODEC.encode_text(b"x" * 100, "labo.bio", ["dr.martin"], store, year=YEAR) for _ in range(3)]
    assert [r.wrapped for r in results] == [(), (), ("labo.bio.2026",)]
    assert [r.message for r in caplog.records if r.getMessage() == "legacy-key-wrapped"]
    assert "x" * 100 not in caplog.text
    assert CODEC.decode(results[2].message, store).text == b"x" * 100
    with pytest.raises(LegacyKeyError, match="would reuse key material within one message"):
        CODEC.encode_text(b"x" * 1000, "labo.bio", ["dr.martin"], store, year=YEAR)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_file_readable_by_others_is_refused(store: ApicryptKeyStore, keydir: Path, mode: int) -> None:
    encoded = CODEC.encode_text(b"x", "labo.bio", ["dr.martin"], store, year=YEAR).message
    os.chmod(keydir / "labo.bio.126", mode)
    with pytest.raises(KeyPermissionError, match=f"labo.bio.126 has permissions 0{mode:o}"):
        CODEC.decode(encoded, store)
    with pytest.raises(KeyPermissionError):
        CODEC.encode_text(b"x", "labo.bio", ["dr.martin"], store, year=YEAR)
    assert isinstance(KeyPermissionError("x"), PermanentError)


def test_symlinked_key_file_refused(store: ApicryptKeyStore, keydir: Path) -> None:
    encoded = CODEC.encode_text(b"x", "labo.bio", ["dr.martin"], store, year=YEAR).message
    (keydir / "labo.bio.126").rename(keydir / "elsewhere")
    (keydir / "labo.bio.126").symlink_to(keydir / "elsewhere")
    with pytest.raises(LegacyKeyError, match="refused"):
        CODEC.decode(encoded, store)


def test_make_key_file_never_overwrites(keydir: Path) -> None:
    with pytest.raises(LegacyKeyError, match="already exists"):
        make_key_file(keydir, "labo.bio", YEAR, 10)


# --- wrong keys, not for us, hostile headers ---------------------------------------------
def test_not_a_recipient(store: ApicryptKeyStore) -> None:
    encoded = CODEC.encode(body_only(), "labo.bio", ["dr.martin"], store, year=YEAR)
    with pytest.raises(NotForRecipient):
        CODEC.decode(encoded, store, recipient="dr.durand")
    with pytest.raises(NotForRecipient):
        CODEC.decode(encoded, ApicryptKeyStore(store.folder, identities=["dr.durand"]))
    assert CODEC.decode(encoded, ApicryptKeyStore(store.folder, identities=["dr.durand", "dr.martin"])).text


@pytest.mark.parametrize(("user", "size"), [("labo.bio", KEY_SIZE), ("labo.bio", 5000), ("Master", KEY_SIZE)])
def test_wrong_key_file(store: ApicryptKeyStore, keydir: Path, tmp_path: Path, user: str, size: int) -> None:
    encoded = CODEC.encode(body_only(), "labo.bio", ["dr.martin"], store, year=YEAR)
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    for name in ("Master", "labo.bio"):
        if name == user:
            make_key_file(other, name, YEAR, size)  # same name, other key material
        else:
            os.link(keydir / f"{name}.126", other / f"{name}.126")
    with pytest.raises(DecryptionFailed, match="does not decrypt|is not the one"):
        CODEC.decode(encoded, ApicryptKeyStore(other))


def test_missing_sender_key_names_user_and_year(store: ApicryptKeyStore, keydir: Path) -> None:
    encoded = CODEC.encode(body_only(), "labo.bio", ["dr.martin"], store, year=YEAR)
    (keydir / "labo.bio.126").unlink()
    with pytest.raises(LegacyKeyError, match="user 'labo.bio' and year 2026"):
        CODEC.decode(encoded, store)


def test_hostile_user_name_in_header_is_not_a_path(store: ApicryptKeyStore) -> None:
    header = KeyHeader.build("../../etc/x", YEAR, KEY_SIZE)
    outer = header.raw + bytes(HEADER_SIZE + 40)
    with pytest.raises(MalformedPayload, match="not a valid Apicrypt user name"):
        CODEC.decode(armor(outer).encode(), store)
    with pytest.raises(MalformedPayload):
        CODEC.encode_text(b"x", "labo.bio", ["dr,martin"], store, year=YEAR)


def test_garbage_between_markers(store: ApicryptKeyStore) -> None:
    with pytest.raises(ArmorError):
        CODEC.decode(b"#BINASCII1#\nthis is not armor at all\n#ENDBINASCII1#\n", store)
    with pytest.raises(MalformedPayload, match="shorter than the two"):
        CODEC.decode(armor(b"short").encode(), store)


def test_checksum_mismatch_in_a_mail(store: ApicryptKeyStore) -> None:
    encoded = CODEC.encode(body_only(), "labo.bio", ["dr.martin"], store, year=YEAR)
    head, _, tail = encoded.rpartition(b"\r\n#ENDBINASCII1#")
    tampered = head[:-1] + (b"0" if head[-1:] != b"0" else b"1") + b"\r\n#ENDBINASCII1#" + tail
    with pytest.raises(ChecksumMismatch) as info:
        CODEC.decode(tampered, store)
    assert info.value.line > 2 and info.value.status.startswith("5.")


def test_fuzz_only_typed_errors(store: ApicryptKeyStore) -> None:
    rng = random.Random(20260107)
    armored = CODEC.encode_text(HPRIM * 3, "labo.bio", ["dr.martin", "dr.durand"], store, year=YEAR).message
    mail = CODEC.encode(with_attachments(("a.hpr", HPRIM)), "labo.bio", ["dr.martin"], store, year=YEAR)
    alphabet = b"0123456789ABCDEFGHIJKLMNPQRSTUVXYZabcdefhijklmpqrstuvwxyz$*+-()!OWgno#\r\n \xe9\x00"
    outcomes: dict[str, int] = {}
    for round_ in range(600):
        data = bytearray(armored if round_ % 3 else mail)
        for _ in range(rng.randint(1, 4)):
            if not data:
                break
            op, at = rng.randrange(7), rng.randrange(len(data))
            if op == 0:
                data[at] = rng.choice(alphabet)
            elif op == 1:
                del data[at]
            elif op == 2:
                data.insert(at, rng.choice(alphabet))
            elif op == 3:
                del data[at:]
            elif op == 4:
                line_start = data.rfind(b"\n", 0, at) + 1
                line_end = data.find(b"\n", at)
                del data[line_start:line_end + 1 if line_end >= 0 else len(data)]
            elif op == 5:
                data[at:at] = data[at:at + rng.randint(1, 80)]
            else:
                data[at] = data[at] ^ (1 << rng.randrange(8))
        try:
            CODEC.decode(bytes(data), store)
            outcomes["decoded"] = outcomes.get("decoded", 0) + 1
        except ACCEPTED as exc:
            assert isinstance(exc, GatewayError) and str(exc)
            outcomes[type(exc).__name__] = outcomes.get(type(exc).__name__, 0) + 1
    assert outcomes.get("ArmorError", 0) > 100 and outcomes.get("ChecksumMismatch", 0) > 10


# --- known answer: an independent encryption written from the spec -----------------------
def spec_key_file(path: Path, user: bytes, year: int, material: bytes, index_current: int, nb_crypt: int) -> None:
    header = (struct.pack(">III", 1, year, 4) + b"1000".ljust(32, b"\0") + struct.pack(">I", len(user))
              + user.ljust(40, b"\0") + struct.pack(">III", len(material), index_current, nb_crypt)
              + bytes(range(124)))  # reserved: opaque, must be preserved
    path.write_bytes(header + material)
    path.chmod(0o600)


def spec_stream(material: bytes, start: int, n: int) -> bytes:
    return bytes(material[(start + i) % len(material)] for i in range(n))


def test_known_answer_against_spec_reimplementation(tmp_path: Path) -> None:
    from tests.legacy.test_armor import spec_armor

    folder = tmp_path / "kat"
    folder.mkdir(mode=0o700)
    master_key = bytes((7 * i + 3) % 256 for i in range(700))
    user_key = bytes((11 * i + 5) % 253 for i in range(900))
    spec_key_file(folder / "Master.126", b"Master", 2026, master_key, 650, 41)  # wraps inside this message
    spec_key_file(folder / "dr.kat.126", b"dr.kat", 2026, user_key, 10, 7)
    text = "Glycémie 5,2 mmol/l\r\n".encode("latin-1")
    payload = text + b"#DESTBEGIN#" + b"dr.a,dr.b" + b",," + b"#DESTEND#"
    master_header = (folder / "Master.126").read_bytes()[:224]
    master_sent = master_header[:96] + struct.pack(">I", 42) + master_header[100:]
    inner = master_sent + bytes(p ^ k for p, k in zip(payload, spec_stream(master_key, 650, len(payload)),
                                                          strict=True))
    user_header = (folder / "dr.kat.126").read_bytes()[:224]
    user_sent = user_header[:96] + struct.pack(">I", 8) + user_header[100:]
    outer = user_sent + bytes(p ^ k for p, k in zip(inner, spec_stream(user_key, 10, len(inner)), strict=True))

    result = CODEC.encode_text(text, "dr.kat", ["dr.a", "dr.b"], ApicryptKeyStore(folder), year=2026)
    assert result.message.decode("ascii") == spec_armor(outer)
    assert result.wrapped == ("Master.2026",)
    stored = (folder / "Master.126").read_bytes()
    assert struct.unpack(">III", stored[88:100]) == (700, (650 + len(payload)) % 700, 42)
    assert stored[100:224] == bytes(range(124)) and stored[224:] == master_key
    stored = (folder / "dr.kat.126").read_bytes()
    assert struct.unpack(">III", stored[88:100]) == (900, 10 + len(inner), 8)
    decoded = CODEC.decode(spec_armor(outer).encode(), ApicryptKeyStore(folder), recipient="dr.b")
    assert (decoded.text, decoded.sender, decoded.recipients) == (text, "dr.kat", ("dr.a", "dr.b"))


def test_typed_errors_are_gateway_errors() -> None:
    assert issubclass(ArmorError, MalformedInput) and issubclass(ChecksumMismatch, ArmorError)
    for error in ACCEPTED:
        assert issubclass(error, PermanentError)


def test_truncated_armor_in_a_mail_is_detected_and_located(store: ApicryptKeyStore) -> None:
    encoded = CODEC.encode(body_only(), "labo.bio", ["dr.martin"], store, year=YEAR)
    truncated = encoded[:len(encoded) * 2 // 3]
    assert CODEC.detect(truncated)
    with pytest.raises(ArmorError) as info:
        CODEC.decode(truncated, store)
    assert info.value.kind == "end-marker" and info.value.line > 1


def test_concurrent_encoders_never_share_key_stream(store: ApicryptKeyStore) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> tuple[int, int]:
        result = CODEC.encode_text(b"r" * (10 + i), "labo.bio", ["dr.martin"], store, year=YEAR)
        user = result.reservations[1]
        return user.start, user.length

    with ThreadPoolExecutor(max_workers=8) as pool:
        spans = sorted(pool.map(one, range(24)))
    for (start, length), (following, _) in zip(spans, spans[1:], strict=False):
        assert start + length == following  # contiguous, never overlapping
    assert store.load("labo.bio", YEAR).header.index_current == spans[-1][0] + spans[-1][1]
    assert store.load("labo.bio", YEAR).header.nb_crypt == 24


def test_attachment_armored_by_another_sender_is_refused(store: ApicryptKeyStore) -> None:
    body = CODEC.encode_text(b"body", "labo.bio", ["dr.martin"], store, year=YEAR).message
    other = CODEC.encode_text(b"forged", "dr.durand", ["dr.martin"], store, year=YEAR).message
    mail = (b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n' + body
            + b'\r\n--b\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename="f.txt"\r\n\r\n'
            + other + b"\r\n--b--\r\n")
    with pytest.raises(MalformedPayload, match="part 2 names another sender"):
        CODEC.decode(mail, store)


# --- what the bridge writes: the original header inside, neutral names outside (issue 11, item 3) ----
def _bridge_mail(subject: bytes = b"=?utf-8?q?R=C3=A9sultat_de_Mme_DUPONT?=") -> bytes:
    return (b"From: Labo BIO <labo.bio@labo.example>\r\nTo: dr.martin@medical44.apicrypt.org\r\n"
            b"Date: Wed, 25 Nov 2026 09:00:00 +0100\r\nSubject: " + subject + b"\r\n"
            b"X-Msgw-Bridged: to=apicrypt1; smime-verification=pass; signer=\"TEST\"\r\n"
            + with_attachments(("CR_2026_DUPONT.pdf", b"%PDF-1.4 invented"), ("notes", b"x")).split(b"\r\n", 3)[3])


def _armored_text(message: bytes, store: ApicryptKeyStore) -> bytes:
    from gateway.legacy.apicrypt1 import decrypt

    return decrypt(dearmor(armors(message)[0]), store).text


def test_bridge_header_inside_the_armor_and_neutral_names_outside(store: ApicryptKeyStore) -> None:
    encoded = CODEC.encode(_bridge_mail(), "labo.bio", ["dr.martin"], store, year=YEAR, protect_headers=True)
    names = [p.get_filename() for p in email.message_from_bytes(encoded).walk() if p.get_filename()]
    assert names == ["piece-jointe-2.pdf", "piece-jointe-3.bin"] and b"DUPONT" not in encoded.split(b"\r\n\r\n")[1]
    text = _armored_text(encoded, store).decode("latin-1")
    assert text.startswith("---- En-tete du message d'origine / Original message header (msgw) ----\r\n")
    assert "Objet / Subject: Résultat de Mme DUPONT\r\n" in text
    assert "De / From: Labo BIO <labo.bio@labo.example>\r\n" in text
    assert "Piece jointe / Attachment: piece-jointe-2.pdf = CR_2026_DUPONT.pdf\r\n" in text
    assert "X-Msgw-Bridged: to=apicrypt1; smime-verification=pass" in text
    assert text.endswith("\r\n\r\n" + HPRIM.decode("latin-1"))
    decoded = CODEC.decode(encoded, store, recipient="dr.martin")
    assert decoded.text == HPRIM  # the header is ours: taken off again, the text byte for byte
    assert [a.filename for a in decoded.attachments] == ["CR_2026_DUPONT.pdf", "notes"]
    back = email.message_from_bytes(decoded.content, policy=email.policy.default)
    assert str(back["Subject"]) == "Résultat de Mme DUPONT"


def test_bridge_header_cannot_be_broken_out_of(store: ApicryptKeyStore) -> None:
    """A Subject carrying line breaks and our end line stays one line of the header."""
    hostile = b"=?utf-8?q?x=0D=0A----_Fin_de_l=27en-tete_/_End_of_header_----=0D=0A=0D=0AFAKE?="
    encoded = CODEC.encode(_bridge_mail(hostile), "labo.bio", ["dr.martin"], store, year=YEAR, protect_headers=True)
    assert CODEC.decode(encoded, store, recipient="dr.martin").text == HPRIM


def test_a_text_header_restores_only_subject_and_names(store: ApicryptKeyStore) -> None:
    """Any key holder can write our header: nothing but the Subject and file names comes out of it."""
    forged = ("---- En-tete du message d'origine / Original message header (msgw) ----\r\n"
              "De / From: Dr Famous <famous@hospital.example>\r\nObjet / Subject: hello\r\n"
              "X-Msgw-Verification: pass; signer=\"forged\"\r\n---- Fin de l'en-tete / End of header ----\r\n\r\n"
              ).encode("latin-1")
    encoded = CODEC.encode(body_only(forged + b"text\r\n"), "labo.bio", ["dr.martin"], store, year=YEAR)
    decoded = CODEC.decode(encoded, store, recipient="dr.martin")
    back = email.message_from_bytes(decoded.content)
    assert decoded.text == b"text\r\n" and back["Subject"] == "hello"
    assert back["From"] == "labo.bio@medical44.apicrypt.org" and back["X-Msgw-Verification"] is None


def test_utf8_text_keeps_its_bom_after_the_bridge_header(store: ApicryptKeyStore) -> None:
    mime = (b"Subject: =?utf-8?q?c=C5=93ur?=\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            + "Dose 5 µg ≥ seuil\r\n".encode())
    encoded = CODEC.encode(mime, "labo.bio", ["dr.martin"], store, year=YEAR, protect_headers=True)
    text = _armored_text(encoded, store)
    assert text.startswith(b"\xef\xbb\xbf----") and "Objet / Subject: cœur".encode() in text
    decoded = CODEC.decode(encoded, store)
    assert decoded.text == b"\xef\xbb\xbf" + "Dose 5 µg ≥ seuil\r\n".encode()


@pytest.mark.parametrize("newline", ["\n", "\r", "\x0b", "\x85"])
def test_a_restored_subject_with_a_bare_line_break_stays_one_header(store: ApicryptKeyStore, newline: str) -> None:
    """The text header is written by any key holder: a Subject line carrying a bare line break
    is collapsed to one line (it raised an untyped HeaderParseError, and the message went to
    quarantine), and nothing after the break becomes a header of its own."""
    forged = ("---- En-tete du message d'origine / Original message header (msgw) ----\r\n"
              f"Objet / Subject: hello{newline}X-Evil: 1\r\n---- Fin de l'en-tete / End of header ----\r\n\r\n"
              ).encode("latin-1")
    encoded = CODEC.encode(body_only(forged + b"text\r\n"), "labo.bio", ["dr.martin"], store, year=YEAR)
    decoded = CODEC.decode(encoded, store, recipient="dr.martin")
    back = email.message_from_bytes(decoded.content)
    assert decoded.text == b"text\r\n" and back["X-Evil"] is None
    assert " ".join(str(back["Subject"]).split()) == "hello X-Evil: 1"
