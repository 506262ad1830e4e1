"""The protection decision as one table (`gateway.stages.decide`): every row on its own with
pure facts, the property that lets the RCPT check accept without a certificate lookup, and the
table used twice — by the RCPT check of a real `GatewayContext` and by the route stage — with
the same answers. Then the plan executed with real TEST-PKI keys: a trust-space-TLS copy always
requires TLS, and the signing key comes from the authenticated identity only."""

from __future__ import annotations

import dataclasses
import itertools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.config import parse_config
from gateway.directory.capability import Capability
from gateway.directory.certdiscovery import NoCertificate
from gateway.directory.directory import SMIME, operator_item
from gateway.pipeline import (
    AsIs,
    ClientEncrypted,
    Envelope,
    Legacy,
    Local,
    Outgoing,
    Refusal,
    Smime,
    TrustSpaceTls,
    WorkItem,
)
from gateway.smime.engine import unwrap_message
from gateway.smime.testpki import ORG_EMAIL, PERSON_EMAIL, TestPKI
from gateway.stages.build import GatewayContext, protection_stages
from gateway.stages.context import RecipientView
from gateway.stages.decide import RULES, UNDECIDED, Facts, Failed, Found, decide, evaluate, needs_certificates
from gateway.stages.outbound import copy_for
from gateway.stages.route import RouteStage, rcpt_decision, rcpt_refusal_reason
from tests.smime.support import shared_pki
from tests.stages.test_protection import Ctx, _key, _message, _policy

POLICY = _policy()  # refused.test: refuse; mss.test: trust-space-tls; default require-smime
LEGACY = Capability.parse("legacy:apicrypt1")
LEGACY_READER = {"capability": LEGACY, "legacy_keys": True}


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return shared_pki().pki


@pytest.fixture(scope="module")
def certs(pki: TestPKI) -> tuple[x509.Certificate, ...]:
    return (pki["person_encrypt"].cert,)


def _rule(rcpt: str, facts: Facts) -> str:
    return evaluate(rcpt, facts, POLICY)[0].name


# -- the rows, one by one ---------------------------------------------------------------------

def test_row_local_comes_first(certs: tuple) -> None:
    facts = Facts(local=True, client_encrypted=True, discovery=Found(certs))
    assert decide("labo@refused.test", facts, POLICY) == Local()
    assert not needs_certificates("labo@refused.test", Facts(local=True), POLICY)


def test_row_dsn_goes_as_is_even_where_policy_refuses() -> None:
    answer = decide("sender@refused.test", Facts(dsn=True), POLICY)
    assert answer == AsIs("dsn") and answer.name == "dsn" and not answer.require_tls


def test_row_policy_refuse_wins_over_every_form(certs: tuple) -> None:
    for facts in (Facts(discovery=Found(certs)), Facts(client_encrypted=True), Facts(**LEGACY_READER)):
        assert decide("dr@refused.test", facts, POLICY) == Refusal(
            "dr@refused.test", "destination refused.test is refused by policy", "5.7.1", False)
    assert not needs_certificates("dr@refused.test", Facts(), POLICY)  # no lookup for a refused domain


def test_row_client_encrypted_passes_except_to_legacy_only_readers(certs: tuple) -> None:
    assert decide("dr@x.test", Facts(client_encrypted=True), POLICY) == ClientEncrypted()
    assert not needs_certificates("dr@x.test", Facts(client_encrypted=True), POLICY)
    # A legacy capability whose codec the bridge cannot write: passed on as it came.
    no_keys = Facts(client_encrypted=True, capability=LEGACY, legacy_keys=False)
    assert decide("dr@x.test", no_keys, POLICY) == ClientEncrypted()
    # A reader of a legacy format the bridge writes: the bridge opens it and re-encodes...
    bridged = Facts(client_encrypted=True, discovery=Failed("directory: none"), **LEGACY_READER)
    assert decide("dr@x.test", bridged, POLICY) == Legacy("apicrypt1")
    # ... unless that reader also reads S/MIME (today's behaviour: S/MIME first).
    assert decide("dr@x.test", dataclasses.replace(bridged, discovery=Found(certs)), POLICY) == Smime(certs, True)


