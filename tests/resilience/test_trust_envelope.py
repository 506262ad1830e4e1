"""Trust battery (issue 11): what leaves around an envelope, and who signs legacy content — end
to end through a real `msgw serve`, real SMTP, and the real tools as the outside peers
(`openssl cms` decrypts and verifies S/MIME, the legacy doctor's key files decode Apicrypt).

Every attack is recorded with `resilience_report.trust(...)` before it is asserted, so the
summary table shows what got through even when a test fails:
- outer headers of S/MIME copies, of the client-encrypted pass-through, of legacy copies and of
  the legacy pass-through: a marker in every header kind (8-bit, folded, X-*, threading, Bcc, a
  Date comment...), in a part's Content-Description and in the name a client gave its own
  envelope; none may show outside;
- bridged provenance: on the legacy listener the provenance header and the banner are inside
  the signature (the bridge key's), nothing of them outside, and the copy goes under the
  bridge's own From (the signer's address), the legacy author in Reply-To;
- legacy armor from a non-legacy path (a submission account with a key, one without, a relay
  partner): never decoded, never signed by the bridge key.
"""

from __future__ import annotations

import email
import email.policy
import smtplib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.legacy.apicrypt1 import CODEC as APICRYPT1
from gateway.legacy.apicrypt1 import decrypt
from gateway.legacy.apicrypt1_format import dearmor
from gateway.legacy.keystore import ApicryptKeyStore, make_key_file
from gateway.smime.testpki import ORG_EMAIL, OTHER_EMAIL, PERSON_EMAIL, TestPKI
from tests.conftest import free_port, require_tool
from tests.e2e.harness import PASSWORD, USER, GatewayProcess, GatewaySetup, Received, Sink, msgw, wait_port
from tests.e2e.test_protection_flow import _protected_setup, submit_as_lab
from tests.resilience.conftest import ResilienceReport
from tests.smime.support import shared_pki
from tests.stages.envelope_support import (
    LEGACY_DOCTOR,
    LEGACY_LAB,
    MARKED_FIELDS,
    MARKERS,
    PDF,
    client_sealed,
    delivered_from,
    marked_message,
    missing_inside,
    openssl_open,
    outside,
    signer_emails,
    signer_subject,
    with_part_description,
    without_armor,
)

YEAR = time.gmtime().tm_year
BRIDGE_SIGNER = "TEST AUTRE SIGNATAIRE"  # the bridge signs with its own organisation key here
LAB_SIGNER = "TEST LABO MESSAGERIE SIGNATURE"
HPRIM = ("H|~^\\&|||LABO TEST|||||||ORU|H2.2|20261125\r\nP|1||||TESTPATIENT^INVENTEE||19700101|F\r\n"
         "OBX|1|NM|GLY^Glycemie||5.4|mmol/l|3.9-5.8||||F\r\nL|1|||3\r\n").encode("latin-1")
BANNER_EN = b"Received from a legacy encrypted mail system (Apicrypt) and converted by the gateway"


@dataclass
class Battery:
    pki: TestPKI
    setup: GatewaySetup
    sink: Sink
    keys: Path
    legacy_port: int
    folder: Path

    def send(self, port: int, sender: str, rcpts: list[str], data: bytes, *, login: tuple[str, str] | None = None,
             ) -> list[Received]:
        """One message in, the copies the next hop received for it out."""
        before = len(self.sink.handler.snapshot())
        with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
            client.ehlo("client.test")
            if login is not None:
                import ssl

                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE  # the throw-away listener certificate of the test
                client.starttls(context=ctx)
                client.ehlo("client.test")
                client.login(*login)
            client.sendmail(sender, rcpts, data)
        return self.sink.wait_for(before + 1, timeout=30)[before:]


