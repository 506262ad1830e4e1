"""Typed refusals of the S/MIME engine.

Every refusal reason has its own class (and stable `code`) so callers, the SMTP layer and
tests can tell an expired certificate from a tampered body without parsing messages.
Messages say what failed, never message content or health data.
"""

from __future__ import annotations

from gateway.errors import PermanentError, TemporaryError


class SmimeError(PermanentError):
    """Base of every S/MIME engine error."""

    code = "smime"
    status = "5.7.5"


class MalformedSmime(SmimeError):
    """The CMS or MIME structure could not be parsed (garbage, truncated, unsupported layout)."""

    code = "smime-malformed"
    status = "5.6.0"


class UnsupportedAlgorithm(SmimeError):
    """An algorithm we do not accept (weak or unknown)."""

    code = "smime-unsupported-algorithm"
    status = "5.7.7"


class KeyLoadError(SmimeError):
    """A key or certificate file could not be read (wrong password, wrong format)."""

    code = "smime-key-load"
    status = "5.7.0"


class NotForUs(SmimeError):
    """The enveloped message has no recipient matching any key we hold."""

    code = "smime-not-for-us"
    status = "5.7.5"


class DecryptionFailed(SmimeError):
    """Generic decryption failure (one message for every cause: RFC 3218, no padding oracle)."""

    code = "smime-decryption-failed"
    status = "5.7.5"


class SignatureInvalid(SmimeError):
    """The signature over the signed attributes (or content) does not verify."""

    code = "smime-bad-signature"
    status = "5.7.7"


class ContentTampered(SignatureInvalid):
    """The content digest does not match the messageDigest signed attribute."""

    code = "smime-content-tampered"


class CertificateRefused(SmimeError):
    """The signer's certificate or its chain is not acceptable."""

    code = "smime-certificate"
    status = "5.7.7"


class CertificateExpired(CertificateRefused):
    code = "smime-cert-expired"


class CertificateNotYetValid(CertificateRefused):
    code = "smime-cert-not-yet-valid"


class CertificateRevoked(CertificateRefused):
    code = "smime-cert-revoked"


class UnknownIssuer(CertificateRefused):
    """No path from the signer certificate to a trust anchor in the store."""

    code = "smime-unknown-issuer"


class WrongKeyUsage(CertificateRefused):
    """Key usage / extended key usage do not allow this use (signing or encryption)."""

    code = "smime-wrong-key-usage"


class SignerCertificateMissing(CertificateRefused):
    """The signer certificate is neither in the CMS nor in the store."""

    code = "smime-signer-cert-missing"


class RevocationUnavailable(CertificateRefused):
    """No fresh revocation information could be obtained (hard-fail policy)."""

    code = "smime-revocation-unavailable"


class SignerMismatch(SmimeError):
    """The signer's certificate does not name the From address (or identifier) of the message."""

    code = "smime-signer-mismatch"
    status = "5.7.1"


class CrlFetchError(TemporaryError):
    """A CRL could not be downloaded right now (network): retry later."""

    code = "smime-crl-fetch"
    status = "4.7.5"


class NotSigned(SmimeError):
    """Verification was asked for a message that carries no signature."""

    code = "smime-not-signed"
    status = "5.7.1"


class WeakAlgorithm(SmimeError):
    """The message opened and verified, but relies on an algorithm the policy refuses
    (`[policy] weak_algorithms = "refuse"`): 3DES content encryption, a signer key under 2048 bits."""

    code = "weak-algorithm"
    status = "5.7.6"
