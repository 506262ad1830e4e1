"""Which client certificates a listener lets in, by subject (SMTP relay partners, MLLP senders).

Shared by the SMTP listeners (``allowed_client_subjects``) and the MLLP listener so both read the
list the same way: an entry containing ``=`` is a whole RFC 4514 subject and must equal the
certificate's subject; any other entry is a common name and must equal one of its CNs. Why not
one set of both: a certificate whose CN *value* is ``CN=lis,O=Lab`` would otherwise match the DN
entry ``CN=lis,O=Lab``. The chain itself is verified by OpenSSL (``CERT_REQUIRED``/``OPTIONAL``
with the configured CA) before this is asked.
"""

from __future__ import annotations

from collections.abc import Iterable

from cryptography import x509


def matching_subject(der: bytes | None, allowed: Iterable[str]) -> str | None:
    """The entry of ``allowed`` the DER certificate's subject matches (the partner's name), or None."""
    if not der:
        return None
    try:
        subject = x509.load_der_x509_certificate(der).subject
        dn = subject.rfc4514_string()
        cns = {str(a.value) for a in subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)}
    except ValueError:  # accepted by OpenSSL but unreadable here: not one we can match
        return None
    return next((entry for entry in allowed if ((entry == dn) if "=" in entry else (entry in cns))), None)


def subject_allowed(der: bytes | None, allowed: Iterable[str]) -> bool:
    """True when the DER certificate's subject matches one entry of ``allowed``."""
    return matching_subject(der, allowed) is not None


__all__ = ["matching_subject", "subject_allowed"]
