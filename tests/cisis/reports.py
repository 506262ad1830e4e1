"""Real reports for the CI-SIS return tests: a DSN built by msgw's own DSN builder (an RFC 3464
peer), MDNs in the MSSanté form (trans-lps IG struct-msg-mdn), optionally signed by openssl."""

from __future__ import annotations

import datetime as dt
import subprocess

from gateway.delivery.dsn import RecipientReport, build_dsn

ORIGINAL_MAIL = (b"From: bal-applicative@pfi.test-ci-sis.mssante.fr\r\n"
                 b"To: adam.hoda@test-ci-sis.mssante.fr\r\n"
                 b"Subject: TEST CR\r\n"
                 b"Message-ID: <copy-1@pfi.test>\r\n"
                 b"Content-Type: text/plain\r\n\r\nTEST body\r\n")


def dsn(action: str = "failed", status: str = "5.1.1", diagnostic: str | None = "smtp; 550 5.1.1 user unknown",
        recipient: str = "adam.hoda@test-ci-sis.mssante.fr", original: bytes = ORIGINAL_MAIL) -> bytes:
    now = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    return build_dsn(original=original, envelope_id="Q123", envelope_from="bal-applicative@pfi.test-ci-sis.mssante.fr",
                     reporting_mta="mx.test", arrival=now, now=now,
                     recipients=[RecipientReport(recipient, action, status, diagnostic)])  # type: ignore[arg-type]


def mdn(disposition: str = "manual-action/MDN-sent-manually; displayed",
        recipient: str = "adam.hoda@test-ci-sis.mssante.fr", message_id: str = "<copy-1@pfi.test>",
        extra: str = "") -> bytes:
    return ("From: adam.hoda@test-ci-sis.mssante.fr\r\n"
            "To: bal-applicative@pfi.test-ci-sis.mssante.fr\r\n"
            "Subject: Accusé de lecture\r\n"
            "MIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=disposition-notification; boundary="b1"\r\n\r\n'
            "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nLe message a été lu.\r\n"
            "--b1\r\nContent-Type: message/disposition-notification\r\n\r\n"
            "Reporting-UA: mail.test; TEST\r\n"
            f"Original-Recipient: rfc822;{recipient}\r\n"
            f"Final-Recipient: rfc822;{recipient}\r\n"
            f"Original-Message-ID: {message_id}\r\n"
            f"Disposition: {disposition}\r\n{extra}\r\n"
            "--b1--\r\n").encode()


def signed(data: bytes, signer_cert: str, signer_key: str, openssl: str) -> bytes:
    """``data`` as the content of a multipart/signed made by openssl (an independent peer)."""
    out = subprocess.run([openssl, "smime", "-sign", "-signer", signer_cert, "-inkey", signer_key, "-crlfeol"],
                         input=data, capture_output=True, check=True)
    return out.stdout
