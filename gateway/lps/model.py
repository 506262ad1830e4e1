"""The shared vocabulary of the LPS volet: the ANS integration errors, the consumer's settings, the
facts of an incoming mail, what is kept of a delivered document, one built MDM.

Why one module: the transport, the store and the reporter import these names; keeping them free
of any builder means none of them pulls in the HL7/MIME code it does not need.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.routing.model import PayloadError

#: applicationErrorCondition of the IG (error-codes.md): the consumer's ERR-5 and the MDN's
#: ``processed/Error: <code>^<label>``.
LABELS: dict[str, str] = {
    "900": "Version du document incorrecte lors d'une demande de remplacement/suppression",
    "901": "Auteur non autorisé à remplacer ou supprimer un document",
    "902": "Identifiant patient inconnu",
    "903": "INS non présent dans le document",
    "904": "L'INS transmis ne correspond pas exactement à celui stocké dans la base du consommateur",
    "905": "L'INS transmis n'est pas complet",
    "906": "Erreur 'Autre'",
}


class IntegrationError(PayloadError):
    """A document the consumer must not integrate automatically; permanent (a resend changes nothing).

    ``code_ans`` is the IG code ("900".."906"), ``label`` its French label; ``what``/``where`` say
    what failed and where (never content)."""

    code = "lps-integration"

    def __init__(self, code: str, what: str, where: str = "") -> None:
        if code not in LABELS:
            raise ValueError(f"unknown ANS integration code {code!r}")
        self.code_ans = code
        self.label = LABELS[code]
        super().__init__(f"{code} {what}", where)
        self.what = what

    @property
    def error(self) -> tuple[str, str]:
        """(code, label) as `build_mdn` and `build_error_notice` take it."""
        return self.code_ans, self.label


@dataclass(frozen=True)
class ConsumerSettings:
    """One application mailbox and the consumer (DPI, RIS, practice software) behind it."""

    address: str
    application: str = "DPI"  # MSH-5
    facility: str = ""  # MSH-6
    sending_application: str = "MSGW"  # MSH-3
    sending_facility: str = ""  # MSH-4
    organisation: str = ""  # PRT RCT PRT-8 XON, e.g. "Service d'urologie^^^^^120456789^UF^^^3435"


@dataclass(frozen=True)
class IncomingMail:
    """The facts of the verified, decrypted mail; subject and body are health data (kept out of repr)."""

    message_id: str
    sender: str  # From address
    reply_to: str | None
    recipient: str  # the application mailbox (envelope)
    subject: str = field(repr=False)
    body: str = field(repr=False)
    disposition_notification_to: str | None
    return_path: str
    original_recipient: str | None


@dataclass(frozen=True)
class Delivered:
    """What the store keeps of a document delivered before (never content): enough for 900/901."""

    unique_id: str  # CDA ClinicalDocument/id as root.extension (or root)
    set_id: str  # CDA setId as root.extension
    version: int  # CDA versionNumber
    author: str  # the author's id (RPPS/ADELI...) from the CDA
    patient: str = field(repr=False)  # the INS as "<id>^^^&<oid>&ISO"
    organisation: str = ""  # the author's organisation id (for 901: same organisation may replace)
    confidentiality: tuple[str, ...] = ()  # the DMP codes (MASQUE_PS...) it was delivered with


@dataclass(frozen=True)
class Mdm:
    """One HL7 v2.6 MDM for one CDA of the archive."""

    data: bytes = field(repr=False)
    unique_id: str
    parent_id: str | None
    trigger: str  # T02, T10, T04
    delivered: Delivered
