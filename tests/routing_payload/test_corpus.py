"""Public samples (MSGW_CORPUS, set by .ci/run): every HPRIM/HL7/CDA/XDM file parses or raises only PayloadError.

Skipped when MSGW_CORPUS is unset (the normal suite uses invented data); in CI a MSGW_CORPUS
that points to a missing folder fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.routing.model import PayloadError
from gateway.routing.payload import read_payload
from tests.conftest import corpus_dir

_CORPUS = os.environ.get("MSGW_CORPUS", "")
_SUBDIRS = ("hprim", "hl7v2", "cda")


def _corpus() -> Path:
    return corpus_dir()


def _files() -> list[str]:
    if not _CORPUS or not Path(_CORPUS).is_dir():
        return ["<none>"]
    return sorted(str(p.relative_to(_CORPUS)) for sub in _SUBDIRS for p in (Path(_CORPUS) / sub).glob("*")
                  if p.is_file()) or ["<none>"]


@pytest.mark.parametrize("name", _files())
def test_sample_parses_or_raises_payload_error(name: str) -> None:
    root = _corpus()
    if name == "<none>":
        pytest.fail(f"no sample under {root}/{{hprim,hl7v2,cda}}")
    path = root / name
    try:
        info = read_payload(path.read_bytes(), path.name)
    except PayloadError as exc:
        assert exc.where, f"{name}: error without a location"
        return
    assert info.kind in ("hprim", "hl7v2", "cda", "pdf", "xdm")
    assert info.document_type.code
    for p in info.patient_ids:  # national identifiers never leak through repr (local ids may be short)
        if p.kind.startswith(("INS", "NIR")):
            assert p.value not in repr(info)


# What the samples are known to say (checked by hand against the files).
EXPECTED = {
    "cda/ansforge_LDL-SES_2022.01.xml": ("cda", "11490-0", "801234567897", ["801234567897", "801234567896"]),
    "cda/ansforge_BIO-CR-BIO_2024.01_TSH_1.xml": ("cda", "11502-2", "801234534765", []),
    "cda/ansforge_BIO-TROD_2024.01_COVID-19.xml": ("cda", "96173-0", "807655473259", ["801234567897"]),
    "hl7v2/ansforge_ORU_R01_CR-BIO_N1_N3_init_v2.1.hl7": ("hl7v2", "ORU^R01", "801234567866", ["801234567897"]),
    "hl7v2/ansforge_MDM_T02_LPS_from_MSSante_v1.0.hl7": ("hl7v2", "MDM^T02", "801234567897", []),
    "hprim/libHprim_test_HPRIMSante_H2.1_ORU_with_A_continuation.hpr": ("hprim", "ORU", "LABM", ["PILO"]),
    "hprim/hl7eu_synthetic_HPRIM_H2.1_ORU_HL7-style-delims.hpr": ("hprim", "ORU", "LAB", ["UNIT"]),
    "hprim/hprimtool_fixture_header-solabio_HPRIM-medecin.hpm": ("hprim", "HPRIM-MEDECIN", "SOLABIO", ["MARTPA"]),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_known_samples(name: str) -> None:
    root = _corpus()
    path = root / name
    if not path.exists():
        pytest.fail(f"sample {name} missing from {root}")
    kind, doc_type, author, recipients = EXPECTED[name]
    info = read_payload(path.read_bytes(), path.name)
    assert info.kind == kind
    assert info.document_type.code == doc_type
    assert info.author is not None and info.author.value == author
    values = [r.value for r in info.recipients if r.id_type != "ADDRESS"]
    for value in recipients:
        assert value in values


def test_segur_oru_embeds_its_cda() -> None:
    root = _corpus()
    path = root / "hl7v2/ansforge_ORU_R01_CR-BIO_N3_SEGUR_init.hl7"
    if not path.exists():
        pytest.fail(f"sample missing from {root}")
    info = read_payload(path.read_bytes())
    assert info.ins is not None and info.ins.kind == "INS-NIR-TEST"
    assert [e.document_type.code for e in info.embedded] == ["11502-2"]
    assert any(r.address == "adam.hoda@test-ci-sis.mssante.fr" for r in info.recipients)


def test_direct_xdm_sample() -> None:
    root = _corpus()
    path = root / "cda/direct_samplexdm_IHE_XDM.zip"
    if not path.exists():
        pytest.fail(f"sample missing from {root}")
    info = read_payload(path.read_bytes(), path.name)
    assert info.kind == "xdm" and info.embedded[0].document_type.code == "34133-9"
    assert info.recipients[0].address == "beau@nologs.org"
