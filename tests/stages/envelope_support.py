"""What leaves around an envelope: a message with a marker in every kind of header, and the
checks that nothing but the outer allow-list shows outside while every original header is
still there inside. Shared by the stage tests and the end-to-end trust battery."""

from __future__ import annotations

import base64
import email
import email.policy
import re
import subprocess
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from pathlib import Path
from typing import Any

from gateway.errors import PermanentError
from gateway.legacy.keystore import ApicryptKeyStore
from gateway.smime.engine import unwrap_message
from gateway.smime.testpki import ORG_EMAIL, TestPKI
from gateway.stages.context import RecipientView
from tests.stages.test_protection import Ctx, _key

#: The only header fields a protected copy may show outside its envelope.
ALLOWED_OUTSIDE = frozenset({"from", "to", "cc", "date", "message-id", "subject", "mime-version", "content-type",
                             "content-transfer-encoding", "content-disposition", "disposition-notification-to"})
LEGACY_DOCTOR = "dr.legacy@medical99.apicrypt.org"
LEGACY_LAB = "labo.test@medical99.apicrypt.org"
ATTACHMENT = "CR_MRK-FILENAME_DUPONT.pdf"
PDF = b"%PDF-1.4\n% TEST document, invented patient\n%%EOF\n"
BODY = "Glycémie 5,4 mmol/l - MRK-BODY, patiente inventée\r\n"
#: Every kind of header a LIS or a mail client puts on a result, each with its own marker.
#: (name, raw field bytes, marker); the raw 8-bit one is sent as UTF-8 bytes, not RFC 2047.
MARKED_FIELDS: tuple[tuple[str, bytes, str], ...] = (
    ("date", b"Date: Wed, 25 Nov 2026 09:00:00 +0100 (MRK-DATE Resultat DUPONT Jeanne)\r\n", "MRK-DATE"),
    ("subject", b"Subject: =?utf-8?q?R=C3=A9sultat_MRK-SUBJECT_de_Mme_DUPONT?=\r\n", "MRK-SUBJECT"),
    ("message-id", b"Message-ID: <MRK-MSGID.4412@labo-tests.sante.test>\r\n", "MRK-MSGID"),
    ("in-reply-to", b"In-Reply-To: <MRK-INREPLYTO.77@cabinet-parc.sante.test>\r\n", "MRK-INREPLYTO"),
    ("references", b"References: <first.1@cabinet-parc.sante.test>\r\n <MRK-REFERENCES.2@cabinet-parc.sante.test>\r\n",
     "MRK-REFERENCES"),
    ("x-patient-name", b"X-Patient-Name: MRK-XPATIENT DUPONT Jeanne\r\n", "MRK-XPATIENT"),
    ("comments", b"Comments: MRK-COMMENTS dossier 2026-118\r\n", "MRK-COMMENTS"),
    ("keywords", b"Keywords: MRK-KEYWORDS, glycemie\r\n", "MRK-KEYWORDS"),
    ("thread-topic", b"Thread-Topic: MRK-THREADTOPIC suivi diabete\r\n", "MRK-THREADTOPIC"),
    ("organization", b"Organization: MRK-ORGANIZATION service diabetologie\r\n", "MRK-ORGANIZATION"),
    ("reply-to", b"Reply-To: MRK-REPLYTO <secretariat@labo-tests.sante.test>\r\n", "MRK-REPLYTO"),
    ("disposition-notification-to",
     b'Disposition-Notification-To: "MRK-DNT Secretariat" <labo@labo-tests.sante.test>\r\n', "MRK-DNT"),
    ("received", b"Received: from lis.labo-tests.sante.test (MRK-RECEIVED [10.1.2.3])\r\n"
                 b"\tby labo-tests.sante.test; Wed, 25 Nov 2026 08:59:00 +0100\r\n", "MRK-RECEIVED"),
    ("x-raw-8bit", "X-Raw-8bit: Résultat MRK-RAW8BIT établi\r\n".encode(), "MRK-RAW8BIT"),
    ("x-long-folded", b"X-Long-Folded: MRK-LONGFOLDED" + b"".join(b"\r\n\tsegment-%02d of a long folded header" % i
                                                                  for i in range(12)) + b"\r\n", "MRK-LONGFOLDED"),
)
#: A part-level header of the attachment (a LIS or a legacy client names the document there).
DESCRIPTION = b"Content-Description: MRK-DESCRIPTION compte rendu DUPONT Jeanne\r\n"
#: What a client that encrypts itself may write on its own envelope (name, filename, a parameter).
ENVELOPE_MARKER = "MRK-ENVNAME"
MARKERS = tuple(m for _, _, m in MARKED_FIELDS) + ("MRK-FILENAME", "MRK-DESCRIPTION", ENVELOPE_MARKER)
#: Never copied anywhere: a blind copy must stay blind.
BCC = b"Bcc: <MRK-BCC@ailleurs.sante.test>\r\n"


