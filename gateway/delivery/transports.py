"""Transports: how a prepared copy's bytes reach a destination (Postfix's transport(5) model).

The next-hop table (`nexthop.NextHopResolver.destination`) names a transport per destination;
the delivery manager looks the name up in `TRANSPORTS`, builds it for that hop and calls
`deliver(sender, recipients, data)`. It gets one result per recipient (so one full mailbox or
one refused RCPT never makes the others retry) and the name of the remote that answered.

Adding a transport (the MLLP client to a hospital DPI is the next one) is one class with that
`deliver` method plus one line in `TRANSPORTS`; the manager does not change. A transport raises
`DeliveryError` for a failure of the whole hop (temporary → deferred, permanent → bounced).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.config import GatewayConfig
from gateway.delivery.capture import CaptureTransport
from gateway.delivery.consumer import ConsumerTransport
from gateway.delivery.local import lmtp_results, maildir_results
from gateway.delivery.nexthop import Destination, NextHopResolver
from gateway.delivery.sessions import RSET_TIMEOUT, SessionCache, SessionKey
from gateway.delivery.smtp_client import RecipientResult, SmtpSession, open_session
from gateway.errors import DeliveryError

Results = tuple[dict[str, RecipientResult], str]

#: A cached session given back less than this long ago, after a transaction that ended with
#: DATA's final 2xx for every recipient, is reused without an RSET: its state is known (RFC 5321
#: 4.1.1.4: the end of data resets it) and it was alive a moment ago. Postfix's RSET probes
#: sessions that may have gone stale while idle (seconds to minutes); this one has not. If it
#: did close meanwhile (421, EOF at MAIL), that is treated as a failed RSET: a new session,
#: same attempt, never a deferral. Older or otherwise-ended sessions get the RSET as before.
FRESH_TIME = 1.0



@dataclass(frozen=True)
class Hop:
    """What a transport is built for: one destination, for one copy."""

    config: GatewayConfig
    destination: Destination
    resolver: NextHopResolver
    #: The copy is protected by trust-space (mutual) TLS only: our client certificate must be
    #: presented, or nothing is sent (see smtp_client).
    require_client_cert: bool = False
    #: The delivery manager's connection cache; None: a session of its own per message.
    sessions: SessionCache | None = None


class Transport(Protocol):
    async def deliver(self, sender: str, recipients: Sequence[str], data: bytes) -> Results:
        """Hand `data` over for `recipients`: (per-recipient result, the remote that answered)."""
        ...


class SmtpTransport:
    """SMTP to the destination's hosts: its MX hosts (or its fixed route / smart host), in
    order, every address of each; a temporary failure tries the next, a permanent one stops."""

    def __init__(self, hop: Hop) -> None:
        self.hop = hop
        #: The cache's key of this hop's sessions (the delivery manager keeps a transport per hop).
        self.key = SessionKey(hop.destination, hop.require_client_cert, hop.config.hostname)

    async def deliver(self, sender: str, recipients: Sequence[str], data: bytes) -> Results:
        hop, dest, key = self.hop, self.hop.destination, self.key
        delivery = hop.config.delivery
        last_error: DeliveryError | None = None
        if hop.sessions is not None:
            try:
                reused = await self._reuse(hop.sessions, key, sender, list(recipients), data)
            except DeliveryError as exc:
                if not exc.temporary:
                    raise
                last_error = exc  # as a failed address would: the hops are tried afresh
            else:
                if reused is not None:
                    return reused
        for host in await hop.resolver.hops(dest):
            for address in host.addresses:
                try:
                    session = await open_session(
                        host=host.host, address=address, port=host.port, tls=dest.tls,
                        helo_name=hop.config.hostname, connect_timeout=delivery.connect_timeout,
                        command_timeout=delivery.command_timeout, require_client_cert=hop.require_client_cert)
                    return await self._send(session, key, sender, list(recipients), data)
                except DeliveryError as exc:
                    if not exc.temporary:
                        raise
                    last_error = exc
        raise last_error or DeliveryError(f"no usable next hop for {dest.key}", temporary=True, status="4.4.4")

    async def _reuse(self, cache: SessionCache, key: SessionKey, sender: str, recipients: list[str],
                     data: bytes) -> Results | None:
        """Over a cached session of this very key, after an RSET unless it is fresh (FRESH_TIME);
        None when there is none or the server had closed it (421, EOF): then a new session is
        opened, not deferred."""
        while (session := cache.take(key)) is not None:
            since, session.clean_since = session.clean_since, None
            if since is not None and cache.clock() - since < FRESH_TIME:
                try:
                    results = await self._send(session, key, sender, recipients, data)
                except DeliveryError as exc:
                    if not exc.temporary or session.alive:
                        raise
                    cache.stale += 1  # closed while idle (421 or EOF at MAIL): as a failed RSET
                    continue
                cache.reused += 1
                return results
            if await session.reset(min(RSET_TIMEOUT, self.hop.config.delivery.command_timeout)):
                cache.reused += 1
                return await self._send(session, key, sender, recipients, data)
            cache.stale += 1
        return None

    async def _send(self, session: SmtpSession, key: SessionKey, sender: str, recipients: list[str],
                    data: bytes) -> Results:
        """One transaction; then the session goes back to the cache (or QUIT without one)."""
        try:
            results = await session.send(sender, recipients, data)
        except DeliveryError:
            await session.quit()
            raise
        except BaseException:  # cancelled mid-transaction: the session is in no known state
            session.close()
            raise
        if self.hop.sessions is not None:
            if results and all(result.ok for result in results.values()):
                # DATA's final reply accepted every recipient: the transaction ended, nothing open
                session.clean_since = self.hop.sessions.clock()
            self.hop.sessions.give_back(key, session)
        else:
            await session.quit()
        return results, session.host


class LmtpTransport:
    """LMTP to a delivery agent (Dovecot, Cyrus): one reply per recipient (RFC 2033). The local
    one of `[local]`, or the host and port of a route that names this transport."""

    def __init__(self, hop: Hop) -> None:
        self.hop = hop

    async def deliver(self, sender: str, recipients: Sequence[str], data: bytes) -> Results:
        local, dest = self.hop.config.local, self.hop.destination
        host, port = (dest.host, dest.port) if dest.host and not dest.local else (local.lmtp_host, local.lmtp_port)
        results = await lmtp_results(host, port, sender=sender, recipients=recipients,
                                     data=data, lhlo_name=self.hop.config.hostname)
        return results, "lmtp" if dest.local else f"lmtp:{host}"


class MaildirTransport:
    """Into Maildirs on this host, durably (file and directory fsynced), one per recipient."""

    def __init__(self, hop: Hop) -> None:
        self.hop = hop

    async def deliver(self, sender: str, recipients: Sequence[str], data: bytes) -> Results:
        return await maildir_results(self.hop.config.local.maildir, sender, recipients, data), "maildir"


#: Transport name (as the next-hop table gives it) → how to build one for a hop.
TRANSPORTS: dict[str, Callable[[Hop], Transport]] = {
    "smtp": SmtpTransport,
    "lmtp": LmtpTransport,
    "maildir": MaildirTransport,
    "consumer": ConsumerTransport,
    "capture": CaptureTransport,
}


def unknown_transports(config: GatewayConfig) -> list[tuple[str, str, str]]:
    """(file, key, problem) of the next-hop table for `msgw check` and `msgw serve`: routes naming
    a transport that no module registered (the configuration cannot know the registry: it lives
    here, above the configuration)."""
    known = ", ".join(sorted(TRANSPORTS))
    return [(config.source, f'delivery.routes."{route.domain}".transport',
             f"no transport named {route.transport!r} (known: {known})")
            for route in config.delivery.routes if route.transport not in TRANSPORTS]


def transport_for(hop: Hop) -> Transport:
    """The transport the next-hop table chose; an unknown name is our configuration's fault,
    so temporary (the mail waits for the operator, it is not bounced)."""
    factory = TRANSPORTS.get(hop.destination.transport)
    if factory is None:
        raise DeliveryError(f"no transport named {hop.destination.transport!r} for {hop.destination.key}",
                            temporary=True, status="4.3.5")
    return factory(hop)
