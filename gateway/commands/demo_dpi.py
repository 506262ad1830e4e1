"""`msgw demo`, step 8: an MSSanté document into the hospital's DPI (CI-SIS "Transmission au LPS
de documents CDA provenant d'un courriel MSSanté").

The TEST doctor mails, signed and encrypted, an invented CR with its ``IHE_XDM.ZIP`` to the
hospital's application mailbox ``dpi@labo-tests.sante.test``; msgw decrypts and verifies it, hands
the CDA to a DPI stand-in as an ``MDM^T02`` over MLLP (the stand-in answers ``AA``), and the
doctor gets the ``processed`` MDN. Then a mail whose archive names another patient than its CDA
gets ``processed/Error: 904^…`` and never reaches the DPI.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import io
import sys
import zipfile
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

from gateway.commands.demo_segur import INS, MllpRecorder, cda_n1
from gateway.routing.cda import read_cda
from gateway.routing.xdm import XdmDocument, build_xdm
from gateway.smime.engine import Verifier, sign_and_encrypt_message, unwrap_message
from gateway.smime.softkeys import load_key
from gateway.smime.testpki import PERSON_EMAIL

DPI_MAILBOX = "dpi@labo-tests.sante.test"


class DpiStandIn(MllpRecorder):
    """The DPI's MLLP listener: records each MDM and answers AA."""

    def configure(self, data: dict[str, Any]) -> None:
        data["delivery"].setdefault("consumers", {})[DPI_MAILBOX] = {
            "mllp": f"127.0.0.1:{self.port}", "application": "DPI-DEMO", "facility": "HOPITAL-DEMO",
            "organisation": "Service de démonstration^^^^^1.2.250.9999.5^UF^^^0001"}


def register_dpi_mailbox(config: Any, pki_dir: Path) -> None:
    """The DPI's application mailbox is a local mailbox decrypted with the organisation's TEST key."""
    from cryptography.hazmat.primitives import serialization

    from gateway.directory.directory import SqliteDirectory, directory_path, operator_item

    cert = load_key(pki_dir / "org_encrypt.key.pem", pki_dir / "org_encrypt.pem").certificate
    with SqliteDirectory(directory_path(config)) as directory:
        directory.put(operator_item(DPI_MAILBOX, "local", key_ref="labo-decrypt", mailbox_type="APP",
                                    certificates=[cert.public_bytes(serialization.Encoding.DER)]))


def _xdm(*, other_patient: bool) -> bytes:
    cda = cda_n1()
    package = build_xdm([XdmDocument(cda, read_cda(cda))], source_id="1.2.250.9999.8",
                        now=dt.datetime.now(dt.UTC))
    if not other_patient:
        return package
    out = io.BytesIO()  # the archive's metadata names another patient than its CDA (an INS mismatch)
    with zipfile.ZipFile(io.BytesIO(package)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            body = src.read(item)
            if item.filename.upper().endswith("METADATA.XML"):
                body = body.replace(INS.encode(), b"188017512345612")
            dst.writestr(item, body)
    return out.getvalue()


def doctor_mail(*, other_patient: bool = False) -> bytes:
    """The TEST doctor's letter to the DPI's mailbox, with its archive and a read-receipt request."""
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = PERSON_EMAIL
    msg["To"] = DPI_MAILBOX
    msg["Subject"] = "XDM/1.0/DDM+CR d'examens biologiques INVENTE CAMILLE 31/12/1999"
    msg["Message-ID"] = make_msgid(domain="cabinet-parc.sante.test")
    msg["Disposition-Notification-To"] = PERSON_EMAIL
    msg.set_content("Chère consœur, voici le compte rendu (TEST, patient inventé).", cte="quoted-printable")
    msg.add_attachment(_xdm(other_patient=other_patient), maintype="application", subtype="zip",
                       filename="IHE_XDM.ZIP")
    return msg.as_bytes()


async def dpi_flow(dpi: DpiStandIn, operator_received: list[bytes], doctor: Any, verifier: Verifier,
                   relay: tuple[str, int], pki_dir: Path, wait: Any) -> bool:
    import aiosmtplib

    from gateway.cisis.returns import parse_returns

    sign = load_key(pki_dir / "person_sign.key.pem", pki_dir / "person_sign.pem", pki_dir / "person_sign.chain.pem")
    hospital = load_key(pki_dir / "org_encrypt.key.pem", pki_dir / "org_encrypt.pem").certificate
    print("==> 8. the doctor mails a CR with its IHE_XDM.ZIP, signed and encrypted, to the hospital's "
          f"application mailbox {DPI_MAILBOX}", flush=True)
    for n, other in enumerate((False, True)):
        before = len(operator_received)
        sealed = await sign_and_encrypt_message(doctor_mail(other_patient=other), sign, [hospital])
        await aiosmtplib.send(sealed, sender=PERSON_EMAIL, recipients=[DPI_MAILBOX], hostname=relay[0],
                              port=relay[1], start_tls=False)
        if not await wait(lambda before=before: len(operator_received) > before):
            print("msgw: no MDN came back to the doctor", file=sys.stderr)
            return False
        opened = await unwrap_message(operator_received[before], keys=[doctor], verifier=verifier)
        report = parse_returns(opened.content)[0]
        inner = email.message_from_bytes(opened.content, policy=email.policy.default)
        if n == 0:
            mdm = dpi.received[-1].split(b"\r")[0].decode() if dpi.received else "nothing"
            print(f"==>    the DPI stand-in got {mdm.split('|')[8] if '|' in mdm else mdm} over MLLP and answered AA",
                  flush=True)
            print(f"==>    the doctor's MDN ({'+'.join(opened.layers)}): {report.kind}, ok={report.ok}", flush=True)
            if not report.ok or not dpi.received:
                return False
        else:
            print(f"==>    a mail whose archive names another patient: MDN \"{inner['Subject']}\", code "
                  f"{report.code}; the DPI got nothing more ({len(dpi.received)} MDM in all)", flush=True)
            if report.ok or report.code != "904" or len(dpi.received) != 1:
                return False
    return True


__all__ = ["DPI_MAILBOX", "DpiStandIn", "doctor_mail", "dpi_flow", "register_dpi_mailbox"]
