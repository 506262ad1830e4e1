"""SMTP listeners on aiosmtpd: `submission` (STARTTLS then AUTH, authenticated users relay)
and `relay` (local domains for anyone; other domains only for partners allowed by client
certificate or network). Hooks return the SMTP reply, aiosmtpd's way; this module maps
gateway errors to replies with `gateway.errors.smtp_reply` (the one translation) and never lets a
stack trace reach a client.

What aiosmtpd does not do and we add (see ../shared/specs/python-stack.md):
* DATA is read in bulk (`gateway.server.dataread`: one scan for CRLF.CRLF, no list of lines)
  with aiosmtpd's own replies and limits; a bare LF / bare CR in it is refused (SMTP
  smuggling), which aiosmtpd passes through;
* AUTH verification runs in an executor (scrypt/argon2 take tens of ms), a failure is slowed
  down, guessing is limited per client address and per account (`throttle`), and an unknown
  account is checked against a dummy hash so the time does not tell which accounts exist;
  aiosmtpd's authenticator is synchronous;
* EHLO/HELO names are checked, the recipient count is capped, relaying is policed, and only
  known local mailboxes are accepted;
* an authenticated identity (account or relay partner) may use only its own sender addresses,
  in MAIL FROM and in From:/Sender: (`gateway.senders`); the spool records that identity,
  which alone chooses the signing key;
* the 250 is sent only after the spool has the message on disk (452 4.3.1 otherwise);
* the replies to pipelined MAIL, RCPT and RSET go out together with the next reply while the
  next command is already buffered (Postfix's flush rule, RFC 2920), not one write each;
* SASL EXTERNAL (RFC 4422 appendix A) logs a professional in with the CPS card certificate of
  the TLS handshake, and a relay partner's certificate is checked for revocation at MAIL: OpenSSL
  checks chains, never revocation (`gateway.server.clientcheck`, `gateway.smime.clientauth`).
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import re
import ssl
import time
from base64 import b64decode
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any, AnyStr, Literal

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, Session
from cryptography import x509

from gateway import tlspolicy
from gateway.config import GatewayConfig, ListenerConfig, is_domain
from gateway.config.accounts import Account
from gateway.errors import GatewayError, MalformedInput, PolicyError, TemporaryError, as_gateway_error, smtp_reply
from gateway.logs import event
from gateway.ops import metrics
from gateway.pipeline import Refusal
from gateway.senders import SenderIdentity, account_identity, network_identity, partner_identity, refused_claims
from gateway.server.clientcert import matching_subject
from gateway.server.clientcheck import ClientCheck, ClientChecks
from gateway.server.dataread import Outcome, has_bare_newline, read_data
from gateway.server.handoff import HandoffReceiver
from gateway.server.logins import AccountLogin, Mechanism, NationalIdLookup, account_for_national_id, may_act_as
from gateway.server.oauth import (
    OAuthLogin,
    OAuthRequest,
    SaslMalformed,
    error_challenge,
    parse_oauthbearer,
    parse_xoauth2,
)
from gateway.server.oidcjwks import IssuerUnavailable
from gateway.server.oidctoken import TokenRefused
from gateway.server.passwords import hash_password, verify_password
from gateway.server.throttle import AuthThrottle
from gateway.smime.clientauth import national_id
from gateway.spool import QueueStore

log = logging.getLogger("gateway.server")
_aiosmtpd_log = logging.getLogger("mail.log")

# No controls (NUL, VT, DEL...) in the local part: a NUL was accepted at MAIL and then crashed
# every delivery attempt until the message was quarantined; \Z, not $ (which allows a final LF).
_ADDRESS = re.compile(r"^[^@\s<>()\[\],;:\"\x00-\x1f\x7f]+@[A-Za-z0-9.-]+\Z"
                      r"|^[^@\s\x00-\x1f\x7f]+@\[[0-9A-Fa-f:.]+\]\Z")
_COMMAND_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
#: <dot-atom@domain> alone or followed by spaces and parameters: `GatewaySMTP._getaddr`'s fast path.
_SIMPLE_PATH = re.compile(rf"<({_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>(?:\Z| +(.*)\Z)", re.DOTALL)
AUTH_FAILURE_DELAY = 1.0
#: RFC 4954 §4: an AUTH line may be 12288 octets (a bearer token does not fit in 512 or 1001).
AUTH_LINE_LIMIT = 12288
LISTEN_BACKLOG = 1024
#: Async check of one recipient at RCPT time: None to accept, else a refusal, as a reason (a
#: policy refusal, 5.7.1), a typed error or a pipeline `Refusal` (their own status and flag).
RcptCheck = Callable[[str], Awaitable[str | GatewayError | Refusal | None]]
#: Async lookup of a local address in the directory: True when it is a `local` mailbox there.
MailboxLookup = Callable[[str], Awaitable[bool]]
#: Audit sink (the trail's writer): keyword fields of one record.
Audit = Callable[..., None]
BARE_LF_REPLY = "550 5.5.2 Message refused: bare LF or CR in message data (RFC 5321 2.3.8)"
_dummy_hashes: dict[str, str] = {}
#: How many client addresses a listener remembers the `allowed_networks` answer for.
NETWORK_MEMO_SIZE = 4096


class _SecondDate:
    """`formatdate(localtime=False)` of the current second, formatted once per second: the
    Received field of every message wants it and `formatdate` costs more than the rest of the
    field (it builds a datetime and formats it in Python). Same string, same clock."""

    def __init__(self) -> None:
        self.cached = (-1, "")  # (second, its text): one attribute, so two threads never mix them

    def __call__(self, now: float | None = None) -> str:
        second = int(time.time() if now is None else now)
        cached = self.cached
        if cached[0] != second:
            cached = self.cached = (second, formatdate(second, localtime=False))
        return cached[1]


received_date = _SecondDate()


def dummy_hash(scheme: Literal["scrypt", "argon2"] = "scrypt") -> str:
    """A hash of a random password in `scheme`, verified for unknown accounts so their AUTH takes
    as long as a known account's (the scheme the configured accounts mostly use)."""
    if scheme not in _dummy_hashes:
        import secrets

        _dummy_hashes[scheme] = hash_password(secrets.token_hex(16), scheme)
    return _dummy_hashes[scheme]


