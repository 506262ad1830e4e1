"""The protection decision, once: one table of rules, evaluated in order, first match wins.

`decide(recipient, facts, policy)` answers, for one recipient, the `Form` its copy takes or the
`Refusal` that bounces (or defers) it. Pure: `facts` is everything the caller found out
beforehand (`gateway.stages.route` gathers it, at RCPT time and in the route stage alike), and
`policy` is read through `for_domain` only. No I/O, no keys, no clock: a new policy is one row
here and its tests (tests/stages/test_decide.py).

The rows, in order (`RULES`):

1. a mailbox of this gateway → `Local` (the inbound stage opens and verifies it);
2. our own delivery report (null sender on the `dsn` listener) → `AsIs("dsn")`: it carries
   identifying headers only, and a sender we cannot protect must still learn of its failure;
3. `[policy.destinations]` says `refuse` → refused, 5.7.1;
4. already encrypted by the client, and the recipient does not read only a legacy format →
   `ClientEncrypted` (passed on; a legacy reader gets it opened and re-encoded by the bridge);
5. usable S/MIME encryption certificates were found → `Smime` (preferred to a legacy format);
6. the directory says `legacy:<codec>` and the bridge holds that codec's keys → `Legacy`;
7. the domain's policy is `trust-space-tls` and it is on the authorised MSSanté list →
   `TrustSpaceTls` (always `require_tls`: delivery sends it over mutual TLS only);
8. certificate discovery failed → refused with what it said (temporary when it was);
9. certificates not looked up yet → temporary "undecided" refusal: the caller looks them up and
   decides again (`needs_certificates`).

Rows 5-9 depend on certificate discovery; rows 6-9 only run when no certificate was found, so a
`Form` answered without looking certificates up stays a `Form` once they are known (at most it
becomes `Smime`): what lets the RCPT check accept without a lookup, and refuse only on certain
answers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509

from gateway.directory.capability import Capability
from gateway.pipeline import (
    AsIs,
    ClientEncrypted,
    Decision,
    Legacy,
    Local,
    Refusal,
    Smime,
    TrustSpaceTls,
)

#: The reason of row 9 (never shown to a client: the caller looks certificates up and decides again).
UNDECIDED = "no decision yet: encryption certificates not looked up"


class DestinationPolicies(Protocol):
    """What the table reads of `[policy]` (`gateway.config.PolicyConfig` is one)."""

    def for_domain(self, domain: str) -> str: ...


@dataclass(frozen=True)
class Found:
    """Certificate discovery gave these validated encryption certificates."""

    certificates: tuple[x509.Certificate, ...]


@dataclass(frozen=True)
class Failed:
    """Certificate discovery found nothing usable: what every source said, and whether it was
    temporary (a source down, a CRL unreachable) with its status."""

    reason: str
    temporary: bool = False
    status: str = "5.7.1"


#: Not asked yet (None), found, or failed.
Discovery = Found | Failed | None


@dataclass(frozen=True)
class Facts:
    """What is known about one recipient of one message, gathered before deciding."""

    local: bool = False                # its domain is served by this gateway
    dsn: bool = False                  # the message is our own delivery report
    client_encrypted: bool = False     # the message is already S/MIME-encrypted by its client
    capability: Capability | None = None  # what the directory says it reads (None: unknown)
    legacy_keys: bool = False          # the bridge holds the keys of the capability's legacy codec
    authorised: bool = False           # its domain is on the authorised MSSanté list
    discovery: Discovery = None

    @property
    def legacy_reader(self) -> bool:
        """Reads a legacy format the bridge can write."""
        return self.capability is not None and self.capability.is_legacy and self.legacy_keys


Predicate = Callable[[str, Facts, DestinationPolicies], bool]
Answer = Callable[[str, Facts, DestinationPolicies], Decision]


@dataclass(frozen=True)
class Rule:
    """One row: when `applies`, the recipient gets `answer`. `needs_certificates`: the row's
    answer holds only once certificate discovery was asked (rows 5-9)."""

    name: str
    applies: Predicate
    answer: Answer
    needs_certificates: bool = False


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


def _policy(recipient: str, policy: DestinationPolicies) -> str:
    return policy.for_domain(domain_of(recipient))


def _refused_by_policy(recipient: str, facts: Facts, policy: DestinationPolicies) -> Refusal:
    return Refusal(recipient, f"destination {domain_of(recipient)} is refused by policy")


def _smime(recipient: str, facts: Facts, policy: DestinationPolicies) -> Smime:
    assert isinstance(facts.discovery, Found)
    return Smime(facts.discovery.certificates, over_legacy=facts.capability is not None and facts.capability.is_legacy)


def _legacy(recipient: str, facts: Facts, policy: DestinationPolicies) -> Legacy:
    assert facts.capability is not None and facts.capability.codec is not None
    return Legacy(facts.capability.codec)


def _no_protection(recipient: str, facts: Facts, policy: DestinationPolicies) -> Refusal:
    failure = facts.discovery
    assert isinstance(failure, Failed)
    return Refusal(recipient, f"no protection possible for {recipient}: {failure.reason}",
                   status=failure.status if failure.temporary else "5.7.1", temporary=failure.temporary)


RULES: tuple[Rule, ...] = (
    Rule("local", lambda r, f, p: f.local, lambda r, f, p: Local()),
    Rule("dsn", lambda r, f, p: f.dsn, lambda r, f, p: AsIs("dsn")),
    Rule("refused-by-policy", lambda r, f, p: _policy(r, p) == "refuse", _refused_by_policy),
    Rule("client-encrypted", lambda r, f, p: f.client_encrypted and not f.legacy_reader,
         lambda r, f, p: ClientEncrypted()),
    Rule("smime", lambda r, f, p: isinstance(f.discovery, Found), _smime, needs_certificates=True),
    Rule("legacy", lambda r, f, p: f.legacy_reader, _legacy, needs_certificates=True),
    Rule("trust-space-tls", lambda r, f, p: _policy(r, p) == "trust-space-tls" and f.authorised,
         lambda r, f, p: TrustSpaceTls(), needs_certificates=True),
    Rule("no-protection", lambda r, f, p: isinstance(f.discovery, Failed), _no_protection, needs_certificates=True),
    Rule("undecided", lambda r, f, p: f.discovery is None,
         lambda r, f, p: Refusal(r, UNDECIDED, status="4.4.3", temporary=True), needs_certificates=True),
)


def evaluate(recipient: str, facts: Facts, policy: DestinationPolicies,
             rules: tuple[Rule, ...] = RULES) -> tuple[Rule, Decision]:
    """The first rule that applies, and its answer."""
    for rule in rules:
        if rule.applies(recipient, facts, policy):
            return rule, rule.answer(recipient, facts, policy)
    raise AssertionError("the last rule applies to every facts")  # pragma: no cover - the table is total


def decide(recipient: str, facts: Facts, policy: DestinationPolicies) -> Decision:
    """The form of `recipient`'s copy, or its refusal (see the module's table)."""
    return evaluate(recipient, facts, policy)[1]


def needs_certificates(recipient: str, facts: Facts, policy: DestinationPolicies) -> bool:
    """True when the answer depends on certificate discovery and it was not asked yet."""
    return facts.discovery is None and evaluate(recipient, facts, policy)[0].needs_certificates
