"""`[local]`: the domains this gateway serves and how their mailboxes are reached."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gateway.config.reader import Reader, is_address, is_domain

LocalMode = Literal["maildir", "lmtp"]


@dataclass(frozen=True)
class LocalConfig:
    """Local domains and their mailboxes. A local recipient is accepted at RCPT only when it is
    known: listed in `mailboxes`, an account, the postmaster, a directory entry with the `local`
    capability; otherwise it goes to `catch_all` when one is set, else 550 5.1.1."""

    domains: tuple[str, ...]
    mode: LocalMode
    maildir: Path
    lmtp_host: str
    lmtp_port: int
    mailboxes: tuple[str, ...] = ()
    catch_all: str | None = None


def _local_address(value: Any, domains: list[str]) -> bool:
    return isinstance(value, str) and is_address(value) and value.rpartition("@")[2].lower() in domains


def read_local(r: Reader, data: dict[str, Any]) -> LocalConfig:
    spec = r.table(data, "local")
    prefix = "local."
    r.unknown(spec, {"domains", "mode", "maildir", "lmtp_host", "lmtp_port", "mailboxes", "catch_all"}, prefix)
    domains = []
    for i, d in enumerate(r.get(spec, "domains", prefix, list, [])):
        if not isinstance(d, str) or not is_domain(d):
            r.problem(f"{prefix}domains[{i}]", f"not a domain name: {d!r}")
        else:
            domains.append(d.lower())
    mailboxes = []
    for i, m in enumerate(r.get(spec, "mailboxes", prefix, list, [])):
        if not _local_address(m, domains):
            r.problem(f"{prefix}mailboxes[{i}]", f"not an address in a local domain: {m!r}")
        else:
            mailboxes.append(m.lower())
    catch_all = r.get(spec, "catch_all", prefix, str, None)
    if catch_all is not None:
        if not _local_address(catch_all, domains):
            r.problem(prefix + "catch_all", f"not an address in a local domain: {catch_all!r}")
            catch_all = None
        else:
            catch_all = catch_all.lower()
    return LocalConfig(
        domains=tuple(domains),
        mode=r.choice(spec, "mode", prefix, ("maildir", "lmtp"), "maildir"),  # type: ignore[arg-type]
        maildir=r.path(spec, "maildir", prefix) or r.base / "var" / "maildir",
        lmtp_host=r.get(spec, "lmtp_host", prefix, str, "127.0.0.1"),
        lmtp_port=r.port(spec, "lmtp_port", prefix, 24),
        mailboxes=tuple(mailboxes), catch_all=catch_all,
    )
