"""`msgw check --config FILE`: validate the config and what it points to; list every problem.

Keys and TLS client certificates are loaded and checked as `msgw serve` checks them before it
listens (`gateway.startup`); tokens without their PIN unless `--login` is given."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import ssl
import sys
from pathlib import Path

from cryptography import x509

from gateway import tlspolicy
from gateway.commands.common import add_config_option, config_from
from gateway.delivery.capture import capture_notice
from gateway.delivery.transports import unknown_transports
from gateway.directory.trustspace import TrustSpace
from gateway.errors import ConfigError
from gateway.smime import keycheck
from gateway.startup import check_keys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="validate a configuration file and the files it names")
    add_config_option(p)
    p.add_argument("--login", action="store_true",
                   help="also log in to PKCS#11 tokens (reads the PIN) and use each key once")
    p.set_defaults(func=run)


def _check_tls_pair(config, key: str, cert_path: Path, key_path: Path, policy: str,
                    now: dt.datetime) -> list[tuple[str, str, str]]:
    """A listener's TLS pair under its preset: loads, valid long enough; prints the preset and the
    suites it then offers; warns when the certificate's key type cannot serve the preset."""
    try:
        ctx = tlspolicy.apply(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), policy)
        ctx.load_cert_chain(str(cert_path), str(key_path))
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (ssl.SSLError, ValueError, OSError) as exc:
        return [(config.source, f"{key}.tls_cert", f"unusable certificate/key pair: {exc}")]
    problems = []
    for finding in keycheck.validity(cert, now):  # the keys' rule: error < 14 days, warning < 30
        if finding.severity == "error":
            problems.append((config.source, f"{key}.tls_cert", finding.message))
        else:
            print(f"warning: {config.source}: {key}.tls_cert: {finding.message}", file=sys.stderr)
    preset = tlspolicy.preset(policy)
    versions = "TLS 1.3 only" if preset.minimum >= ssl.TLSVersion.TLSv1_3 else "TLS 1.2, TLS 1.3"
    print(f"{config.source}: {key}.tls_policy: {policy} ({versions}; {tlspolicy.key_type(cert)} certificate): "
          f"{' '.join(tlspolicy.effective_suites(ctx))}")
    problem = tlspolicy.certificate_problem(policy, cert)
    if problem:
        print(f"warning: {config.source}: {key}.tls_cert: {problem}", file=sys.stderr)
    return problems


def _check_files(config) -> list[tuple[str, str, str]]:
    problems = []
    now = dt.datetime.now(dt.UTC)
    mllp = config.intake.mllp
    tls_doors = [(f"listeners.{lc.name}", lc.tls_cert, lc.tls_key, lc.tls_policy) for lc in config.listeners]
    if mllp is not None:
        tls_doors.append(("intake.mllp", mllp.tls_cert, mllp.tls_key, mllp.tls_policy))
    for key, cert_path, key_path, policy in tls_doors:
        if cert_path and key_path and cert_path.exists() and key_path.exists():
            problems += _check_tls_pair(config, key, cert_path, key_path, policy, now)
    for lc in config.listeners:
        key = f"listeners.{lc.name}"
        if lc.client_ca and lc.client_ca.exists():
            try:
                ssl.create_default_context(cafile=str(lc.client_ca))
            except (ssl.SSLError, OSError) as exc:
                problems.append((config.source, f"{key}.client_ca", f"unusable CA file: {exc}"))
    try:
        config.spool.path.mkdir(parents=True, exist_ok=True)
        probe = config.spool.path / ".check-write"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        problems.append((config.source, "spool.path", f"not writable: {exc.strerror}"))
    return problems


#: A liste blanche older than this gets a warning (the ANS refresh period is not published).
TRUST_SPACE_STALE = dt.timedelta(days=7)