def test_row_smime_is_preferred_to_legacy_and_trust_space(certs: tuple) -> None:
    both = Facts(authorised=True, discovery=Found(certs), **LEGACY_READER)
    answer = decide("dr@mss.test", both, POLICY)
    assert answer == Smime(certs, over_legacy=True) and answer.name == "smime" and not answer.require_tls
    assert decide("dr@x.test", Facts(discovery=Found(certs)), POLICY) == Smime(certs, over_legacy=False)


def test_row_legacy_when_no_certificate_and_the_bridge_has_the_keys() -> None:
    answer = decide("dr@x.test", Facts(discovery=Failed("directory: none"), **LEGACY_READER), POLICY)
    assert answer == Legacy("apicrypt1") and answer.name == "legacy:apicrypt1"
    # Without the codec's keys the capability is no form: refused with what discovery said.
    keyless = Facts(capability=LEGACY, discovery=Failed("directory: none"))
    assert isinstance(decide("dr@x.test", keyless, POLICY), Refusal)


def test_row_trust_space_tls_only_for_authorised_domains_of_that_policy() -> None:
    none = Failed("directory: none")
    answer = decide("dr@mss.test", Facts(authorised=True, discovery=none), POLICY)
    assert answer == TrustSpaceTls() and answer.require_tls and answer.name == "trust-space-tls"
    # Not on the authorised list, or authorised but the domain's policy is require-smime: refused.
    assert isinstance(decide("dr@mss.test", Facts(authorised=False, discovery=none), POLICY), Refusal)
    assert isinstance(decide("dr@other.test", Facts(authorised=True, discovery=none), POLICY), Refusal)


def test_row_no_protection_says_what_discovery_said_and_keeps_it_temporary() -> None:
    permanent = decide("u@x.test", Facts(discovery=Failed("directory: no entry")), POLICY)
    assert permanent == Refusal("u@x.test", "no protection possible for u@x.test: directory: no entry", "5.7.1", False)
    temporary = decide("u@x.test", Facts(discovery=Failed("ldap: timeout", temporary=True, status="4.4.3")), POLICY)
    assert temporary == Refusal("u@x.test", "no protection possible for u@x.test: ldap: timeout", "4.4.3", True)


def test_row_undecided_until_certificates_are_looked_up() -> None:
    answer = decide("u@x.test", Facts(), POLICY)
    assert answer == Refusal("u@x.test", UNDECIDED, "4.4.3", True)
    assert needs_certificates("u@x.test", Facts(), POLICY)
    # A form found without certificates still depends on them (S/MIME comes first).
    assert needs_certificates("dr@x.test", Facts(**LEGACY_READER), POLICY)


def test_every_row_of_the_table_is_reached(certs: tuple) -> None:
    none = Failed("none")
    cases = [("a@x.test", Facts(local=True)), ("a@x.test", Facts(dsn=True)), ("a@refused.test", Facts()),
             ("a@x.test", Facts(client_encrypted=True)), ("a@x.test", Facts(discovery=Found(certs))),
             ("a@x.test", Facts(discovery=none, **LEGACY_READER)),
             ("a@mss.test", Facts(authorised=True, discovery=none)),
             ("a@x.test", Facts(discovery=none)), ("a@x.test", Facts())]
    assert [_rule(r, f) for r, f in cases] == [rule.name for rule in RULES]


def test_a_form_decided_without_certificates_stays_a_form_once_they_are_known(certs: tuple) -> None:
    """What lets the RCPT check accept without looking certificates up (and refuse only when sure)."""
    for local, dsn, enc, cap, keys, auth, rcpt in itertools.product(
            (False, True), (False, True), (False, True), (None, LEGACY, Capability("smime")), (False, True),
            (False, True), ("a@x.test", "a@mss.test", "a@refused.test")):
        facts = Facts(local=local, dsn=dsn, client_encrypted=enc, capability=cap, legacy_keys=keys, authorised=auth)
        cheap = decide(rcpt, facts, POLICY)
        for discovery in (Found(certs), Failed("none"), Failed("down", temporary=True, status="4.4.3")):
            full = decide(rcpt, dataclasses.replace(facts, discovery=discovery), POLICY)
            if not isinstance(cheap, Refusal):
                assert not isinstance(full, Refusal), (rcpt, facts, discovery)
            if not needs_certificates(rcpt, facts, POLICY):
                assert full == cheap


