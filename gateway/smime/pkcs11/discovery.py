"""What is on a module's tokens: slots, tokens, certificates and keys, with ready-made URIs.

Used by `msgw certs tokens` so an operator can write the config line without guessing
labels or ids. Certificates are public objects, readable without a PIN; private keys are
listed only after a login (through the same TokenState, so the PIN rules hold here too).
All calls run on the module's dedicated thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pkcs11
from cryptography import x509
from pkcs11 import Attribute, ObjectClass, TokenFlag

from gateway.smime.pkcs11.pin import PinSource
from gateway.smime.pkcs11.session import _chain_from, _load_cert, _serial, token_state
from gateway.smime.pkcs11.uri import Pkcs11Uri, TokenSelector
from gateway.smime.pkcs11.worker import ModuleWorker, get_worker


@dataclass
class KeyEntry:
    label: str
    id: str  # hex
    key_type: str
    sign: bool
    decrypt: bool


@dataclass
class CertEntry:
    label: str
    id: str  # hex
    uri: str  # what to put in the config: pkcs11:token=...;id=...[;object=<key label>]
    certificate: x509.Certificate
    has_private_key: bool | None  # None: not known (no login)


@dataclass
class TokenEntry:
    slot_id: int
    slot_description: str
    present: bool
    label: str | None = None
    serial: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    flags: list[str] = field(default_factory=list)
    logged_in: bool = False
    certificates: list[CertEntry] = field(default_factory=list)
    keys: list[KeyEntry] = field(default_factory=list)
    error: str | None = None


_FLAG_NAMES = ("LOGIN_REQUIRED", "PROTECTED_AUTHENTICATION_PATH", "USER_PIN_COUNT_LOW", "USER_PIN_FINAL_TRY",
               "USER_PIN_LOCKED", "USER_PIN_TO_BE_CHANGED", "TOKEN_INITIALIZED", "WRITE_PROTECTED")


def list_tokens(module_path: str, pin: PinSource | None = None,
                token_label: str | None = None) -> list[TokenEntry]:
    """Describe every slot of a module (blocking; runs on the module thread)."""
    worker = get_worker(module_path)
    return worker.run_sync(_list_on_thread, worker, pin, token_label)


def _list_on_thread(worker: ModuleWorker, pin: PinSource | None,
                    token_label: str | None) -> list[TokenEntry]:
    if worker.loaded:
        worker.reinitialize()  # see tokens inserted since the module was loaded (rate-limited)
    entries: list[TokenEntry] = []
    for slot in worker.lib.get_slots(token_present=False):
        entry = TokenEntry(slot_id=slot.slot_id, slot_description=slot.slot_description.strip(),
                           present=bool(slot.flags & pkcs11.SlotFlag.TOKEN_PRESENT))
        entries.append(entry)
        if not entry.present:
            continue
        try:
            token = slot.get_token()
        except pkcs11.PKCS11Error as exc:
            entry.error = type(exc).__name__
            continue
        entry.label, entry.serial = token.label, _serial(token)
        entry.manufacturer, entry.model = token.manufacturer_id, token.model
        entry.flags = [n for n in _FLAG_NAMES if token.flags & getattr(TokenFlag, n)]
        if not token.flags & TokenFlag.TOKEN_INITIALIZED:
            continue
        if token_label is not None and token.label != token_label:
            continue
        _describe_objects(worker, token, entry, pin)
    return entries


def _describe_objects(worker: ModuleWorker, token: Any, entry: TokenEntry, pin: PinSource | None) -> None:
    own_session = None
    try:
        if pin is not None:
            state = token_state(worker, TokenSelector(token=token.label, serial=entry.serial))
            session = state.ensure_session(pin)
            entry.logged_in = True
        else:
            session = own_session = token.open()
        keys = []
        if entry.logged_in:
            for key in session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}):
                keys.append(KeyEntry(
                    label=str(_get(key, Attribute.LABEL, "")), id=bytes(_get(key, Attribute.ID, b"")).hex(),
                    key_type=key.key_type.name, sign=bool(_get(key, Attribute.SIGN, False)),
                    decrypt=bool(_get(key, Attribute.DECRYPT, False))))
        entry.keys = keys
        for obj in session.get_objects({Attribute.CLASS: ObjectClass.CERTIFICATE}):
            try:
                cert = x509.load_der_x509_certificate(bytes(obj[Attribute.VALUE]))
            except (ValueError, pkcs11.PKCS11Error):
                continue
            cid = bytes(_get(obj, Attribute.ID, b""))
            key_labels = [k.label for k in keys if k.id == cid.hex()]
            uri = Pkcs11Uri(token=token.label, id=cid or None, object=key_labels[0] if key_labels else None)
            entry.certificates.append(CertEntry(
                label=str(_get(obj, Attribute.LABEL, "")), id=cid.hex(), uri=str(uri), certificate=cert,
                has_private_key=bool(key_labels) if entry.logged_in else None))
    except pkcs11.PKCS11Error as exc:
        entry.error = type(exc).__name__
    finally:
        if own_session is not None:
            try:
                own_session.close()
            except pkcs11.PKCS11Error:
                pass


def _get(obj: Any, attribute: Attribute, default: Any) -> Any:
    try:
        return obj[attribute]
    except (pkcs11.PKCS11Error, KeyError):
        return default


@dataclass
class KeyProbe:
    """What a key URI names on its token, seen without a login: the token is there, and the
    objects a session without PIN shows (certificates and public keys; private keys are usually
    CKA_PRIVATE, visible only after login)."""

    token: str  # the token's selector, described
    objects: list[str]  # object classes found under the URI's id/label ("CERTIFICATE", "PUBLIC_KEY", ...)
    certificate: x509.Certificate | None  # the certificate of the key, when the token holds it
    chain: tuple[x509.Certificate, ...] = ()


async def probe_key_async(module_path: str, uri: Pkcs11Uri) -> KeyProbe:
    """Load the module, find the token and the URI's objects, never touching the PIN; on the
    module's thread, without blocking the event loop.

    Raises ModuleError (module does not load), TokenAbsent (no such token), KeyNotFound (several
    tokens match)."""
    worker = get_worker(module_path)
    return await worker.run(_probe_on_thread, worker, uri)


def _probe_on_thread(worker: ModuleWorker, uri: Pkcs11Uri) -> KeyProbe:
    state = token_state(worker, uri.token_selector)

    def look() -> KeyProbe:
        session = state.session
        attrs: dict[Attribute, Any] = {}
        if uri.object is not None:
            attrs[Attribute.LABEL] = uri.object
        if uri.id is not None:
            attrs[Attribute.ID] = uri.id
        found = list(session.get_objects(attrs))
        classes = [ObjectClass(_get(o, Attribute.CLASS, ObjectClass.DATA)).name for o in found]
        ids = {bytes(_get(o, Attribute.ID, b"")) for o in found} - {b""}
        all_certs = [c for c in (_load_cert(o) for o in session.get_objects(
            {Attribute.CLASS: ObjectClass.CERTIFICATE})) if c is not None]
        mine = [c for cid, c in all_certs if cid in ids]
        cert = max(mine, key=lambda c: c.not_valid_after_utc) if mine else None
        chain = _chain_from(cert, [c for _, c in all_certs]) if cert is not None else ()
        return KeyProbe(state.selector.describe(), classes, cert, chain)

    return state._with_retry(look, None)