def accounts_scheme(config: GatewayConfig) -> Literal["scrypt", "argon2"]:
    argon2 = sum(a.password_hash.startswith("$argon2") for a in config.accounts)
    return "argon2" if argon2 * 2 > len(config.accounts) else "scrypt"


def _refusal_error(refusal: str | GatewayError | Refusal) -> GatewayError:
    """A RCPT-time refusal as the typed error `smtp_reply` translates (one table for every reply)."""
    if isinstance(refusal, GatewayError):
        return refusal
    if isinstance(refusal, Refusal):
        return GatewayError(refusal.reason, temporary=refusal.temporary, status=refusal.status, code="refusal")
    return PolicyError(refusal)


def server_tls_context(listener: ListenerConfig) -> ssl.SSLContext | None:
    """The listener's TLS: its `tls_policy` preset (versions, suites; `gateway.tlspolicy`), its pair."""
    if listener.tls_cert is None or listener.tls_key is None:
        return None
    ctx = tlspolicy.apply(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), listener.tls_policy)
    ctx.load_cert_chain(str(listener.tls_cert), str(listener.tls_key))
    if listener.client_ca is not None:
        # CERT_OPTIONAL: a certless client still gets SMTP replies (530/550) instead of a
        # dropped handshake; a presented certificate must verify against client_ca.
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.load_verify_locations(cafile=str(listener.client_ca))
    return ctx


def valid_helo(name: str) -> bool:
    if name.startswith("[") and name.endswith("]"):
        literal = name[1:-1]
        if literal.lower().startswith("ipv6:"):
            literal = literal[5:]
        try:
            ipaddress.ip_address(literal)
            return True
        except ValueError:
            return False
    return is_domain(name)