def test_a_trust_space_copy_always_requires_tls() -> None:
    with pytest.raises(TypeError):
        TrustSpaceTls(require_tls=False)  # type: ignore[call-arg]  # not a choice of whoever builds it
    copy = copy_for(TrustSpaceTls(), ["dr@mss.test"], b"x")
    assert copy == Outgoing(("dr@mss.test",), b"x", form="trust-space-tls", require_tls=True)
    for form in (Smime(()), Legacy("apicrypt1"), ClientEncrypted(), Local(), AsIs("dsn")):
        assert not copy_for(form, ["a@x.test"], b"x").require_tls


# -- one table, at RCPT time and in the route stage --------------------------------------------

def _gateway(folder: Path, pki: TestPKI) -> GatewayContext:
    authorised = folder / "authorised.txt"
    authorised.write_text("mss.test\n")
    text = f"""
[listeners.relay]
kind = "relay"
port = 0

[spool]
path = "{folder / 'spool'}"

[local]
domains = ["labo-tests.sante.test"]

[trust]
anchors = "{pki.trust_dir}"
crl_files = [{", ".join(f'"{p}"' for p in pki.crl_paths)}]
fetch_crls = false
authorised_domains_file = "{authorised}"

[delivery.routes."mss.test"]
host = "localhost"
port = 25
tls = "required"
ca_file = "{sorted(pki.trust_dir.iterdir())[0]}"
client_cert = "{pki['org_sign'].cert_path}"
client_key = "{pki['org_sign'].key_path}"

[policy]
default = "require-smime"

[policy.destinations]
"refused.test" = "refuse"
"mss.test" = "trust-space-tls"

[policy.discovery]
order = ["directory"]
"""
    ctx = GatewayContext(parse_config(tomllib.loads(text), source="test.toml", base=folder))
    der = pki["person_encrypt"].cert.public_bytes(Encoding.DER)
    ctx.directory.put(operator_item(PERSON_EMAIL, SMIME, certificates=[der]))
    return ctx


async def test_rcpt_check_and_route_stage_answer_from_the_same_table(pki: TestPKI, tmp_path: Path) -> None:
    ctx = _gateway(tmp_path, pki)
    rcpts = (PERSON_EMAIL, "nobody@nowhere.test", "dr@refused.test", "dr@mss.test", ORG_EMAIL)
    try:
        at_rcpt = {r: await ctx.rcpt_refusal(r) for r in rcpts}
        item = await RouteStage(ctx)(WorkItem(Envelope("Q1", "", rcpts, listener="relay"), b"x"))
    finally:
        ctx.close()
    plan = item.planned
    assert [r for r, _ in item.plan] == list(rcpts)
    assert plan[PERSON_EMAIL] == Smime((pki["person_encrypt"].cert,))
    assert plan["dr@mss.test"] == TrustSpaceTls() and plan[ORG_EMAIL] == Local()
    assert plan["dr@refused.test"].reason == "destination refused.test is refused by policy"
    assert plan["nobody@nowhere.test"].reason.startswith("no protection possible for nobody@nowhere.test: ")
    # The same answer: refused at RCPT time exactly when the route stage refuses for good, same reason.
    assert at_rcpt == {r: rcpt_refusal_reason(d) for r, d in plan.items()}
    assert [r for r, reason in at_rcpt.items() if reason] == ["nobody@nowhere.test", "dr@refused.test"]


@dataclass
class LookupCtx(Ctx):
    """The real-key context of test_protection, with a legacy reader, NoCertificate as the real
    discovery raises it, and a count of the certificate lookups and signing-key requests."""

    lookups: list[str] = field(default_factory=list)
    identities: list[str | None] = field(default_factory=list)

    def recipient(self, address: str) -> RecipientView:
        if address.startswith("legacy@"):
            return RecipientView(address, "legacy:apicrypt1", "legacy")
        return super().recipient(address)

    def legacy_keys(self, codec: str) -> Any:
        return {"codec": codec} if codec == "apicrypt1" else None  # a key store is all the table asks about

    async def encryption_certificates(self, address: str) -> list[x509.Certificate]:
        self.lookups.append(address)
        try:
            return await super().encryption_certificates(address)
        except Exception as exc:
            raise NoCertificate(str(exc), address=address, trace=(), rejected=()) from None

    async def signing_key(self, identity: str | None) -> Any:
        self.identities.append(identity)
        return await super().signing_key(identity)


