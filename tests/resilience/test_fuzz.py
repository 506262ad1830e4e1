"""Hostile input, property-based (hypothesis): every reader of outside data — MIME and S/MIME
unwrapping, CMS (verify, decrypt), HPRIM, HL7 v2, CDA, IHE XDM, the Apicrypt armor and
ciphertext, and the configuration (parsed dicts and TOML text) — either returns or raises one
of our typed errors (`GatewayError`), and never takes long. Inputs are valid samples mutated by
hypothesis (so it shrinks failures to a small reproducer) plus raw bytes.

Plus the targeted cases: zip bombs in XDM, billion laughs and external entities in CDA."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import time
import tomllib
import zipfile
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import load_config, parse_config
from gateway.errors import GatewayError
from gateway.intake.bundle import SubmittedFile, bundle_files
from gateway.intake.wrap import notice_message, payload_message
from gateway.legacy import apicrypt1
from gateway.legacy.apicrypt1_format import armor, dearmor
from gateway.legacy.keystore import ApicryptKeyStore, make_key_file
from gateway.routing.cda import read_cda
from gateway.routing.hl7 import read_hl7
from gateway.routing.hprim import read_hprim
from gateway.routing.model import UnsafePayload
from gateway.routing.payload import read_payload
from gateway.routing.sidecar import read_sidecar
from gateway.routing.xdm import XdmDocument, build_xdm, read_xdm
from gateway.smime import mime
from gateway.smime.cms_decrypt import decrypt_content
from gateway.smime.cms_verify import check_signed_data
from gateway.smime.cmsutil import parse_content_info
from gateway.smime.engine import Verifier, encrypt_message, sign_message, unwrap_message
from gateway.smime.revocation import CrlSource
from gateway.smime.softkeys import SoftKey, load_key
from gateway.smime.trust import TrustStore
from tests.e2e.harness import write_config
from tests.resilience.conftest import _REPORT, SCALE
from tests.routing_payload import fixtures as fx
from tests.smime.support import MESSAGE, shared_pki

HANG_LIMIT = 5.0  # seconds for one input: far above any legitimate parse of these small inputs
FUZZ = settings(max_examples=800 * SCALE, deadline=None, database=None, derandomize=SCALE == 1,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example])
BIG = settings(FUZZ, max_examples=1500 * SCALE)
SPECIALS = [b"\r\n", b"\n", b"\r", b"--", b"\r\n--", b"boundary=", b"Content-Type: multipart/mixed; boundary=x\r\n",
            b"\x00", b"\xff", b"\x30\x80", b"\x30\x82\xff\xff", b"\xa0\x80", b"\x00\x00", b"|", b"^~\\&", b"MSH|",
            b"H|", b"<", b"</", b"<!DOCTYPE x [<!ENTITY a 'b'>]>", b"&a;", b"PK\x03\x04", b"#BINASCII1#",
            b"#ENDBINASCII1#", b"=?utf-8?b?", b"base64", b"\t", b" ", b"=\r\n", b"\x0b", b"\x1c"]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed with a few random edits (flip, delete, insert a special, truncate, duplicate a slice)."""
    buf = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.integers(0, 5))
        pos = draw(st.integers(0, len(buf)))
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] = draw(st.integers(0, 255))
        elif op == 1:
            del buf[pos:pos + draw(st.integers(1, 64))]
        elif op == 2:
            buf[pos:pos] = draw(st.sampled_from(SPECIALS))
        elif op == 3:
            del buf[pos:]
        elif op == 4 and buf:
            start = draw(st.integers(0, len(buf) - 1))
            buf[pos:pos] = buf[start:start + draw(st.integers(1, 200))]
        else:
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=16))
    return bytes(buf)


