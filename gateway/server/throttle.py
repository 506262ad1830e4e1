"""AUTH guessing limits shared by every listener: failures are counted per client address and
per account name within a window; past the limit that address (or that account) is locked
out for a while, even with the right password, so spreading guesses over many connections
(or many addresses against one account) gains nothing.

Why not only a delay per failure: the delay is per connection, and 8 parallel connections
made 40 guesses in 11 s. Memory is bounded: old entries are pruned, and past `max_entries`
the oldest go first (an attacker cycling addresses cannot grow the table without end).
Pure and synchronous (called from the event loop; no I/O).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class _Counter:
    failures: list[float] = field(default_factory=list)
    locked_until: float = 0.0


class AuthThrottle:
    def __init__(self, max_failures: int, window: float, lockout: float, *,
                 clock: Callable[[], float] = time.monotonic, max_entries: int = 100_000) -> None:
        self.max_failures = max_failures
        self.window = window
        self.lockout = lockout
        self.clock = clock
        self.max_entries = max_entries
        self._counters: OrderedDict[str, _Counter] = OrderedDict()

    @staticmethod
    def _keys(client: str, account: str | None) -> list[str]:
        keys = [f"ip:{client}"]
        if account:
            keys.append(f"account:{account.lower()}")
        return keys

    def locked(self, client: str, account: str | None) -> bool:
        """Is this client address or this account locked out now?"""
        now = self.clock()
        return any((c := self._counters.get(k)) is not None and c.locked_until > now
                   for k in self._keys(client, account))

    def failure(self, client: str, account: str | None) -> bool:
        """Count one failed AUTH; True when it locks the address or the account out."""
        now = self.clock()
        locked = False
        for key in self._keys(client, account):
            counter = self._counters.pop(key, None) or _Counter()
            counter.failures = [t for t in counter.failures if t > now - self.window]
            counter.failures.append(now)
            if len(counter.failures) >= self.max_failures:
                counter.locked_until = now + self.lockout
                counter.failures.clear()
                locked = True
            self._counters[key] = counter   # most recent last
        self._prune(now)
        return locked

    def success(self, account: str) -> None:
        """A good password clears that account's failures (not the address's: a guesser who also
        holds one valid login must not reset the count for the accounts it attacks)."""
        counter = self._counters.get(f"account:{account.lower()}")
        if counter is not None and counter.locked_until <= self.clock():
            del self._counters[f"account:{account.lower()}"]

    def _prune(self, now: float) -> None:
        while len(self._counters) > self.max_entries:
            self._counters.popitem(last=False)
        # drop a few stale entries from the old end each time (amortised, no full scan)
        for _ in range(8):
            if not self._counters:
                break
            key, counter = next(iter(self._counters.items()))
            if counter.locked_until > now or any(t > now - self.window for t in counter.failures):
                break
            del self._counters[key]


__all__ = ["AuthThrottle"]
