"""The life of one token on its module thread: find it, log in once, find keys, sign, decrypt.

Everything in this module runs on the module's dedicated thread (see worker.py). One
`TokenState` per token (per selector) holds one session and one login shared by every key
on that token, because PKCS#11 login state is per application and token: a second login
would only answer CKR_USER_ALREADY_LOGGED_IN.

PIN rules, because a CPS card locks after three wrong PINs:
- a PIN the token refused is remembered (as an HMAC under a per-process random key, never
  the PIN) and never presented again; a *different* PIN from the source is tried once;
- a token flagged "PIN locked", or "final try" when this PIN never worked, is not tried;
- re-login after the card was pulled out and put back uses the PIN that already worked.

Session loss (card removed, module re-initialised) is detected from the error codes; the
operation is retried once on a fresh session, then reported as a temporary error so the
message waits in the spool.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import pkcs11
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass, TokenFlag
from pkcs11 import exceptions as p11e

from gateway.smime.pkcs11.errors import (
    KeyNotFound,
    KeyOperationFailed,
    MechanismRefused,
    PinRejected,
    TokenAbsent,
    TokenDeviceError,
    TokenLocked,
)
from gateway.smime.pkcs11.mechanisms import SignPlan
from gateway.smime.pkcs11.pin import PinSource
from gateway.smime.pkcs11.uri import Pkcs11Uri, TokenSelector
from gateway.smime.pkcs11.worker import ModuleWorker

log = logging.getLogger(__name__)

_PIN_KEY = os.urandom(32)

#: Errors meaning "the session or the objects we hold are gone": reopen, log in, retry once.
SESSION_LOST = (
    p11e.SessionHandleInvalid, p11e.SessionClosed, p11e.ObjectHandleInvalid, p11e.KeyHandleInvalid,
    p11e.DeviceRemoved, p11e.TokenNotPresent, p11e.TokenNotRecognised, p11e.UserNotLoggedIn,
    p11e.GeneralError, p11e.SlotIDInvalid,
)
#: Errors of the device that may pass: temporary, session reset.
DEVICE_TROUBLE = (p11e.DeviceError, p11e.DeviceMemory, p11e.HostMemory, p11e.FunctionFailed,
                  p11e.FunctionCancelled, p11e.SessionCount)
#: The mechanism or its parameters are refused: permanent.
MECHANISM_REFUSED = (p11e.MechanismInvalid, p11e.MechanismParamInvalid, p11e.ArgumentsBad,
                     p11e.KeyTypeInconsistent, p11e.KeySizeRange, p11e.FunctionNotSupported)
#: PIN trouble at login.
PIN_REFUSED = (p11e.PinIncorrect, p11e.PinInvalid, p11e.PinLenRange, p11e.PinExpired)


def _pin_mark(pin: str) -> bytes:
    return hmac.new(_PIN_KEY, pin.encode("utf-8"), hashlib.sha256).digest()


def _is_not_initialized(exc: BaseException) -> bool:
    return type(exc) is p11e.PKCS11Error and "not initialized" in str(exc)


@dataclass
class KeyHandle:
    """A private key found on the token, with what the async side needs to know about it."""

    uri: Pkcs11Uri
    key_id: bytes
    label: str
    key_type: KeyType
    always_authenticate: bool
    can_sign: bool
    can_decrypt: bool
    certificate: x509.Certificate | None
    chain: tuple[x509.Certificate, ...]
    offered: frozenset[Mechanism]
    usage: str | None = None
    _object: Any = field(default=None, repr=False)
    _session_serial: int = -1


class TokenState:
    """One token of a module: its session, its login, and its PIN history."""

    def __init__(self, worker: ModuleWorker, selector: TokenSelector) -> None:
        self.worker = worker
        self.selector = selector
        self.session: Any = None
        self._generation = -1
        #: Bumped at every session opened: key objects belong to the session they were found in.
        self.session_serial = 0
        self._logged_in = False
        self._failed_pins: set[bytes] = set()
        self._good_pins: set[bytes] = set()
        #: C_Login calls made for this token (including context-specific ones).
        self.login_calls = 0
        self.offered: frozenset[Mechanism] = frozenset()

    # -- token and session ---------------------------------------------------------------
    def find_token(self, rescan: bool = True) -> Any:
        """The one token matching the selector; a rescan (re-initialisation) when absent."""
        matches = self._matching_tokens()
        if not matches and rescan and self.worker.reinitialize():
            matches = self._matching_tokens()
        if not matches:
            raise TokenAbsent(f"PKCS#11 token not present ({self.selector.describe()})")
        if len(matches) > 1:
            raise KeyNotFound(f"several PKCS#11 tokens match ({self.selector.describe()}): "
                              "add serial= or slot-id= to the URI")
        return matches[0]

    def _matching_tokens(self) -> list[Any]:
        sel = self.selector
        found = []
        for slot in self.worker.lib.get_slots(token_present=True):
            if sel.slot_id is not None and slot.slot_id != sel.slot_id:
                continue
            if sel.slot_description is not None and slot.slot_description != sel.slot_description:
                continue
            if sel.slot_manufacturer is not None and slot.manufacturer_id != sel.slot_manufacturer:
                continue
            try:
                token = slot.get_token()
            except pkcs11.PKCS11Error:
                continue  # removed, unrecognised, or a stale slot (SoftHSM after deletion)
            if sel.token is not None and token.label != sel.token:
                continue
            if sel.serial is not None and _serial(token) != sel.serial:
                continue
            if sel.manufacturer is not None and token.manufacturer_id != sel.manufacturer:
                continue
            if sel.model is not None and token.model != sel.model:
                continue
            found.append(token)
        return found

    def ensure_session(self, pin_source: PinSource | None) -> Any:
        """An open session, logged in when a PIN source is given; opened at most once per
        module generation, so a healthy token sees exactly one C_Login."""
        self.worker.assert_on_thread()
        if self.session is not None and self._generation == self.worker.generation:
            if pin_source is None or self._logged_in:
                return self.session
        self.drop_session()
        token = self.find_token()
        try:
            self.offered = frozenset(token.slot.get_mechanisms())
        except pkcs11.PKCS11Error as exc:
            raise TokenAbsent(f"PKCS#11 token not readable ({self.selector.describe()}): "
                              f"{type(exc).__name__}") from None
        generation = self.worker.generation
        if pin_source is None:
            self.session = self._open(token, None)
        else:
            self.session = self._login(token, pin_source)
            self._logged_in = True
        self._generation = generation
        self.session_serial += 1
        return self.session

    def _open(self, token: Any, pin: str | None) -> Any:
        try:
            return token.open(user_pin=pin) if pin is not None else token.open()
        except (p11e.TokenNotPresent, p11e.DeviceRemoved, p11e.TokenNotRecognised, p11e.SlotIDInvalid,
                p11e.GeneralError) as exc:
            raise TokenAbsent(f"PKCS#11 token went away ({self.selector.describe()}): "
                              f"{type(exc).__name__}") from None
        except DEVICE_TROUBLE as exc:
            raise TokenDeviceError(f"PKCS#11 token error ({self.selector.describe()}): "
                                   f"{type(exc).__name__}") from None

    def _login(self, token: Any, pin_source: PinSource) -> Any:
        pin = pin_source.read()
        mark = _pin_mark(pin)
        where = self.selector.describe()
        if mark in self._failed_pins:
            raise PinRejected(f"the PIN from {pin_source.describe()} was refused by the token ({where}) "
                              "and is not tried again: fix the PIN source")
        flags = token.flags
        if flags & TokenFlag.USER_PIN_LOCKED:
            raise TokenLocked(f"the user PIN of the token ({where}) is locked")
        if flags & TokenFlag.USER_PIN_FINAL_TRY and mark not in self._good_pins:
            raise TokenLocked(f"the token ({where}) has one PIN try left: not risked automatically, "
                              "log in once by hand to confirm the PIN")
        self.login_calls += 1
        self.worker.login_calls += 1
        try:
            session = self._open(token, pin)
        except p11e.UserAlreadyLoggedIn:
            # Logged in already by this process (another state, a re-initialisation race):
            # PKCS#11 answers that before checking the PIN, so no try was spent, and the PIN
            # is not known to be good either.
            return self._open(token, None)
        except PIN_REFUSED as exc:
            self._failed_pins.add(mark)
            log.warning("PKCS#11 token %s refused the PIN from %s (%s); it will not be retried",
                        where, pin_source.describe(), type(exc).__name__)
            raise PinRejected(f"the token ({where}) refused the PIN from {pin_source.describe()}; "
                              "it will not be tried again") from None
        except p11e.PinLocked:
            self._failed_pins.add(mark)
            raise TokenLocked(f"the user PIN of the token ({where}) is locked") from None
        self._good_pins.add(mark)
        return session

    def drop_session(self) -> None:
        """Forget the session (closing it when the module generation is still the same)."""
        session, self.session = self.session, None
        self._logged_in = False
        if session is not None and self._generation == self.worker.generation:
            try:
                session.close()
            except pkcs11.PKCS11Error:
                pass

    # -- keys ----------------------------------------------------------------------------
    def find_key(self, uri: Pkcs11Uri, pin_source: PinSource | None, usage: str | None) -> KeyHandle:
        """Find the private key the URI names, and its certificate by CKA_ID."""
        return self._with_retry(lambda: self._find_key(uri, usage), pin_source)

    def _find_key(self, uri: Pkcs11Uri, usage: str | None) -> KeyHandle:
        session = self.session
        if uri.type not in (None, "private"):
            raise KeyNotFound("a key URI must name a private key (type=private or no type)")
        attrs: dict[Attribute, Any] = {Attribute.CLASS: ObjectClass.PRIVATE_KEY}
        if uri.object is not None:
            attrs[Attribute.LABEL] = uri.object
        if uri.id is not None:
            attrs[Attribute.ID] = uri.id
        keys = list(session.get_objects(attrs))
        if usage in ("sign", "decrypt") and len(keys) > 1:
            wanted = Attribute.SIGN if usage == "sign" else Attribute.DECRYPT
            keys = [k for k in keys if _attr(k, wanted, False)]
        where = f"{_describe_key(uri)} on token ({self.selector.describe()})"
        if not keys:
            raise KeyNotFound(f"no private key {where} (is the PIN source set? private keys need a login)")
        if len(keys) > 1:
            raise KeyNotFound(f"several private keys match {where}: add id= or object= to the URI")
        key = keys[0]
        key_id = bytes(_attr(key, Attribute.ID, b""))
        cert, chain = self._certificate_for(key, key_id)
        return KeyHandle(
            uri=uri, key_id=key_id, label=str(_attr(key, Attribute.LABEL, "")), key_type=key.key_type,
            always_authenticate=bool(_attr(key, Attribute.ALWAYS_AUTHENTICATE, False)),
            can_sign=bool(_attr(key, Attribute.SIGN, False)),
            can_decrypt=bool(_attr(key, Attribute.DECRYPT, False)),
            certificate=cert, chain=chain, offered=self.offered, usage=usage, _object=key,
            _session_serial=self.session_serial)

    def _certificate_for(self, key: Any,
                         key_id: bytes) -> tuple[x509.Certificate | None, tuple[x509.Certificate, ...]]:
        objects = self.session.get_objects({Attribute.CLASS: ObjectClass.CERTIFICATE})
        certs = [c for c in (_load_cert(o) for o in objects) if c is not None]
        by_id = [c for cid, c in certs if key_id and cid == key_id]
        modulus = _attr(key, Attribute.MODULUS, None) if key.key_type == KeyType.RSA else None
        if modulus is not None:
            n = int.from_bytes(bytes(modulus), "big")
            by_id = [c for c in by_id if isinstance(c.public_key(), rsa.RSAPublicKey)
                     and c.public_key().public_numbers().n == n]  # type: ignore[union-attr]
        if not by_id:
            return None, ()
        cert = max(by_id, key=lambda c: c.not_valid_after_utc)
        return cert, _chain_from(cert, [c for _, c in certs])

    def refresh_key(self, handle: KeyHandle, pin_source: PinSource | None) -> Any:
        """The key object for this session generation (found again after a re-login)."""
        if handle._object is not None and handle._session_serial == self.session_serial:
            return handle._object
        fresh = self._find_key(handle.uri, handle.usage)
        if fresh.key_id != handle.key_id or fresh.key_type != handle.key_type:
            raise KeyNotFound(f"the key {_describe_key(handle.uri)} changed on the token: reload the config")
        handle._object, handle._session_serial = fresh._object, fresh._session_serial
        return handle._object

    # -- operations ----------------------------------------------------------------------
    def sign(self, handle: KeyHandle, plan: SignPlan, pin_source: PinSource | None) -> bytes:
        def op() -> bytes:
            key = self.refresh_key(handle, pin_source)
            pin = self._context_pin(handle, pin_source)
            try:
                return bytes(key.sign(plan.data, mechanism=plan.mechanism, mechanism_param=plan.param,
                                      pin=pin))
            except MECHANISM_REFUSED as exc:
                raise MechanismRefused(f"the token refused {plan.mechanism.name}: "
                                       f"{type(exc).__name__}") from None
            except (p11e.DataInvalid, p11e.DataLenRange) as exc:
                raise KeyOperationFailed("the token refused the data to sign: "
                                         f"{type(exc).__name__}") from None
            except p11e.GeneralError:
                _probe(key)  # raises a session-lost error if the session is what failed
                raise KeyOperationFailed("the token failed to sign (general error)") from None
        return plan.finish(self._with_retry(op, pin_source))

    def decrypt(self, handle: KeyHandle, mechanism: Mechanism, param: Any, data: bytes,
                pin_source: PinSource | None) -> bytes:
        def op() -> bytes:
            key = self.refresh_key(handle, pin_source)
            pin = self._context_pin(handle, pin_source)
            try:
                return bytes(key.decrypt(data, mechanism=mechanism, mechanism_param=param, pin=pin))
            except (p11e.MechanismInvalid, p11e.MechanismParamInvalid, p11e.ArgumentsBad,
                    p11e.FunctionNotSupported) as exc:
                raise MechanismRefused(f"the token refused {mechanism.name}: {type(exc).__name__}") from None
            except (p11e.EncryptedDataInvalid, p11e.EncryptedDataLenRange, p11e.DataInvalid,
                    p11e.DataLenRange, p11e.KeyTypeInconsistent, p11e.KeySizeRange):
                raise KeyOperationFailed("key decryption failed") from None
            except p11e.GeneralError:
                # SoftHSM answers CKR_GENERAL_ERROR for bad padding: tell it apart from a lost
                # session, and keep one generic message (no padding oracle through the text).
                _probe(key)
                raise KeyOperationFailed("key decryption failed") from None
        return self._with_retry(op, pin_source)

    def _context_pin(self, handle: KeyHandle, pin_source: PinSource | None) -> str | None:
        """Keys with CKA_ALWAYS_AUTHENTICATE (CPS non-repudiation keys) need the PIN per use."""
        if not handle.always_authenticate or pin_source is None:
            return None
        pin = pin_source.read()
        if _pin_mark(pin) not in self._good_pins:
            raise PinRejected("the PIN for a per-use authenticated key is not the one that logged in")
        self.login_calls += 1
        self.worker.login_calls += 1
        return pin

    def _with_retry(self, op: Any, pin_source: PinSource | None) -> Any:
        """Run `op` on a live session; after a session loss, re-login once and retry once."""
        for attempt in (1, 2):
            try:
                self.ensure_session(pin_source)
                return op()
            except PIN_REFUSED:
                # Context-specific login refused: remember it like a login failure.
                if pin_source is not None:
                    self._failed_pins.add(_pin_mark(pin_source.read()))
                raise PinRejected(f"the token ({self.selector.describe()}) refused the PIN") from None
            except SESSION_LOST as exc:
                self.drop_session()
                if attempt == 2:
                    raise TokenAbsent(f"PKCS#11 token lost ({self.selector.describe()}): "
                                      f"{type(exc).__name__}") from None
            except DEVICE_TROUBLE as exc:
                self.drop_session()
                raise TokenDeviceError(f"PKCS#11 token error ({self.selector.describe()}): "
                                       f"{type(exc).__name__}") from None
            except pkcs11.PKCS11Error as exc:
                if _is_not_initialized(exc):
                    self.drop_session()
                    self.worker.reinitialize(force=True)
                    if attempt == 2:
                        raise TokenAbsent("PKCS#11 module not initialised "
                                          f"({self.selector.describe()})") from None
                    continue
                raise MechanismRefused("the token refused the operation: "
                                       f"{exc or type(exc).__name__}") from None
        raise AssertionError("unreachable")


def token_state(worker: ModuleWorker, selector: TokenSelector) -> TokenState:
    """The one TokenState of a selector on a module (worker thread only)."""
    worker.assert_on_thread()
    state = worker.tokens.get(selector)
    if state is None:
        state = worker.tokens[selector] = TokenState(worker, selector)
    return state


def find_key_on_thread(worker: ModuleWorker, uri: Pkcs11Uri, pin: PinSource | None,
                       usage: str | None) -> tuple[TokenState, KeyHandle]:
    """Log in (once per token) and find the key of `uri` (worker thread only). Here, not in
    `keys`, so that the worker processes of `pool` can open a key without importing `keys`."""
    state = token_state(worker, uri.token_selector)
    return state, state.find_key(uri, pin, usage)


def _probe(key: Any) -> None:
    """A cheap call on the key's session: raises the session-lost error if it is dead."""
    key[Attribute.CLASS]


