"""The SMTP connection cache (Postfix's `smtp_connection_cache_*`): after a delivery its session
stays open, idle, for the next message to the same destination, which then costs at most an RSET
instead of a TCP connection, EHLO and a TLS handshake.

Rules that keep it invisible to everything but the connection count:

* **One key per TLS demand.** A session is keyed by `SessionKey`: the destination (host or MX
  domain, port, TLS policy, CA file, client certificate and key, transport), whether the copy
  demanded mutual TLS, and our EHLO name, i.e. everything that decided how the session was
  opened and authenticated. A copy protected by trust-space TLS only never rides on a session
  opened for an ordinary copy (which may not have presented our certificate), whatever the
  route's settings say.
* **Only sessions that passed every check exist.** `smtp_client.open_session` returns a
  session only after STARTTLS, the certificate check and the client-certificate watch succeeded;
  a failed one is closed on the spot, so it cannot be cached.
* **RSET before reuse**, except for a session given back clean less than
  `transports.FRESH_TIME` (1 s) ago (every recipient of its last transaction accepted at DATA).
  Any answer but 250 to the RSET, an EOF or a 421 while idle, or a 421/EOF at MAIL on a fresh
  session closes it and the transport takes another or opens a new one (transparently: never a
  deferral for our cache's sake).
* **Bounded.** Idle at most `connection_cache_time` (default 2 s, Postfix's default), at most
  `connection_reuse_limit` messages (default 100) and `MAX_AGE` seconds per session, at most
  the destination's concurrency idle sessions per key; QUIT on shutdown (`close`). The idle
  bound is kept by **one** timer for the whole cache, at the earliest idle deadline (a session
  given back carries its deadline; the timer closes what is past it and sets itself for the
  next one), not a timer armed and cancelled per message: a busy destination costs one timer
  per `connection_cache_time` instead of two timer operations per delivery.

Event-loop only (no locks): `take` and `give_back` never await, so no two deliveries can get
the same session.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.delivery.nexthop import Destination, HashOnce
from gateway.delivery.smtp_client import SmtpSession

#: A session is not reused once this old (Postfix's `smtp_connection_reuse_time_limit`): a
#: route's rotated certificate or CA file is picked up at the latest after this long.
MAX_AGE = 300.0
#: The longest an RSET on a reused session may take (Postfix's `smtp_rset_timeout`).
RSET_TIMEOUT = 20.0
#: The longest a QUIT of an idle session may take (the server's answer does not matter).
QUIT_TIMEOUT = 5.0


@dataclass(frozen=True)
class SessionKey(HashOnce):
    """Everything that decided how a session was opened and authenticated (its hash computed
    once: it is a dict key several times a delivery)."""

    destination: Destination
    require_client_cert: bool
    helo_name: str

    __hash__ = HashOnce.__hash__


@dataclass(eq=False)
class _Idle:
    session: SmtpSession
    #: The event loop's time after which it is closed (given back + `idle_time`).
    deadline: float


class SessionCache:
    """Idle SMTP sessions per `SessionKey` (see the module docstring)."""

    def __init__(self, idle_time: float, reuse_limit: int, *, max_age: float = MAX_AGE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_time = idle_time
        self.reuse_limit = reuse_limit
        self.max_age = max_age
        self.clock = clock
        self._idle: dict[SessionKey, list[_Idle]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        #: The one idle timer (see the module docstring) and the time it is set for.
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_at = 0.0
        self._sweep_loop: asyncio.AbstractEventLoop | None = None
        #: Counters for `msgw`'s logs and the tests: sessions reused, and cached sessions found closed.
        self.reused = 0
        self.stale = 0

    def take(self, key: SessionKey) -> SmtpSession | None:
        """The most recently used idle session for `key` that still looks connected, or None."""
        idle = self._idle.get(key)
        while idle:
            entry = idle.pop()
            if entry.session.alive:
                if not idle:
                    del self._idle[key]
                return entry.session
            self.stale += 1
            entry.session.close()
        self._idle.pop(key, None)
        return None

    def give_back(self, key: SessionKey, session: SmtpSession) -> None:
        """A session whose transaction ended with the server's answers: kept for the next message
        when the bounds allow, QUIT otherwise."""
        if (self.idle_time <= 0 or not session.alive or session.uses >= self.reuse_limit
                or self.clock() - session.opened >= self.max_age):
            self._retire(session)
            return
        loop = asyncio.get_running_loop()
        entry = _Idle(session, loop.time() + self.idle_time)
        self._idle.setdefault(key, []).append(entry)
        self._trim(key)
        if self._sweeper is None or entry.deadline < self._sweep_at or self._sweep_loop is not loop:
            self._arm(loop, entry.deadline)

    def _trim(self, key: SessionKey) -> None:
        """At most the destination's concurrency idle sessions per key: the oldest released go.
        Per key, not per destination: a route carrying both trust-space and ordinary copies would
        otherwise close one demand's session for the other's at every message."""
        entries = self._idle.get(key, [])
        for entry in entries[:max(0, len(entries) - key.destination.concurrency)]:
            self._drop(key, entry)

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        """Set the one timer for `when` (on `loop`: a cache that outlived its loop re-arms)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._sweep_at, self._sweep_loop = when, loop
        self._sweeper = loop.call_at(when, self._sweep)

    def _sweep(self) -> None:
        """The idle timer: close every session past its deadline, then set the timer for the
        earliest remaining one (none left: no timer until the next `give_back`). Per key the
        entries are in the order given back, so the expired ones are the first."""
        self._sweeper = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        earliest: float | None = None
        for key, entries in list(self._idle.items()):
            while entries and entries[0].deadline <= now:
                self._drop(key, entries[0])
            if entries and (earliest is None or entries[0].deadline < earliest):
                earliest = entries[0].deadline
        if earliest is not None:
            self._arm(loop, earliest)

    def _drop(self, key: SessionKey, entry: _Idle) -> None:
        entries = self._idle.get(key, [])
        if entry in entries:
            entries.remove(entry)
            if not entries:
                del self._idle[key]
        self._retire(entry.session)

    def _retire(self, session: SmtpSession) -> None:
        """QUIT in the background (a delivery does not wait for a farewell)."""
        if not session.alive:
            session.close()
            return
        task = asyncio.get_running_loop().create_task(session.quit(QUIT_TIMEOUT), name="smtp-quit")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def idle_count(self) -> int:
        return sum(len(entries) for entries in self._idle.values())

    async def close(self) -> None:
        """QUIT every idle session and wait for the QUITs under way (shutdown, end of a run)."""
        for key, entries in list(self._idle.items()):
            for entry in list(entries):
                self._drop(key, entry)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)
