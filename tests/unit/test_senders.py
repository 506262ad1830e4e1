"""Who may send as whom (gateway.senders) and which key signs for whom (PolicyConfig)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.config import Account, ConfigError, parse_config
from gateway.errors import MalformedInput
from gateway.senders import (
    SenderIdentity,
    account_identity,
    certificate_senders,
    claimed_senders,
    partner_identity,
    refused_claims,
)


def _msg(head: str) -> bytes:
    return (head + "Subject: x\r\n\r\nbody\r\n").encode()


def test_account_may_use_its_addresses_and_domains_only() -> None:
    ident = account_identity(Account("lis@lab.example", "$scrypt$x", ("lis@lab.example", "@results.lab.example")))
    assert ident.may_use("LIS@lab.example") and ident.may_use("any@results.lab.example")
    assert not ident.may_use("other@lab.example")
    assert not ident.may_use("lis@lab.example.evil.test")
    assert not ident.may_use("x@sub.results.lab.example")  # @domain is that domain, not its subdomains
    assert not ident.may_use("") and not ident.may_use("lis")


def test_claimed_senders_reads_from_and_sender() -> None:
    assert claimed_senders(_msg("From: Dr A <a@x.test>, b@x.test\r\nSender: <s@x.test>\r\n")) == [
        "a@x.test", "b@x.test", "s@x.test"]
    assert claimed_senders(_msg("To: a@x.test\r\n")) == []
    # RFC 2047 display names and folded fields are read like a mail client reads them
    assert claimed_senders(_msg("From: =?utf-8?q?Labo_=C3=A9?=\r\n <lab@x.test>\r\n")) == ["lab@x.test"]


@pytest.mark.parametrize("head", ["From: a@x.test\r\nFrom: b@x.test\r\n", "From: nobody\r\n",
                                  "From: \r\n", "Sender: a@x.test\r\nSender: b@x.test\r\n"])
def test_ambiguous_or_unreadable_author_is_a_typed_error(head: str) -> None:
    with pytest.raises(MalformedInput):
        claimed_senders(_msg(head))


def test_refused_claims_names_what_the_identity_may_not_use() -> None:
    ident = SenderIdentity("account", "demo@x.test", ("demo@x.test",))
    assert refused_claims(ident, _msg("From: demo@x.test\r\n")) == []
    assert refused_claims(ident, _msg("From: demo@x.test\r\nSender: lab@x.test\r\n")) == ["lab@x.test"]


def _cert(cn: str, sans: list[x509.GeneralName]) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1)))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_partner_without_table_uses_its_certificate_names() -> None:
    der = _cert("mss.partner.example", [x509.DNSName("mta.partner.example"), x509.RFC822Name("noc@partner.example")])
    assert set(certificate_senders(der)) == {"@mta.partner.example", "noc@partner.example", "@mss.partner.example"}
    assert certificate_senders(b"not a certificate") == ()


def _config(extra: str) -> object:
    import tomllib

    text = f"""
