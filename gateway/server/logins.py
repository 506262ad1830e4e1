"""What a successful SMTP AUTH leaves on the session: the account and the mechanism that proved it.

Every mechanism (PLAIN/LOGIN with a password, EXTERNAL with a CPS card certificate, OAUTHBEARER
and XOAUTH2 with a Pro Santé Connect token) ends in the same `AccountLogin`, so the one place that
decides who may send as whom (`GatewayHandler.identity` → `gateway.senders`) reads the account
from what was authenticated, never from a name the client typed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from gateway.config.accounts import Account

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

#: Async directory question: the local mailbox addresses of an identifiant national.
NationalIdLookup = Callable[[str], Awaitable[tuple[str, ...]]]
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


async def account_for_national_id(config: GatewayConfig, lookup: NationalIdLookup | None, national_id: str,
                                  authzid: str | None) -> Account | None:
    """The account an identifiant national proved (card certificate or PSC token): the config
    account listing it in `national_ids`, else one made from the directory's local mailboxes of
    that person (named by `authzid` when it is one of them); None when neither knows it. The
    directory's errors propagate: the caller makes them temporary, never a login."""
    account = next((a for a in config.accounts if national_id in a.national_ids), None)
    if account is not None or lookup is None:
        return account
    found = await lookup(national_id)
    addresses = tuple(sorted({a.lower() for a in found if config.is_local(a.rpartition("@")[2])}))
    if not addresses:
        return None
    name = authzid.lower() if authzid and authzid.lower() in addresses else addresses[0]
    return Account(username=name, password_hash="", senders=addresses, password_auth=False,
                   national_ids=(national_id,))


def may_act_as(account: Account, authzid: str | None) -> bool:
    """SASL authorization identity: none, or one of the account's own names."""
    if not authzid:
        return True
    names = {account.username.lower()} | {s.lower() for s in account.senders if not s.startswith("@")}
    return authzid.lower() in names


__all__ = ["AccountLogin", "Mechanism", "NationalIdLookup", "account_for_national_id", "may_act_as"]