async def test_rcpt_decision_accepts_without_lookup_when_a_form_is_certain(pki: TestPKI) -> None:
    ctx = LookupCtx(pki, _policy())
    for rcpt in ("legacy@medical.test", "dr@mss.test", "dr@refused.test", ORG_EMAIL):
        answer = await rcpt_decision(ctx, rcpt)
        assert not isinstance(answer, Refusal) or answer.reason.endswith("refused by policy")
    assert ctx.lookups == []
    assert isinstance(await rcpt_decision(ctx, PERSON_EMAIL), Smime) and ctx.lookups == [PERSON_EMAIL]
    refused = await rcpt_decision(ctx, "nobody@nowhere.test")
    assert rcpt_refusal_reason(refused) == "no protection possible for nobody@nowhere.test: directory: no entry " \
                                           "for nobody@nowhere.test; harvested: none"


# -- the plan executed with real keys ----------------------------------------------------------

async def _run(ctx: Ctx, env: Envelope, data: bytes) -> WorkItem:
    item = WorkItem(env, data)
    for stage in protection_stages(ctx):
        item = await stage(item)
    return item


async def test_route_plans_once_and_outbound_executes_the_plan(pki: TestPKI) -> None:
    ctx = LookupCtx(pki, _policy())
    rcpts = (PERSON_EMAIL, "nobody@nowhere.test", "dr@refused.test", "dr@mss.test", ORG_EMAIL)
    env = Envelope("Q2", ORG_EMAIL, rcpts, auth_user=ORG_EMAIL, listener="submission")
    item = await _run(ctx, env, _message(ORG_EMAIL, PERSON_EMAIL))
    assert [type(d).__name__ for _, d in item.plan] == ["Smime", "Refusal", "Refusal", "TrustSpaceTls", "Local"]
    forms = {o.form: o.recipients for o in item.outgoing}
    assert forms == {"local-flagged": (ORG_EMAIL,), "smime": (PERSON_EMAIL,), "trust-space-tls": ("dr@mss.test",)}
    assert {r.recipient for r in item.refusals} == {"nobody@nowhere.test", "dr@refused.test"}
    # Decided once: each remote recipient looked up once, never for a refused domain or a local
    # mailbox; the one further lookup is the sender's own certificate for its sent copy.
    assert sorted(ctx.lookups) == sorted([PERSON_EMAIL, "nobody@nowhere.test", "dr@mss.test", ORG_EMAIL])
    assert ctx.identities == [ORG_EMAIL]
    decisions = [(a["recipient"], a["decision"]) for a in ctx.audits if a["recipient"] != ORG_EMAIL]
    assert sorted(decisions) == sorted([(PERSON_EMAIL, "smime"), ("dr@mss.test", "trust-space-tls"),
                                        ("nobody@nowhere.test", "refused"), ("dr@refused.test", "refused")])


@pytest.mark.parametrize("auth_user", [None, "account-without-key", ORG_EMAIL])
async def test_signing_key_comes_from_the_authenticated_identity_only(pki: TestPKI, auth_user: str | None) -> None:
    """The envelope sender and the From are the lab's address, whose key the context holds: only
    an authenticated identity that maps to it signs; the TLS-only copy requires TLS either way."""
    ctx = LookupCtx(pki, _policy())
    env = Envelope("Q3", ORG_EMAIL, (PERSON_EMAIL, "dr@mss.test"), auth_user=auth_user, listener="relay")
    item = await _run(ctx, env, _message(ORG_EMAIL, PERSON_EMAIL))
    assert ctx.identities == [auth_user]  # asked once, by the authenticated identity, never by an address
    copies = {o.form: o for o in item.outgoing}
    tls = copies["trust-space-tls"]
    assert tls.require_tls and tls.recipients == ("dr@mss.test",)
    opened = await unwrap_message(copies["smime"].data, keys=[_key(pki, "person_encrypt")], verifier=ctx.verifier)
    signed = auth_user == ORG_EMAIL
    assert opened.signed is signed
    assert (b"multipart/signed" in tls.data.split(b"\r\n\r\n", 1)[0]) is signed
    serials = {a["signer_serial"] for a in ctx.audits if a["decision"] in ("smime", "trust-space-tls")}
    assert serials == ({format(pki["org_sign"].cert.serial_number, "x")} if signed else {None})
