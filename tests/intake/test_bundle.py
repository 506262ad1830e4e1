"""A PDF with the payload or JSON sidecar that routes it: bundling, intake, the message built."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json

import pytest

from gateway.intake.bundle import SubmittedFile, bundle_files
from gateway.intake.process import intake_bytes
from gateway.routing.model import PayloadError
from gateway.routing.sidecar import SidecarError
from tests.intake import samples as s

NOW = dt.datetime(2026, 11, 25, 10, 0, tzinfo=dt.UTC)
PDF2 = s.PDF.replace(b"1.4", b"1.7")


def sidecar(**extra: object) -> bytes:
    return json.dumps({"recipients": [{"rpps": s.RPPS_SMIME}], "document_id": "LABX-PDF-1",
                       "document_type": {"code": "11502-2", "system": "LOINC"}, **extra}).encode()


def _attachments(message: bytes) -> dict[str, bytes]:
    msg = email.message_from_bytes(message, policy=email.policy.default)
    return {p.get_filename(): p.get_payload(decode=True) for p in msg.iter_attachments()}


def test_hprim_with_its_pdf() -> None:
    b = bundle_files([SubmittedFile(s.PDF, "PATIENTFICTIF.pdf"), SubmittedFile(s.hprim_medecin(), "PATIENTFICTIF.hpr")])
    assert b.info.kind == "hprim" and b.data == s.hprim_medecin() and b.pdfs == (s.PDF,)


def test_pdf_with_a_sidecar_takes_its_routing_from_the_sidecar() -> None:
    b = bundle_files([SubmittedFile(sidecar(), "x.json"), SubmittedFile(s.PDF, "x.pdf"), SubmittedFile(PDF2, "y.pdf")])
    assert b.info.kind == "pdf" and b.data == s.PDF and b.pdfs == (PDF2,)
    assert [r.value for r in b.info.recipients] == [s.RPPS_SMIME] and b.info.document_id == "LABX-PDF-1"


def test_a_pdf_alone_stays_a_pdf() -> None:
    b = bundle_files([SubmittedFile(s.PDF, "x.pdf")])
    assert b.info.kind == "pdf" and b.info.recipients == () and b.pdfs == ()


@pytest.mark.parametrize(("files", "error", "what"), [
    ([], PayloadError, "no file"),
    ([SubmittedFile(sidecar(), "x.json")], PayloadError, "without the PDF"),
    ([SubmittedFile(sidecar(), "x.json"), SubmittedFile(s.hprim_medecin(), "x.hpr"), SubmittedFile(s.PDF, "x.pdf")],
     PayloadError, "more than one payload"),
    ([SubmittedFile(b"{not json", "x.json"), SubmittedFile(s.PDF, "x.pdf")], SidecarError, "not valid JSON"),
    ([SubmittedFile(s.hprim_medecin(), "x.hpr"), SubmittedFile(s.PDF[:-7], "x.pdf")], PayloadError, "truncated PDF"),
])
def test_what_does_not_make_one_submission(files, error, what) -> None:
    with pytest.raises(error) as err:
        bundle_files(files)
    assert what in err.value.what


def test_intake_routes_a_pdf_by_its_sidecar(directory, dedup, routing) -> None:
    b = bundle_files([SubmittedFile(s.PDF, "PATIENTFICTIF_Clemence.pdf"), SubmittedFile(sidecar(), "x.json")])
    result = intake_bytes(b.data, b.filename, sender=s.LIS, directory=directory, dedup=dedup, settings=routing,
                          now=NOW, info=b.info, pdfs=b.pdfs)
    (recipients, message, _), = result.outgoing
    assert recipients == (s.ADDR_SMIME,)
    assert _attachments(message) == {"document.pdf": s.PDF}
    msg = email.message_from_bytes(message, policy=email.policy.default)
    assert msg["Subject"] == "Résultat de laboratoire"  # LOINC 11502-2 from the sidecar
    assert b"PATIENTFICTIF" not in message and b"LABX-PDF-1" in message  # reference in the body, no patient
    result.commit(dedup, NOW)
    again = intake_bytes(b.data, b.filename, sender=s.LIS, directory=directory, dedup=dedup, settings=routing,
                         now=NOW, info=b.info, pdfs=b.pdfs)
    assert again.outgoing == () and again.suppressed == (s.ADDR_SMIME,)


def test_intake_attaches_the_pdf_beside_an_hprim_result(directory, dedup, routing) -> None:
    b = bundle_files([SubmittedFile(s.hprim_medecin(), "r.hpr"), SubmittedFile(s.PDF, "r.pdf"),
                      SubmittedFile(PDF2, "r2.pdf")])
    result = intake_bytes(b.data, b.filename, sender=s.LIS, directory=directory, dedup=dedup, settings=routing,
                          now=NOW, info=b.info, pdfs=b.pdfs)
    (recipients, message, _), = result.outgoing
    assert recipients == (s.ADDR_LABCODE,)
    assert _attachments(message) == {"resultat.hpr": s.hprim_medecin(), "document-1.pdf": s.PDF,
                                     "document-2.pdf": PDF2}


def _mail(body: bytes, *attachments: tuple[str, str, bytes]) -> bytes:
    import base64

    parts = [b'--b1\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: base64\r\n\r\n'
             + base64.encodebytes(body).replace(b"\n", b"\r\n")]
    for name, ctype, data in attachments:
        head = (f'--b1\r\nContent-Type: {ctype}\r\nContent-Disposition: attachment; filename="{name}"\r\n'
                "Content-Transfer-Encoding: base64\r\n\r\n")
        parts.append(head.encode() + base64.encodebytes(data).replace(b"\n", b"\r\n"))
    return (b'From: <lis@labo.test>\r\nTo: <routage@labo.test>\r\nMIME-Version: 1.0\r\n'
            b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n' + b"".join(parts) + b"--b1--\r\n")


def test_mail_with_hprim_in_the_body_and_its_pdf_attached() -> None:
    from gateway.intake.smtp_payload import find_payload

    b = find_payload(_mail(s.hprim_medecin(), ("r.pdf", "application/pdf", s.PDF)))
    assert b.info.kind == "hprim" and b.data == s.hprim_medecin() and b.pdfs == (s.PDF,)


def test_an_unrelated_json_attachment_is_ignored() -> None:
    from gateway.intake.smtp_payload import find_payload

    b = find_payload(_mail(b"Bonjour", ("r.hpr", "text/plain", s.hprim_medecin()),
                           ("export.json", "application/json", b'{"lis": "version 4.2"}')))
    assert b.info.kind == "hprim" and b.pdfs == ()
    b = find_payload(_mail(b"Bonjour", ("r.pdf", "application/pdf", s.PDF), ("cr.json", "application/json", sidecar())))
    assert b.info.kind == "pdf" and b.info.document_id == "LABX-PDF-1"
