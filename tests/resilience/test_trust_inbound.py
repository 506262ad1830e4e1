"""Trust battery, inbound side (issue 11, items 5 and 13): what the reader of a local mailbox sees
after the gateway unwrapped a message, end to end through `msgw serve` into the lab's Maildir.

* inner From substitution: a message signed by someone.else whose signed (or encrypted) content
  carries `From: Dr Jean …` must never be delivered as a `pass` showing Dr Jean as the sender;
* the plain signer mismatch, with `inbound_unverified = "refuse"`: nothing delivered;
* protected headers (mutt-style from `openssl cms -sign`, and the gateway's own format): one
  From and one Subject, the inner ones; the outer ones only as X-Msgw-Outer-*;
* X-Msgw-Outer-* forged from outside never delivered;
* a 3DES envelope (`openssl cms -encrypt -des3`) never reported `pass` unmarked.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import smtplib
import time
from pathlib import Path

import pytest

from gateway.smime.cms_envelope import encrypt_content
from gateway.smime.engine import sign_message
from gateway.smime.mime import pkcs7_mime
from gateway.smime.protect import protect_smime
from gateway.smime.softkeys import load_key
from gateway.smime.testpki import ORG_EMAIL, OTHER_EMAIL, PERSON_EMAIL, TestPKI
from tests.conftest import require_tool
from tests.e2e.harness import GatewayProcess, GatewaySetup, log_events
from tests.e2e.test_protection_flow import _protected_setup
from tests.resilience.conftest import ResilienceReport
from tests.smime.support import shared_pki
from tests.smime.test_protected_headers import INNER_SUBJECT, OUTER_SUBJECT, openssl_sign
from tests.smime.test_weak_algorithms import openssl_encrypt

DR_JEAN = f"Dr Jean TEST <{PERSON_EMAIL}>"


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return shared_pki().pki


def _entity(from_: str | None = DR_JEAN, extra: str = "") -> bytes:
    """A protected-headers entity as mutt writes it (the real headers on the root MIME entity)."""
    head = f"From: {from_}\r\nTo: {ORG_EMAIL}\r\nSubject: {INNER_SUBJECT}\r\n" if from_ else ""
    return (f'Content-Type: text/plain; charset=us-ascii; protected-headers="v1"\r\n{head}{extra}\r\n'
            "TEST compte rendu.\r\n").encode()


def _rfc822_wrapped(pki: TestPKI, tmp_path: Path) -> bytes:
    """RFC 8551 3.1: `From: Dr Jean` on a message/rfc822 wrapper, inside the envelope, around a
    message someone.else signed without any From of its own."""
    signed = openssl_sign(pki, tmp_path, "other_sign", _entity(None), outer_from=None)
    wrapper = f"From: {DR_JEAN}\r\nSubject: {INNER_SUBJECT}\r\nContent-Type: message/rfc822\r\n\r\n".encode()
    der = encrypt_content(wrapper + signed, [pki["org_encrypt"].cert])
    return pkcs7_mime((f"From: <{OTHER_EMAIL}>\r\n".encode(), f"Subject: {OUTER_SUBJECT}\r\n".encode()), der,
                      "enveloped-data")


def _gateway(tmp_path: Path, pki: TestPKI, *, unverified: str = "flag") -> GatewaySetup:
    setup = _protected_setup(tmp_path, pki, sink_port=9)
    text = setup.config.read_text().replace('inbound_unverified = "flag"', f'inbound_unverified = "{unverified}"')
    setup.config.write_text(text)
    return setup


def _deliver_each(setup: GatewaySetup, messages: list[tuple[str, bytes]], *, refused: bool = False,
                  ) -> list[email.message.Message | None]:
    """Send the messages one by one over the relay listener; what each put in the lab's Maildir
    (None: refused, seen as a `bounced` event in the gateway's log)."""
    box = setup.maildir / ORG_EMAIL / "new"
    out: list[email.message.Message | None] = []
    for sender, data in messages:
        before = set(box.iterdir()) if box.is_dir() else set()
        bounced = sum(e["event"] == "bounced" for e in log_events(setup))
        with smtplib.SMTP("127.0.0.1", setup.relay_port, timeout=30) as client:
            client.ehlo("mx.autre.sante.test")
            assert client.sendmail(sender, [ORG_EMAIL], data) == {}
        deadline = time.monotonic() + 30
        new: set[Path] = set()
        while time.monotonic() < deadline:
            new = (set(box.iterdir()) if box.is_dir() else set()) - before
            if new or (refused and sum(e["event"] == "bounced" for e in log_events(setup)) > bounced):
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the message was neither delivered nor bounced")
        assert len(new) <= 1
        out.append(email.message_from_bytes(next(iter(new)).read_bytes(), policy=email.policy.compat32)
                   if new else None)
    return out


def _verdict(msg: email.message.Message) -> str:
    (value,) = msg.get_all("X-Msgw-Verification") or [""]
    return " ".join(str(value).split())


def _froms(msg: email.message.Message) -> list[str]:
    return [" ".join(str(v).split()) for v in msg.get_all("From") or []]


def test_inner_from_substitution_and_protected_headers(pki: TestPKI, tmp_path: Path,
                                                       resilience_report: ResilienceReport) -> None:
    require_tool("openssl")
    attacks: list[tuple[str, str, bytes]] = [
        ("multipart/signed", OTHER_EMAIL,
         openssl_sign(pki, tmp_path, "other_sign", _entity(), outer_from=OTHER_EMAIL)),
        ("signed then encrypted", OTHER_EMAIL,
         openssl_encrypt(pki, tmp_path, openssl_sign(pki, tmp_path, "other_sign", _entity(), outer_from=OTHER_EMAIL),
                         "aes256")),
        ("opaque signed-data", OTHER_EMAIL,
         openssl_sign(pki, tmp_path, "other_sign", _entity(), outer_from=OTHER_EMAIL, opaque=True)),
        ("message/rfc822 wrapper", OTHER_EMAIL, _rfc822_wrapped(pki, tmp_path)),
    ]
    forged = "X-Msgw-Outer-From: <dr.forged@cabinet-parc.sante.test>\r\n"
    person = pki["person_sign"]
    lab_message = (f"From: Labo TEST <{ORG_EMAIL}>\r\nTo: <{ORG_EMAIL}>\r\nSubject: {INNER_SUBJECT}\r\n"
                   "Date: Wed, 25 Nov 2026 09:00:00 +0100\r\nMessage-ID: <own-7@labo-tests.sante.test>\r\n"
                   "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nTEST\r\n").encode()
    own = asyncio.run(protect_smime(lab_message, load_key(pki["org_sign"].key_path, pki["org_sign"].cert_path,
                                                          pki["org_sign"].chain_path),
                                    [pki["org_encrypt"].cert], neutral_subject=OUTER_SUBJECT, sender_copy=None))
    legit: list[tuple[str, str, bytes]] = [
        ("mutt-style (openssl cms -sign)", PERSON_EMAIL,
         openssl_sign(pki, tmp_path, "person_sign", _entity(), outer_from=PERSON_EMAIL)),
        ("the gateway's own format", ORG_EMAIL, own),
    ]
    forgeries = [(PERSON_EMAIL, forged.encode() + openssl_sign(pki, tmp_path, "person_sign", _entity(extra=forged),
                                                                outer_from=PERSON_EMAIL)),
                 (OTHER_EMAIL, forged.encode() + b"From: <x@autre.sante.test>\r\nSubject: TEST\r\n\r\nTEST\r\n")]
    plain_signed = asyncio.run(sign_message(_entity(from_=f"<{PERSON_EMAIL}>"), load_key(
        person.key_path, person.cert_path, person.chain_path)))
    weak = [(PERSON_EMAIL, openssl_encrypt(pki, tmp_path, plain_signed, "des3"))]

    setup = _gateway(tmp_path / "gw", pki)
    with GatewayProcess(setup):
        got_attacks = _deliver_each(setup, [(s, d) for _, s, d in attacks])
        got_legit = _deliver_each(setup, [(s, d) for _, s, d in legit])
        got_forged = _deliver_each(setup, forgeries)
        got_weak = _deliver_each(setup, weak)

    def substituted(msg: email.message.Message | None) -> bool:
        """Shown to the reader as a verified message from Dr Jean, or with two From."""
        if msg is None:
            return False
        return len(_froms(msg)) != 1 or (_verdict(msg).startswith("pass") and PERSON_EMAIL in _froms(msg)[0])

    stopped = [not substituted(m) for m in got_attacks]
    through = [name for (name, _, _), ok in zip(attacks, stopped, strict=True) if not ok]
    resilience_report.trust("inner From substitution (signed by another)", attempts=len(attacks),
                            stopped=sum(stopped), note=("GOT THROUGH: " + ", ".join(through)) if through
                            else "signer mismatch, or the unsigned inner From dropped; one From")
    one_block = [m is not None and _verdict(m).startswith("pass") and len(_froms(m)) == 1
                 and [str(s) for s in m.get_all("Subject") or []] == [INNER_SUBJECT]
                 and bool(m.get_all("X-Msgw-Outer-Subject")) for m in got_legit]
    resilience_report.trust("protected headers delivered twice after unwrapping", attempts=len(legit),
                            stopped=sum(one_block), note="one From/Subject, outer as X-Msgw-Outer-*")
    clean = [m is not None and "dr.forged" not in m.as_string() for m in got_forged]
    resilience_report.trust("X-Msgw-Outer-* forged from outside", attempts=len(forgeries), stopped=sum(clean))
    marked = [m is not None and "weak=3des-cbc" in _verdict(m) for m in got_weak]
    resilience_report.trust("3DES envelope reported pass unmarked", attempts=len(weak), stopped=sum(marked),
                            note="weak=3des-cbc in the verdict")

    for (name, _, _), msg in zip(attacks, got_attacks, strict=True):
        assert msg is not None, name
        assert len(_froms(msg)) == 1, name
        if "wrapper" in name:
            # the wrapper's From is outside the signature: dropped, the reader sees who signed
            assert _verdict(msg).startswith("pass") and OTHER_EMAIL in _froms(msg)[0], (name, _verdict(msg))
        else:
            assert _verdict(msg).startswith("fail; reason=smime-signer-mismatch"), (name, _verdict(msg))
    assert all(stopped) and all(one_block) and all(clean) and all(marked)


def test_signer_mismatch_refused_by_policy(pki: TestPKI, tmp_path: Path,
                                           resilience_report: ResilienceReport) -> None:
    """With inbound_unverified = "refuse", no mismatching message reaches the mailbox at all."""
    require_tool("openssl")
    outer_only = openssl_sign(pki, tmp_path, "other_sign", b"Content-Type: text/plain\r\n\r\nTEST\r\n",
                              outer_from=PERSON_EMAIL)
    inner = openssl_sign(pki, tmp_path, "other_sign", _entity(), outer_from=OTHER_EMAIL)
    attempts: list[tuple[str, bytes]] = [(PERSON_EMAIL, outer_only), (OTHER_EMAIL, inner)]
    setup = _gateway(tmp_path / "gw", pki, unverified="refuse")
    with GatewayProcess(setup):
        got = _deliver_each(setup, attempts, refused=True)
    stopped = sum(m is None for m in got)
    resilience_report.trust("signer does not name the delivered From (policy refuse)", attempts=len(attempts),
                            stopped=stopped, note="outer From, inner From: bounced 5.7.7")
    assert got == [None, None]

