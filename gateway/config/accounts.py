"""`[accounts.<name>]`, `[partners."<subject>"]`, `[auth]`: who may submit or relay, and as whom."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from gateway.config.listeners import ListenerConfig
from gateway.config.oidc import OidcConfig, read_oidc
from gateway.config.reader import Reader, is_address, parse_duration


@dataclass(frozen=True)
class Account:
    """A submission login. `senders`: the addresses (or `@domain` patterns) it may use in MAIL FROM
    and in From:/Sender: — by default only its own name when that is an address."""

    username: str
    password_hash: str
    senders: tuple[str, ...] = ()
    #: False for professionals who must log in with their CPS card or Pro Santé Connect: PLAIN
    #: and LOGIN then fail for this account as a wrong password would (issue 17).
    password_auth: bool = True
    #: Identifiants nationaux (``8`` + RPPS, ``0`` + ADELI...) whose card certificate or PSC token
    #: logs in as this account (SASL EXTERNAL, OAUTHBEARER); the directory is asked otherwise.
    national_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class PartnerConfig:
    """A relay partner known by its client certificate (`[partners."<subject>"]`).

    `subject` is written as in a listener's `allowed_client_subjects` (a CN, or a whole RFC 4514
    subject); `senders` lists the addresses or `@domain` patterns it may use. Without a table, a
    partner may use only the names its own certificate carries (see `gateway.senders`)."""

    subject: str
    senders: tuple[str, ...]


@dataclass(frozen=True)
class AuthConfig:
    """AUTH guessing limits: failures counted per client address and per account name within
    `window`; past `max_failures` that address (or account) is refused for `lockout`."""

    max_failures: int = 5
    window: float = 900.0
    lockout: float = 900.0
    #: `[auth.oidc]`: the issuer whose access tokens log in (OAUTHBEARER, XOAUTH2); None: not offered.
    oidc: OidcConfig | None = None


def read_accounts(r: Reader, data: dict[str, Any]) -> tuple[Account, ...]:
    out = []
    for username, spec in r.table(data, "accounts").items():
        if not isinstance(spec, dict):
            r.problem(f"accounts.{username}", "expected a table with password_hash or password_hash_file")
            continue
        account = _account(r, username, spec)
        if account is not None:
            out.append(account)
    return tuple(out)


def _account(r: Reader, username: str, spec: dict[str, Any]) -> Account | None:
    prefix = f"accounts.{username}."
    r.unknown(spec, {"password_hash", "password_hash_file", "senders", "password_auth", "national_ids"}, prefix)
    senders = r.senders(spec, prefix)
    if not senders and not is_address(username):
        r.problem(prefix + "senders", "the account name is not an address: list the addresses it may send as")
    stored = r.get(spec, "password_hash", prefix, str, None)
    hash_file = r.path(spec, "password_hash_file", prefix, must_exist=True)
    if stored is None and hash_file is not None and hash_file.exists():
        stored = hash_file.read_text(encoding="utf-8").strip()
    password_auth = r.get(spec, "password_auth", prefix, bool, True)
    national_ids = tuple(str(n) for n in r.get(spec, "national_ids", prefix, list, []))
    for i, nid in enumerate(national_ids):
        if not re.fullmatch(r"[0-9A-Za-z]{2,30}", nid):
            r.problem(f"{prefix}national_ids[{i}]", "not an identifiant national (letters and digits)")
    if not stored and not password_auth:
        if not national_ids:
            r.problem(prefix + "national_ids", "password_auth = false needs the card's identifiant national")
        return Account(username=username, password_hash="", senders=senders or (username.lower(),),
                       password_auth=False, national_ids=national_ids)
    if not stored:
        r.problem(prefix + "password_hash", "missing (make one with `msgw passwd`)")
        return None
    if not (stored.startswith("$scrypt$") or stored.startswith("$argon2")):
        r.problem(prefix + "password_hash", "must be a $scrypt$ or $argon2 hash, never a clear password")
        return None
    return Account(username=username, password_hash=stored, senders=senders or (username.lower(),),
                   password_auth=password_auth, national_ids=national_ids)


def read_partners(r: Reader, data: dict[str, Any], listeners: tuple[ListenerConfig, ...]) -> tuple[PartnerConfig, ...]:
    known = {s for lc in listeners for s in lc.allowed_client_subjects}
    out = []
    for subject, spec in r.table(data, "partners").items():
        prefix = f'partners."{subject}".'
        if not isinstance(spec, dict):
            r.problem(prefix[:-1], "expected a table with senders = [...]")
            continue
        r.unknown(spec, {"senders"}, prefix)
        if subject not in known:
            r.problem(prefix[:-1], "not in any listener's allowed_client_subjects")
        out.append(PartnerConfig(subject=subject, senders=r.senders(spec, prefix)))
    return tuple(out)


def read_auth(r: Reader, data: dict[str, Any]) -> AuthConfig:
    spec = r.table(data, "auth")
    prefix = "auth."
    r.unknown(spec, {"max_failures", "window", "lockout", "oidc"}, prefix)
    return AuthConfig(max_failures=r.positive(spec, "max_failures", prefix, 5),
                      window=r.convert(spec, "window", prefix, parse_duration, "15m"),
                      lockout=r.convert(spec, "lockout", prefix, parse_duration, "15m"),
                      oidc=read_oidc(r, spec))