def marked_message(sender: str, to: str, *, raw_from_name: bool = True) -> bytes:
    """A multipart result with a PDF attachment and a marker in every header kind (8-bit included)."""
    name = "Laboratoire TEST Élise".encode() if raw_from_name else b"Laboratoire TEST"
    head = (b"From: " + name + f" <{sender}>\r\nTo: Dr TEST <{to}>\r\n".encode()
            + b"".join(f for _, f, _ in MARKED_FIELDS) + BCC
            + b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b-4412\"\r\n\r\n")
    body = (b"--b-4412\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            + BODY.encode() + b"--b-4412\r\nContent-Type: application/pdf; name=\"" + ATTACHMENT.encode()
            + b"\"\r\nContent-Disposition: attachment; filename=\"" + ATTACHMENT.encode()
            + b"\"\r\n" + DESCRIPTION + b"Content-Transfer-Encoding: base64\r\n\r\n"
            + base64.encodebytes(PDF).replace(b"\n", b"\r\n")
            + b"--b-4412--\r\n")
    return head + body


def client_sealed(message: bytes, cert: Any) -> bytes:
    """`message` encrypted by its client, whose envelope carries a name, a filename and an extra
    parameter of its own choosing (as some clients name it after the document)."""
    from gateway.smime.engine import encrypt_message

    sealed = encrypt_message(message, [cert])
    own = f'name="{ENVELOPE_MARKER}_DUPONT.p7m"; x-document="{ENVELOPE_MARKER} CR DUPONT"'.encode()
    sealed = sealed.replace(b'name="smime.p7m"', own, 1)
    return sealed.replace(b'filename="smime.p7m"', f'filename="{ENVELOPE_MARKER}_DUPONT.p7m"'.encode(), 1)


def with_part_description(legacy: bytes) -> bytes:
    """A legacy client's armored message whose attachment part describes the document in a
    `Content-Description` header (outside the armor)."""
    return legacy.replace(b"Content-Disposition: attachment", DESCRIPTION + b"Content-Disposition: attachment", 1)