[listeners.relay]
kind = "relay"
allowed_client_subjects = ["mss.partner.example"]
client_ca = "{__file__}"
[accounts."demo@x.test"]
password_hash = "$scrypt$ln=14,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
{extra}
"""
    return parse_config(tomllib.loads(text), source="t.toml", base=Path("/"))


def test_partner_table_gives_its_senders() -> None:
    config = _config('[partners."mss.partner.example"]\nsenders = ["@partner.example"]\n')
    ident = partner_identity(config, "mss.partner.example", None)
    assert ident.name == "partner:mss.partner.example" and ident.may_use("dr@partner.example")
    assert not ident.may_use("dr@mss.partner.example")


def test_config_refuses_bad_senders_and_unknown_partners() -> None:
    with pytest.raises(ConfigError) as err:
        _config('[partners."other.example"]\nsenders = ["not an address"]\n'
                '[accounts."lis"]\npassword_hash = "$scrypt$x"\n')
    text = str(err.value)
    assert 'partners."other.example": not in any listener' in text
    assert "senders[0]: not an address" in text
    assert "accounts.lis.senders: the account name is not an address" in text


def test_signing_key_follows_the_identity_never_the_typed_sender() -> None:
    config = _config('[keys.lab]\nref = "/k.pem"\ncert = "/c.pem"\n[trust]\n[policy]\n'
                     '[policy.sign_with]\n"lab@x.test" = "lab"\n"@lab.example" = "lab"\n"partner:p" = "lab"\n')
    policy = config.policy  # type: ignore[attr-defined]
    assert policy.signing_key_name("lab@x.test") == "lab"
    assert policy.signing_key_name("demo@x.test") is None        # whatever MAIL FROM it typed
    assert policy.signing_key_name(None) is None                  # no identity, no signature
    assert policy.signing_key_name("lis@lab.example") == "lab"    # @domain: identities in that domain
    assert policy.signing_key_name("partner:p") == "lab"
    assert policy.signing_key_name("partner:x@lab.example") is None


def test_local_form_is_refused_rather_than_ignored() -> None:
    with pytest.raises(ConfigError, match="policy.local_form: not supported"):
        _config('[trust]\n[policy]\nlocal_form = "signed"\n')


def test_a_trusted_network_signs_only_when_its_listener_binds_its_senders() -> None:
    from gateway.senders import network_identity

    net = ('[listeners.internal]\nkind = "relay"\nport = 2626\nallowed_networks = ["10.0.0.0/8"]\n'
           'senders = ["@hopital.example"]\n')
    config = _config(net + '[keys.org]\nref = "/k.pem"\ncert = "/c.pem"\n[trust]\n[policy]\n'
                     '[policy.sign_with]\n"network:internal" = "org"\n"*" = "org"\n')
    internal = next(lc for lc in config.listeners if lc.name == "internal")  # type: ignore[attr-defined]
    ident = network_identity(internal)
    assert ident is not None and ident.name == "network:internal" and ident.may_use("dr.x@hopital.example")
    assert not ident.may_use("labo@labo.example")
    policy = config.policy  # type: ignore[attr-defined]
    assert policy.signing_key_name("network:internal") == "org"
    assert policy.signing_key_name("network:other") is None      # "*" is for logins, not networks
    assert policy.signing_key_name("partner:mss.partner.example") is None
    relay = next(lc for lc in config.listeners if lc.name == "relay")  # type: ignore[attr-defined]
    assert network_identity(relay) is None                        # no senders: unbound, never signs
    with pytest.raises(ConfigError, match='sign_with."network:relay": needs a listener of that name'):
        _config('[keys.org]\nref = "/k.pem"\ncert = "/c.pem"\n[trust]\n[policy]\n'
                '[policy.sign_with]\n"network:relay" = "org"\n')


def test_obsolete_from_syntax_is_read_as_from() -> None:
    """`From : x` (white space before the colon) is a From field for Postfix and mail clients."""
    ident = SenderIdentity("account", "demo@x.test", ("demo@x.test",))
    assert refused_claims(ident, _msg("From : Labo <lab@x.test>\r\n")) == ["lab@x.test"]
    assert refused_claims(ident, _msg("To: demo@x.test\r\nFROM\t:lab@x.test\r\n")) == ["lab@x.test"]
    with pytest.raises(MalformedInput, match="several From"):
        claimed_senders(_msg("From: demo@x.test\r\nFrom : lab@x.test\r\n"))


@pytest.mark.parametrize("head", [b"From lab@x.test Thu Dec  3 10:00:00 2026\r\nFrom: demo@x.test\r\n",
                                  b" continued\r\nFrom: demo@x.test\r\n", b"From\r\n"])
def test_a_line_that_is_not_a_field_is_refused(head: bytes) -> None:
    with pytest.raises(MalformedInput):
        claimed_senders(head + b"\r\nbody\r\n")


def test_a_huge_header_block_is_refused_without_parsing_it() -> None:
    from gateway.senders import MAX_HEADER_BLOCK

    with pytest.raises(MalformedInput, match="header block longer"):
        claimed_senders(b"X-Pad: " + b"a" * (MAX_HEADER_BLOCK + 10))
    # a big body after a normal header block is fine
    assert claimed_senders(b"From: a@x.test\r\n\r\n" + b"b" * (MAX_HEADER_BLOCK * 4)) == ["a@x.test"]


def test_an_account_whose_name_is_not_an_address_can_sign() -> None:
    config = _config('[accounts."lis-1"]\npassword_hash = "$scrypt$x"\nsenders = ["@lab.example"]\n'
                     '[keys.lab]\nref = "/k.pem"\ncert = "/c.pem"\n[trust]\n[policy]\n'
                     '[policy.sign_with]\n"lis-1" = "lab"\n')
    assert config.policy.signing_key_name("lis-1") == "lab"  # type: ignore[attr-defined]