def inputs(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(mutated(seeds), mutated(seeds), mutated(seeds), st.binary(max_size=2048))


#: Bugs found by this suite in code it may not change (gateway/smime/ belongs to the lead's area
#: of review): each is reported, has a strict-xfail reproducer below, and is tolerated here by its
#: exact signature only, so that the rest of the fuzzing stays meaningful.
KNOWN_BUGS: dict[tuple[str, str, str], str] = {}  # empty: the one found (8-bit CTE in mime._decode_body) is fixed


def _known(exc: BaseException) -> str | None:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return None
    frame = f"{Path(tb.tb_frame.f_code.co_filename).stem}.{tb.tb_frame.f_code.co_name}"
    return KNOWN_BUGS.get((frame, type(exc).__name__, str(exc)))


def typed_or_nothing(fn: Callable[[], object], target: str = "") -> None:
    """Run `fn`: a return or a GatewayError is fine; anything else fails; so does taking too long."""
    started = time.monotonic()
    if target:
        _REPORT.inputs[target] += 1
    try:
        fn()
    except GatewayError:
        pass
    except Exception as exc:
        bug = _known(exc)
        if bug is None:
            raise
        _REPORT.known[bug] += 1
    elapsed = time.monotonic() - started
    assert elapsed < HANG_LIMIT, f"one input took {elapsed:.1f}s"


# -- S/MIME and CMS ----------------------------------------------------------------------------
class SmimeKit:
    def __init__(self) -> None:
        pki = shared_pki().pki
        self.sign_key: SoftKey = load_key(pki["person_sign"].key_path, pki["person_sign"].cert_path,
                                          pki["person_sign"].chain_path)
        self.decrypt_key: SoftKey = load_key(pki["org_encrypt"].key_path, pki["org_encrypt"].cert_path)
        self.verifier = Verifier(TrustStore.from_directory(pki.trust_dir), CrlSource(files=pki.crl_paths))
        signed = asyncio.run(sign_message(MESSAGE, self.sign_key))
        opaque = asyncio.run(sign_message(MESSAGE, self.sign_key, opaque=True))
        enveloped = encrypt_message(signed, [self.decrypt_key.certificate])
        gcm = encrypt_message(MESSAGE, [self.decrypt_key.certificate], cipher="aes256-gcm",
                              key_transport="rsa-oaep", recipient_id="ski")
        self.messages = [MESSAGE, signed, opaque, enveloped, gcm,
                         b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: message/rfc822\r\n\r\n"
                         + MESSAGE + b"\r\n--x--\r\n"]
        self.signed_der = [mime.classify(signed).der, mime.classify(opaque).der]
        self.signed_content = mime.classify(signed).signed_content
        self.enveloped_der = [mime.classify(enveloped).der, mime.classify(gcm).der]


@cache
def smime_kit() -> SmimeKit:
    return SmimeKit()


@BIG
@given(data=st.data())
def test_mime_and_smime_unwrap_never_crash(data: st.DataObject) -> None:
    kit = smime_kit()
    raw = data.draw(inputs(kit.messages))

    async def unwrap() -> None:
        await unwrap_message(raw, keys=[kit.decrypt_key], verifier=kit.verifier)

    typed_or_nothing(lambda: mime.classify(raw), "MIME")
    typed_or_nothing(lambda: mime.content_entity(raw))
    typed_or_nothing(lambda: asyncio.run(unwrap()))


def test_8bit_transfer_encoding_header_in_signature_part() -> None:
    """Found by the fuzzer: compat32 returns a Header object for an 8-bit header value."""
    raw = (b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256; '
           b'boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b\r\n'
           b"Content-Type: application/pkcs7-signature\r\nContent-Transfer-Encoding: \x80base64\r\n\r\n"
           b"MIIB\r\n--b--\r\n")
    typed_or_nothing(lambda: mime.classify(raw))


@FUZZ
@given(data=st.data())
def test_cms_signed_data_never_crash(data: st.DataObject) -> None:
    kit = smime_kit()
    der = data.draw(inputs(kit.signed_der))
    detached = data.draw(st.sampled_from([None, kit.signed_content]))
    typed_or_nothing(lambda: parse_content_info(der))
    typed_or_nothing(lambda: check_signed_data(der, detached), "CMS signed")


@FUZZ
@given(data=st.data())
def test_cms_enveloped_data_never_crash(data: st.DataObject) -> None:
    kit = smime_kit()
    der = data.draw(inputs(kit.enveloped_der))
    typed_or_nothing(lambda: asyncio.run(decrypt_content(der, [kit.decrypt_key])), "CMS enveloped")


# -- payload readers -------------------------------------------------------------------------
PDF = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"


@cache
def payload_seeds() -> dict[str, list[bytes]]:
    cda = fx.cda()
    now = dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.UTC)
    xdm = build_xdm([XdmDocument(cda, read_cda(cda))], source_id="1.2.250.1.999.1", now=now)
    return {
        "hprim": [fx.hprim_net(), fx.hprim_net("^~\\&", encoding="utf-8"), fx.hprim_medecin(),
                  fx.hprim_medecin(two_reports=True, encoding="utf-8")],
        "hl7": [fx.oru(), fx.oru(cda_bytes=cda), fx.mdm(), fx.mdm(trigger="T10", parent="P1")],
        "cda": [cda, fx.cda(version=2)],
        "xdm": [xdm],
        "sidecar": [b'{"sidecar": 1, "recipients": [{"rpps": "19900000033"}, {"adeli": "991234567", "name": "Dr X"},'
                    b' {"idnat": "819900000011"}, {"lab_code": "D1"}, {"address": "a@b.test"}],'
                    b' "document_id": "X-1", "document_type": {"code": "11502-2", "system": "LOINC", "label": "CR"},'
                    b' "title": "T", "created": "2026-11-25T09:30:00+01:00", "author": {"name": "Labo"},'
                    b' "replaces": "X-0", "cancels": false}'],
    }


