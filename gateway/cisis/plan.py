"""What msgw does with one transmission: which MSSanté copies, who is left out and why, which
business acknowledgments (ZAM) the CRÉATEUR will get. Pure: a `Transmission` and the settings
in, a `Plan` out, or a `CisisError` naming the rule — the same answer for `msgw payload plan`,
the MLLP listener, the drop folders and `msgw send`.

Rules, in the IG's words where it has them (``regles-gestion-mssante.md``, ``mapping-mss.md``):
- the flag matrix (`gateway.cisis.matrix`) says whether the professionals, the patient, or both
  receive the document; a combination it does not list is refused (`rule="MATRIX"`);
- one message for the professionals (PS, organisations, application mailboxes: they share
  ``DESTMSSANTEPS`` and ``CORPSMAIL_PS``), one for the patient (``CORPSMAIL_PATIENT``,
  ``X-MSS-MES: FIN`` when asked); Ref#2 ECO.2.1.1: one patient per message;
- a patient copy needs a qualified INS (PID-3 INS OID, PID-32 ``VALI``, the traits); asked for
  and impossible, the transmission is refused (`INS_NOT_QUALIFIED`) rather than half-sent: the
  CRÉATEUR resends it corrected, nobody gets a partial set;
- a recipient listed while its flag says no (``DESTMSSANTEPS = N``, ``DESTMSSANTEPAT = N``) is
  left out, and the plan says why: the flag is the CRÉATEUR's statement of intent;
- ZAMs owed: ``Z01`` when ``DESTDMP = Y`` (the DMP connector is not part of msgw: reported as
  not performed, never silently), ``Z02`` per recipient when ``ACK_RECEPTION = Y``, ``Z03`` per
  recipient when ``ACK_LECTURE_MSS = Y``; owing any without a configured CRÉATEUR endpoint is
  refused (`NO_RETURN_ENDPOINT`): an acknowledgment must never be lost.
"""

from __future__ import annotations

from gateway.cisis.matrix import check
from gateway.cisis.model import (
    CisisError,
    CopyPlan,
    OwedZam,
    Plan,
    Recipient,
    RecipientKind,
    Transmission,
    ZamEvent,
)
from gateway.config.cisis import CisisSettings, CreatorSettings

PROFESSIONAL = "professional"
PATIENT = "patient"


def _professional_copy(tx: Transmission, pros: list[Recipient]) -> CopyPlan:
    if not pros:
        raise CisisError("DESTMSSANTEPS=Y but no PRT RCT names a professional, organisation or application "
                         "mailbox", "PRT", rule="NO_PROFESSIONAL_RECIPIENT", hl7_error="101")
    return CopyPlan(kind=PROFESSIONAL, recipients=tuple(pros), body_code="CORPSMAIL_PS",
                    read_receipt=tx.flag("ACK_LECTURE_MSS"))


def _patient_copy(tx: Transmission, patients: list[Recipient]) -> CopyPlan:
    if not patients:
        raise CisisError("DESTMSSANTEPAT=Y but no PRT RCT names the patient's mailbox", "PRT",
                         rule="NO_PATIENT_RECIPIENT", hl7_error="101")
    if len({p.address for p in patients}) > 1:
        raise CisisError("more than one patient mailbox: a message concerns one patient", patients[1].where,
                         rule="PATIENT_RECIPIENTS")
    if not tx.patient.qualified:
        raise CisisError("DESTMSSANTEPAT=Y but the patient's INS is not qualified (INS OID, PID-32 VALI and the "
                         "identity traits are required)", "PID", rule="INS_NOT_QUALIFIED")
    return CopyPlan(kind=PATIENT, recipients=(patients[0],), body_code="CORPSMAIL_PATIENT",
                    read_receipt=tx.flag("ACK_LECTURE_MSS"), no_reply=tx.no_reply)


def _why_not(tx: Transmission, patient: bool) -> str:
    if patient:
        if tx.flag("INVISIBLE_PATIENT"):
            return "INVISIBLE_PATIENT=Y: the document is not shown to the patient"
        return "DESTMSSANTEPAT=N: no copy to the patient was asked"
    if tx.flag("MASQUE_PS"):
        return "MASQUE_PS=Y: the document is masked from professionals"
    return "DESTMSSANTEPS=N: no copy to professionals was asked"


def owed_zams(tx: Transmission, copies: tuple[CopyPlan, ...]) -> tuple[OwedZam, ...]:
    """The ZAMs this transmission owes its CRÉATEUR, in the order they can come."""
    out: list[OwedZam] = []
    if tx.flag("DESTDMP"):
        out.append(OwedZam(ZamEvent.DMP_RECEPTION, None, "at once: the DMP is not fed by msgw (not performed)"))
    addresses = [r.address for c in copies for r in c.recipients]
    if tx.flag("ACK_RECEPTION"):
        out += [OwedZam(ZamEvent.MSS_RECEPTION, a, "when the next hop accepts or refuses the copy (or a DSN "
                                                    "reports a later failure)") for a in addresses]
    if tx.flag("ACK_LECTURE_MSS"):
        out += [OwedZam(ZamEvent.MSS_READ, a, "when the recipient's read notification (MDN) comes back")
                for a in addresses]
    return tuple(out)


def creator_of(tx: Transmission, settings: CisisSettings) -> CreatorSettings | None:
    return settings.creator_for(tx.header.sending_application, tx.header.sending_facility)


def plan_transmission(tx: Transmission, settings: CisisSettings) -> Plan:
    """The plan for ``tx`` (see the module docstring); `CisisError` when it must be refused."""
    if not settings.enabled:
        raise CisisError("this gateway does not serve the CI-SIS CDA-in-HL7v2 profile (no [intake.cisis] "
                         "application_mailbox)", "MSH-21", rule="PROFILE_NOT_SERVED", hl7_error="200")
    row = check(tx)
    pros = [r for r in tx.recipients if r.kind is not RecipientKind.PATIENT]
    patients = [r for r in tx.recipients if r.kind is RecipientKind.PATIENT]
    copies: list[CopyPlan] = []
    left_out: list[tuple[Recipient, str]] = []
    if row is not None and row.to_professionals:
        copies.append(_professional_copy(tx, pros))
    else:
        left_out += [(r, _why_not(tx, False)) for r in pros]
    if row is not None and row.to_patient:
        copies.append(_patient_copy(tx, patients))
    else:
        left_out += [(r, _why_not(tx, True)) for r in patients]
    zams = owed_zams(tx, tuple(copies))
    creator = creator_of(tx, settings)
    if zams and creator is None:
        raise CisisError("acknowledgments are owed but no CRÉATEUR is configured for this sending application "
                         "and facility ([intake.cisis.creators])", "MSH-3", rule="NO_RETURN_ENDPOINT")
    notes = list(tx.warnings)
    if row is None:
        notes.append("no MSSanté exchange asked (DESTMSSANTEPS=N, DESTMSSANTEPAT=N)")
    return Plan(transmission=tx, row=row, copies=tuple(copies), left_out=tuple(left_out), zams=zams,
                notes=tuple(notes))


__all__ = ["PATIENT", "PROFESSIONAL", "creator_of", "owed_zams", "plan_transmission"]