def _check_trust_space(config) -> list[tuple[str, str, str]]:
    """The authorised-domain list: how many domains, how old. Unreadable is a problem; bad
    entries, an empty list and a list older than TRUST_SPACE_STALE are warnings."""
    path = config.trust.authorised_domains_file if config.trust is not None else None
    if path is None:
        return []
    key = "trust.authorised_domains_file"
    try:
        space = TrustSpace(path)
    except ConfigError as exc:
        return [(config.source, key, message) for _, _, message in exc.problems]
    domains = space.domains
    if not len(domains):
        print(f"warning: {config.source}: {key}: the list authorises no domain", file=sys.stderr)
    for problem in domains.problems:
        print(f"warning: {config.source}: {key}: {problem}", file=sys.stderr)
    age = dt.datetime.now(dt.UTC) - dt.datetime.fromtimestamp(space.modified or 0, dt.UTC)
    print(f"{config.source}: {key}: {len(domains)} authorised domain(s), written {_age(age)} ago")
    if age > TRUST_SPACE_STALE:
        print(f"warning: {config.source}: {key}: older than {TRUST_SPACE_STALE.days} days; the ANS publishes it at "
              "https://espacedeconfiance.mssante.fr/listeblanchemssante.xml", file=sys.stderr)
    return []


def _check_cisis(config) -> list[tuple[str, str, str]]:
    """The CI-SIS GESTIONNAIRE: what it speaks as, for whom; a warning when nothing signs its copies
    (trust-space copies then leave unsigned) or when no MLLP listener nor drop folder can receive."""
    settings = config.intake.cisis
    if not settings.enabled:
        return []
    key = "intake.cisis"
    names = ", ".join(f"{c.name} ({c.application}/{c.facility or '*'} → "
                      f"{f'{c.mllp_host}:{c.mllp_port}' if c.mllp_host else c.folder})" for c in settings.creators)
    print(f"{config.source}: {key}: application mailbox {settings.application_mailbox}, X-MSS-NIL {settings.nil}; "
          f"CRÉATEURs: {names or 'none (only messages that owe no ZAM are accepted)'}")
    policy = config.policy
    if policy is not None and policy.enabled and policy.signing_key_name(settings.application_mailbox) is None:
        print(f"warning: {config.source}: {key}.application_mailbox: no [policy.sign_with] key for it: the MSSanté "
              "copies leave unsigned", file=sys.stderr)
    if config.intake.mllp is None and not config.intake.drops:
        print(f"warning: {config.source}: {key}: no [intake.mllp] nor drop folder: only 'msgw send' can hand "
              "messages to the profile", file=sys.stderr)
    return []


def _age(age: dt.timedelta) -> str:
    hours = age.total_seconds() / 3600
    return f"{hours:.0f} hour(s)" if hours < 48 else f"{hours / 24:.0f} day(s)"


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from(args)
    except ConfigError as exc:
        for source, key, message in exc.problems:
            print(f"{source}: {key}: {message}", file=sys.stderr)
        print(f"msgw: {len(exc.problems)} problem(s) in the configuration", file=sys.stderr)
        return 2
    if notice := capture_notice(config):
        print(f"warning: {config.source}: delivery.capture: {notice}", file=sys.stderr)
    problems = _check_files(config) + unknown_transports(config) + _check_trust_space(config) + _check_cisis(config)
    statuses = asyncio.run(check_keys(config, login=args.login))
    for status in statuses:
        problems += [(status.source, status.where, message) for message in status.errors]
        for message in status.warnings:
            print(f"warning: {status.source}: {status.where}: {message}", file=sys.stderr)
        if not status.errors:
            print(status.summary())
    for source, key, message in problems:
        print(f"{source}: {key}: {message}", file=sys.stderr)
    if problems:
        print(f"msgw: {len(problems)} problem(s) in the configuration", file=sys.stderr)
        return 2
    print(f"{config.source}: OK ({len(config.listeners)} listener(s), {len(config.accounts)} account(s), "
          f"{len(config.delivery.routes)} route(s))")
    return 0