def _serial(token: Any) -> str:
    serial = token.serial
    if isinstance(serial, bytes):
        serial = serial.decode("ascii", "replace")
    return str(serial).strip()


def _attr(obj: Any, attribute: Attribute, default: Any) -> Any:
    try:
        return obj[attribute]
    except (pkcs11.PKCS11Error, KeyError, NotImplementedError):
        return default


def _load_cert(obj: Any) -> tuple[bytes, x509.Certificate] | None:
    try:
        der = bytes(obj[Attribute.VALUE])
        return bytes(_attr(obj, Attribute.ID, b"")), x509.load_der_x509_certificate(der)
    except (pkcs11.PKCS11Error, ValueError):
        return None


def _chain_from(cert: x509.Certificate, pool: list[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    """Intermediate CAs found on the token above `cert` (self-signed roots left out)."""
    chain: list[x509.Certificate] = []
    current = cert
    for _ in range(8):
        if current.issuer == current.subject:
            break
        parents = [c for c in pool if c.subject == current.issuer and c != current and c.subject != c.issuer]
        if not parents:
            break
        current = parents[0]
        if current in chain:
            break
        chain.append(current)
    return tuple(chain)


def _describe_key(uri: Pkcs11Uri) -> str:
    parts = []
    if uri.object is not None:
        parts.append(f"object={uri.object}")
    if uri.id is not None:
        parts.append("id=" + uri.id.hex())
    return "(" + (", ".join(parts) or "any") + ")"
