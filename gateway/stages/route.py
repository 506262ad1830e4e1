"""Gather the facts about each recipient and ask the decision table (`decide.py`): at RCPT
time (`rcpt_decision`, cheap, bounded) and in the `route` stage (`RouteStage`), which puts the
plan — one `Form` or `Refusal` per recipient — on the work item for the executors.

Both use the same facts and the same table, so a recipient refused at RCPT time is exactly one
the route stage would refuse for the same facts. Certificates are looked up only when the
table's answer depends on them (`decide.needs_certificates`): never for a refused domain, a
local mailbox or a client-encrypted pass-through; at RCPT time not either when the answer is
already a form (certificates could only make it S/MIME).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from gateway.errors import GatewayError
from gateway.pipeline import Decision, Refusal, WorkItem
from gateway.stages.context import ProtectionContext, capability_of
from gateway.stages.decide import Discovery, Facts, Failed, Found, decide, domain_of, needs_certificates
from gateway.stages.forms import is_encrypted
from gateway.stages.view import view_of

#: How long the RCPT check waits for certificate discovery before leaving the decision to later.
RCPT_CHECK_TIMEOUT = 3.0
#: Up to this size whether the client already encrypted is read on the event loop.
CLASSIFY_INLINE = 1 << 20


def cheap_facts(ctx: ProtectionContext, address: str, *, dsn: bool = False,
                client_encrypted: bool = False) -> Facts:
    """Everything but certificate discovery (the directory, the trust-space list, the bridge's
    keys); for a local mailbox nothing more is needed."""
    domain = domain_of(address)
    if ctx.is_local(domain):
        return Facts(local=True)
    capability = capability_of(ctx, address)
    legacy_keys = bool(capability and capability.codec and ctx.legacy_keys(capability.codec) is not None)
    return Facts(dsn=dsn, client_encrypted=client_encrypted, capability=capability, legacy_keys=legacy_keys,
                 authorised=ctx.authorised_domain(domain))


async def discover(ctx: ProtectionContext, address: str) -> Discovery:
    """Certificate discovery as a fact: found, or failed with what every source said."""
    try:
        return Found(tuple(await ctx.encryption_certificates(address)))
    except GatewayError as exc:
        return Failed(str(exc), temporary=exc.temporary, status=exc.status)


async def decide_for(ctx: ProtectionContext, address: str, facts: Facts) -> Decision:
    """Decide, looking certificates up first when the answer depends on them."""
    if needs_certificates(address, facts, ctx.policy):
        facts = replace(facts, discovery=await discover(ctx, address))
    return decide(address, facts, ctx.policy)


async def rcpt_decision(ctx: ProtectionContext, address: str, *, timeout: float = RCPT_CHECK_TIMEOUT) -> Decision:
    """The table's answer at RCPT time, where only certain answers may refuse: discovery is
    bounded by `timeout`, and a slow or temporarily failing lookup is a temporary answer
    (the message is accepted and decided after queueing)."""
    facts = cheap_facts(ctx, address)
    answer = decide(address, facts, ctx.policy)
    if isinstance(answer, Refusal) and needs_certificates(address, facts, ctx.policy):
        try:
            found: Discovery = Found(tuple(await asyncio.wait_for(ctx.encryption_certificates(address), timeout)))
        except GatewayError as exc:
            found = Failed(str(exc)[:200], temporary=exc.temporary, status=exc.status)
        except TimeoutError:
            found = Failed(f"certificate discovery took more than {timeout:g} s", temporary=True, status="4.4.3")
        answer = decide(address, replace(facts, discovery=found), ctx.policy)
    return answer


def rcpt_refusal_reason(answer: Decision) -> str | None:
    """What the SMTP server says when refusing a RCPT (550): only a permanent refusal refuses."""
    return answer.reason if isinstance(answer, Refusal) and not answer.temporary else None


class RouteStage:
    """The `route` stage: the plan of every recipient that no earlier stage handled (a legacy
    pass-through copy) and that is not planned yet."""

    def __init__(self, ctx: ProtectionContext) -> None:
        self.ctx = ctx

    async def __call__(self, item: WorkItem) -> WorkItem:
        env = item.envelope
        todo = [r for r in env.recipients if r not in item.handled and r not in item.planned]
        if not todo:
            return item
        dsn = env.listener == "dsn" and not env.sender
        view = view_of(item)
        # the S/MIME split of a large message (a scan and a copy of it) in a worker thread, as the
        # legacy detection's parse (`bridge.DETECT_INLINE`): not on the event loop
        encrypted = not dsn and (is_encrypted(view) if len(view.data) <= CLASSIFY_INLINE
                                 else await asyncio.to_thread(is_encrypted, view))
        plan = []
        for rcpt in todo:
            facts = cheap_facts(self.ctx, rcpt, dsn=dsn, client_encrypted=encrypted)
            plan.append((rcpt, await decide_for(self.ctx, rcpt, facts)))
        return replace(item, plan=(*item.plan, *plan))
