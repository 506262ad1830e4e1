"""A cached session's "given back clean" mark (`SmtpSession.clean_since`, was a weak dictionary
beside the sessions in transports.py): set with the cache's clock only when every recipient of
the transaction was accepted at DATA, cleared when the session is taken again, so that within
`FRESH_TIME` of a clean transaction the next message goes without an RSET and otherwise after
one, exactly as before. Stub sessions over the real `SessionCache` and `SmtpTransport`."""

from __future__ import annotations

import asyncio
from collections import namedtuple
from types import SimpleNamespace
from typing import Any

from gateway.delivery import transports
from gateway.delivery.sessions import SessionCache
from gateway.delivery.smtp_client import RecipientResult, SmtpSession

_Dest = namedtuple("_Dest", "concurrency")
_Key = namedtuple("_Key", "destination")
KEY: Any = _Key(_Dest(4))
OK = RecipientResult(250, "2.0.0 queued")
REFUSED = RecipientResult(550, "5.1.1 no such user")


class _Client:
    is_connected = True

    def close(self) -> None:
        self.is_connected = False


class StubSession(SmtpSession):
    """Answers `send` with the next planned results; counts RSETs."""

    def __init__(self, plans: list[dict[str, RecipientResult]]) -> None:
        super().__init__(_Client(), "hop.test", "hop.test[127.0.0.1]:25", 0.0)  # type: ignore[arg-type]
        self.plans = plans
        self.rsets = 0

    async def send(self, sender: str, recipients: list[str], data: bytes) -> dict[str, RecipientResult]:
        self.uses += 1
        return self.plans.pop(0)

    async def reset(self, timeout: float) -> bool:
        self.rsets += 1
        return True


def _transport(cache: SessionCache) -> transports.SmtpTransport:
    config: Any = SimpleNamespace(delivery=SimpleNamespace(command_timeout=30.0), hostname="gw.test")
    hop: Any = SimpleNamespace(config=config, sessions=cache, destination=KEY.destination, require_client_cert=False)
    return transports.SmtpTransport(hop)


def test_a_new_session_is_not_clean() -> None:
    assert StubSession([]).clean_since is None


def test_the_mark_decides_the_rset_as_the_weak_dictionary_did() -> None:
    async def scenario() -> list[tuple[int, float | None]]:
        now = [100.0]
        cache = SessionCache(60.0, 100, clock=lambda: now[0])
        transport = _transport(cache)
        session = StubSession([{"a": OK, "b": OK}, {"a": OK}, {"a": OK}, {"a": OK, "b": REFUSED}, {"a": OK},
                               {}, {"a": OK}, {"a": OK}])
        seen: list[tuple[int, float | None]] = []
        await transport._send(session, KEY, "s", ["a", "b"], b"x")  # new session, clean: marked
        seen.append((session.rsets, session.clean_since))
        late = transports.FRESH_TIME + 0.5
        for step in (0.5, 0.25, 0.125, late, 0.0, 0.0, late):
            now[0] += step
            assert await transport._reuse(cache, KEY, "s", ["a"], b"x") is not None
            seen.append((session.rsets, session.clean_since))
        return seen

    seen = asyncio.run(scenario())
    assert transports.FRESH_TIME == 1.0
    assert seen == [
        (0, 100.0),    # clean: marked at the cache's clock
        (0, 100.5),    # fresh: no RSET, marked again after its clean transaction
        (0, 100.75),   # fresh again
        (0, None),     # fresh (no RSET), but one recipient refused: not clean
        (1, 102.375),  # not clean before: RSET; clean now
        (1, None),     # fresh: no RSET; no recipient at all ({}): not clean
        (2, 102.375),  # not clean before: RSET
        (3, 103.875),  # clean but older than FRESH_TIME: RSET
    ]


def test_a_taken_session_loses_its_mark_even_when_not_sent_on() -> None:
    async def scenario() -> float | None:
        cache = SessionCache(60.0, 100, clock=lambda: 5.0)
        session = StubSession([{"a": OK}])
        await _transport(cache)._send(session, KEY, "s", ["a"], b"x")
        assert session.clean_since == 5.0
        taken = cache.take(KEY)
        assert taken is session
        since, taken.clean_since = taken.clean_since, None  # as _reuse does
        assert since == 5.0
        return session.clean_since

    assert asyncio.run(scenario()) is None
