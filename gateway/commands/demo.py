"""`msgw demo`: the gateway's main job on the embedded default, step by step, in a throw-away
folder (TEST PKI, loopback only). Exit 0 when every step worked.

1. a lab's LIS submits a result over STARTTLS + AUTH;
2. a recipient nobody can protect is refused at RCPT (fail closed);
3. the doctor's operator (an in-process SMTP sink standing in for it) receives S/MIME only:
   neutral outer Subject, signed by the lab, encrypted to the doctor — decrypted here with
   the doctor's TEST key to show it is readable by them;
4. the doctor answers signed and encrypted; the gateway decrypts and verifies it into the
   lab's Maildir with its verification header;
5. a LIS and a hospital drop an HL7 result and a CDA letter, routed from their content;
6. legacy (Apicrypt-v1-style) mail is bridged to and from S/MIME;
7. a Ségur SGL hands a CR-BIO over MLLP (CI-SIS CDA-in-HL7v2): the doctor and the patient's Mon
   espace santé get their MSSanté copies, the SGL its business acknowledgments (ZAM);
8. a doctor's letter with its IHE_XDM.ZIP reaches the hospital's DPI as an HL7 MDM over MLLP
   (CI-SIS "Transmission au LPS"), and the doctor gets the integration MDN (then a 904 refusal);
9. the audit trail's hash chain verifies.
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import logging
import shutil
import smtplib
import socket
import ssl
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import aiosmtplib
from aiosmtpd.controller import Controller

from gateway.app import Gateway
from gateway.audit import AuditTrail, audit_path
from gateway.commands.demo_dpi import DpiStandIn, dpi_flow, register_dpi_mailbox
from gateway.commands.demo_segur import SegurSetup, segur_flow
from gateway.config import default_config_text, parse_config
from gateway.default_setup import (
    LEGACY_DOCTOR,
    LEGACY_LAB,
    LOCAL_DOCTOR,
    LOCAL_DOCTOR_RPPS,
    prepare_default_files,
)
from gateway.logs import setup_logging
from gateway.smime.engine import Verifier, sign_and_encrypt_message, unwrap_message
from gateway.smime.revocation import CrlSource
from gateway.smime.softkeys import load_key
from gateway.smime.testpki import ORG_EMAIL, PERSON_EMAIL, PERSON_RPPS
from gateway.smime.trust import TrustStore


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole protected flow on the embedded default, step by step")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder and print its path")
    p.set_defaults(func=run)


def _step(text: str) -> None:
    print(f"==> {text}", flush=True)


class _Operator:
    """The doctor's messaging operator: records what it receives."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 - aiosmtpd hook name
        self.received.append(envelope.original_content)
        return "250 2.0.0 OK"


