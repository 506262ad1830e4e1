"""The IG's management matrix for the MSSanté exchanges, as data, and its check (pure code).

Source: page ``regles-gestion-mssante`` of ``ansforge/IG-hl7v2-volet-transmission-document-cda-r2``
(HEAD of the mirror): "Le tableau présente une liste exhaustive des combinaisons possibles des OBX
pour l'échange MSSANTE. Les cas non représentés génèrent un message d'erreur." So a combination
no row lists is refused (rule ``MATRIX``), never guessed at.

Why rows are data: the IG has changed this table between versions; a new row, or a flag
allowed one more value, is one literal below, and the exhaustive test walks all 2^10
combinations against its own transcription of the table.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.cisis.model import ALL_FLAGS, CisisError, MatrixRow, Transmission

_YES = frozenset({True})
_NO = frozenset({False})
_ANY = frozenset({True, False})

#: The flags that choose the MSSanté exchange; the other flags are checked against the row they choose.
DESTINATION_FLAGS: tuple[str, ...] = ("DESTMSSANTEPS", "DESTMSSANTEPAT")


def _row(name: str, label: str, *, to_professionals: bool, to_patient: bool, **allowed: frozenset[bool]) -> MatrixRow:
    if set(allowed) != set(ALL_FLAGS):
        raise ValueError(f"matrix row {name} must give every flag")
    return MatrixRow(name=name, allowed={f: allowed[f] for f in ALL_FLAGS}, to_professionals=to_professionals,
                     to_patient=to_patient, label=label)


#: The three rows of the IG table, in its order.
ROWS: tuple[MatrixRow, ...] = (
    _row("PS+PATIENT",
         "Envoi du document sur la boite MSSanté du PS/organisation/BAL applicative du destinataire et du Patient",
         to_professionals=True, to_patient=True,
         MASQUE_PS=_NO, INVISIBLE_PATIENT=_NO, INVISIBLE_REP_LEGAUX=_NO, CONNEXION_SECRETE=_ANY,
         MODIF_CONF_CODE=_ANY, DESTDMP=_ANY, DESTMSSANTEPS=_YES, DESTMSSANTEPAT=_YES, ACK_RECEPTION=_ANY,
         ACK_LECTURE_MSS=_ANY),
    _row("PS", "Envoi du document sur la boite MSSanté du PS/organisation/BAL applicative du destinataire",
         to_professionals=True, to_patient=False,
         MASQUE_PS=_NO, INVISIBLE_PATIENT=_YES, INVISIBLE_REP_LEGAUX=_NO, CONNEXION_SECRETE=_ANY,
         MODIF_CONF_CODE=_ANY, DESTDMP=_ANY, DESTMSSANTEPS=_YES, DESTMSSANTEPAT=_NO, ACK_RECEPTION=_ANY,
         ACK_LECTURE_MSS=_ANY),
    _row("PATIENT", "Envoi du document sur la boite MSSanté du patient",
         to_professionals=False, to_patient=True,
         MASQUE_PS=_ANY, INVISIBLE_PATIENT=_NO, INVISIBLE_REP_LEGAUX=_ANY, CONNEXION_SECRETE=_NO,
         MODIF_CONF_CODE=_ANY, DESTDMP=_NO, DESTMSSANTEPS=_NO, DESTMSSANTEPAT=_YES, ACK_RECEPTION=_ANY,
         ACK_LECTURE_MSS=_ANY),
)


def _yn(value: bool) -> str:
    return "Y" if value else "N"


def _refused(row: MatrixRow, flags: Mapping[str, bool]) -> list[str]:
    """The flags whose value the row does not allow."""
    return [f for f in ALL_FLAGS if bool(flags.get(f, False)) not in row.allowed[f]]


def matching_row(flags: Mapping[str, bool], rows: tuple[MatrixRow, ...] = ROWS) -> MatrixRow | None:
    """The first row that allows every flag's value, if any."""
    return next((row for row in rows if not _refused(row, flags)), None)


def _where(tx: Transmission, names: list[str]) -> str:
    """The OBX of the first refused flag, when the reader recorded it (``OBX[n]-5``)."""
    where_of = getattr(tx.flags, "where", None)
    for name in names:
        where = where_of(name) if callable(where_of) else ""
        if where:
            return str(where)
    return "OBX MetaDMPMSS"


def _explain(flags: Mapping[str, bool], rows: tuple[MatrixRow, ...]) -> list[str]:
    """The fewest flags that no row allows together with the destination flags' values."""
    chosen = [r for r in rows if all(bool(flags.get(f, False)) in r.allowed[f] for f in DESTINATION_FLAGS)]
    candidates = [_refused(r, flags) for r in (chosen or list(rows))]
    return min(candidates, key=len) if candidates else []


def check(tx: Transmission, rows: tuple[MatrixRow, ...] = ROWS) -> MatrixRow | None:
    """The matrix row the transmission's flags match, or a :class:`CisisError`.

    None when neither DESTMSSANTEPS nor DESTMSSANTEPAT is Y: no MSSanté exchange is asked, the
    matrix does not apply (the DMP is reported elsewhere). DESTDMP, DESTMSSANTEPS and
    DESTMSSANTEPAT all N ask for nothing at all: refused (``NOTHING_TO_DO``).
    """
    flags = tx.flags
    if not any(bool(flags.get(f, False)) for f in DESTINATION_FLAGS):
        if not bool(flags.get("DESTDMP", False)):
            raise CisisError("DESTDMP, DESTMSSANTEPS and DESTMSSANTEPAT are all N: nothing to do",
                             _where(tx, ["DESTDMP", *DESTINATION_FLAGS]), rule="NOTHING_TO_DO", hl7_error="207")
        return None
    row = matching_row(flags, rows)
    if row is not None:
        return row
    refused = _explain(flags, rows)
    these = ", ".join(f"{f}={_yn(bool(flags.get(f, False)))}" for f in refused) or "this combination"
    given = ", ".join(f"{f}={_yn(bool(flags.get(f, False)))}" for f in DESTINATION_FLAGS)
    raise CisisError(f"no row of the MSSanté management matrix allows {these} with {given}",
                     _where(tx, refused), rule="MATRIX", hl7_error="207")


__all__ = ["DESTINATION_FLAGS", "ROWS", "check", "matching_row"]
