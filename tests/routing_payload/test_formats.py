"""The payload format registry: a new format is its module plus one registration line.

The FHIR format below is the worked example of docs/architecture.md: registered, it is
detected, read, wrapped (media type, neutral name, subject) and de-duplicated with no edit to
the dispatcher, the wrapper or the dedup store.
"""

from __future__ import annotations

import ast
import datetime as dt
import email
import json
from collections.abc import Iterator
from email import policy
from pathlib import Path

import pytest

from gateway.intake.dedup import dedup_key, document_key
from gateway.intake.wrap import payload_message
from gateway.routing import formats
from gateway.routing.model import (
    LAB_RESULT_CODES,
    MARKER,
    SIGNATURE,
    DocumentType,
    MediaType,
    PartyRef,
    PayloadError,
    PayloadFormat,
    PayloadInfo,
    UnsupportedPayload,
    leading,
)
from gateway.routing.payload import detect_payload, read_payload

from . import fixtures as fx

NOW = dt.datetime(2025, 1, 15, 10, 0, tzinfo=dt.UTC)
PDF = b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF\n"


class FhirFormat(PayloadFormat):
    """A FHIR document Bundle in JSON (the worked example)."""

    kind = "fhir"
    label = "FHIR"
    extensions = ("json",)
    attachment_stem = "document"
    report_subject = "Compte rendu"

    def detect(self, data: bytes) -> int:
        head = leading(data)
        return SIGNATURE if head.startswith(b"{") and b'"resourceType": "Bundle"' in head else 0

    def read(self, data: bytes, filename: str | None = None) -> PayloadInfo:
        try:
            bundle = json.loads(data)
            composition = bundle["entry"][0]["resource"]
            coding = composition["type"]["coding"][0]
            recipient = composition["extension"][0]["valueIdentifier"]["value"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise PayloadError("not a FHIR document Bundle", "Bundle.entry[0]") from None
        return PayloadInfo(kind="fhir", document_type=DocumentType(coding["code"], coding.get("display", ""), "LOINC"),
                           recipients=(PartyRef("IDNAT", recipient, source="Composition.extension[0]"),),
                           document_id=bundle["identifier"]["value"], encoding="utf-8",
                           media_type="application/fhir+json")

    def media_type(self, info: PayloadInfo) -> MediaType:
        return "application", "fhir+json", {"charset": "utf-8"}

    def is_lab_result(self, info: PayloadInfo) -> bool:
        return info.document_type.code in LAB_RESULT_CODES


def _bundle(code: str = "11502-2") -> bytes:
    return json.dumps({"resourceType": "Bundle", "type": "document",
                       "identifier": {"system": "urn:ietf:rfc:3986", "value": "urn:uuid:0c3b-fictif"},
                       "entry": [{"resource": {"resourceType": "Composition",
                                               "type": {"coding": [{"code": code, "display": "CR de biologie"}]},
                                               "extension": [{"valueIdentifier": {"value": fx.IDNAT_DOC}}]}}]},
                      indent=1).encode()


@pytest.fixture
def fhir() -> Iterator[FhirFormat]:
    fmt = FhirFormat()
    formats.register(fmt)
    try:
        yield fmt
    finally:
        formats.unregister(fmt.kind)


def test_a_registered_format_is_detected_read_wrapped_and_deduplicated(fhir: FhirFormat) -> None:
    data = _bundle()
    assert detect_payload(data) == "fhir"
    info = read_payload(data, "PATIENT_Dupont.json")
    assert info.kind == "fhir" and info.recipients[0].rpps == fx.RPPS_DOC

    raw = payload_message(data, info, sender="lis@lab.test", recipients=["dr@x.test"], filename="PATIENT_Dupont.json",
                          now=NOW, xdm=True)
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert msg["Subject"] == "Résultat de laboratoire"
    (part,) = list(msg.iter_attachments())  # type: ignore[attr-defined]
    assert part.get_filename() == "document.json" and part.get_content_type() == "application/fhir+json"
    assert part.get_param("charset") == "utf-8" and part.get_payload(decode=True) == data
    assert "Dupont" not in raw.decode("ascii")

    other = payload_message(_bundle("34133-9"), read_payload(_bundle("34133-9")), sender="lis@lab.test",
                            recipients=["dr@x.test"], filename=None, now=NOW, xdm=False)
    assert email.message_from_bytes(other, policy=policy.default)["Subject"] == "Compte rendu"

    assert document_key(info) == ("fhir", "urn:uuid:0c3b-fictif")
    key = dedup_key(info, data, "lis@lab.test")
    assert key is not None and key[1].startswith("urn:uuid:0c3b-fictif#")
    assert key != dedup_key(info, _bundle("34133-9"), "lis@lab.test")  # the content counts


def test_the_file_name_names_a_registered_format_when_the_bytes_do_not(fhir: FhirFormat) -> None:
    data = _bundle().replace(b'"resourceType": "Bundle"', b'"type": "document", "resourceType":"Bundle"')
    assert detect_payload(data) is None
    assert read_payload(data, "export.JSON").kind == "fhir"
    with pytest.raises(UnsupportedPayload, match=r"not HPRIM, HL7 v2, CDA, PDF, IHE XDM or FHIR"):
        read_payload(data)


def test_without_it_the_format_is_unknown() -> None:
    assert "fhir" not in formats.kinds()
    assert detect_payload(_bundle()) is None
    with pytest.raises(UnsupportedPayload, match=r"unrecognised payload \(not HPRIM, HL7 v2, CDA, PDF or IHE XDM\)"):
        read_payload(_bundle())


def test_a_taken_kind_is_refused() -> None:
    class Impostor(FhirFormat):
        kind = "hl7v2"

    with pytest.raises(ValueError, match="already registered"):
        formats.register(Impostor())
    assert formats.kinds() == ("hprim", "hl7v2", "cda", "pdf", "xdm")


def test_a_signature_at_the_start_beats_a_marker_anywhere() -> None:
    """HPRIM's text-layout markers are weak evidence: bytes that start with another format's
    signature are that format, and XML that is not CDA is nothing (as before the registry)."""
    hl7_with_marker = fx.oru().replace(b"\r", b"\r****LAB****", 1)
    assert detect_payload(hl7_with_marker) == "hl7v2"
    assert detect_payload(PDF + b"****LAB****\n") == "pdf"
    assert detect_payload(b"PK\x03\x04 ****FINFICHIER****") == "xdm"
    assert detect_payload(b"<html>****LAB****</html>") is None
    assert detect_payload(b"  \r\nresultats\r\n****LAB****\r\nRES|x\r\n") == "hprim"
    assert formats.get("hprim").detect(b"\r\nTEX|hello\r\n") == MARKER


def test_each_format_says_how_it_is_wrapped() -> None:
    wrapped = {f.kind: (f.attachment_name(""), f.attachment_name("hpm"), f.report_subject, f.xdm_document,
                        f.xdm_package) for f in formats.all_formats()}
    assert wrapped == {
        "hprim": ("resultat.hpr", "resultat.hpm", "Document médical", False, False),
        "hl7v2": ("message.hl7", "message.hpm", "Compte rendu", False, False),
        "cda": ("document.xml", "document.hpm", "Compte rendu", True, False),
        "pdf": ("document.pdf", "document.hpm", "Document médical", False, False),
        "xdm": ("IHE_XDM.ZIP", "IHE_XDM.ZIP", "Compte rendu", False, True),
    }
    with pytest.raises(UnsupportedPayload):
        formats.get("dicom")


def _imports(path: Path, module: str, package: str) -> set[str]:
    """Every gateway module ``path`` imports, at module level or inside a function."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in out if m.startswith("gateway.") and m != module}


def test_routing_imports_form_no_cycle_and_readers_import_only_the_model() -> None:
    root = Path(__file__).resolve().parents[2]
    graph: dict[str, set[str]] = {}
    for path in (root / "gateway").rglob("*.py"):
        module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        graph[module] = _imports(path, module, package)
    graph = {m: {t for t in targets if t in graph} for m, targets in graph.items()}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            for t in graph[m]:
                if t == goal:
                    return True
                if t not in seen:
                    seen.add(t)
                    todo.append(t)
        return False

    routing = [m for m in graph if m.startswith("gateway.routing")]
    assert routing
    cycles = [m for m in routing if reaches(m, m)]
    assert cycles == []
    for reader in ("hprim", "hl7", "cda", "pdf", "xdm", "sidecar", "model"):
        bad = graph[f"gateway.routing.{reader}"] & {"gateway.routing.payload", "gateway.routing.formats"}
        assert not bad, f"gateway.routing.{reader} imports {bad}"
