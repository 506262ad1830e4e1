"""Operator sessions of the console: random tokens held in memory, each with its own CSRF token.

Why in memory: a console session is an operator at a browser next to one gateway; a restart
logging everyone out is acceptable, and nothing about a session ever touches the disk. The
cookie carries only the random token (no operator name, nothing to forge); a session ends at
its fixed lifetime (no sliding renewal) or at logout. Pure and synchronous (the event loop's).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

#: `__Host-`: the browser keeps it only if Secure, Path=/ and without Domain (no subdomain can set it).
COOKIE = "__Host-msgw-console"
#: Before login: the double-submit CSRF token of the login form.
LOGIN_COOKIE = "__Host-msgw-login"
MAX_SESSIONS = 1000


@dataclass(frozen=True)
class Session:
    token: str
    operator: str
    csrf: str
    expires: float
    method: str  # "password" or "certificate"


class Sessions:
    def __init__(self, lifetime: float, *, clock: Callable[[], float] = time.time) -> None:
        self.lifetime = lifetime
        self.clock = clock
        self._by_token: OrderedDict[str, Session] = OrderedDict()

    def create(self, operator: str, method: str) -> Session:
        self._prune()
        session = Session(token=secrets.token_urlsafe(32), operator=operator, csrf=secrets.token_urlsafe(32),
                          expires=self.clock() + self.lifetime, method=method)
        self._by_token[session.token] = session
        while len(self._by_token) > MAX_SESSIONS:  # oldest first: a login flood cannot grow memory
            self._by_token.popitem(last=False)
        return session

    def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        session = self._by_token.get(token)
        if session is None:
            return None
        if session.expires <= self.clock():
            del self._by_token[token]
            return None
        return session

    def drop(self, token: str | None) -> None:
        if token:
            self._by_token.pop(token, None)

    def _prune(self) -> None:
        now = self.clock()
        for token in [t for t, s in self._by_token.items() if s.expires <= now]:
            del self._by_token[token]


def same_token(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison; an absent or empty token never matches."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())