class GatewaySMTP(SMTP):
    """aiosmtpd's protocol with a bulk DATA read, fast address parsing and asynchronous,
    slowed-down AUTH verification."""

    def __init__(self, handler: GatewayHandler, *, token_login: OAuthLogin | None = None, **kwargs: Any) -> None:
        self.gateway_handler = handler
        #: Replies to pipelined commands not written yet (`push`): written with the next reply.
        self._held = bytearray()
        #: True while MAIL, RCPT or RSET runs: their replies may wait for the next command's.
        self._grouped = False
        #: OAUTHBEARER/XOAUTH2 (`[auth.oidc]`); None: those mechanisms are excluded.
        self.token_login = token_login
        if token_login is None:
            super().__init__(handler, **kwargs)
            return
        # A bearer token makes AUTH lines of a few KB: aiosmtpd's stream reader (made in its
        # __init__ with `line_length_limit`) stops at 1001 bytes and its command limit is 512.
        # Raise the reader's limit, then give DATA back its 1001 (`read_data` reads the
        # attribute); only AUTH gets the larger command limit (per instance: aiosmtpd's dict is
        # a class attribute), every other command keeps 512.
        self.line_length_limit = AUTH_LINE_LIMIT
        super().__init__(handler, **kwargs)
        del self.line_length_limit
        self.command_size_limits = collections.defaultdict(lambda: self.command_size_limit,
                                                           {"AUTH": AUTH_LINE_LIMIT})

    # aiosmtpd 1.4.6's smtp_DATA with its per-line read loop replaced by one bulk read
    # (`read_data`): same checks before the 354, same replies after. A message sent with bare LF
    # line ends has no CRLF for a thousand bytes: refused as bare LF, not as "Line too long".
    async def smtp_DATA(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            data = await read_data(self._reader, self.data_size_limit, self.line_length_limit)
        except asyncio.CancelledError:  # connection lost or timed out during DATA, as aiosmtpd
            self._writer.close()
            raise
        if data.outcome is not Outcome.OK:
            name = self.gateway_handler.listener.name
            if data.outcome is Outcome.TOO_MUCH:
                await self.push(metrics.refused(name, "data", "552 Error: Too much mail data", "too-large"))
            elif data.bare_newline:
                event(log, "refused", logging.WARNING, listener=self.gateway_handler.listener.name,
                      client=_peer_ip(self.session), reason="bare-lf")
                await self.push(metrics.refused(name, "data", BARE_LF_REPLY, "bare-lf"))
            else:
                await self.push(metrics.refused(name, "data", "500 Line too long (see RFC5321 4.5.3.1.6)",
                                                "line-too-long"))
            self._set_post_data_state()
            return
        self.envelope.original_content = self.envelope.content = data.content
        self.envelope.msgw_bare_newline = data.bare_newline  # type: ignore[attr-defined]
        del data  # the envelope holds the message alone: the handler can let go of it (large messages)
        if self._decode_data and self.envelope.original_content is not None:  # not ours; aiosmtpd's contract
            try:
                self.envelope.content = self.envelope.original_content.decode(
                    "utf-8" if self.enable_SMTPUTF8 else "ascii",
                    errors="surrogateescape" if self.enable_SMTPUTF8 else "strict")
            except UnicodeDecodeError:
                await self.push("500 Error: strict ASCII mode")
                return
        status = await self._call_handler_hook("DATA") if "DATA" in self._handle_hooks else MISSING
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    # aiosmtpd's address parser folds control characters as white space (`<dr@x.example\x0bY>`
    # became `dr@x.exampleY`, `<a@x.example\r>` became `a@x.example`): refuse them in the raw
    # command instead, so every component sees the same address (no parser differential).
    async def smtp_MAIL(self, arg: str | None) -> None:
        self._grouped = True
        try:
            if arg and _COMMAND_CONTROL.search(arg):
                await self.push("501 5.5.4 Control character in command")
                return
            await super().smtp_MAIL(arg)
        finally:
            self._grouped = False

    async def smtp_RCPT(self, arg: str | None) -> None:
        self._grouped = True
        try:
            if arg and _COMMAND_CONTROL.search(arg):
                await self.push("501 5.5.4 Control character in command")
                return
            await super().smtp_RCPT(arg)
        finally:
            self._grouped = False

    async def smtp_RSET(self, arg: str) -> None:
        self._grouped = True
        try:
            await super().smtp_RSET(arg)
        finally:
            self._grouped = False

    # aiosmtpd writes every reply at once: one socket write (a system call, and a wake-up of the
    # client) per command. A client that pipelines (RFC 2920: MAIL, RCPTs and DATA in one write,
    # as Postfix and our own delivery do) waits for all their replies anyway, so the replies of
    # MAIL, RCPT and RSET wait while the next command is already in the input buffer and go out
    # with the next reply that does not wait — Postfix's rule (flush when the input is empty).
    # Every command pushes a reply, the next one is already here, and DATA's 354, AUTH's
    # challenges and every refusal outside those three commands write at once: nothing is held
    # while the server waits for the client.
    async def push(self, status: AnyStr) -> None:
        response = (status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii") if isinstance(status, str)
                    else status) + b"\r\n"
        if self._grouped and b"\n" in self._reader._buffer:  # type: ignore[attr-defined]
            self._held += response
            return
        if self._held:
            response = bytes(self._held) + response
            self._held.clear()
        self._writer.write(response)
        if _aiosmtpd_log.isEnabledFor(logging.DEBUG):  # aiosmtpd's own trace of replies
            _aiosmtpd_log.debug("%r << %r", self.session.peer if self.session else None, response)
        await self._writer.drain()

    # aiosmtpd parses every MAIL FROM and RCPT TO address with `email._header_value_parser`
    # (~0.1 ms each, a third of a small message's protocol CPU). The common form, <dot-atom@domain>
    # with nothing or parameters after a space, gets the same answer from one regex; anything
    # else (quotes, comments, literals, obsolete forms, non-ASCII) still goes to the parser.
    # tests/server/test_addresses.py checks the two agree.
    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        match = _SIMPLE_PATH.match(arg)
        if match is not None:
            rest = match.group(2) or ""
            if not rest[:1].isspace() and not rest.startswith("("):
                address = match.group(1)
                if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
                    return None, None
                return address, rest
        return super()._getaddr(arg)  # type: ignore[no-any-return]

    async def _verify(self, mechanism: Mechanism, login: bytes, password: bytes) -> AuthResult:
        handler = self.gateway_handler
        client = _peer_ip(self.session)
        name = login.decode("utf-8", "replace")[:200]
        throttle = handler.throttle
        if await self._locked_out(client, name):
            return AuthResult(success=False, handled=True)
        account = await handler.check_password(login, password)
        if account is not None:
            throttle.success(name)
            return AuthResult(success=True, auth_data=AccountLogin(account, mechanism))
        locked = throttle.failure(client, name)
        event(log, "auth-failed", logging.WARNING, listener=handler.listener.name, client=client,
              mechanism=mechanism, locked=locked)
        metrics.auth_failed(handler.listener.name, mechanism, locked=locked)
        handler.audit_refusal("auth-failed", client=client, identity=handler.known_account(name),
                              reason="lockout started" if locked else None)
        await asyncio.sleep(AUTH_FAILURE_DELAY)
        return AuthResult(success=False, handled=False)

    async def _locked_out(self, client: str, name: str | None) -> bool:
        """True (after the slowed 454 and an audit record) when this client or account is locked out."""
        handler = self.gateway_handler
        if not handler.throttle.locked(client, name):
            return False
        handler.audit_refusal("auth-locked", client=client, identity=handler.known_account(name or ""))
        await asyncio.sleep(AUTH_FAILURE_DELAY)
        await self.push(metrics.auth_refused(handler.listener.name,
                                             "454 4.7.0 Too many authentication failures; try again later", "lockout"))
        return True

    async def _initial_response(self, arg: str) -> bytes | None:
        """The SASL initial response given with AUTH, decoded; None after a 501 for bad base64."""
        try:
            return b64decode(arg.encode(), validate=True)
        except ValueError:
            await self.push("501 5.5.2 Can't decode base64")
            return None

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            blob = await self.challenge_auth("")
            if not isinstance(blob, bytes):
                return AuthResult(success=False)
        else:
            decoded = await self._initial_response(args[1])
            if decoded is None:
                return AuthResult(success=False, handled=True)
            blob = decoded
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            await self.push("501 5.5.2 Can't split auth value")
            return AuthResult(success=False, handled=True)
        return await self._verify("PLAIN", parts[1], parts[2])

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            login = await self.challenge_auth(self.AuthLoginUsernameChallenge)
            if not isinstance(login, bytes):
                return AuthResult(success=False)
        else:
            decoded = await self._initial_response(args[1])
            if decoded is None:
                return AuthResult(success=False, handled=True)
            login = decoded
        password = await self.challenge_auth(self.AuthLoginPasswordChallenge)
        if not isinstance(password, bytes):
            return AuthResult(success=False)
        return await self._verify("LOGIN", login, password)

    async def auth_EXTERNAL(self, _: Any, args: list[str]) -> AuthResult:
        """SASL EXTERNAL (RFC 4422 A, RFC 4954): the CPS card certificate of the TLS handshake is the
        credential; the client sends only an authorization identity, empty (`=`) or the account
        its card maps to. Offered on submission listeners after TLS with a client certificate."""
        handler = self.gateway_handler
        if not handler.external_offered(self.session):
            await self.push("504 5.5.4 Unrecognized authentication type")
            return AuthResult(success=False, handled=True)
        assert self.session is not None  # external_offered saw it
        if len(args) == 1:
            blob = await self.challenge_auth("")
            if not isinstance(blob, bytes):
                return AuthResult(success=False, handled=True)
        elif args[1] == "=":
            blob = b""
        else:
            decoded = await self._initial_response(args[1])
            if decoded is None:
                return AuthResult(success=False, handled=True)
            blob = decoded
        try:
            authzid = blob.decode("utf-8")
        except UnicodeDecodeError:
            await self.push("501 5.5.2 Authorization identity is not UTF-8")
            return AuthResult(success=False, handled=True)
        client = _peer_ip(self.session)
        if await self._locked_out(client, authzid or None):
            return AuthResult(success=False, handled=True)
        account, reason, temporary = await handler.card_login(self.session, authzid)
        if account is not None:
            handler.throttle.success(account.username)
            return AuthResult(success=True, auth_data=AccountLogin(account, "EXTERNAL"))
        if temporary:
            event(log, "auth-deferred", logging.WARNING, listener=handler.listener.name, client=client,
                  mechanism="EXTERNAL", reason=reason)
            await self.push("454 4.7.0 Temporary authentication failure; try again later")
            return AuthResult(success=False, handled=True)
        locked = handler.throttle.failure(client, authzid or None)
        event(log, "auth-failed", logging.WARNING, listener=handler.listener.name, client=client,
              mechanism="EXTERNAL", reason=reason, locked=locked)
        metrics.auth_failed(handler.listener.name, "EXTERNAL", locked=locked)
        handler.audit_refusal("auth-failed", client=client, identity=handler.known_account(authzid),
                              reason=f"EXTERNAL: {reason}" + ("; lockout started" if locked else ""))
        await asyncio.sleep(AUTH_FAILURE_DELAY)
        return AuthResult(success=False, handled=False)

    async def auth_OAUTHBEARER(self, _: Any, args: list[str]) -> AuthResult:
        return await self._token_auth("OAUTHBEARER", args)

    async def auth_XOAUTH2(self, _: Any, args: list[str]) -> AuthResult:
        return await self._token_auth("XOAUTH2", args)

    async def _token_auth(self, mechanism: Literal["OAUTHBEARER", "XOAUTH2"], args: list[str]) -> AuthResult:
        """A bearer token (RFC 7628 / XOAUTH2) → the professional's account. A refusal sends the
        RFC 7628 error as a 334 challenge, waits for the client's dummy answer, then 535; an
        issuer that cannot be reached is 454 (temporary, never a yes)."""
        handler = self.gateway_handler
        client = _peer_ip(self.session)
        if self.token_login is None:  # not offered on this listener (excluded): defensive
            return AuthResult(success=False, handled=False)
        if len(args) == 1:
            blob = await self.challenge_auth("")
            if not isinstance(blob, bytes):
                return AuthResult(success=False, handled=True)  # "*" or bad base64: 501 sent
        else:
            decoded = await self._initial_response(args[1])
            if decoded is None:
                return AuthResult(success=False, handled=True)
            blob = decoded
        if await self._locked_out(client, None):
            return AuthResult(success=False, handled=True)
        request: OAuthRequest | None = None
        try:
            request = (parse_oauthbearer if mechanism == "OAUTHBEARER" else parse_xoauth2)(blob)
            account = await self.token_login.account(request)
        except IssuerUnavailable:
            event(log, "auth-deferred", logging.WARNING, listener=handler.listener.name, client=client,
                  mechanism=mechanism, reason="issuer-unavailable")
            await self.push("454 4.7.0 Temporary authentication failure; try again later")
            return AuthResult(success=False, handled=True)
        except (SaslMalformed, TokenRefused) as exc:
            reason = exc.check if isinstance(exc, TokenRefused) else "malformed-sasl"
            name = request.authzid if request is not None and request.authzid else None
            locked = handler.throttle.failure(client, name)
            event(log, "auth-failed", logging.WARNING, listener=handler.listener.name, client=client,
                  mechanism=mechanism, reason=reason, locked=locked)
            metrics.auth_failed(handler.listener.name, mechanism, locked=locked)
            handler.audit_refusal("auth-failed", client=client, identity=handler.known_account(name or ""),
                                  reason=f"{mechanism}: {reason}" + ("; lockout started" if locked else ""))
            await asyncio.sleep(AUTH_FAILURE_DELAY)
            answer = await self.challenge_auth(error_challenge(self.token_login.verifier), encode_to_b64=False)
            if not isinstance(answer, bytes):
                return AuthResult(success=False, handled=True)
            return AuthResult(success=False, handled=False)  # 535 5.7.8 after the client's \x01 (RFC 7628 §3.2.3)
        handler.throttle.success(account.username)
        event(log, "auth-ok", listener=handler.listener.name, client=client, mechanism=mechanism)
        return AuthResult(success=True, auth_data=AccountLogin(account, mechanism))


for _name in ("smtp_MAIL", "smtp_RCPT", "smtp_RSET"):  # keep aiosmtpd's HELP texts for the overridden commands
    for _attr in ("__smtp_syntax__", "__smtp_syntax_extended__", "__smtp_syntax_when__"):
        setattr(getattr(GatewaySMTP, _name), _attr, getattr(getattr(SMTP, _name), _attr))


def _peer_ip(session: Session | None) -> str:
    if session is None or not session.peer:
        return "?"
    return str(session.peer[0]) if isinstance(session.peer, tuple) else str(session.peer)


class LocalMailboxes:
    """Which local addresses exist: listed in `[local] mailboxes`, accounts (and the exact
    addresses they send as), the postmaster, the intake's unrouted mailboxes, and the
    directory's `local` entries (looked up off the event loop). Unknown ones go to the
    catch-all when one is configured, else they are refused at RCPT — so a stranger cannot
    make the gateway create a Maildir per invented address."""

    def __init__(self, config: GatewayConfig, lookup: MailboxLookup | None) -> None:
        self.config = config
        self.lookup = lookup
        known = set(config.local.mailboxes)
        for account in config.accounts:
            known.add(account.username.lower())
            known.update(s for s in account.senders if not s.startswith("@"))
        known.add(config.postmaster.lower())
        known.update(f"postmaster@{d}" for d in config.local.domains)
        known.update(c.address for c in config.delivery.consumers)  # application mailboxes (issue 14)
        routing = getattr(config.intake, "routing", None)
        if routing is not None:
            if routing.unrouted_default:
                known.add(routing.unrouted_default.lower())
            known.update(m.lower() for m in routing.unrouted.values())
        if config.local.catch_all:
            known.add(config.local.catch_all)
        self.known = frozenset(a for a in known if config.is_local(a.rpartition("@")[2]))

    async def resolve(self, address: str) -> str | None:
        """The mailbox to deliver `address` to (itself, or the catch-all), or None: unknown."""
        lowered = address.lower()
        if lowered in self.known:
            return address
        if self.lookup is not None and await self.lookup(lowered):
            return address
        return self.config.local.catch_all


class GatewayHandler:
    """aiosmtpd hooks for one listener."""

    def __init__(self, config: GatewayConfig, listener: ListenerConfig, spool: QueueStore,
                 on_accept: Callable[[str], None] | None = None, rcpt_check: RcptCheck | None = None, *,
                 throttle: AuthThrottle | None = None, audit: Audit | None = None,
                 mailboxes: LocalMailboxes | None = None,
                 returns_sink: Callable[[bytes], object] | None = None,
                 client_check: ClientCheck | None = None, card_check: ClientCheck | None = None,
                 national_lookup: NationalIdLookup | None = None) -> None:
        self.config = config
        self.listener = listener
        self.spool = spool
        self.on_accept = on_accept
        self.rcpt_check = rcpt_check
        self.throttle = throttle or AuthThrottle(config.auth.max_failures, config.auth.window, config.auth.lockout)
        self.audit = audit
        self.mailboxes = mailboxes or LocalMailboxes(config, None)
        self.hash_scheme = accounts_scheme(config)
        intake = getattr(config, "intake", None)
        address = intake.routing.smtp_address if intake is not None else None
        self.payload_address = address.lower() if address else None
        cisis = intake.cisis.application_mailbox if intake is not None else None
        #: The CI-SIS application mailbox: DSNs and MDNs for it go to `returns_sink` (issue 13).
        self.returns_address = cisis.lower() if cisis and returns_sink is not None else None
        self.returns_sink = returns_sink
        #: Revocation (and path) check of a relay partner's certificate, awaited at MAIL.
        self.client_check = client_check
        #: The card check of SASL EXTERNAL (clientAuth required); None: EXTERNAL is not offered.
        self.card_check = card_check if listener.kind == "submission" else None
        #: The directory's local mailboxes of an identifiant national (card holders with no account).
        self.national_lookup = national_lookup
        #: This listener's trusted-network identity (it depends on the listener only).
        self.network_identity = network_identity(listener)
        #: client address -> in `allowed_networks` (asked at every MAIL, twice; bounded: cleared when full)
        self._in_network: dict[str, bool] = {}

    # -- helpers ----------------------------------------------------------------------------
    async def check_password(self, login: bytes, password: bytes) -> Account | None:
        """The account these credentials prove, or None. An account or listener with
        `password_auth = false` fails like a wrong password (after the same work)."""
        try:
            username = login.decode("utf-8")
            secret = password.decode("utf-8")
        except UnicodeDecodeError:
            username, secret = "", ""
        account = self.config.account(username) if username else None
        if account is not None and not (account.password_auth and self.listener.password_auth):
            account = None
        # An unknown account is verified against a dummy hash: the reply takes as long either way.
        stored = account.password_hash if account is not None else dummy_hash(self.hash_scheme)
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(None, verify_password, stored, secret)
        return account if ok else None

    def external_offered(self, session: Session | None) -> bool:
        """SASL EXTERNAL makes sense only on a submission listener, after TLS, with a certificate."""
        return self.card_check is not None and session is not None and self.client_certificate(session) is not None

    async def card_login(self, session: Session, authzid: str) -> tuple[Account | None, str, bool]:
        """(account, reason, temporary) for SASL EXTERNAL: the card certificate checked now
        (path, clientAuth, revocation), its identifiant national mapped to a config account
        (`national_ids`) or else to the directory's local mailbox, the authzid matching it."""
        der = self.client_certificate(session)
        if der is None or self.card_check is None:
            return None, "no-client-certificate", False
        verdict = await self.card_check(der)
        if not verdict.ok:
            return None, verdict.reason, verdict.temporary
        nid = national_id(x509.load_der_x509_certificate(der))
        if nid is None:
            return None, "no-national-id", False
        try:
            account = await account_for_national_id(self.config, self.national_lookup, nid, authzid)
        except Exception as exc:  # noqa: BLE001 - a directory fault is temporary, never a yes
            event(log, "auth-deferred", logging.WARNING, listener=self.listener.name,
                  exc_type=type(exc).__name__)
            return None, "directory-unavailable", True
        if account is None:
            return None, "unknown-national-id", False
        if not may_act_as(account, authzid):
            return None, "authzid-mismatch", False
        return account, "good", False

    async def partner_refusal(self, session: Session) -> str | None:
        """The reply refusing a relay partner whose certificate (it matched
        `allowed_client_subjects`) is revoked or no longer valid, else None: OpenSSL checked
        its chain at the handshake, never its revocation."""
        if self.client_check is None or not self.listener.allowed_client_subjects:
            return None
        der = self.client_certificate(session)
        if der is None or matching_subject(der, self.listener.allowed_client_subjects) is None:
            return None
        verdict = await self.client_check(der)
        if verdict.ok:
            return None
        event(log, "partner-refused", logging.WARNING, listener=self.listener.name, client=_peer_ip(session),
              reason=verdict.reason, temporary=verdict.temporary)
        if verdict.temporary:
            return "454 4.7.0 Client certificate status temporarily unavailable; try again later"
        self.audit_refusal("partner-refused", client=_peer_ip(session), reason=f"client certificate: {verdict.reason}")
        return "550 5.7.1 Client certificate refused"

    def known_account(self, name: str) -> str:
        """The account name for the audit trail, or "unknown" (never echo what a guesser typed)."""
        account = self.config.account(name)
        return account.username if account is not None else "unknown"

    def audit_refusal(self, decision: str, **fields: Any) -> None:
        if self.audit is not None:
            self.audit(decision=decision, listener=self.listener.name, **fields)

    def identity(self, session: Session) -> SenderIdentity | None:
        """Who this client authenticated as: an account (AUTH), a relay partner (its client
        certificate matched `allowed_client_subjects`), or a trusted network whose listener binds
        its senders; None for anyone else."""
        if session.authenticated and isinstance(session.auth_data, AccountLogin):
            return account_identity(session.auth_data.account)
        if session.authenticated:  # an AUTH outcome this gateway did not make: no identity
            return None
        if self.listener.kind == "relay" and self.listener.allowed_client_subjects:
            der = self.client_certificate(session)
            subject = matching_subject(der, self.listener.allowed_client_subjects)
            if subject is not None:
                return partner_identity(self.config, subject, der)
        if self.listener.kind == "relay" and self.in_allowed_network(session):
            return self.network_identity
        return None

    def in_allowed_network(self, session: Session) -> bool:
        client = _peer_ip(session)
        known = self._in_network.get(client)
        if known is None:
            try:
                addr = ipaddress.ip_address(client)
            except ValueError:
                known = False
            else:
                known = any(addr in net for net in self.listener.allowed_networks)
            if len(self._in_network) >= NETWORK_MEMO_SIZE:
                self._in_network.clear()
            self._in_network[client] = known
        return known

    def relay_allowed(self, session: Session) -> bool:
        """May this client send to non-local domains?"""
        if self.listener.kind == "submission":
            return bool(session.authenticated)
        if self.in_allowed_network(session):
            return True
        if self.listener.allowed_client_subjects:
            return matching_subject(self.client_certificate(session), self.listener.allowed_client_subjects) is not None
        return False

    @staticmethod
    def client_certificate(session: Session) -> bytes | None:
        """The client's DER certificate; None without one (CERT_OPTIONAL refuses unverifiable ones)."""
        if not session.ssl:
            return None
        ssl_object = session.ssl.get("ssl_object")
        return ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None

    # -- hooks ------------------------------------------------------------------------------
    async def handle_exception(self, error: Exception) -> str:
        """An error escaping a hook: logged by type; a typed error gets its reply, anything else a
        temporary one that never shows its text."""
        event(log, "session-error", logging.ERROR, listener=self.listener.name, exc_type=type(error).__name__)
        return smtp_reply(error)

    async def handle_HELO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str) -> str:
        if not valid_helo(hostname):
            return "501 5.5.2 Invalid HELO hostname"
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        if not valid_helo(hostname):
            session.host_name = None
            session.extended_smtp = False
            return ["501 5.5.2 Invalid EHLO hostname"]
        session.host_name = hostname
        if not self.external_offered(session):  # EXTERNAL only with a client certificate on submission
            responses = [(" ".join(w for w in r.split(" ") if w != "EXTERNAL") if r.startswith("250-AUTH ") else r)
                         for r in responses]
        # aiosmtpd advertises "AUTH" even with no mechanism left (the relay listener has none)
        return [r for r in responses if r.rstrip() not in ("250-AUTH", "250 AUTH")]

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        name = self.listener.name
        if address != "<>" and not _ADDRESS.match(address):
            return metrics.refused(name, "mail", "553 5.1.7 Malformed sender address", "malformed-address")
        if self.listener.kind == "submission" and not session.authenticated:
            return metrics.refused(name, "mail", "530 5.7.0 Authentication required", "auth-required")
        if self.listener.kind == "relay" and not session.authenticated:
            refusal = await self.partner_refusal(session)
            if refusal is not None:
                return metrics.refused(name, "mail", refusal, "client-certificate")
        identity = self.identity(session)
        # decided once per transaction (MAIL), reused at RCPT and DATA
        envelope.msgw_identity = identity  # type: ignore[attr-defined]
        envelope.msgw_relay = self.relay_allowed(session)  # type: ignore[attr-defined]
        if identity is not None and address != "<>" and not identity.may_use(address):
            event(log, "sender-refused", logging.WARNING, listener=self.listener.name, client=_peer_ip(session),
                  identity=identity.name, where="mail-from")
            self.audit_refusal("sender-refused", client=_peer_ip(session), identity=identity.name, sender=address,
                               reason="MAIL FROM is not an address of this login")
            return metrics.refused(name, "mail", "553 5.7.1 Sender address not allowed for this login",
                                   "sender-not-allowed")
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        name = self.listener.name
        if not _ADDRESS.match(address):
            return metrics.refused(name, "rcpt", "553 5.1.3 Malformed recipient address", "malformed-address")
        if len(envelope.rcpt_tos) >= self.listener.max_recipients:
            return metrics.refused(name, "rcpt", smtp_reply(TemporaryError("Too many recipients", status="4.5.3"),
                                                             "RCPT"), "too-many-recipients")
        domain = address.rpartition("@")[2].lower()
        if self.payload_address and address.lower() == self.payload_address:
            # Routing from content is for known systems only (authenticated, or a partner network).
            if not getattr(envelope, "msgw_relay", False):
                return metrics.refused(name, "rcpt", "550 5.7.1 Payload routing is for authenticated systems",
                                       "payload-not-allowed", domain)
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 OK (routed from the payload)"
        if self.returns_address and address.lower() == self.returns_address:
            envelope.rcpt_tos.append(address)  # reports come from any MTA: no relay right needed
            return "250 2.1.5 OK"
        if self.config.is_local(domain):
            try:
                mailbox = await self.mailboxes.resolve(address)
            except Exception as exc:  # noqa: BLE001 - a directory fault (full disk, lock) is temporary
                event(log, "rcpt-deferred", logging.WARNING, listener=self.listener.name, exc_type=type(exc).__name__)
                return metrics.refused(name, "rcpt", smtp_reply(
                    TemporaryError("Mailbox lookup temporarily unavailable"), "RCPT"), "lookup-unavailable", domain)
            if mailbox is None:
                event(log, "rcpt-refused", logging.WARNING, listener=self.listener.name, rcpt_domain=domain,
                      reason="unknown-mailbox")
                return metrics.refused(name, "rcpt", "550 5.1.1 No such mailbox here", "unknown-mailbox", domain)
            address = mailbox
        elif not getattr(envelope, "msgw_relay", False):
            event(log, "relay-denied", logging.WARNING, listener=self.listener.name, client=_peer_ip(session),
                  rcpt_domain=domain)
            return metrics.refused(name, "rcpt", "550 5.7.1 Relaying denied", "relay-denied")  # no domain label
        if self.rcpt_check is not None:
            refusal = await self.rcpt_check(address)
            if refusal is not None:
                event(log, "rcpt-refused", logging.WARNING, listener=self.listener.name, rcpt_domain=domain,
                      reason="no-protection")
                return metrics.refused(name, "rcpt", smtp_reply(_refusal_error(refusal), "RCPT"), "no-protection",
                                       domain)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        bare: bool | None = getattr(envelope, "msgw_bare_newline", None)  # found by the DATA read
        if bare is None:
            bare = has_bare_newline(data)
        if bare:
            event(log, "refused", logging.WARNING, listener=self.listener.name, client=_peer_ip(session),
                  reason="bare-lf", size=len(data))
            return metrics.refused(self.listener.name, "data", BARE_LF_REPLY, "bare-lf")
        identity: SenderIdentity | None = getattr(envelope, "msgw_identity", None)
        if identity is not None:
            refusal = self._header_refusal(identity, session, data)
            if refusal is not None:
                return metrics.refused(self.listener.name, "data", refusal, "sender-header")
        if self.returns_address and self.returns_address in (r.lower() for r in envelope.rcpt_tos):
            return await self._take_returns(session, envelope.rcpt_tos, data)
        data = self._received_header(server, session, envelope) + data
        envelope.content = envelope.original_content = None  # one copy of a large message, not two
        auth_user = identity.name if identity is not None else None
        # aiosmtpd keeps the null reverse-path as the text "<>" (an empty one means "no MAIL yet").
        sender = "" if envelope.mail_from in (None, "<>") else envelope.mail_from
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        rcpts = list(dict.fromkeys(envelope.rcpt_tos))  # a catch-all may have collected several
        if self.payload_address and self.payload_address in (r.lower() for r in rcpts):
            return await self._route_payload(session, sender, rcpts, data, auth_user)
        try:
            msg_id = await loop.run_in_executor(None, lambda: self.spool.accept(
                sender, rcpts, data, lifetime=self.config.spool.max_queue_lifetime,
                listener=self.listener.name, client=_peer_ip(session), auth_user=auth_user))
        except Exception as exc:  # noqa: BLE001 - never a stack trace to the client, never a 250
            if isinstance(exc, GatewayError):
                event(log, "spool-refused", logging.ERROR, listener=self.listener.name, client=_peer_ip(session),
                      size=len(data), reason=str(exc))
            else:
                event(log, "spool-crashed", logging.ERROR, listener=self.listener.name, exc_type=type(exc).__name__)
            return metrics.refused(self.listener.name, "data", smtp_reply(exc), "spool")
        if log.isEnabledFor(logging.INFO):  # the fields cost more than the call when nobody reads them
            event(log, "accepted", msg=msg_id, listener=self.listener.name, client=_peer_ip(session),
                  size=len(data), rcpts=len(rcpts), tls=bool(session.ssl), auth=auth_user is not None,
                  ms=round((time.monotonic() - started) * 1000, 1))
        metrics.accepted(self.listener.name, rcpts)
        if self.on_accept is not None:
            self.on_accept(msg_id)
        return f"250 2.0.0 OK queued as {msg_id}"

    def _header_refusal(self, identity: SenderIdentity, session: Session, data: bytes) -> str | None:
        """The reply refusing a message whose From:/Sender: this identity may not use, else None."""
        try:
            refused = refused_claims(identity, data)
        except MalformedInput as exc:
            event(log, "refused", logging.WARNING, listener=self.listener.name, client=_peer_ip(session),
                  reason="sender-header-unreadable", identity=identity.name)
            return smtp_reply(exc, prefix="Message refused: ")
        if not refused:
            return None
        event(log, "sender-refused", logging.WARNING, listener=self.listener.name, client=_peer_ip(session),
              identity=identity.name, where="header")
        self.audit_refusal("sender-refused", client=_peer_ip(session), identity=identity.name, sender=refused[0],
                           reason="From:/Sender: is not an address of this login")
        return "553 5.7.1 From: or Sender: address not allowed for this login"

    async def _route_payload(self, session: Session, sender: str, rcpts: list[str], data: bytes,
                             auth_user: str | None) -> str:
        """A bare payload mailed to the routing address: its recipients come from its content."""
        from gateway.directory.directory import directory_path
        from gateway.intake.smtp_payload import route_smtp_payload

        others = [r for r in rcpts if r.lower() != self.payload_address]
        loop = asyncio.get_running_loop()
        try:
            ids = await loop.run_in_executor(None, lambda: route_smtp_payload(
                data, sender=sender, other_recipients=others, spool=self.spool,
                directory_path=directory_path(self.config), state_dir=self.config.state_dir,
                settings=self.config.intake.routing, lifetime=self.config.spool.max_queue_lifetime,
                client=_peer_ip(session), auth_user=auth_user, storage=self.config.storage))
        except GatewayError as exc:
            event(log, "payload-refused", logging.WARNING, listener=self.listener.name, client=_peer_ip(session),
                  size=len(data), code=exc.code, temporary=exc.temporary)
            return metrics.refused(self.listener.name, "data", smtp_reply(exc), "payload")
        metrics.accepted(self.listener.name, rcpts)
        event(log, "payload-routed", listener=self.listener.name, client=_peer_ip(session), size=len(data),
              copies=len(ids))
        for msg_id in ids:
            if self.on_accept is not None:
                self.on_accept(msg_id)
        return f"250 2.0.0 OK routed as {len(ids)} message(s)" + (f": {' '.join(ids)}" if ids else " (already sent)")

    async def _take_returns(self, session: Session, rcpts: list[str], data: bytes) -> str:
        """A DSN or MDN for the CI-SIS application mailbox: applied (ZAMs queued) before the 250."""
        if any(r.lower() != self.returns_address for r in rcpts) or self.returns_sink is None:
            return "550 5.5.1 the application mailbox takes reports in a transaction of their own"
        sink = self.returns_sink
        try:
            await asyncio.get_running_loop().run_in_executor(None, sink, data)
        except Exception as exc:  # noqa: BLE001 - never a stack trace to the client, never a 250
            err = as_gateway_error(exc)
            event(log, "returns-refused", logging.WARNING, listener=self.listener.name, client=_peer_ip(session),
                  size=len(data), code=err.code, temporary=err.temporary)
            if err.temporary:
                return smtp_reply(err)
            return "550 5.7.1 this mailbox only receives delivery and read notifications"
        event(log, "returns-applied", listener=self.listener.name, client=_peer_ip(session), size=len(data))
        return "250 2.0.0 OK report applied"

    def _received_header(self, server: SMTP, session: Session, envelope: Envelope) -> bytes:
        proto = "ESMTP" if session.extended_smtp else "SMTP"
        if session.ssl:
            proto += "S"
        if session.authenticated:
            proto += "A"
        rcpt = f"\r\n\tfor <{envelope.rcpt_tos[0]}>" if len(envelope.rcpt_tos) == 1 else ""
        helo = (session.host_name or "unknown")[:100]
        line = (f"Received: from {helo} ([{_peer_ip(session)}])\r\n\tby {self.config.hostname} (msgw) with {proto}"
                f"{rcpt}; {received_date()}\r\n")
        return line.encode("ascii", "replace")