def _result(to: str) -> bytes:
    return (f"From: Laboratoire TEST <{ORG_EMAIL}>\r\nTo: <{to}>\r\n"
            "Subject: =?utf-8?q?R=C3=A9sultat_d=27analyse_=28patient_invent=C3=A9=29?=\r\n"
            f"Message-ID: <demo-{time.time_ns()}@labo-tests.sante.test>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            "Invented demo result: glycemia 5.4 mmol/l. No real patient.\r\n").encode()


async def _demo(base: Path) -> int:
    pki_dir = base / "var" / "default" / "pki"
    prepare_default_files(base / "var" / "default")
    operator = _Operator()
    with socket.socket() as probe:  # a free loopback port for the stand-in operator
        probe.bind(("127.0.0.1", 0))
        sink_port = probe.getsockname()[1]
    sink = Controller(operator, hostname="127.0.0.1", port=sink_port)
    sink.start()
    data = tomllib.loads(default_config_text())
    for listener in data["listeners"].values():
        listener["port"] = 0
    data.pop("metrics", None)  # no metrics listener for the demo: 9587 may be a running gateway's
    data.pop("console", None)  # nor console (8587); its [operators] stay, unused

    # The doctors' operators elsewhere (S/MIME and legacy) are one stand-in SMTP server here;
    # loopback counts as the partner network of the relay listener.
    data["delivery"]["routes"] = {domain: {"host": "127.0.0.1", "port": sink_port, "tls": "none"}
                                  for domain in ("cabinet-parc.sante.test", "medical99.apicrypt.org")}
    data["listeners"]["relay"]["allowed_networks"] = ["127.0.0.0/8"]
    data["intake"]["drop"]["lis"]["poll_interval"] = "200ms"
    segur = SegurSetup(base)
    with socket.socket() as probe:  # the patient's Mon espace santé operator (mutual TLS)
        probe.bind(("127.0.0.1", 0))
        segur_port = probe.getsockname()[1]
    await segur.start(segur_port)
    segur.configure(data, segur_port)
    dpi = DpiStandIn()
    await dpi.start()
    dpi.configure(data)
    config = parse_config(data, source="<embedded default>", base=base)
    register_dpi_mailbox(config, pki_dir)
    _register_legacy_lab(config)
    password = (base / "var" / "default" / "demo.password").read_text().strip()
    gateway = Gateway(config)
    await gateway.start()
    assert gateway.server is not None  # start() returns only with its listeners up
    try:
        host, port = gateway.server.bound["submission"]
        relay_host, relay_port = gateway.server.bound["relay"]
        _step(f"gateway up: submission {host}:{port}, relay {relay_host}:{relay_port}, TEST PKI in {pki_dir}")
        ctx = ssl.create_default_context(cafile=str(base / "var" / "default" / "tls-cert.pem"))
        ctx.check_hostname = False  # the TEST certificate names localhost; we connect by address

        _step(f"1. the lab's LIS ({ORG_EMAIL}) submits a result for {PERSON_EMAIL} (STARTTLS + AUTH)")
        await aiosmtplib.send(_result(PERSON_EMAIL), sender=ORG_EMAIL, recipients=[PERSON_EMAIL], hostname=host,
                              port=port, start_tls=True, tls_context=ctx, username=ORG_EMAIL, password=password)
        _step("   accepted with 250 after the spool fsynced it")

        _step("2. the same LIS tries a doctor with no certificate anywhere")
        refused = await asyncio.get_running_loop().run_in_executor(
            None, _try_unprotectable, host, port, ctx, password)
        if not refused.startswith("550"):
            print(f"msgw: expected a refusal, got {refused}", file=sys.stderr)
            return 1
        _step(f"   refused at RCPT: {refused}")

        deadline = time.monotonic() + 20
        while not operator.received and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if not operator.received:
            print("msgw: the doctor's operator received nothing within 20 s", file=sys.stderr)
            return 1
        sent = operator.received[0]
        outer = email.message_from_bytes(sent, policy=email.policy.default)
        _step(f"3. the doctor's operator received {len(sent)} bytes: {outer.get_content_type()}, "
              f"outer Subject \"{outer['Subject']}\"")
        trust = TrustStore.from_directory(pki_dir / "trust")
        verifier = Verifier(trust, CrlSource(files=sorted((pki_dir / "crl").glob("*.crl"))))
        doctor = load_key(pki_dir / "person_encrypt.key.pem", pki_dir / "person_encrypt.pem")
        opened = await unwrap_message(sent, keys=[doctor], verifier=verifier)
        inner = email.message_from_bytes(opened.content, policy=email.policy.default)
        sig = opened.signatures[0]
        _step(f"   the doctor's key opens it: layers {'+'.join(opened.layers)}, signer "
              f"\"{sig.identity.common_name}\", real Subject inside: \"{inner['Subject']}\"")

        _step("4. the doctor answers, signed with the CPS-shaped TEST key and encrypted to the lab")
        doctor_sign = load_key(pki_dir / "person_sign.key.pem", pki_dir / "person_sign.pem",
                               pki_dir / "person_sign.chain.pem")
        org_cert = load_key(pki_dir / "org_encrypt.key.pem", pki_dir / "org_encrypt.pem").certificate
        answer = (f"From: <{PERSON_EMAIL}>\r\nTo: <{ORG_EMAIL}>\r\nSubject: Bien recu\r\n"
                  "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nThank you (demo).\r\n"
                  ).encode()
        sealed = await sign_and_encrypt_message(answer, doctor_sign, [org_cert])
        await aiosmtplib.send(sealed, sender=PERSON_EMAIL, recipients=[ORG_EMAIL], hostname=relay_host,
                              port=relay_port, start_tls=False)
        box = config.local.maildir / ORG_EMAIL / "new"
        deadline = time.monotonic() + 20
        while not (box.exists() and any(box.iterdir())) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        files = list(box.iterdir()) if box.exists() else []
        if not files:
            print("msgw: the answer did not reach the lab's Maildir within 20 s", file=sys.stderr)
            return 1
        delivered = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
        verdict = " ".join(str(delivered["X-Msgw-Verification"]).split())
        _step(f"   in the lab's Maildir, decrypted, with: X-Msgw-Verification: {verdict[:110]}...")
        if not verdict.startswith("pass"):
            return 1

        if not await _routed_documents(config, operator, doctor, verifier):
            return 1
        if not await _bridged_exchanges(config, operator, doctor, verifier, relay_host, relay_port, pki_dir):
            return 1
        if not await segur_flow(gateway, segur, operator.received, doctor, verifier, (relay_host, relay_port),
                                _wait):
            return 1
        if not await dpi_flow(dpi, operator.received, doctor, verifier, (relay_host, relay_port), pki_dir, _wait):
            return 1
    finally:
        await gateway.stop()
        sink.stop()
        segur.stop()
        dpi.stop()
    report = AuditTrail(audit_path(config)).verify()
    _step(f"9. audit trail: {report}")
    if not report.ok:
        return 1
    _step("demo finished: OK")
    return 0


async def _wait(predicate, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def _routed_documents(config, operator: _Operator, doctor, verifier: Verifier) -> bool:
    """5. A LIS drops an HL7 result and a hospital drops a discharge letter; the gateway reads
    the payloads, finds the two doctors in the directory, and delivers in each one's form."""
    drop = next(d for d in config.intake.drops if d.name == "lis").path
    before = len(operator.received)
    _step("5. a LIS drops an ORU^R01 result (prescriber by RPPS) and a CDA discharge letter (recipient by RPPS)")
    for name, payload in (("result.hl7", _oru()), ("letter.xml", _letter())):
        tmp = drop / f".{name}.tmp"
        tmp.write_bytes(payload)
        tmp.rename(drop / name)   # write then rename: the folder only ever shows complete files
    if not await _wait(lambda: len(operator.received) > before):
        print("msgw: the routed result did not reach the S/MIME doctor", file=sys.stderr)
        return False
    opened = await unwrap_message(operator.received[before], keys=[doctor], verifier=verifier)
    names = [p.get_filename() for p in email.message_from_bytes(opened.content, policy=email.policy.default).walk()
             if p.get_filename()]
    _step(f"   the result reached {PERSON_EMAIL} as S/MIME ({'+'.join(opened.layers)}), attachments: {names}")
    box = config.local.maildir / LOCAL_DOCTOR / "new"
    if not await _wait(lambda: box.exists() and any(box.iterdir())):
        print("msgw: the discharge letter did not reach the local doctor's mailbox", file=sys.stderr)
        return False
    letter = email.message_from_bytes(next(box.iterdir()).read_bytes(), policy=email.policy.default)
    names = [p.get_filename() for p in letter.walk() if p.get_filename()]
    _step(f"   the letter reached {LOCAL_DOCTOR}'s Maildir, Subject \"{letter['Subject']}\", attachments: {names}")
    return "IHE_XDM.ZIP" in names


def _register_legacy_lab(config) -> None:
    """The legacy lab of step 6 is a known legacy correspondent (as an operator would enter it with
    `msgw directory add ... --capability legacy:apicrypt1`): only such senders, or the listeners of
    `[legacy] listeners`, get their armor bridged."""
    from gateway.directory.directory import SqliteDirectory, directory_path, operator_item

    with SqliteDirectory(directory_path(config)) as directory:
        directory.put(operator_item(LEGACY_LAB, "legacy:apicrypt1", key_ref="labo.legacy", mailbox_type="APP"))


async def _bridged_exchanges(config, operator: _Operator, doctor, verifier: Verifier, relay_host: str,
                             relay_port: int, pki_dir: Path) -> bool:
    """6. Legacy ⇄ S/MIME through the bridge, one message each way."""
    from gateway.legacy import codec as legacy_codecs
    from gateway.legacy.apicrypt1 import Apicrypt1Codec, decrypt
    from gateway.legacy.apicrypt1_format import dearmor

    keys = legacy_codecs.get("apicrypt1").open_keys(config.legacy.codec("apicrypt1").keys, None, {})
    before = len(operator.received)
    hprim = (b"H|~^\\&|||LABO LEGACY TEST|||||||ORU|H2.2|20261125\r\nP|1||||PATIENT^INVENTE\r\n"
             b"OBX|1|NM|GLY^Glycemie||5.4|mmol/l\r\nL|1|||3\r\n")
    mime = (f"From: <{LEGACY_LAB}>\r\nTo: <{PERSON_EMAIL}>\r\nSubject: Resultats\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=iso-8859-1\r\n\r\n").encode() + hprim
    legacy = Apicrypt1Codec().encode(mime, "labo.legacy", ["msgw.bridge"], keys)
    _step("6. a legacy (Apicrypt v1 style) lab, known to the directory as a legacy correspondent, sends an "
          "encrypted result to the S/MIME doctor")
    await aiosmtplib.send(legacy, sender=LEGACY_LAB, recipients=[PERSON_EMAIL], hostname=relay_host,
                          port=relay_port, start_tls=False)
    if not await _wait(lambda: len(operator.received) > before):
        print("msgw: the bridged result did not reach the S/MIME doctor", file=sys.stderr)
        return False
    received = operator.received[before]
    # The bridge signs under its own address (From), the legacy lab named in the display name and
    # in Reply-To: the strict verifier (signer = delivered From) passes it.
    opened = await unwrap_message(received, keys=[doctor], verifier=verifier)
    # The provenance statement is a protected header inside the signed entity, never outside.
    outside = email.message_from_bytes(received, policy=email.policy.default)["X-Msgw-Bridged"]
    inner = email.message_from_bytes(opened.content, policy=email.policy.default)
    bridged = inner["X-Msgw-Bridged"]
    if outside is not None or bridged is None:
        print("msgw: the bridged provenance is not (only) inside the signed entity", file=sys.stderr)
        return False
    if not opened.signatures[-1].from_matched:
        print("msgw: the bridged copy's signer does not name its From", file=sys.stderr)
        return False
    _step(f"   arrived as S/MIME ({'+'.join(opened.layers)}), signed by the gateway under its own address: "
          f"From: {inner['From']}, Reply-To: {inner['Reply-To']}")
    _step(f"   inside the signature: X-Msgw-Bridged: {' '.join(str(bridged).split())[:90]}")
    text = next((p for p in email.message_from_bytes(opened.content, policy=email.policy.default).walk()
                 if p.get_content_type() == "text/plain"), None)
    banner = text.get_content().splitlines()[1] if text is not None else ""
    if "the sender was not authenticated" not in banner:
        print("msgw: the bridged text does not start with the provenance banner", file=sys.stderr)
        return False
    _step(f"   and the text starts with the banner: \"{banner}\"")
    before = len(operator.received)
    doctor_sign = load_key(pki_dir / "person_sign.key.pem", pki_dir / "person_sign.pem",
                           pki_dir / "person_sign.chain.pem")
    bridge_cert = load_key(pki_dir / "org_encrypt.key.pem", pki_dir / "org_encrypt.pem").certificate
    answer = (f"From: <{PERSON_EMAIL}>\r\nTo: <{LEGACY_DOCTOR}>\r\nSubject: Avis\r\nMIME-Version: 1.0\r\n"
              "Content-Type: text/plain; charset=us-ascii\r\n\r\nAvis TEST, patient invente.\r\n").encode()
    sealed = await sign_and_encrypt_message(answer, doctor_sign, [bridge_cert])
    _step(f"   and the S/MIME doctor writes to {LEGACY_DOCTOR}, who reads only the legacy format")
    await aiosmtplib.send(sealed, sender=PERSON_EMAIL, recipients=[LEGACY_DOCTOR], hostname=relay_host,
                          port=relay_port, start_tls=False)
    if not await _wait(lambda: len(operator.received) > before):
        print("msgw: the bridged answer did not reach the legacy doctor", file=sys.stderr)
        return False
    out = operator.received[before]
    decoded = Apicrypt1Codec().decode(out, keys, recipient="dr.legacy")
    # Outside: the neutral Subject only; the verdict is in the header the bridge writes inside the armor.
    shown = email.message_from_bytes(out, policy=email.policy.default)
    armored = next(p for p in shown.walk() if p.get_content_type() == "text/plain")
    payload = armored.get_payload(decode=True)
    inside = decrypt(dearmor(payload if isinstance(payload, bytes) else b""), keys).text.decode("latin-1")
    verdict = next((line for line in inside.splitlines() if line.startswith("X-Msgw-Bridged:")), "")
    _step(f"   arrived as #BINASCII1# armor, outer Subject \"{shown['Subject']}\"; the legacy doctor's keys decode "
          f"it ({len(decoded.text or b'')} bytes); inside: {verdict[16:86]}")
    return b"Avis TEST" in (decoded.text or b"") and shown["X-Msgw-Bridged"] is None


def _oru() -> bytes:
    segs = ["MSH|^~\\&|LIS|LABO|MSGW|MSGW|20261125100000||ORU^R01^ORU_R01|DEMO0001|P|2.5|||||FRA|UNICODE UTF-8",
            "PID|||299129912345678^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS||INVENTE^Patient||19990101|F",
            f"ORC|NW|C1^CAB|R1^LABO|||||||||8{PERSON_RPPS}^TEST-DUPONT^JEAN^^^DR^^^"
            "ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS",
            f"OBR|1|C1^CAB|R1^LABO|11502-2^CR d'examens biologiques^LN|||20261125083000|||||||||8{PERSON_RPPS}"
            "^TEST-DUPONT^JEAN^^^DR^^^ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS|||||||||F",
            "OBX|1|NM|GLY^Glycemie^L||5.4|mmol/l|4.1-5.9|N|||F"]
    return ("\r".join(segs) + "\r").encode()


def _letter() -> bytes:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<ClinicalDocument xmlns="urn:hl7-org:v3">
  <typeId root="2.16.840.1.113883.1.3" extension="POCD_HD000040"/>
  <id root="1.2.250.9999.7" extension="LDL-DEMO"/>
  <code code="11490-0" codeSystem="2.16.840.1.113883.6.1" displayName="Lettre de liaison"/>
  <title>Lettre de liaison (demo)</title><effectiveTime value="20261125100000+0100"/>
  <confidentialityCode code="N" codeSystem="2.16.840.1.113883.5.25"/><languageCode code="fr-FR"/>
  <setId root="1.2.250.9999.7" extension="SETDEMO"/><versionNumber value="1"/>
  <recordTarget><patientRole><id root="1.2.250.1.213.1.4.10" extension="299129912345678"/>
    <patient><name><family>INVENTE</family></name></patient></patientRole></recordTarget>
  <author><time value="20261125100000+0100"/><assignedAuthor><id root="1.2.250.1.71.4.2.1" extension="810109999998"/>
    <assignedPerson><name><family>HOSPITALIER</family></name></assignedPerson></assignedAuthor></author>
  <informationRecipient><intendedRecipient><id root="1.2.250.1.71.4.2.1" extension="8{LOCAL_DOCTOR_RPPS}"/>
  </intendedRecipient></informationRecipient>
  <component><structuredBody><component><section><title>Synthese</title><text>Sortie (demo)</text></section>
  </component></structuredBody></component>
</ClinicalDocument>
""".encode()


def _try_unprotectable(host: str, port: int, ctx: ssl.SSLContext, password: str) -> str:
    with smtplib.SMTP(host, port, timeout=20) as client:
        client.ehlo("lis.labo-tests.sante.test")
        client.starttls(context=ctx)
        client.ehlo("lis.labo-tests.sante.test")
        client.login(ORG_EMAIL, password)
        client.mail(ORG_EMAIL)
        code, text = client.rcpt("dr.sans-certificat@ailleurs.sante.test")
        client.rset()
        return f"{code} {text.decode(errors='replace')}"


def run(args: argparse.Namespace) -> int:
    folder = tempfile.mkdtemp(prefix="msgw-demo-")
    # The gateway's log lines (WARNING and above: the refusals and the bounce the demo provokes on
    # purpose read like failures between its steps) go to a file, shown after the story, labelled.
    log_file = Path(folder) / "gateway.log"
    setup_logging("text", "WARNING", log_file)
    if args.keep:
        _step(f"working folder: {folder}")
    try:
        return asyncio.run(_demo(Path(folder)))
    finally:
        _show_log(log_file, keep=args.keep)
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


def _show_log(log_file: Path, *, keep: bool) -> None:
    """After the story: where the log is (--keep), else its lines on stderr, each labelled."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    try:
        lines = log_file.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return
    if not lines:
        return
    if keep:
        _step(f"gateway log: {len(lines)} line(s) in {log_file}")
        return
    print(f"msgw demo: the gateway's log during the demo ({len(lines)} line(s), WARNING and above; "
          "refusals and the bounce of the steps above are expected):", file=sys.stderr)
    for line in lines:
        print(f"  [gateway log] {line}", file=sys.stderr)
