"""Who may send as whom: the sender addresses an authenticated identity may use.

Decided from what was authenticated — an account's login, a relay partner's client
certificate, an intake channel the operator configured — never from an address a client
typed. The same identity then chooses the signing key (`PolicyConfig.signing_key_name`), so
a login without a key of its own cannot borrow one by writing someone else's MAIL FROM or
From: (Postfix's `reject_sender_login_mismatch` does the first half of this).

Pure: the server gives it the account or the certificate and the message's header block, read
strictly by `gateway.rawmime.header_fields` (a line that is no field is an error, not skipped).
The claim check runs on every message from a bound identity, so its common case (a header block
of plain CRLF lines; one mailbox per field: `addr`, `<addr>`, `Name <addr>`, `"Name" <addr>`)
is read by two regexes instead (issue 15: the stdlib's character-by-character address parser
was a tenth of a small message's accept CPU); anything else takes the full readers, whose
answer the fast one must equal (tests/unit/test_sender_claims.py compares them).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from email.utils import getaddresses
from typing import Literal

from cryptography import x509

from gateway.config import Account, GatewayConfig, ListenerConfig, is_domain
from gateway.errors import MalformedInput
from gateway.rawmime import MAX_HEADER_BLOCK, header_fields, unfold

IdentityKind = Literal["account", "partner", "network"]
#: Header fields that name the author or the sender of a message (RFC 5322 3.6.2).
CLAIM_FIELDS = ("from", "sender")


@dataclass(frozen=True)
class SenderIdentity:
    """An authenticated identity and the addresses (or `@domain` patterns) it may use.

    `name` is what the spool records as the message's `auth_user` and what `[policy.sign_with]`
    is keyed by: the account name, `partner:<subject>` for a relay partner, `network:<listener>`
    for the clients of a trusted network that the listener binds with `senders`."""

    kind: IdentityKind
    name: str
    senders: tuple[str, ...]

    def may_use(self, address: str) -> bool:
        address = address.strip().lower()
        if not address or "@" not in address:
            return False
        domain = "@" + address.rpartition("@")[2]
        return any(address == s or domain == s for s in self.senders)


def account_identity(account: Account) -> SenderIdentity:
    return SenderIdentity("account", account.username, account.senders)


def network_identity(listener: ListenerConfig) -> SenderIdentity | None:
    """The clients a listener trusts by network (an internal mail server), when the listener lists
    the senders they may use; None (unbound, never signing) when it does not."""
    if not listener.senders:
        return None
    return SenderIdentity("network", f"network:{listener.name}", listener.senders)


def partner_identity(config: GatewayConfig, subject: str, certificate_der: bytes | None) -> SenderIdentity:
    """A relay partner matched by `subject` (an `allowed_client_subjects` entry).

    Its senders are `[partners."<subject>"] senders` when configured; otherwise only the
    names its own certificate carries: its rfc822Name addresses, and `@name` for each DNS
    name (subjectAltName dNSName, or a CN that is a domain name)."""
    configured = config.partner(subject)
    if configured is not None:
        senders = configured.senders
    else:
        senders = certificate_senders(certificate_der) if certificate_der else ()
    return SenderIdentity("partner", f"partner:{subject}", senders)


def certificate_senders(der: bytes) -> tuple[str, ...]:
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return ()
    out: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        out += [a.lower() for a in san.get_values_for_type(x509.RFC822Name)]
        out += ["@" + d.lower() for d in san.get_values_for_type(x509.DNSName) if is_domain(d)]
    except x509.ExtensionNotFound:
        pass
    for attr in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME):
        value = str(attr.value).lower()
        if is_domain(value) and "." in value:
            out.append("@" + value)
    return tuple(dict.fromkeys(out))


def claimed_senders(message: bytes) -> list[str]:
    """The addresses a message's From: and Sender: fields claim (lowercased).

    Raises MalformedInput for what a reader could see two ways: several From: or Sender:
    fields, a field that names no readable address, or an unreadable header block."""
    claims = _plain_claims(message)
    if claims is None:  # not plain CRLF field lines: the strict reader decides (and raises)
        fields = header_fields(message)
        claims = [[value for field, value in fields if field == name] for name in CLAIM_FIELDS]
    out: list[str] = []
    for name, values in zip(CLAIM_FIELDS, claims, strict=True):
        if len(values) > 1:
            raise MalformedInput(f"several {name.title()}: fields", "message header")
        for value in values:
            addresses = _addresses(value)
            if not addresses or any("@" not in a for a in addresses):
                raise MalformedInput(f"unreadable {name.title()}: field", "message header")
            out += addresses
    return out


# A header block `header_fields` reads without a doubt: a field line first, then field lines and
# continuation lines, CRLF between them and no CR or LF elsewhere (possessive: linear, no
# backtracking into a 256 KiB block). Its fields' names cannot contain a colon, so a From or
# Sender field is a line start, the name, blanks, a colon.
_PLAIN_BLOCK = re.compile(rb"[!-9;-~]++[ \t]*+:[^\r\n]*+(?:\r\n(?:[ \t][^\r\n]*+|[!-9;-~]++[ \t]*+:[^\r\n]*+))*+")
_CLAIM_VALUE = rb"[ \t]*:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)"
_FIRST_CLAIM = re.compile(rb"(from|sender)" + _CLAIM_VALUE, re.IGNORECASE)  # the first line
_NEXT_CLAIM = re.compile(rb"\n(from|sender)" + _CLAIM_VALUE, re.IGNORECASE)  # the others (a literal first: fast)


def _plain_claims(message: bytes) -> list[list[str]] | None:
    """The From: and Sender: values (`CLAIM_FIELDS` order) as `header_fields` gives them, read
    without splitting the block into lines; None when the block is not plain (the caller then
    uses `header_fields`, which reads it or raises)."""
    end = message.find(b"\r\n\r\n", 0, MAX_HEADER_BLOCK + 4)
    if end <= 0 or _PLAIN_BLOCK.fullmatch(message, 0, end) is None:
        return None
    froms: list[str] = []
    senders: list[str] = []
    first = _FIRST_CLAIM.match(message, 0, end)
    for match in itertools.chain((first,) if first else (), _NEXT_CLAIM.finditer(message, 0, end)):
        # header_fields joins a field's lines with a space where each CRLF was: the same bytes
        value = unfold(match.group(2).replace(b"\r\n", b" "))
        (froms if len(match.group(1)) == 4 else senders).append(value)
    return [froms, senders]


_ATEXT = "A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
_ADDR_SPEC = rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_NAME_WORD = rf"[.\u00c0-\u024f{_ATEXT}]+"
#: One mailbox, as an unfolded value (single spaces, no CR/LF): `addr`, `<addr>`, `Name <addr>`,
#: `"Name" <addr>` — no comment, group, route, literal, quoted local part or second address.
_ONE_MAILBOX = re.compile(rf"({_ADDR_SPEC})|(?:(?:{_NAME_WORD}(?: {_NAME_WORD})*|\"[^\"\\\x00-\x1f\x7f]*\") ?)?"
                          rf"<({_ADDR_SPEC})>")


def _addresses(value: str) -> list[str]:
    """The addresses of one unfolded From:/Sender: value, lowercased, as `email.utils.getaddresses`
    reads them (it alone for anything but one plain mailbox)."""
    match = _ONE_MAILBOX.fullmatch(value)
    if match is not None:
        return [(match.group(1) or match.group(2)).lower()]
    return [addr.strip().lower() for _, addr in getaddresses([value]) if addr.strip()]


def refused_claims(identity: SenderIdentity, message: bytes) -> list[str]:
    """The From:/Sender: addresses this identity may not use (empty: the header is fine)."""
    return [a for a in claimed_senders(message) if not identity.may_use(a)]


__all__ = ["CLAIM_FIELDS", "MAX_HEADER_BLOCK", "SenderIdentity", "account_identity", "certificate_senders",
           "claimed_senders", "header_fields", "network_identity", "partner_identity", "refused_claims"]