def _excluded_mechanisms(listener: ListenerConfig, token_login: OAuthLogin | None) -> list[str]:
    """AUTH mechanisms a listener does not offer: passwords off (relay, or `password_auth = false`),
    tokens without `[auth.oidc]` or off a submission listener."""
    submission = listener.kind == "submission"
    out = [] if submission and listener.password_auth else ["PLAIN", "LOGIN"]
    return out + ([] if submission and token_login is not None else ["OAUTHBEARER", "XOAUTH2"])


class SmtpServer:
    """All configured listeners, served on the running event loop."""

    def __init__(self, config: GatewayConfig, spool: QueueStore, on_accept: Callable[[str], None] | None = None,
                 rcpt_check: RcptCheck | None = None, *, audit: Audit | None = None,
                 mailbox_lookup: MailboxLookup | None = None, reuse_port: bool = False,
                 client_checks: ClientChecks | None = None, national_lookup: NationalIdLookup | None = None,
                 token_login: OAuthLogin | None = None, handoff: HandoffReceiver | None = None) -> None:
        self.config = config
        self.spool = spool
        #: SO_REUSEPORT on every listener: processes that each bind the same ports (issue 15).
        self.reuse_port = reuse_port
        #: A worker of a dispatching master: the master listens and hands each connection over
        #: (`gateway.server.handoff`); nothing is bound here.
        self.handoff = handoff
        #: OAUTHBEARER/XOAUTH2 on submission listeners when `[auth.oidc]` is set (issue 17).
        self.token_login = token_login
        #: Set by the app before `start`: applies a DSN/MDN mailed to the CI-SIS application
        #: mailbox (`gateway.cisis.ledger.ZamLedger.apply_report`); None: the mailbox is not served.
        self.returns_sink: Callable[[bytes], object] | None = None
        self.on_accept = on_accept
        self.rcpt_check = rcpt_check
        self.audit = audit
        # one throttle and one mailbox list for every listener: guesses spread over listeners count
        self.throttle = AuthThrottle(config.auth.max_failures, config.auth.window, config.auth.lockout)
        self.mailboxes = LocalMailboxes(config, mailbox_lookup)
        #: Client-certificate checks (revocation), shared with the MLLP door by the app (issue 17).
        self.client_checks = client_checks or ClientChecks.from_config(config)
        self.national_lookup = national_lookup
        self.servers: list[asyncio.AbstractServer] = []
        self.bound: dict[str, tuple[str, int]] = {}

    def _factory(self, listener: ListenerConfig) -> Callable[[], GatewaySMTP]:
        handler = GatewayHandler(self.config, listener, self.spool, self.on_accept, self.rcpt_check,
                                 throttle=self.throttle, audit=self.audit, mailboxes=self.mailboxes,
                                 returns_sink=self.returns_sink, **self._client_checks(listener))
        tls = server_tls_context(listener)
        submission = listener.kind == "submission"

        def make() -> GatewaySMTP:
            return GatewaySMTP(
                handler, data_size_limit=listener.max_message_size, hostname=self.config.hostname,
                ident="msgw", tls_context=tls, require_starttls=listener.require_tls and tls is not None,
                timeout=listener.timeout, auth_required=submission, auth_require_tls=True,
                auth_exclude_mechanism=_excluded_mechanisms(listener, self.token_login),
                enable_SMTPUTF8=True, token_login=self.token_login if submission else None)
        return make

    def _client_checks(self, listener: ListenerConfig) -> dict[str, Any]:
        """A listener's certificate checks: only where the handshake asks for a certificate."""
        if listener.client_ca is None:
            return {}
        checks = self.client_checks
        return {"client_check": checks.checker(listener.client_ca).check,
                "card_check": checks.checker(listener.client_ca, card=True).check,
                "national_lookup": self.national_lookup}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.config.accounts:
            scheme = accounts_scheme(self.config)
            await loop.run_in_executor(None, dummy_hash, scheme)  # ready before the first unknown login
        for index, listener in enumerate(self.config.listeners):
            server: asyncio.AbstractServer
            if self.handoff is not None:
                server = self.handoff.listener(index, listener.name, self._factory(listener))
                address, port = self.handoff.bound[listener.name]
            else:
                # A deeper accept queue than asyncio's 100: in a burst of connections, the ones the
                # kernel cannot queue are dropped after the handshake and hang until the client's
                # own timeout (seen with 500 concurrent clients; the kernel caps it at somaxconn).
                server = await loop.create_server(self._factory(listener), host=listener.address,
                                                  port=listener.port, backlog=LISTEN_BACKLOG,
                                                  reuse_port=self.reuse_port)
                address, port = server.sockets[0].getsockname()[:2]
            self.servers.append(server)
            self.bound[listener.name] = (address, port)
            event(log, "listening", listener=listener.name, kind=listener.kind, address=address, port=port)
        if self.handoff is not None:
            self.handoff.start()

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
        if self.handoff is not None:
            self.handoff.close()
        for server in self.servers:
            await server.wait_closed()
        self.servers.clear()