@FUZZ
@given(data=st.data())
def test_hprim_reader_never_crash(data: st.DataObject) -> None:
    raw = data.draw(inputs(payload_seeds()["hprim"]))
    typed_or_nothing(lambda: read_hprim(raw), "HPRIM")
    typed_or_nothing(lambda: read_payload(raw, "result.hpr"))


@FUZZ
@given(data=st.data())
def test_hl7_reader_never_crash(data: st.DataObject) -> None:
    raw = data.draw(inputs(payload_seeds()["hl7"]))
    typed_or_nothing(lambda: read_hl7(raw), "HL7")
    typed_or_nothing(lambda: read_payload(raw))


@FUZZ
@given(data=st.data())
def test_cda_reader_never_crash(data: st.DataObject) -> None:
    raw = data.draw(inputs(payload_seeds()["cda"]))
    typed_or_nothing(lambda: read_cda(raw), "CDA")
    typed_or_nothing(lambda: read_payload(raw, "doc.xml"))


@FUZZ
@given(data=st.data())
def test_xdm_reader_never_crash(data: st.DataObject) -> None:
    raw = data.draw(inputs(payload_seeds()["xdm"]))
    typed_or_nothing(lambda: read_xdm(raw), "XDM")
    typed_or_nothing(lambda: read_payload(raw, "package.zip"))


@FUZZ
@given(data=st.data())
def test_pdf_sidecar_reader_never_crash(data: st.DataObject) -> None:
    raw = data.draw(inputs(payload_seeds()["sidecar"]))
    typed_or_nothing(lambda: read_sidecar(raw), "PDF sidecar")

    def route() -> None:  # what the reader accepts must also build the outgoing message
        b = bundle_files([SubmittedFile(raw, "x.json"), SubmittedFile(PDF, "x.pdf")])
        payload_message(b.data, b.info, sender="lis@labo.test", recipients=("dr@cabinet.test",), filename=b.filename,
                        now=dt.datetime(2026, 11, 25, tzinfo=dt.UTC), xdm=True, pdfs=b.pdfs)
        notice_message(["x"], b.info, sender="postmaster@labo.test", to="lis@labo.test",
                       now=dt.datetime(2026, 11, 25, tzinfo=dt.UTC))
    typed_or_nothing(route)


