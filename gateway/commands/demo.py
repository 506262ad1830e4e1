"""`msgw demo`: the gateway's main job on the embedded default, step by step, in a throw-away
folder (TEST PKI, loopback only). Exit 0 when every step worked.

1. a lab's LIS submits a result over STARTTLS + AUTH;
2. a recipient nobody can protect is refused at RCPT (fail closed);
3. the doctor's operator (an in-process SMTP sink standing in for it) receives S/MIME only:
   neutral outer Subject, signed by the lab, encrypted to the doctor — decrypted here with
   the doctor's TEST key to show it is readable by them;
4. the doctor answers signed and encrypted; the gateway decrypts and verifies it into the
   lab's Maildir with its verification header;
5. the audit trail's hash chain verifies.
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
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
from gateway.config import default_config_text, parse_config
from gateway.default_setup import prepare_default_files
from gateway.logs import setup_logging
from gateway.smime.engine import Verifier, sign_and_encrypt_message, unwrap_message
from gateway.smime.revocation import CrlSource
from gateway.smime.softkeys import load_key
from gateway.smime.testpki import ORG_EMAIL, PERSON_EMAIL
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
    data["delivery"]["routes"] = {"cabinet-parc.sante.test": {"host": "127.0.0.1", "port": sink_port,
                                                              "tls": "none"}}
    config = parse_config(data, source="<embedded default>", base=base)
    password = (base / "var" / "default" / "demo.password").read_text().strip()
    gateway = Gateway(config)
    await gateway.start()
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
    finally:
        await gateway.stop()
        sink.stop()
    report = AuditTrail(audit_path(config)).verify()
    _step(f"5. audit trail: {report}")
    if not report.ok:
        return 1
    _step("demo finished: OK")
    return 0


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
    setup_logging("text", "WARNING")
    folder = tempfile.mkdtemp(prefix="msgw-demo-")
    if args.keep:
        _step(f"working folder: {folder}")
    try:
        return asyncio.run(_demo(Path(folder)))
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
