"""What a successful SMTP AUTH leaves on the session: the account and the mechanism that proved it.

Every mechanism (PLAIN/LOGIN with a password, EXTERNAL with a CPS card certificate, OAUTHBEARER
and XOAUTH2 with a Pro Santé Connect token) ends in the same `AccountLogin`, so the one place that
decides who may send as whom (`GatewayHandler.identity` → `gateway.senders`) reads the account
from what was authenticated, never from a name the client typed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.config.accounts import Account

Mechanism = Literal["PLAIN", "LOGIN", "EXTERNAL", "OAUTHBEARER", "XOAUTH2"]


@dataclass(frozen=True)
class AccountLogin:
    """aiosmtpd's ``session.auth_data`` after a successful AUTH: the account (from the config, or
    made from the directory for a card or token holder) and how it was proved."""

    account: Account
    mechanism: Mechanism

    @property
    def login(self) -> bytes:
        """aiosmtpd's `LoginPassword.login` shape, for code that logs the login name."""
        return self.account.username.encode("utf-8")


__all__ = ["AccountLogin", "Mechanism"]