@pytest.fixture(scope="module")
def battery(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Battery]:
    require_tool("openssl")
    pki = shared_pki().pki
    folder = tmp_path_factory.mktemp("trust")
    keys = folder / "apicrypt"
    for user in ("Master", "msgw.bridge", "labo.test", "dr.legacy"):
        make_key_file(keys, user, YEAR, 1 << 18)
    sink = Sink().start()
    setup = _protected_setup(folder / "gw", pki, sink.port)
    legacy_port = free_port()
    other = pki["other_sign"]
    text = setup.config.read_text().replace("allowed_networks = []", 'allowed_networks = ["127.0.0.0/8"]')
    text += f"""
[listeners.legacy]
kind = "relay"
address = "127.0.0.1"
port = {legacy_port}
tls_cert = "tls-cert.pem"
tls_key = "tls-key.pem"
allowed_networks = ["127.0.0.0/8"]

[keys.bridge-sign]
ref = "{other.key_path}"
cert = "{other.cert_path}"
chain = "{other.chain_path}"

[legacy]
sign_key = "bridge-sign"
decrypt_key = "labo-decrypt"
listeners = ["legacy"]

[legacy.apicrypt1]
keys = "{keys}"
identity = "msgw.bridge"
"""
    setup.config.write_text(text)
    out = msgw("directory", "add", LEGACY_DOCTOR, "--capability", "legacy:apicrypt1", "--key-ref", "dr.legacy",
               "--config", str(setup.config))
    assert out.returncode == 0, out.stderr
    gateway = GatewayProcess(setup).start()
    try:
        wait_port(legacy_port)
        yield Battery(pki, setup, sink, keys, legacy_port, folder)
    finally:
        if gateway.proc is not None:
            gateway.terminate()
        sink.stop()


def _attempts(sent: bytes) -> int:
    """Each marker in what was sent is one leak attempt, plus Bcc and raw 8-bit bytes in the header block."""
    return sum(m.encode() in sent for m in MARKERS) + 2


def _record_outer(report: ResilienceReport, what: str, seen, note: str, sent: bytes) -> None:
    attempts = _attempts(sent)
    stopped = attempts - len(seen.leaked) - (1 if seen.eight_bit else 0)
    extra = f"; unexpected outer fields {sorted(seen.unexpected)}" if seen.unexpected else ""
    report.trust(f"outer headers: {what} ({attempts} markers incl. 8-bit)", attempts=attempts,
                 stopped=stopped, note=note + extra)


def test_smime_copy_outer_headers(battery: Battery, resilience_report: ResilienceReport) -> None:
    openssl = require_tool("openssl")
    sent = marked_message(ORG_EMAIL, PERSON_EMAIL)
    (got,) = _submitted(battery, PERSON_EMAIL, sent)
    seen = outside(got.data)
    _, content, signer = openssl_open(openssl, battery.pki, got.data, battery.folder, tag="smime")
    missing = missing_inside(content)
    _record_outer(resilience_report, "S/MIME copy", seen,
                  f"openssl cms: signed by the lab, {len(MARKED_FIELDS) - len(missing)}/{len(MARKED_FIELDS)} headers "
                  "protected inside", sent)
    assert seen.clean, seen
    assert missing == [] and LAB_SIGNER in signer_subject(openssl, signer, battery.folder)


def test_client_encrypted_pass_through_outer_headers(battery: Battery, resilience_report: ResilienceReport) -> None:
    # The client named its envelope after the document (name=, filename=, a parameter of its own).
    sealed = client_sealed(marked_message(ORG_EMAIL, PERSON_EMAIL), battery.pki["person_encrypt"].cert)
    (got,) = _submitted(battery, PERSON_EMAIL, sealed)
    seen = outside(got.data)
    kept = got.data.split(b"\r\n\r\n", 1)[1] == sealed.split(b"\r\n\r\n", 1)[1]
    _record_outer(resilience_report, "client-encrypted pass-through", seen,
                  "envelope forwarded unopened" if kept else "ENVELOPE CHANGED", sealed)
    assert seen.clean, seen
    assert kept