# -- legacy armor and ciphertext ---------------------------------------------------------------
@cache
def legacy_kit() -> tuple[ApicryptKeyStore, list[bytes]]:
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="msgw-resil-keys-"))
    for user in ("Master", "labo.bio", "dr.martin"):
        make_key_file(folder, user, 2026, 8192)
    store = ApicryptKeyStore(folder)
    outers = [apicrypt1.encrypt(b"TEST compte rendu\r\n" * n, "labo.bio", ["dr.martin"], store, 2026)[0]
              for n in (1, 20)]
    return store, outers


@BIG
@given(data=st.data())
def test_legacy_armor_and_ciphertext_never_crash(data: st.DataObject) -> None:
    store, outers = legacy_kit()
    text = data.draw(inputs([armor(o).encode() for o in outers] + [armor(b"").encode()]))
    typed_or_nothing(lambda: dearmor(text), "armor")
    typed_or_nothing(lambda: dearmor(text.decode("latin-1")))
    outer = data.draw(inputs(outers))
    typed_or_nothing(lambda: apicrypt1.decrypt(outer, store), "apicrypt")


@FUZZ
@given(payload=st.binary(max_size=4096))
def test_legacy_armor_round_trip(payload: bytes) -> None:
    assert dearmor(armor(payload)) == payload


# -- configuration -----------------------------------------------------------------------------
@cache
def config_seed() -> tuple[Path, str, dict[str, Any]]:
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="msgw-resil-config-"))
    setup = write_config(folder, sink_port=2525, relay_networks='["127.0.0.0/8"]')
    text = setup.config.read_text()
    return folder, text, tomllib.loads(text)


_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63), st.floats(allow_nan=True),
                     st.text(max_size=40), st.sampled_from(["1s", "-1s", "1e309s", "0", "50MB", "10.0.0.0/33",
                                                            "127.0.0.1", "::1", "", "../../etc/passwd", "none",
                                                            "required", "json", "DEBUG", "maildir", "lmtp"]),
                     st.datetimes(), st.dates(), st.times())
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                       max_leaves=12)


def _edit(draw: st.DrawFn, data: dict[str, Any], depth: int = 0) -> dict[str, Any]:
    out = dict(data)
    for key in list(out):
        choice = draw(st.integers(0, 9))
        if choice == 0:
            del out[key]
        elif choice == 1:
            out[key] = draw(_VALUES)
        elif choice in (2, 3) and isinstance(out[key], dict) and depth < 3:
            out[key] = _edit(draw, out[key], depth + 1)
    if draw(st.integers(0, 5)) == 0:
        out[draw(st.text(max_size=12))] = draw(_VALUES)
    return out


@st.composite
def config_dicts(draw: st.DrawFn) -> dict[str, Any]:
    return _edit(draw, config_seed()[2])


@FUZZ
@given(data=config_dicts())
def test_parse_config_on_generated_dicts(data: dict[str, Any]) -> None:
    folder = config_seed()[0]
    typed_or_nothing(lambda: parse_config(data, source="fuzz.toml", base=folder), "config dict")


@FUZZ
@given(data=st.data())
def test_load_config_on_generated_toml(data: st.DataObject) -> None:
    folder, text, _ = config_seed()
    raw = data.draw(inputs([text.encode()]))
    path = folder / "fuzz.toml"
    path.write_bytes(raw)
    typed_or_nothing(lambda: load_config(path), "config TOML")


