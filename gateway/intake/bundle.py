"""Group the files of one submission: a payload and the PDFs that go with it.

Labs and hospitals send a PDF together with something that says where it goes:
- a **structured payload** (HPRIM, HL7 v2, CDA) naming the recipients, with the PDF the doctor
  reads beside it — the usual French lab delivery (``X.hpr`` + ``X.pdf``): the structured
  file is routed as usual and the PDF travels with it;
- a **JSON sidecar** (:mod:`gateway.routing.sidecar`) when the system produces only PDFs: the
  sidecar gives the recipients and the document's references, the PDF is the payload.
A PDF alone is still accepted (it goes to the envelope recipients or the unrouted mailbox).

Pure: the doors (SMTP, ``msgw send``, drop folders) collect the files, :func:`bundle_files`
decides what is the payload and what rides along, and :func:`gateway.intake.process.intake_bytes`
does the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.routing.model import PayloadError, PayloadInfo
from gateway.routing.payload import detect_payload, read_payload
from gateway.routing.pdf import read_pdf
from gateway.routing.sidecar import looks_like_sidecar, read_sidecar

MAX_COMPANION_PDFS = 10


@dataclass(frozen=True)
class SubmittedFile:
    """One file of a submission (content kept out of repr: it is health data)."""

    data: bytes = field(repr=False)
    name: str | None = None


@dataclass(frozen=True)
class Bundle:
    """The payload to route (``data`` + ``info``) and the PDFs to attach beside it."""

    data: bytes = field(repr=False)
    filename: str | None
    info: PayloadInfo
    pdfs: tuple[bytes, ...] = field(default=(), repr=False)


def _is_pdf(f: SubmittedFile) -> bool:
    return detect_payload(f.data) == "pdf"


def bundle_files(files: Sequence[SubmittedFile]) -> Bundle:
    """The bundle for ``files``; PayloadError when they do not make one submission.

    At most one file may say where the documents go (a structured payload or a sidecar); the
    others must be PDFs. Every file is read, so a broken PDF is refused with the rest.
    """
    if not files:
        raise PayloadError("no file to send", "submission")
    pdfs: list[SubmittedFile] = []
    leads: list[tuple[SubmittedFile, bool]] = []  # (file, is_sidecar)
    for f in files:
        if _is_pdf(f):
            pdfs.append(f)
        elif looks_like_sidecar(f.data, f.name):
            leads.append((f, True))
        else:
            leads.append((f, False))
    if len(leads) > 1:
        raise PayloadError("more than one payload or sidecar in one submission (send them separately)",
                           "submission")
    if len(pdfs) > MAX_COMPANION_PDFS:
        raise PayloadError(f"more than {MAX_COMPANION_PDFS} PDF documents in one submission", "submission")
    for n, pdf in enumerate(pdfs):
        try:
            read_pdf(pdf.data)
        except PayloadError as exc:
            raise PayloadError(exc.what, f"PDF {n + 1}: {exc.where}") from None
    if not leads:
        first = pdfs[0]
        return Bundle(first.data, first.name, read_pdf(first.data), tuple(p.data for p in pdfs[1:]))
    lead, is_sidecar = leads[0]
    if is_sidecar:
        if not pdfs:
            raise PayloadError("a sidecar came without the PDF it describes", "submission")
        info = read_sidecar(lead.data)
        first = pdfs[0]
        return Bundle(first.data, first.name, info, tuple(p.data for p in pdfs[1:]))
    info = read_payload(lead.data, lead.name)
    return Bundle(lead.data, lead.name, info, tuple(p.data for p in pdfs))


__all__ = ["MAX_COMPANION_PDFS", "Bundle", "SubmittedFile", "bundle_files"]
