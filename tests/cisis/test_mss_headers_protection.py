"""An MSSanté copy names the patient in its Subject and describes its documents in X-MSS-*
(issue 13, item 2): those fields may leave only where the transport protects them.

- Through `protect_smime` (a recipient certificate is known), the outside shows only the
  allow-list of `gateway.smime.headers` (neutral Subject, no X-*), and everything is inside
  the envelope as protected headers: checked after `openssl cms -decrypt` (an independent peer)
  and `openssl cms -verify` of the inner signature.
- Through `sign_protected` (the trust-space mutual-TLS copy), X-MSS-* and the Subject stay outside,
  where the receiving MSSanté operator reads them, and the signature (which covers them, copied
  inside) verifies with `openssl cms -verify`.

Real crypto on the TEST PKI; `gateway.smime.headers` itself is not changed by this issue."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import subprocess
from pathlib import Path

import pytest

from gateway.cisis.model import (
    ALL_FLAGS,
    Action,
    CopyPlan,
    Document,
    MessageHeader,
    Patient,
    Recipient,
    RecipientKind,
    Transmission,
)
from gateway.cisis.mssmail import BuiltCopy, build_copy
from gateway.rawmime import field_name, split_raw
from gateway.routing.cda import read_cda
from gateway.smime.protect import protect_smime, sign_protected
from gateway.smime.softkeys import SoftKey, load_key
from gateway.smime.testpki import PERSON_EMAIL, TestPKI
from tests.conftest import require_tool
from tests.interop.conftest_smime import openssl_cafile
from tests.routing_payload import fixtures as F
from tests.smime.support import shared_pki

NEUTRAL = "Message sécurisé / Secure message"
MAILBOX = "pfi@hopital-fictif.mssante.test"
FAMILY, GIVEN = "Testnom", "Élodie"
MSS_FIELDS = ("x-mss-codecda", "x-mss-ins", "x-mss-nil")


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return shared_pki().pki


@pytest.fixture(scope="module")
def org_key(pki: TestPKI) -> SoftKey:
    e = pki["org_sign"]
    return load_key(e.key_path, e.cert_path, e.chain_path)


def _copy() -> BuiltCopy:
    """A professional copy of an N1 + N3 lab report with a qualified INS and a read receipt."""
    traits = '<administrativeGenderCode code="F"/><birthTime value="19991201"/>'
    docs = tuple(Document(str(n), "11502-2", "CR", "F", data, read_cda(data), f"OBX[{n}]")
                 for n, data in enumerate((F.cda(nonxml=True), F.cda()), start=1)
                 for data in [data.replace(b"</name></patient>", f"</name>{traits}</patient>".encode())])
    doctor = Recipient(RecipientKind.PS, PERSON_EMAIL, "810101234567", "1.2.250.1.71.4.2.1", where="PRT[2]")
    tx = Transmission(MessageHeader("SGL", "LABO", "PFI", "HOP", "C1", "ORU", "R01", "2.5"),
                      Patient(F.INS, F.INS_OID_TEST, FAMILY, GIVEN, "19991201", "F", "VALI"), docs, Action.INITIAL,
                      None, (doctor,), "dr.auteur@labo-fictif.mssante.test", {n: False for n in ALL_FLAGS})
    return build_copy(tx, CopyPlan("professional", (doctor,), "CORPSMAIL_PS", read_receipt=True),
                      application_mailbox=MAILBOX, nil="DEV000042",
                      now=dt.datetime(2026, 12, 3, 10, 30, tzinfo=dt.UTC))


def _fields(message: bytes) -> dict[str, list[bytes]]:
    fields, _ = split_raw(message)
    out: dict[str, list[bytes]] = {}
    for f in fields:
        out.setdefault(field_name(f), []).append(f)
    return out


def _openssl(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([require_tool("openssl"), *map(str, args)], capture_output=True, timeout=60)


def test_the_copy_carries_what_must_be_protected() -> None:
    """The premise: the unprotected copy has the patient's name in its Subject and X-MSS-* fields."""
    fields = _fields(_copy().data)
    assert all(name in fields for name in MSS_FIELDS)
    subject = email.message_from_bytes(_copy().data, policy=email.policy.default)["Subject"]
    assert f"TESTNOM {GIVEN}" in subject and subject.startswith("XDM/1.0/DDM+")


