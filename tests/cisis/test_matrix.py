"""The IG's MSSanté management matrix, walked over the whole flag space.

The expected answer comes from a literal transcription of the table of the IG page
``regles-gestion-mssante`` (below, written as the IG writes it), independent of
:data:`gateway.cisis.matrix.ROWS`: all 2^10 Y/N combinations of the ten flags are checked.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from gateway.cisis import matrix
from gateway.cisis.model import ALL_FLAGS, CisisError, Transmission
from gateway.cisis.reader import read_transmission
from tests.cisis.samples import INS, Spec

# The IG table as printed (one string per row; "N ou Y" / "Y ou N" mean either value).
IG_TABLE = {
    "PS+PATIENT": """MASQUE_PS : N
        INVISIBLE_PATIENT : N
        INVISIBLE_REP_LEGAUX : N
        CONNEXION_SECRETE : N ou Y
        MODIF_CONF_CODE : N ou Y
        DESTDMP : N ou Y
        DESTMSSANTEPS : Y
        DESTMSSANTEPAT : Y
        ACK_RECEPTION : N ou Y
        ACK_LECTURE_MSS : N ou Y""",
    "PS": """MASQUE_PS : N
        INVISIBLE_PATIENT : Y
        INVISIBLE_REP_LEGAUX : N
        CONNEXION_SECRETE : N ou Y
        MODIF_CONF_CODE : N ou Y
        DESTDMP : N ou Y
        DESTMSSANTEPS : Y
        DESTMSSANTEPAT : N
        ACK_RECEPTION : N ou Y
        ACK_LECTURE_MSS : N ou Y""",
    "PATIENT": """MASQUE_PS : Y ou N
        INVISIBLE_PATIENT : N
        INVISIBLE_REP_LEGAUX : N ou Y
        CONNEXION_SECRETE : N
        MODIF_CONF_CODE : N ou Y
        DESTDMP : N
        DESTMSSANTEPS : N
        DESTMSSANTEPAT : Y
        ACK_RECEPTION : N ou Y
        ACK_LECTURE_MSS : N ou Y""",
}


def _transcribed() -> dict[str, dict[str, set[str]]]:
    rows: dict[str, dict[str, set[str]]] = {}
    for name, text in IG_TABLE.items():
        cells = (line.split(":") for line in text.splitlines())
        rows[name] = {flag.strip(): {v.strip() for v in values.split("ou")} for flag, values in cells}
    return rows


TABLE = _transcribed()


def _expected(combo: dict[str, str]) -> str:
    """The row name, or "MATRIX" / "NOTHING_TO_DO" / "NOT_APPLICABLE" (DMP only)."""
    if combo["DESTMSSANTEPS"] == "N" and combo["DESTMSSANTEPAT"] == "N":
        return "NOTHING_TO_DO" if combo["DESTDMP"] == "N" else "NOT_APPLICABLE"
    listed = [name for name, row in TABLE.items() if all(combo[f] in row[f] for f in ALL_FLAGS)]
    assert len(listed) <= 1, "the IG rows do not overlap"
    return listed[0] if listed else "MATRIX"


_BASE: Transmission = read_transmission(Spec().build())


def _tx(combo: dict[str, str]) -> Transmission:
    return replace(_BASE, flags={f: v == "Y" for f, v in combo.items()})


ALL_COMBINATIONS = [dict(zip(ALL_FLAGS, values, strict=True)) for values in itertools.product("NY", repeat=10)]


def test_the_transcription_covers_every_flag() -> None:
    assert len(ALL_COMBINATIONS) == 1024
    for row in TABLE.values():
        assert set(row) == set(ALL_FLAGS)


def test_the_rows_are_the_igs() -> None:
    assert [r.name for r in matrix.ROWS] == list(TABLE)
    for row in matrix.ROWS:
        for flag in ALL_FLAGS:
            assert {("Y" if v else "N") for v in row.allowed[flag]} == TABLE[row.name][flag], (row.name, flag)
    assert [(r.to_professionals, r.to_patient) for r in matrix.ROWS] == [(True, True), (True, False), (False, True)]


def test_the_whole_flag_space() -> None:
    """Every listed combination is accepted with its row; every other is refused with the rule named."""
    seen: dict[str, int] = {}
    for combo in ALL_COMBINATIONS:
        expected = _expected(combo)
        seen[expected] = seen.get(expected, 0) + 1
        tx = _tx(combo)
        if expected in ("MATRIX", "NOTHING_TO_DO"):
            with pytest.raises(CisisError) as err:
                matrix.check(tx)
            assert err.value.rule == expected, combo
            assert INS not in str(err.value)
        else:
            row = matrix.check(tx)
            assert (row.name if row else "NOT_APPLICABLE") == expected, combo
    # 2^5 + 2^5 + 2^5 listed (five free flags per row), 2^8 with no MSSanté destination
    assert seen == {"PS+PATIENT": 32, "PS": 32, "PATIENT": 32, "NOT_APPLICABLE": 128, "NOTHING_TO_DO": 128,
                    "MATRIX": 1024 - 352}


def _combo(**changes: str) -> dict[str, str]:
    combo = dict.fromkeys(ALL_FLAGS, "N") | {"DESTMSSANTEPS": "Y", "DESTMSSANTEPAT": "Y"}
    return combo | changes


def test_a_refusal_names_the_flags_no_row_allows_with_the_destination() -> None:
    with pytest.raises(CisisError) as err:
        matrix.check(_tx(_combo(DESTMSSANTEPAT="N", INVISIBLE_PATIENT="Y", INVISIBLE_REP_LEGAUX="Y")))
    assert err.value.rule == "MATRIX" and err.value.hl7_error == "207"
    assert err.value.what == ("no row of the MSSanté management matrix allows INVISIBLE_REP_LEGAUX=Y with "
                              "DESTMSSANTEPS=Y, DESTMSSANTEPAT=N")


def test_a_refusal_points_at_the_flags_obx() -> None:
    tx = read_transmission(Spec(flags={"MASQUE_PS": "Y"}).build())
    with pytest.raises(CisisError) as err:
        matrix.check(tx)
    assert err.value.where == "OBX[3]-5"  # after the N1 and N3 documents, MASQUE_PS is the 3rd OBX
    assert "MASQUE_PS=Y" in err.value.what


def test_nothing_asked_is_refused_and_dmp_only_is_not_the_matrixs_business() -> None:
    with pytest.raises(CisisError) as err:
        matrix.check(_tx(_combo(DESTMSSANTEPS="N", DESTMSSANTEPAT="N")))
    assert err.value.rule == "NOTHING_TO_DO"
    assert matrix.check(_tx(_combo(DESTMSSANTEPS="N", DESTMSSANTEPAT="N", DESTDMP="Y", MASQUE_PS="Y"))) is None
