"""Before the gateway accepts mail: every key it will need is there and fits its job.

Without this a broken key (file gone, certificate expired or not its own, wrong usage) passes
`msgw check`, `msgw serve` starts, and the first message needing the key is accepted (250), then
bounced. `check_keys` is run by `msgw check` and by `msgw serve` before it listens:

- every `[keys.*]`: file keys are loaded (files readable, private files 0600, key matching the
  certificate); token keys are probed without the PIN (module loads, token and object exist) and,
  with `login=True` (`msgw check --login`), logged in to sign (or decrypt) a test value;
- the TLS client certificate and key of `[delivery]` and of each route (mutual TLS to partners).

Each certificate is then checked by `gateway.smime.keycheck`: valid now and for 14 more days (a
warning under 30), usages fitting its role, a path to the trust anchors with the configured CRLs
(no network). For a key that only decrypts, dates and path are warnings: last year's mailbox key
stays configured after a renewal so that older mail still opens.

The role of a key comes from the configuration: named in `[policy.sign_with]` or `[legacy]
sign_key` (or `usage = "sign"`): it signs; `[legacy] decrypt_key` (or `usage = "decrypt"`): it
decrypts; named by nothing: it is taken as a mailbox decryption key (the directory's `key_ref`s,
which are not in the config), and a usage mismatch is only a warning.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.smime import keycheck
from gateway.smime.keycheck import Finding, Role, error, warning
from gateway.smime.keystore import KeyRef, token_certificates

INFERRED = "decrypt, inferred: no sign_with or sign_key names it"


@dataclass(frozen=True)
class KeyStatus:
    """The outcome for one key (or one TLS client certificate) of the configuration."""

    source: str
    where: str  # "keys.labo-sign", 'delivery.routes."partner.example".client_cert'
    role: str
    findings: tuple[Finding, ...]
    not_after: dt.datetime | None = None

    @property
    def errors(self) -> list[str]:
        return [f.message for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[str]:
        return [f.message for f in self.findings if f.severity == "warning"]

    def summary(self) -> str:
        until = f"; certificate valid until {self.not_after:%Y-%m-%d}" if self.not_after else ""
        return f"{self.source}: {self.where}: OK ({self.role}{until})"


@dataclass
class _Trust:
    """Trust anchors and CRLs from `[trust]`, loaded once for every check."""

    roots: list[x509.Certificate] = field(default_factory=list)
    intermediates: list[x509.Certificate] = field(default_factory=list)
    crls: Any = None  # gateway.smime.revocation.CrlSource
    problems: list[Finding] = field(default_factory=list)


def key_roles(config: GatewayConfig) -> dict[str, tuple[tuple[Role, ...], bool]]:
    """For each `[keys.X]`: its roles, and whether they were inferred (named by nothing)."""
    signing = {name for _, name in config.policy.sign_with} if config.policy is not None else set()
    decrypting: set[str] = set()
    if config.legacy is not None:
        signing |= {config.legacy.sign_key} if config.legacy.sign_key else set()
        decrypting |= {config.legacy.decrypt_key} if config.legacy.decrypt_key else set()
    out: dict[str, tuple[tuple[Role, ...], bool]] = {}
    for name, ref in config.keys.items():
        roles: list[Role] = []
        if name in signing or ref.usage == "sign":
            roles.append("sign")
        if name in decrypting or ref.usage == "decrypt":
            roles.append("decrypt")
        out[name] = (tuple(roles), False) if roles else (("decrypt",), True)
    return out


async def check_keys(config: GatewayConfig, *, login: bool = False,
                     now: dt.datetime | None = None) -> list[KeyStatus]:
    """Check every key and TLS client certificate of `config` (see the module doc)."""
    now = now or dt.datetime.now(dt.UTC)
    trust = _load_trust(config)
    out: list[KeyStatus] = []
    if trust.problems:
        out.append(KeyStatus(config.source, "trust", "trust anchors and CRLs", tuple(trust.problems)))
    for name, (roles, inferred) in key_roles(config).items():
        out.append(await _check_key(config.source, name, config.keys[name], roles, inferred, trust, login, now))
    d = config.delivery
    clients = [("delivery", d.client_cert, d.client_key, d.ca_file)]
    clients += [(f'delivery.routes."{r.domain}"', r.client_cert, r.client_key, r.ca_file) for r in d.routes]
    for where, cert, key, ca_file in clients:
        if cert is not None or key is not None:
            out.append(await _check_client(config.source, where, cert, key, ca_file, trust, now))
    return out


def _load_trust(config: GatewayConfig) -> _Trust:
    from gateway.smime.revocation import CrlSource
    from gateway.smime.trust import TrustStore

    trust = _Trust(crls=CrlSource())
    if config.trust is None:
        return trust
    try:
        if config.trust.anchors is not None:
            store = TrustStore.from_directory(config.trust.anchors)
            trust.roots, trust.intermediates = list(store.roots), list(store.intermediates)
        trust.crls = CrlSource(files=config.trust.crl_files)  # files only: no network here
    except GatewayError as exc:
        trust.problems.append(error(str(exc)))
    return trust


# -- one [keys.X] ------------------------------------------------------------------------------
async def _check_key(source: str, name: str, ref: KeyRef, roles: tuple[Role, ...], inferred: bool,
                     trust: _Trust, login: bool, now: dt.datetime) -> KeyStatus:
    findings: list[Finding] = []
    if ref.is_token:
        cert, chain = await _token(ref, roles, inferred, login, findings)
    else:
        cert, chain = _soft(ref, findings)
    if cert is not None:
        findings += await _certificate(cert, chain, roles, inferred, trust.roots, trust.intermediates, trust,
                                       now, "the trust anchors ([trust] anchors)")
    role = INFERRED if inferred else "+".join(roles)
    return KeyStatus(source, f"keys.{name}", role, tuple(findings), cert.not_valid_after_utc if cert else None)


async def _certificate(cert: x509.Certificate, chain: Sequence[x509.Certificate], roles: Sequence[Role],
                       inferred: bool, roots: Sequence[x509.Certificate], intermediates: Sequence[x509.Certificate],
                       trust: _Trust, now: dt.datetime, anchors_name: str) -> list[Finding]:
    """Dates, usages and path of a certificate. For a decrypt-only key the dates and the path are
    warnings: last year's mailbox key is kept after a renewal so that older mail still opens, and
    decrypting needs no valid certificate; signing keys and TLS client certificates need one."""
    from gateway.smime.trust import candidate_chain

    dates = keycheck.validity(cert, now)
    out_of_date = any(f.severity == "error" for f in dates)
    crls, _ = await trust.crls.crls_and_failures(candidate_chain(cert, [*chain, *intermediates, *roots]), now)
    path = [f for f in await keycheck.chain(cert, chain, roots, intermediates, crls, now, anchors_name)
            if not (out_of_date and f.message in (keycheck.CHAIN_EXPIRED, keycheck.CHAIN_NOT_YET_VALID))]
    # (the leaf's own dates are already reported)
    if tuple(roles) == ("decrypt",):
        dates = [warning(f"{f.message} (decryption only: it still opens older mail)") for f in dates]
        path = [warning(f"{f.message} (decryption only: it still opens older mail)") for f in path]
    usages = [f for role in roles for f in keycheck.usage(cert, role, severity="warning" if inferred else "error")]
    return [*dates, *usages, *path]


def _readable(path: str | Path | None, what: str, findings: list[Finding], *, private: bool = False) -> bool:
    """The file exists and can be read (and, for a private one, is closed to group and others)."""
    if path is None:
        return False
    try:
        st = os.stat(path)
        with open(path, "rb"):
            pass
    except OSError as exc:
        findings.append(error(f"cannot read {what} {path} ({exc.strerror})"))
        return False
    loose = keycheck.file_mode(st.st_mode, what, str(path)) if private else None
    if loose is not None:
        findings.append(loose)
    return True


def _soft(ref: KeyRef, findings: list[Finding]) -> tuple[x509.Certificate | None, Sequence[x509.Certificate]]:
    """Load a file key as the gateway will (softkeys), reporting what stops it."""
    from gateway.smime.softkeys import load_key

    p12 = ref.ref.lower().endswith((".p12", ".pfx"))
    ok = _readable(ref.ref, "key file", findings, private=True)
    if ref.cert is not None:
        ok = _readable(ref.cert, "certificate file", findings) and ok
    elif not p12:
        findings.append(error("a PEM key needs `cert` (its certificate file)"))
        ok = False
    if ref.chain is not None:
        ok = _readable(ref.chain, "chain file", findings) and ok
    if ref.password_file is not None:
        ok = _readable(ref.password_file, "password file", findings, private=True) and ok
    if not ok:
        return None, ()
    try:
        key = load_key(ref.ref, ref.cert, ref.chain, password_file=ref.password_file,
                       password_env=ref.password_env)
    except GatewayError as exc:
        findings.append(error(str(exc)))
        return None, ()
    return key.certificate, key.chain


# -- a key on a token -------------------------------------------------------------------------
async def _token(ref: KeyRef, roles: Sequence[Role], inferred: bool, login: bool,
                 findings: list[Finding]) -> tuple[x509.Certificate | None, Sequence[x509.Certificate]]:
    """Module, token and object, without the PIN; the configured certificate file if any."""
    from gateway.smime.pkcs11 import TokenAbsent, parse_uri
    from gateway.smime.pkcs11.discovery import probe_key_async
    from gateway.smime.pkcs11.keys import resolve_module
    from gateway.smime.softkeys import same_public_key

    if ref.pin_file is not None:
        _readable(ref.pin_file, "PIN file", findings, private=True)
    if ref.pin_env is not None and not os.environ.get(ref.pin_env):
        findings.append(error(f"environment variable {ref.pin_env} (the PIN) is not set"))
    file_cert: x509.Certificate | None = None
    chain: tuple[x509.Certificate, ...] = ()
    try:
        files = [_readable(path, what, findings) for path, what in ((ref.cert, "certificate file"),
                                                                    (ref.chain, "chain file")) if path is not None]
        if all(files):
            file_cert, file_chain = token_certificates(ref)  # as the gateway will give them to the token
            chain = tuple(file_chain or ())
        uri = parse_uri(ref.ref)
        module = resolve_module(uri, ref.module)
    except GatewayError as exc:
        findings.append(error(str(exc)))
        return file_cert, chain
    try:
        probe = await probe_key_async(module, uri)
    except TokenAbsent as exc:
        if ref.wait_for_token:
            findings.append(warning(f"{exc}: the gateway starts and waits for it (wait_for_token)"))
        else:
            findings.append(error(str(exc)))
        return file_cert, chain
    except GatewayError as exc:
        findings.append(error(str(exc)))
        return file_cert, chain
    cert = file_cert or probe.certificate
    if file_cert is not None and probe.certificate is not None and not same_public_key(
            probe.certificate.public_key(), file_cert):
        findings.append(error(f"the token's certificate for {ref.ref} is not the one in `cert` ({ref.cert})"))
    if cert is None and not probe.objects:
        findings.append(error(f"no object matches {ref.ref} on the token ({probe.token}) and no `cert` is "
                              "configured: check the URI with `msgw certs tokens`"))
    elif cert is None:
        findings.append(error(f"no certificate for {ref.ref} on the token ({probe.token}) and no `cert` "
                              "in the configuration"))
    elif not probe.objects:
        findings.append(warning(f"no object matches {ref.ref} on the token without login (private keys "
                                "show only after login: run `msgw check --login`)"))
    if login and not any(f.severity == "error" for f in findings):
        findings += await _login_test(ref, roles, inferred)
    return cert, chain or probe.chain


async def _login_test(ref: KeyRef, roles: Sequence[Role], inferred: bool) -> list[Finding]:
    """Log in as the gateway will and use the key once per role (a test value, verified here)."""
    from gateway.smime.keystore import load_key_async

    try:
        key = await load_key_async(ref)
    except GatewayError as exc:
        return [error(f"login: {exc}")]
    severity: keycheck.Severity = "warning" if inferred else "error"
    out: list[Finding] = []
    try:
        for role in roles:
            try:
                ok = await (_test_sign(key) if role == "sign" else _test_decrypt(key))
            except GatewayError as exc:
                ok = False
                out.append(Finding(severity, f"test {role}ing with the token key failed: {exc}"))
                continue
            if not ok:
                out.append(Finding(severity, f"the token key's test {role}ing does not match its certificate"))
    finally:
        key.close()
    return out


async def _test_sign(key: Any) -> bool:
    data = os.urandom(32)
    public = key.certificate.public_key()
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(await key.sign(data, "sha256", "ecdsa"), data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public, rsa.RSAPublicKey):
            public.verify(await key.sign(data, "sha256", "pkcs1v15"), data, padding.PKCS1v15(), hashes.SHA256())
        else:
            return False
    except InvalidSignature:
        return False
    return True


async def _test_decrypt(key: Any) -> bool:
    public = key.certificate.public_key()
    if not isinstance(public, rsa.RSAPublicKey):
        return False
    cek = os.urandom(32)
    return bool(await key.decrypt_key(public.encrypt(cek, padding.PKCS1v15()), "pkcs1v15") == cek)


# -- a TLS client certificate -----------------------------------------------------------------
async def _check_client(source: str, where: str, cert_path: Path | None, key_path: Path | None,
                        ca_file: Path | None, trust: _Trust, now: dt.datetime) -> KeyStatus:
    """The certificate and key a route presents for mutual TLS: as `[keys.*]`, role clientAuth;
    the chain is checked against the `[trust]` anchors plus the route's `ca_file`."""
    from gateway.smime.softkeys import load_certificates
    from gateway.smime.trust import split_anchors

    findings: list[Finding] = []
    cert: x509.Certificate | None = None
    key_file = key_path or cert_path
    ok = _readable(cert_path, "certificate file", findings) if cert_path is not None else False
    if cert_path is None:
        findings.append(error("client_key without client_cert"))
    ok = _readable(key_file, "key file", findings, private=True) and ok
    roots, intermediates = list(trust.roots), list(trust.intermediates)
    if ca_file is not None:
        try:
            more = split_anchors(load_certificates(ca_file))
            roots, intermediates = roots + more[0], intermediates + more[1]
        except GatewayError as exc:
            findings.append(error(f"ca_file: {exc}"))
    if ok and cert_path is not None and key_file is not None:
        try:
            certs = load_certificates(cert_path)
            cert = certs[0] if certs else None
            if cert is None:
                findings.append(error(f"no certificate in {cert_path}"))
            else:
                findings += _client_key_matches(key_file, cert_path)
                findings += await _certificate(cert, certs[1:], ("client",), False, roots, intermediates, trust,
                                               now, "the trust anchors ([trust] anchors and ca_file)")
        except GatewayError as exc:
            findings.append(error(str(exc)))
    return KeyStatus(source, f"{where}.client_cert", "TLS client", tuple(findings),
                     cert.not_valid_after_utc if cert is not None else None)


def _client_key_matches(key_file: Path, cert_path: Path) -> list[Finding]:
    """The key loads (PEM, no password: what the TLS client will load) and is the certificate's."""
    from gateway.smime.softkeys import load_pem_key

    try:
        load_pem_key(key_file, cert_path)
    except GatewayError as exc:
        return [error(str(exc))]
    return []