async def test_smime_copy_shows_nothing_of_it_outside_and_everything_inside(pki: TestPKI, org_key: SoftKey,
                                                                           tmp_path: Path) -> None:
    built = _copy()
    sealed = await protect_smime(built.data, org_key, [pki["person_encrypt"].cert], neutral_subject=NEUTRAL,
                                 sender_copy=None)
    outer = _fields(sealed)
    assert not [name for name in outer if name.startswith("x-")]
    assert set(outer) <= {"from", "to", "date", "message-id", "subject", "disposition-notification-to",
                          "mime-version", "content-type", "content-transfer-encoding", "content-disposition"}
    outer_subject = email.message_from_bytes(sealed, policy=email.policy.default)["Subject"]
    assert outer_subject == NEUTRAL
    for secret in (b"TESTNOM", FAMILY.encode(), b"XDM/1.0/DDM", b"X-MSS", b"11502-2", F.INS.encode(),
                   b"IHE_XDM", b"document.pdf"):
        assert secret not in sealed, secret  # not outside, and nothing readable in the envelope either

    # An independent peer decrypts: the protected headers are all there, signed.
    e = pki["person_encrypt"]
    (tmp_path / "sealed.eml").write_bytes(sealed)
    r = _openssl("cms", "-decrypt", "-in", tmp_path / "sealed.eml", "-recip", e.cert_path, "-inkey", e.key_path,
                 "-out", tmp_path / "inner.eml")
    assert r.returncode == 0, r.stderr.decode()
    r = _openssl("cms", "-verify", "-in", tmp_path / "inner.eml", "-CAfile", openssl_cafile(pki, tmp_path),
                 "-crl_check_all", "-out", tmp_path / "entity.eml")
    assert r.returncode == 0, r.stderr.decode()
    entity = (tmp_path / "entity.eml").read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    inside = _fields(entity)
    original = _fields(built.data)
    for name in (*MSS_FIELDS, "subject", "reply-to", "message-id", "disposition-notification-to"):
        assert inside[name] == original[name], name
    inner = email.message_from_bytes(entity, policy=email.policy.default)
    assert inner["Subject"] == email.message_from_bytes(built.data, policy=email.policy.default)["Subject"]
    assert 'protected-headers="v1"' in inner["Content-Type"]
    names = {p.get_filename() for p in inner.iter_attachments()}
    assert names == {"IHE_XDM.ZIP", "document.pdf"}


async def test_trust_space_copy_keeps_mss_fields_outside_and_its_signature_verifies(pki: TestPKI,
                                                                                   org_key: SoftKey,
                                                                                   tmp_path: Path) -> None:
    built = _copy()
    signed = await sign_protected(built.data, org_key)
    outer, original = _fields(signed), _fields(built.data)
    for name in (*MSS_FIELDS, "subject", "reply-to", "disposition-notification-to", "from", "to"):
        assert outer[name] == original[name], name
    assert email.message_from_bytes(signed, policy=email.policy.default).get_content_type() == "multipart/signed"

    (tmp_path / "signed.eml").write_bytes(signed)
    r = _openssl("cms", "-verify", "-in", tmp_path / "signed.eml", "-CAfile", openssl_cafile(pki, tmp_path),
                 "-crl_check_all", "-out", tmp_path / "content.eml")
    assert r.returncode == 0, r.stderr.decode()
    covered = _fields((tmp_path / "content.eml").read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    for name in (*MSS_FIELDS, "subject"):
        assert covered[name] == original[name], name  # what the operator reads outside is what was signed
