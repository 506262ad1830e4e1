"""The byte pre-scan (`gateway.legacy.prescan`, each codec's `rules_out`) never rules out a message
the full detector (the codec's `detect` on the stdlib parse) accepts: generated armour in every
shape the detector reads (transfer encodings in any case, folded and duplicated fields, CR/LF/CRLF
line ends, nesting, forwarded messages, PGP/MIME with RFC 2231 parameters), the samples, and
random mutations; and it does rule out the plain messages it is for (issue 15)."""

from __future__ import annotations

import base64
import binascii
import os
import quopri
import random
from pathlib import Path

import pytest

from gateway.legacy import codec as legacy_codec
from gateway.legacy import prescan
from gateway.legacy.apicrypt1_format import BEGIN_MARKER
from gateway.legacy.openpgp import BEGIN_MESSAGE
from gateway.rawmime import MessageView, parse_message

ARMOR = (BEGIN_MARKER + "\r\n" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345\r\n" * 3 + "#ENDBINASCII1#\r\n").encode()
PGP = BEGIN_MESSAGE + b"\r\n\r\nhQEMA1234567890ABCDEF\r\n=abcd\r\n-----END PGP MESSAGE-----\r\n"
HEAD = b"From: lab@example.test\r\nTo: doc@example.test\r\nSubject: x\r\nMessage-ID: <a@b>\r\nMIME-Version: 1.0\r\n"


def _codecs() -> list[legacy_codec.LegacyCodec]:
    legacy_codec._discover()
    return [legacy_codec.get(name) for name in ("apicrypt1", "openpgp")]


def _encoded(body: bytes, cte: str) -> bytes:
    kind = cte.strip().lower()
    if kind == "base64":
        return base64.encodebytes(body).replace(b"\n", b"\r\n")
    if kind == "quoted-printable":
        encoded = quopri.encodestring(body, quotetabs=True).replace(b"#", b"=23").replace(b"-", b"=2D")
        return encoded.replace(b"B", b"=42")  # nothing of a marker left as it is
    if "uu" in kind:
        return b"begin 644 x\r\n" + b"".join(binascii.b2a_uu(body[i:i + 45]) for i in range(0, len(body), 45)) \
            + b"`\r\nend\r\n"
    return body


def _leaf(body: bytes, cte: str | None, ctype: str = "text/plain") -> bytes:
    head = b"Content-Type: " + ctype.encode() + b"\r\n"
    if cte is not None:
        head += b"Content-Transfer-Encoding: " + cte.encode() + b"\r\n"
    return head + b"\r\n" + _encoded(body, cte or "")


def _multipart(parts: list[bytes], subtype: str = "mixed", params: str = "", boundary: str = "bb") -> bytes:
    b = boundary.encode()
    return (f'Content-Type: multipart/{subtype}; boundary="{boundary}"{params}\r\n\r\n'.encode()
            + b"--" + b + b"\r\n" + (b"\r\n--" + b + b"\r\n").join(parts) + b"\r\n--" + b + b"--\r\n")


CTES = [None, "7bit", "8bit", "base64", "BASE64", " Base64 ", "quoted-printable", "Quoted-Printable", "x-uuencode",
        "uuencode", "UUE", "x-uue"]


def _cases() -> dict[str, bytes]:
    cases: dict[str, bytes] = {}
    for marker_name, marker in (("apicrypt", ARMOR), ("pgp", PGP)):
        for cte in CTES:
            for lead in (b"", b"\r\n\r\n  \t", "\xa0".encode("latin-1")):
                body = lead + marker
                cases[f"{marker_name}-single-{cte}-{lead!r}"] = HEAD + _leaf(body, cte)
                cases[f"{marker_name}-mixed-{cte}-{lead!r}"] = HEAD + _multipart(
                    [_leaf(b"Bonjour\r\n", None), _leaf(body, cte)])
                cases[f"{marker_name}-nested-{cte}-{lead!r}"] = HEAD + _multipart(
                    [_multipart([_leaf(b"<p>x</p>", None, "text/html"), _leaf(body, cte)], "alternative",
                                boundary="in"),
                     _leaf(b"%PDF", "base64", "application/pdf")])
                cases[f"{marker_name}-forwarded-{cte}-{lead!r}"] = HEAD + _multipart(
                    [_leaf(b"fwd\r\n", None), b"Content-Type: message/rfc822\r\n\r\n" + HEAD + _leaf(body, cte)])
        cases[f"{marker_name}-bare"] = marker
        cases[f"{marker_name}-bare-after-blanks"] = b"\r\n \t" + marker
        cases[f"{marker_name}-no-content-type"] = HEAD + b"\r\n" + marker
        cases[f"{marker_name}-folded-cte"] = (HEAD + b"Content-Type: text/plain\r\nContent-Transfer-Encoding:\r\n"
                                              b" base64\r\n\r\n" + _encoded(marker, "base64"))
        cases[f"{marker_name}-duplicate-cte"] = (
            HEAD + b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64"
            b"\r\nContent-Transfer-Encoding: 7bit\r\n\r\n" + _encoded(marker, "base64"))
        cases[f"{marker_name}-8bit-header"] = HEAD.replace(b"Subject: x", "Subject: é".encode()) + _leaf(marker, "8bit")
        for ending in (b"\n", b"\r"):
            cases[f"{marker_name}-line-ends-{ending!r}"] = (HEAD + _leaf(marker, "base64")).replace(b"\r\n", ending)
            cases[f"{marker_name}-multipart-line-ends-{ending!r}"] = (
                HEAD + _multipart([_leaf(b"x", None), _leaf(marker, "base64")])).replace(b"\r\n", ending)
        cases[f"{marker_name}-in-a-header-only"] = (HEAD + b"X-Note: " + marker.split(b"\r\n")[0] + b"\r\n"
                                                    + _leaf(b"rien\r\n", None))
        cases[f"{marker_name}-split-over-lines"] = HEAD + _leaf(marker[:5] + b"\r\n" + marker[5:], None)
        cases[f"{marker_name}-no-empty-line"] = HEAD + b"Content-Type: text/plain\r\nnot a header\r\n" + marker
    protocols = ['; protocol="application/pgp-encrypted"', "; protocol=APPLICATION/PGP-ENCRYPTED",
                 "; protocol*=us-ascii''application%2F%70gp-encrypted",
                 '; protocol*0="application/p"; protocol*1="gp-encrypted"']
    for n, params in enumerate(protocols):
        for subtype in ("encrypted", "signed"):
            proto = params.replace("encrypted", "signature") if subtype == "signed" else params
            cases[f"pgp-mime-{subtype}-{n}"] = HEAD + _multipart(
                [_leaf(b"Version: 1\r\n", None, "application/pgp-encrypted"),
                 _leaf(b"opaque\r\n", None, "application/octet-stream")], subtype, proto)
            cases[f"pgp-mime-{subtype}-{n}-upper"] = cases[f"pgp-mime-{subtype}-{n}"].replace(
                b"multipart/", b"MultiPart/")
    # what the pre-scan is for: ordinary messages, 7-bit and 8-bit, single part or not
    cases["plain-7bit"] = HEAD + _leaf(b"HbA1c 6,1 % - resultat\r\n" * 50, "7bit")
    cases["plain-8bit"] = HEAD + _leaf("HbA1c 6,1 % — résultat\r\n".encode() * 50, "8bit")
    cases["plain-multipart"] = HEAD + _multipart([_leaf(b"texte\r\n", None), _leaf(b"<p>x</p>", None, "text/html")])
    cases["smime-signed"] = HEAD + _multipart(
        [_leaf(b"texte\r\n", None), _leaf(b"MIIB", None, "application/pkcs7-signature")],
        "signed", '; protocol="application/pkcs7-signature"; micalg=sha-256')
    return cases


CASES = _cases()


def _detects(codec: legacy_codec.LegacyCodec, data: bytes) -> bool:
    """The full detector: the codec's `detect` on the bytes, with the stdlib parse of them."""
    try:
        return bool(codec.detect(data)) or bool(codec.detect(parse_message(data)))
    except Exception:  # noqa: BLE001 - detect_codec treats a failing detect as False
        return False


def _check(data: bytes) -> None:
    for codec in _codecs():
        if _detects(codec, data):
            assert not codec.rules_out(data), (codec.name, data[:300])  # type: ignore[attr-defined]
    # the registry's answer before the pre-scan: every codec asked, each with its own parse
    assert legacy_codec.detect_codec(MessageView(data)) is legacy_codec._first_detecting(data)


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_prescan_never_rules_out_what_the_detector_accepts(name: str) -> None:
    _check(CASES[name])


def test_the_generated_armour_is_detected_at_all() -> None:
    """The cases are meaningful: most armoured shapes are detected by the full detector."""
    detected = [n for n, data in CASES.items() if any(_detects(c, data) for c in _codecs())]
    assert len(detected) > len(CASES) // 2
    assert any("base64" in n.lower() for n in detected) and any("quoted" in n.lower() for n in detected)
    assert any("uu" in n.lower() for n in detected) and any(n.startswith("pgp-mime") for n in detected)


@pytest.mark.parametrize("name", ["plain-7bit", "plain-8bit", "plain-multipart"])
def test_ordinary_messages_are_ruled_out_without_a_parse(name: str) -> None:
    for codec in _codecs():
        assert codec.rules_out(CASES[name]), codec.name  # type: ignore[attr-defined]


def _corpus() -> list[Path]:
    root = Path(os.environ.get("MSGW_CORPUS", "/work/shared/samples"))
    return sorted(p for p in root.rglob("*") if p.is_file() and p.stat().st_size < 2_000_000)


def test_every_sample_and_its_armoured_variants() -> None:
    samples = _corpus()
    for path in samples:
        data = path.read_bytes()
        _check(data)
        cut = data.find(b"\r\n\r\n")
        if cut > 0:  # the armour as the sample's own body, and after its body
            _check(data[:cut + 4] + ARMOR)
            _check(data[:cut + 4] + PGP)
            _check(data + b"\r\n" + ARMOR)


def test_random_mutations() -> None:
    """Armoured messages cut, case-changed, re-ended and spliced at random places."""
    rng = random.Random(15)
    pool = [v for k, v in CASES.items() if not k.startswith("plain")]
    for _ in range(3000):
        data = bytearray(rng.choice(pool))
        for _ in range(rng.randint(1, 3)):
            op = rng.randrange(5)
            pos = rng.randrange(len(data) + 1)
            if op == 0:
                data[pos:pos] = rng.choice([b"\r\n", b"\n", b"\r", b" ", b"\r\n\r\n", b";", b"*", b"--bb\r\n"])
            elif op == 1 and data:
                del data[pos:pos + rng.randint(1, 8)]
            elif op == 2:
                data[pos:pos + 6] = bytes(data[pos:pos + 6]).swapcase()
            elif op == 3:
                data[pos:pos] = rng.choice([ARMOR, PGP, b"Content-Transfer-Encoding: base64\r\n", b"\xe9\xff"])
            else:
                data[pos:pos] = rng.choice([b"multipart/signed", b"message/rfc822", b"text/plain", b"pgp"])
        _check(bytes(data))


def test_top_header_block_holds_every_header_line_the_parser_reads() -> None:
    for data in [*CASES.values(), b"", b"\r\n", b"A: b", b"A: b\r\rC: d", b"A: b\n\r\nC: d"]:
        head = prescan.top_header_block(data)
        parsed = parse_message(data)
        for name, value in parsed.items():
            assert name.encode("ascii", "surrogateescape") in head
            first = str(value).split("\r")[0].split("\n")[0].strip()
            if first.isascii():
                assert first.encode() in head, (name, value)


def test_windowed_lowercase_search_finds_words_across_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prescan, "_WINDOW", 8)
    data = HEAD + _multipart([_leaf(b"x" * 7, None), b"Content-Transfer-Encoding: BaSe64\r\n\r\nAAAA"])
    assert not prescan.literal_leaves(data)
    for shift in range(16):
        assert not prescan.literal_leaves(b"message/\r\n\r\n" + b"y" * shift + b"Quoted-Printable")
    assert prescan.literal_leaves(b"Content-Type: message/rfc822\r\n\r\n" + b"z" * 40)