# -- targeted hostile documents ----------------------------------------------------------------
def _zip(entries: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as zf:
        for name, content in entries.items():
            zf.writestr(name, content)
    return buf.getvalue()


def test_zip_bombs_in_xdm_are_refused() -> None:
    bombs = {
        "one huge entry (200 MiB of zeros)": _zip({"IHE_XDM/SUBSET01/DOC0001.XML": b"\0" * (200 * 1024 * 1024 + 1)}),
        "many entries": _zip({f"IHE_XDM/SUBSET01/DOC{i:04d}.XML": b"x" for i in range(500)}),
        "high ratio entry": _zip({"IHE_XDM/SUBSET01/METADATA.XML": b"A" * (20 * 1024 * 1024)}),
        "nested zip": _zip({"IHE_XDM/SUBSET01/DOC0001.ZIP": _zip({"a": b"\0" * (10 * 1024 * 1024)}),
                            "METADATA.XML": b"<x/>"}),
        "path traversal": _zip({"../../etc/passwd": b"root"}),
        "absolute path": _zip({"/etc/passwd": b"root"}),
    }
    # A forged header: declares a tiny size but inflates to much more.
    forged = bytearray(_zip({"IHE_XDM/SUBSET01/METADATA.XML": b"B" * (5 * 1024 * 1024)}))
    central = forged.rfind(b"PK\x01\x02")
    local = forged.find(b"PK\x03\x04")
    for at in (local + 22, central + 24):  # uncompressed size fields
        forged[at:at + 4] = (100).to_bytes(4, "little")
    bombs["lying size header"] = bytes(forged)
    outcomes = {}
    for name, data in bombs.items():
        started = time.monotonic()
        with pytest.raises(GatewayError) as err:
            read_xdm(data)
        assert time.monotonic() - started < HANG_LIMIT, name
        outcomes[name] = type(err.value).__name__
        with pytest.raises(GatewayError):
            read_payload(data, "package.zip")
    assert outcomes["one huge entry (200 MiB of zeros)"] == "UnsafePayload"
    assert outcomes["many entries"] == "UnsafePayload"
    assert outcomes["high ratio entry"] == "UnsafePayload"
    print(f"zip bombs: {outcomes}")


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&lol9;</title></ClinicalDocument>
"""


def test_xml_entity_expansion_and_external_entities_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-LOCAL-FILE")
    cda = fx.cda()
    docs = {
        "billion laughs": BILLION_LAUGHS,
        "external entity (file)": (b'<?xml version="1.0"?>\n<!DOCTYPE d [<!ENTITY x SYSTEM "file://'
                                   + str(secret).encode() + b'">]>\n'
                                   b'<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&x;</title></ClinicalDocument>'),
        "external entity (http)": (b'<?xml version="1.0"?>\n<!DOCTYPE d [<!ENTITY x SYSTEM "http://127.0.0.1:9/x">]>'
                                   b'<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&x;</title></ClinicalDocument>'),
        "parameter entity": (b'<?xml version="1.0"?>\n<!DOCTYPE d [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>'
                             b'<ClinicalDocument xmlns="urn:hl7-org:v3"/>'),
        "external DTD": (b'<?xml version="1.0"?>\n<!DOCTYPE ClinicalDocument SYSTEM "http://127.0.0.1:9/cda.dtd">'
                         b'<ClinicalDocument xmlns="urn:hl7-org:v3"/>'),
        "UTF-16 DOCTYPE": ('<?xml version="1.0" encoding="UTF-16"?>\n<!DOCTYPE d [<!ENTITY x SYSTEM "file://'
                           + str(secret) + '">]><ClinicalDocument xmlns="urn:hl7-org:v3"><title>&x;</title>'
                           '</ClinicalDocument>').encode("utf-16"),
        "XInclude": cda.replace(b"<title>", b'<title><xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="file://'
                                + str(secret).encode() + b'" parse="text"/>', 1),
        "deep nesting": b'<ClinicalDocument xmlns="urn:hl7-org:v3">' + b"<a>" * 100_000 + b"</a>" * 100_000
                        + b"</ClinicalDocument>",
    }
    outcomes = {}
    for name, data in docs.items():
        started = time.monotonic()
        try:
            info = read_cda(data)
            outcomes[name] = "read"
            assert "TOP-SECRET" not in repr(info), f"{name}: a local file was read into the document"
        except GatewayError as exc:
            outcomes[name] = type(exc).__name__
        assert time.monotonic() - started < HANG_LIMIT, name
        with pytest.raises(GatewayError) if outcomes[name] != "read" else _nothing():
            read_payload(data, "doc.xml")
    for name in ("billion laughs", "external entity (file)", "external entity (http)", "parameter entity",
                 "external DTD"):
        assert outcomes[name] == UnsafePayload.__name__, (name, outcomes[name])
    assert outcomes["UTF-16 DOCTYPE"] != "read"
    print(f"XML attacks: {outcomes}")


class _nothing:  # noqa: N801 - a do-nothing context manager
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return False
