"""Token-held keys behind the S/MIME engine's SigningKey / DecryptionKey protocols.

A `TokenKey` is what the CMS code sees: `await key.sign(signed_attrs_der, "sha256", "pkcs1v15")`
or `await key.decrypt_key(encrypted_cek, "oaep-sha1")`. Each call waits its turn in the key's
bounded FIFO queue, then runs on the module's dedicated thread (or in one of the optional
worker processes), so the event loop never blocks on a slow card.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.smime.keyapi import HashName, KeyTransportPadding, SignaturePadding
from gateway.smime.pkcs11.errors import KeyNotFound, MechanismRefused, ModuleError, TokenAbsent
from gateway.smime.pkcs11.limiter import PerLoopLimiter
from gateway.smime.pkcs11.mechanisms import plan_key_transport, plan_signature
from gateway.smime.pkcs11.pin import PinSource
from gateway.smime.pkcs11.session import KeyHandle, TokenState, find_key_on_thread
from gateway.smime.pkcs11.uri import Pkcs11Uri, parse_uri
from gateway.smime.pkcs11.worker import ModuleWorker, get_worker

DEFAULT_CONCURRENCY = 4
DEFAULT_MAX_WAITING = 1000


class TokenKey:
    """A private key on a PKCS#11 token (CPS card, HSM); signs and unwraps CEKs."""

    def __init__(self, worker: ModuleWorker, state: TokenState | None, handle: KeyHandle | None,
                 pin: PinSource | None, *, uri: Pkcs11Uri, usage: str | None,
                 certificate: x509.Certificate, chain: Sequence[x509.Certificate] = (),
                 prefer_raw: bool = False, concurrency: int = DEFAULT_CONCURRENCY,
                 max_waiting: int = DEFAULT_MAX_WAITING, pool: Any = None) -> None:
        self._worker = worker
        self._state = state
        self._handle = handle  # None: the token was absent when the key was opened (deferred)
        self._uri = uri
        self._usage = usage
        self._pin = pin
        self._certificate = certificate
        self._chain = tuple(chain)
        self._prefer_raw = prefer_raw
        self._pool = pool
        if pool is not None:  # keep every process busy with full batches
            concurrency = max(concurrency, 2 * pool.processes * pool.batch)
        self._limiter = PerLoopLimiter(concurrency, max_waiting, name=f"token key {self.uri}")
        #: Signatures the token made with this key in this process (operators, tests).
        self.signatures = 0

    # -- protocol properties -------------------------------------------------------------
    @property
    def certificate(self) -> x509.Certificate:
        return self._certificate

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        return self._chain

    # -- facts for operators and tests ---------------------------------------------------
    @property
    def uri(self) -> str:
        return str(self._uri)

    @property
    def key_type(self) -> str | None:
        """RSA or EC; None until a deferred key has met its token."""
        return self._handle.key_type.name if self._handle is not None else None

    @property
    def login_calls(self) -> int:
        """C_Login calls made for this key's token in this process (one when healthy)."""
        return self._state.login_calls if self._state is not None else 0

    @property
    def module_path(self) -> str:
        return self._worker.module_path

    def __repr__(self) -> str:
        return f"TokenKey({self.uri!r}, module={self._worker.module_path!r})"

    # -- operations ----------------------------------------------------------------------
    async def sign(self, data: bytes, hash_name: HashName, padding: SignaturePadding) -> bytes:
        """Hash `data` and sign it on the token (hashing happens here when only raw RSA exists)."""
        async with self._limiter.current():
            state, handle = await self._ready()
            if not handle.can_sign:
                raise MechanismRefused(f"the key {self.uri} is not allowed to sign (CKA_SIGN false)")
            plan = plan_signature(data, hash_name, padding, handle.key_type, handle.offered, self._prefer_raw)
            if self._pool is not None:
                signature = await self._pool.sign(plan)
            else:
                signature = await self._worker.run(state.sign, handle, plan, self._pin)
            self.signatures += 1
            return signature

    async def decrypt_key(self, encrypted_key: bytes, padding: KeyTransportPadding) -> bytes:
        """Unwrap a content-encryption key on the token (PKCS#1 v1.5 or OAEP)."""
        async with self._limiter.current():
            state, handle = await self._ready()
            if not handle.can_decrypt:
                raise MechanismRefused(f"the key {self.uri} is not allowed to decrypt (CKA_DECRYPT false)")
            mechanism, param = plan_key_transport(padding, handle.offered)
            if self._pool is not None:
                return await self._pool.decrypt(mechanism, param, encrypted_key)
            return await self._worker.run(state.decrypt, handle, mechanism, param, encrypted_key, self._pin)

    async def _ready(self) -> tuple[TokenState, KeyHandle]:
        """The token state and key handle; a deferred key looks for its token first (TokenAbsent
        while it is still away) and checks the token's key is the configured certificate's."""
        if self._state is None or self._handle is None:
            state, handle = await self._worker.run(find_key_on_thread, self._worker, self._uri, self._pin,
                                                   self._usage)
            if handle.certificate is not None and not _same_key(handle.certificate, self._certificate):
                raise KeyNotFound(f"the key {self.uri} on the token does not match the configured "
                                  "certificate")
            self._state, self._handle = state, handle
        return self._state, self._handle

    def close(self) -> None:
        """Stop worker processes (the shared token session stays for other keys)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None


def _same_key(a: x509.Certificate, b: x509.Certificate) -> bool:
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return a.public_key().public_bytes(der, fmt) == b.public_key().public_bytes(der, fmt)


def resolve_module(uri: Pkcs11Uri, module: str | os.PathLike[str] | None) -> str:
    """The module path: the config's `module`, else the URI's `module-path`."""
    path = os.fspath(module) if module is not None else uri.module_path
    if not path:
        raise ModuleError("no PKCS#11 module: set `module` in the config or module-path in the URI")
    if os.sep in path and not os.path.exists(path):  # a bare name is left to the loader's search path
        raise ModuleError(f"PKCS#11 module {path} does not exist")
    return path


def open_token_key(ref: str | Pkcs11Uri, *, module: str | os.PathLike[str] | None = None,
                   pin: PinSource | None = None, usage: str | None = None,
                   certificate: x509.Certificate | None = None,
                   chain: Sequence[x509.Certificate] | None = None,
                   prefer_raw: bool = False, concurrency: int = DEFAULT_CONCURRENCY,
                   max_waiting: int = DEFAULT_MAX_WAITING, processes: int = 0,
                   defer_if_absent: bool = False) -> TokenKey:
    """Log in (once per token) and find the key and its certificate; blocks the caller.

    For start-up and the CLI. From a running event loop use `open_token_key_async`.
    `usage` ("sign" / "decrypt") picks among several keys matching the URI; `processes` > 0
    starts that many worker processes (one login each) for more signatures per second.
    `defer_if_absent` (needs `certificate`): when the card is not inserted yet, return a key
    that looks for it at each use (TokenAbsent, temporary, until it is there) instead of failing."""
    uri, worker = _prepare(ref, module)
    try:
        state, handle = worker.run_sync(find_key_on_thread, worker, uri, pin, usage)
    except TokenAbsent:
        if not (defer_if_absent and certificate is not None):
            raise
        return _deferred(worker, uri, pin, usage, certificate, chain, prefer_raw, concurrency, max_waiting)
    return _build(worker, state, handle, pin, certificate, chain, prefer_raw, concurrency, max_waiting,
                  processes)


async def open_token_key_async(ref: str | Pkcs11Uri, *, module: str | os.PathLike[str] | None = None,
                               pin: PinSource | None = None, usage: str | None = None,
                               certificate: x509.Certificate | None = None,
                               chain: Sequence[x509.Certificate] | None = None, prefer_raw: bool = False,
                               concurrency: int = DEFAULT_CONCURRENCY, max_waiting: int = DEFAULT_MAX_WAITING,
                               processes: int = 0, defer_if_absent: bool = False) -> TokenKey:
    """`open_token_key` without blocking the event loop."""
    uri, worker = _prepare(ref, module)
    try:
        state, handle = await worker.run(find_key_on_thread, worker, uri, pin, usage)
    except TokenAbsent:
        if not (defer_if_absent and certificate is not None):
            raise
        return _deferred(worker, uri, pin, usage, certificate, chain, prefer_raw, concurrency, max_waiting)
    return _build(worker, state, handle, pin, certificate, chain, prefer_raw, concurrency, max_waiting,
                  processes)


def _prepare(ref: str | Pkcs11Uri, module: str | os.PathLike[str] | None) -> tuple[Pkcs11Uri, ModuleWorker]:
    uri = parse_uri(ref) if isinstance(ref, str) else ref
    return uri, get_worker(resolve_module(uri, module))


def _build(worker: ModuleWorker, state: TokenState, handle: KeyHandle, pin: PinSource | None,
           certificate: x509.Certificate | None, chain: Sequence[x509.Certificate] | None, prefer_raw: bool,
           concurrency: int, max_waiting: int, processes: int) -> TokenKey:
    cert = certificate or handle.certificate
    if certificate is not None and handle.certificate is not None and not _same_key(certificate,
                                                                                    handle.certificate):
        raise KeyNotFound(f"the key {handle.uri} on the token does not match the configured certificate")
    if cert is None:
        raise KeyNotFound(f"no certificate with the key's CKA_ID on the token for {handle.uri}: "
                          "import it on the token or give `cert` in the config")
    pool = None
    if processes > 0:
        from gateway.smime.pkcs11.pool import TokenProcessPool

        pool = TokenProcessPool(worker.module_path, handle.uri, pin, processes, handle.usage)
    return TokenKey(worker, state, handle, pin, uri=handle.uri, usage=handle.usage, certificate=cert,
                    chain=chain if chain is not None else handle.chain, prefer_raw=prefer_raw,
                    concurrency=concurrency, max_waiting=max_waiting, pool=pool)


def _deferred(worker: ModuleWorker, uri: Pkcs11Uri, pin: PinSource | None, usage: str | None,
              certificate: x509.Certificate, chain: Sequence[x509.Certificate] | None, prefer_raw: bool,
              concurrency: int, max_waiting: int) -> TokenKey:
    """A key whose token is not there yet (worker processes are not started for it)."""
    return TokenKey(worker, None, None, pin, uri=uri, usage=usage, certificate=certificate, chain=chain or (),
                    prefer_raw=prefer_raw, concurrency=concurrency, max_waiting=max_waiting)
