"""PDF documents: a bare PDF says nothing about its recipients, its JSON sidecar does.

Why a format of its own: a PDF is detected, attached and de-duplicated differently from the
text formats (its bytes count as a whole; it is ``application/pdf``); what it *is* (its LOINC
type, a lab result or not) comes from the sidecar (:mod:`gateway.routing.sidecar`).
"""

from __future__ import annotations

import hashlib

from gateway.routing.model import (
    LAB_RESULT_CODES,
    SIGNATURE,
    DedupFacts,
    DocumentType,
    MediaType,
    PayloadError,
    PayloadFormat,
    PayloadInfo,
    leading,
)


def read_pdf(data: bytes) -> PayloadInfo:
    """Check it is a PDF (header and trailer); the sidecar gives the rest."""
    if not data.lstrip(b" \t\r\n").startswith(b"%PDF-"):
        raise PayloadError("not a PDF document (no %PDF- header)", "byte 0")
    if b"%%EOF" not in data[-2048:]:
        raise PayloadError("truncated PDF document (no %%EOF trailer)", f"byte {len(data)}")
    return PayloadInfo(kind="pdf", document_type=DocumentType("application/pdf", "PDF document", "MIME"),
                       media_type="application/pdf")


class PdfFormat(PayloadFormat):
    kind = "pdf"
    label = "PDF"
    extensions = ("pdf",)
    attachment_stem = "document"

    def detect(self, data: bytes) -> int:
        return SIGNATURE if leading(data).startswith(b"%PDF-") else 0

    def read(self, data: bytes, filename: str | None = None) -> PayloadInfo:
        return read_pdf(data)

    def media_type(self, info: PayloadInfo) -> MediaType:
        return "application", "pdf", {}

    def is_lab_result(self, info: PayloadInfo) -> bool:
        return info.document_type.code in LAB_RESULT_CODES  # the type its sidecar gave

    def dedup_facts(self, info: PayloadInfo, data: bytes) -> DedupFacts:
        return DedupFacts("", hashlib.sha256(data).digest())  # binary: every byte counts


FORMAT = PdfFormat()