def header_block(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[0] + b"\r\n"


def field_names(block: bytes) -> list[str]:
    return [line.split(b":", 1)[0].decode("ascii", "replace").lower() for line in block.split(b"\r\n")
            if line and line[:1] not in (b" ", b"\t")]


def without_armor(raw: bytes) -> bytes:
    """The bytes of a legacy message outside its #BINASCII1# armor blocks."""
    return re.sub(rb"#BINASCII1#.*?#ENDBINASCII1#", b"", raw, flags=re.S)


@dataclass(frozen=True)
class Outside:
    """What an outside observer sees of one copy: the header names, and the markers leaked."""

    names: list[str]
    leaked: list[str]
    eight_bit: bool
    unexpected: set[str]

    @property
    def clean(self) -> bool:
        return not self.leaked and not self.eight_bit and not self.unexpected


def outside(raw: bytes, clear: bytes | None = None) -> Outside:
    """`clear`: the part of `raw` that is not ciphertext (default all of it: base64 CMS has no '-')."""
    block = header_block(raw)
    names = field_names(block)
    visible = raw if clear is None else clear
    leaked = [m for m in MARKERS if m.encode() in visible] + (["MRK-BCC"] if b"MRK-BCC" in raw else [])
    return Outside(names, leaked, not block.isascii(), set(names) - ALLOWED_OUTSIDE)


def decoded_headers(entity: bytes) -> str:
    """Every header of an entity with RFC 2047 words decoded (how a reader's client shows them)."""
    msg = email.message_from_bytes(entity, policy=email.policy.compat32)
    out = []
    for name, value in msg.items():
        try:
            out.append(f"{name}: {make_header(decode_header(str(value)))}")
        except (UnicodeError, LookupError, email.errors.HeaderParseError):
            out.append(f"{name}: {value}")
    return "\n".join(out)


def missing_inside(entity: bytes) -> list[str]:
    """The markers of MARKED_FIELDS that the protected entity's headers do not carry."""
    text = decoded_headers(entity)
    return [m for _, _, m in MARKED_FIELDS if m not in text]


def openssl_open(openssl: str, pki: TestPKI, raw: bytes, folder: Path, recipient: str = "person_encrypt",
                 tag: str = "x") -> tuple[bytes, bytes, bytes]:
    """(signed entity, content, signer PEM) of an S/MIME copy: `openssl cms -decrypt` then `-verify`."""
    enc, signed = folder / f"{tag}-enc.eml", folder / f"{tag}-signed.eml"
    enc.write_bytes(raw)
    r = pki[recipient]
    dec = subprocess.run([openssl, "cms", "-decrypt", "-in", str(enc), "-recip", str(r.cert_path), "-inkey",
                          str(r.key_path), "-out", str(signed)], capture_output=True)
    assert dec.returncode == 0, dec.stderr
    content_bytes, signer_pem = openssl_verify(openssl, pki, signed.read_bytes(), folder, tag=tag)
    return signed.read_bytes(), content_bytes, signer_pem


def openssl_verify(openssl: str, pki: TestPKI, signed: bytes, folder: Path, tag: str = "x") -> tuple[bytes, bytes]:
    """(content, signer PEM) of a signed message, by `openssl cms -verify` against the TEST anchors."""
    path, content, signer = (folder / f"{tag}-{n}" for n in ("verify.eml", "verified.eml", "verified-signer.pem"))
    path.write_bytes(signed)
    ca = folder / "ca.pem"
    ca.write_bytes(b"".join(p.read_bytes() for p in sorted(pki.trust_dir.iterdir())))
    ver = subprocess.run([openssl, "cms", "-verify", "-in", str(path), "-CAfile", str(ca), "-purpose", "any",
                          "-signer", str(signer), "-out", str(content)], capture_output=True)
    assert ver.returncode == 0, ver.stderr
    return content.read_bytes(), signer.read_bytes()


def signer_subject(openssl: str, pem: bytes, folder: Path) -> str:
    path = folder / "signer-subject.pem"
    path.write_bytes(pem)
    return subprocess.run([openssl, "x509", "-noout", "-subject", "-in", str(path)], capture_output=True,
                          text=True).stdout


def signer_emails(openssl: str, pem: bytes, folder: Path) -> list[str]:
    """The e-mail addresses `openssl x509 -email` reads in the signer's certificate."""
    path = folder / "signer-email.pem"
    path.write_bytes(pem)
    out = subprocess.run([openssl, "x509", "-noout", "-email", "-in", str(path)], capture_output=True, text=True)
    return [line.strip().lower() for line in out.stdout.splitlines() if line.strip()]


def delivered_from(content: bytes) -> list[str]:
    """The From addresses of a (protected) entity, read by the stdlib's strict parser."""
    msg = email.message_from_bytes(content, policy=email.policy.default)
    return [a.addr_spec.lower() for f in msg.get_all("From") or [] for a in f.addresses]


@dataclass
class BridgeCtx(Ctx):
    """The real-key context of `test_protection` plus a legacy bridge: Apicrypt key files, the
    legacy listeners, the organisation key that signs bridged mail, and keys per account."""

    keys_dir: Path | None = None
    legacy_listeners: tuple[str, ...] = ("legacy",)
    legacy_senders: tuple[str, ...] = ()
    bridge_key: str = "other_sign"
    account_keys: dict[str, str] = field(default_factory=lambda: {ORG_EMAIL: "org_sign"})

    def recipient(self, address: str) -> RecipientView:
        if address == LEGACY_DOCTOR or address in self.legacy_senders:
            return RecipientView(address, "legacy:apicrypt1", address.partition("@")[0])
        return super().recipient(address)

    async def encryption_certificates(self, address: str) -> list:
        if address.endswith("apicrypt.org"):
            raise PermanentError(f"directory: no certificate for {address}")
        return await super().encryption_certificates(address)

    async def signing_key(self, identity: str | None) -> Any:
        name = self.account_keys.get(identity or "")
        return _key(self.pki, name) if name else None

    def legacy_keys(self, codec: str) -> Any:
        return ApicryptKeyStore(self.keys_dir, identities=["msgw.bridge"]) if codec == "apicrypt1" else None

    def legacy_identity(self, codec: str) -> str:
        return "msgw.bridge"

    def legacy_id(self, address: str, codec: str) -> str:
        return address.partition("@")[0]

    def bridges_from(self, listener: str, sender: str) -> bool:
        return listener in self.legacy_listeners or sender in self.legacy_senders

    async def bridge_signing_key(self) -> Any:
        return _key(self.pki, self.bridge_key)

    async def bridge_unwrap(self, data: bytes) -> Any:
        return await unwrap_message(data, keys=[_key(self.pki, "org_encrypt")], verifier=self.verifier)