def test_legacy_copy_outer_headers(battery: Battery, resilience_report: ResilienceReport) -> None:
    sent = marked_message(ORG_EMAIL, LEGACY_DOCTOR)
    (got,) = _submitted(battery, LEGACY_DOCTOR, sent)
    clear = without_armor(got.data)
    seen = outside(got.data, clear)
    store = ApicryptKeyStore(battery.keys)
    decoded = APICRYPT1.decode(got.data, store, recipient="dr.legacy")
    names = [a.filename for a in decoded.attachments]
    subject = str(email.message_from_bytes(decoded.content, policy=email.policy.default)["Subject"])
    _record_outer(resilience_report, "legacy copy, apicrypt1", seen,
                  f"inside the armor: Subject {'ok' if 'MRK-SUBJECT' in subject else 'LOST'}, attachment "
                  f"{'ok' if names == ['CR_MRK-FILENAME_DUPONT.pdf'] else 'LOST'}", sent)
    assert seen.clean, (seen, clear[:2000])
    assert "MRK-SUBJECT" in subject and names == ["CR_MRK-FILENAME_DUPONT.pdf"]


def test_legacy_pass_through_outer_headers(battery: Battery, resilience_report: ResilienceReport) -> None:
    """Armor from the legacy lab for a reader of the same format goes on as it came (not
    re-encoded): its headers, a part's Content-Description and the attachment name are what a
    legacy client writes in clear around the armor."""
    store = ApicryptKeyStore(battery.keys)
    sent = with_part_description(APICRYPT1.encode(marked_message(LEGACY_LAB, LEGACY_DOCTOR), "labo.test",
                                                  ["msgw.bridge", "dr.legacy"], store))
    (got,) = battery.send(battery.legacy_port, LEGACY_LAB, [LEGACY_DOCTOR], sent)
    clear = without_armor(got.data)
    seen = outside(got.data, clear)
    decoded = APICRYPT1.decode(got.data, store, recipient="dr.legacy")
    readable = [a.data for a in decoded.attachments] == [PDF]
    _record_outer(resilience_report, "legacy pass-through, apicrypt1", seen,
                  f"the doctor's keys read it: {'yes' if readable else 'NO'}", sent)
    assert seen.clean, (seen, clear[:2000])
    assert readable and got.recipients == [LEGACY_DOCTOR]


def test_bridged_provenance_inside_the_signature(battery: Battery, resilience_report: ResilienceReport) -> None:
    openssl = require_tool("openssl")
    armor = _legacy_armor(battery)
    (got,) = battery.send(battery.legacy_port, LEGACY_LAB, [PERSON_EMAIL], armor)
    head = got.data.split(b"\r\n\r\n", 1)[0]
    _, content, signer = openssl_open(openssl, battery.pki, got.data, battery.folder, tag="bridged")
    inner = email.message_from_bytes(content, policy=email.policy.default)
    text = next(p for p in inner.walk() if p.get_content_type() == "text/plain").get_payload(decode=True)
    checks = {
        "no provenance outside": b"X-Msgw-Bridged" not in head and b"codec=" not in head,
        "signed by the bridge key": BRIDGE_SIGNER in signer_subject(openssl, signer, battery.folder),
        "provenance header inside": "sender-authenticated=no" in str(inner["X-Msgw-Bridged"]),
        "banner inside, text after it intact": BANNER_EN in text and text.endswith(HPRIM),
        # A signature never re-labels its sender: the signer names the From shown, outside and inside.
        "signer names the delivered From": delivered_from(content) == delivered_from(got.data)
        == signer_emails(openssl, signer, battery.folder) == [OTHER_EMAIL],
        "legacy author in Reply-To, no Sender": LEGACY_LAB in str(inner["Reply-To"]) and inner["Sender"] is None
        and b"\r\nSender:" not in head,
    }
    failed = [k for k, ok in checks.items() if not ok]
    resilience_report.trust("bridged provenance inside the signature (legacy listener)", attempts=len(checks),
                            stopped=len(checks) - len(failed),
                            note="openssl cms -verify: " + ("all checks hold" if not failed else f"FAILED {failed}"))
    assert not failed, failed


