"""Built ZAMs against the three ANS example ZAMs, field by field (ids and timestamps aside).

The examples are read from the public corpus (``MSGW_CORPUS``), never copied into the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cisis.model import ZamEvent
from gateway.cisis.zam import build_zam, parse_zam
from tests.cisis.zamdata import NOW, ORIGINAL
from tests.conftest import corpus_dir

#: MSH-7 (time), MSH-10 (our control id) and EVN-2 (event time) differ by nature.
_VARYING = {"MSH-7", "MSH-10", "EVN-2"}
_ORU = Path("ans-hl7v2/TRANS_DOC_CDA_HL7V2/V2.0/ORU/Transmission_initiale_ORU")


def _example(name: str) -> dict[str, str]:
    path = corpus_dir() / _ORU / name
    if not path.is_file():
        pytest.fail(f"corpus file missing: {path}")
    return {k: v for k, v in parse_zam(path.read_bytes()).items() if k not in _VARYING}


def _built(data: bytes) -> dict[str, str]:
    return {k: v for k, v in parse_zam(data).items() if k not in _VARYING}


def test_z01_dmp_refused_matches_the_ans_example() -> None:
    built = build_zam(ZamEvent.DMP_RECEPTION, ORIGINAL, ok=False, control_id="017", now=NOW,
                      error=("DMPClosed", "DMP fermé", "DMPERRORCODE"))
    assert _built(built) == _example("Message_metier_reception_DMP")


def test_z02_reception_matches_the_ans_example() -> None:
    built = build_zam(ZamEvent.MSS_RECEPTION, ORIGINAL, ok=True, control_id="018", now=NOW,
                      recipient_address="adam.hoda@test-ci-sis.mssante.fr", recipient_id="801234567897")
    assert _built(built) == _example("Message_metier_reception_MSS")


def test_z03_read_matches_the_ans_example() -> None:
    built = build_zam(ZamEvent.MSS_READ, ORIGINAL, ok=True, control_id="019", now=NOW,
                      recipient_address="adam.hoda@test-ci-sis.mssante.fr", recipient_id="801234567897")
    assert _built(built) == _example("Message_metier_lecture_MSS")