def test_legacy_armor_from_non_legacy_paths_is_not_re_signed(battery: Battery,
                                                             resilience_report: ResilienceReport) -> None:
    """The attack of the issue: anyone with Apicrypt key files writes armor; a submission user
    (with or without a signing key) or a relay partner submits it."""
    openssl = require_tool("openssl")
    ways = {
        # (its From: is its own: a submission login cannot write another From: at all, item 1)
        "submission account with its own key": lambda: _submitted(battery, PERSON_EMAIL,
                                                                  _legacy_armor(battery, sender=ORG_EMAIL)),
        "submission account without a key": lambda: battery.send(
            battery.setup.submission_port, USER, [PERSON_EMAIL], _legacy_armor(battery, sender=USER),
            login=(USER, PASSWORD)),
        "relay partner (allowed network), unknown sender": lambda: battery.send(
            battery.setup.relay_port, LEGACY_LAB, [PERSON_EMAIL], _legacy_armor(battery)),
    }
    outcomes = {}
    for n, (way, send) in enumerate(ways.items()):
        (got,) = send()
        try:
            _, content, signer = openssl_open(openssl, battery.pki, got.data, battery.folder, tag=f"path{n}")
            bridged = BRIDGE_SIGNER in signer_subject(openssl, signer, battery.folder)
        except AssertionError:  # not signed at all: `openssl cms -verify` has nothing to verify
            content, bridged = _decrypt_only(openssl, battery, got.data, n), False
        outcomes[way] = not bridged and b"#BINASCII1#" in content and b"X-Msgw-Bridged" not in content
    stopped = sum(outcomes.values())
    resilience_report.trust("legacy armor from a non-legacy path not re-signed", attempts=len(ways), stopped=stopped,
                            note="; ".join(f"{w}: {'ordinary content' if ok else 'BRIDGED'}"
                                           for w, ok in outcomes.items()))
    assert all(outcomes.values()), outcomes
    audit = msgw("audit", "show", "--json", "--config", str(battery.setup.config))
    assert audit.stdout.count(b"legacy-not-bridged") >= len(ways)


def _submitted(battery: Battery, rcpt: str, data: bytes) -> list[Received]:
    before = len(battery.sink.handler.snapshot())
    refused = submit_as_lab(battery.setup, [rcpt], data)
    assert not refused, refused
    return battery.sink.wait_for(before + 1, timeout=30)[before:]


def _legacy_armor(battery: Battery, sender: str = LEGACY_LAB) -> bytes:
    mime = (f"From: <{sender}>\r\nTo: <{PERSON_EMAIL}>\r\nSubject: Resultats\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n").encode() + HPRIM
    return APICRYPT1.encode(mime, "labo.test", ["msgw.bridge"], ApicryptKeyStore(battery.keys))


def _decrypt_only(openssl: str, battery: Battery, data: bytes, n: int) -> bytes:
    import subprocess

    path = battery.folder / f"plain{n}.eml"
    path.write_bytes(data)
    person = battery.pki["person_encrypt"]
    out = subprocess.run([openssl, "cms", "-decrypt", "-in", str(path), "-recip", str(person.cert_path), "-inkey",
                          str(person.key_path)], capture_output=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_legacy_armor_is_still_readable_by_its_reader(battery: Battery) -> None:
    """Sanity for the battery itself: the armor it sends is real (the bridge key files decode it)."""
    armor = _legacy_armor(battery)
    plain = decrypt(dearmor(email.message_from_bytes(armor).get_payload(decode=True)), ApicryptKeyStore(battery.keys))
    assert plain.text == HPRIM and plain.recipients == ("msgw.bridge",)
