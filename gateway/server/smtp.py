"""SMTP listeners on aiosmtpd: `submission` (STARTTLS then AUTH, authenticated users relay)
and `relay` (local domains for anyone; other domains only for partners allowed by client
certificate or network). Hooks return the SMTP reply, aiosmtpd's way; this module maps
gateway errors to reply codes and never lets a stack trace reach a client.

What aiosmtpd does not do and we add (see ../shared/specs/python-stack.md):
* bare LF / bare CR in DATA is refused (SMTP smuggling), aiosmtpd passes them through;
* AUTH verification runs in an executor (scrypt/argon2 take tens of ms) and a failure is
  slowed down, aiosmtpd's authenticator is synchronous;
* EHLO/HELO names are checked, the recipient count is capped, relaying is policed;
* the 250 is sent only after the spool has the message on disk (452 4.3.1 otherwise).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import ssl
import time
from base64 import b64decode
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from gateway.config import GatewayConfig, ListenerConfig, is_domain
from gateway.errors import GatewayError
from gateway.logs import event
from gateway.server.clientcert import subject_allowed
from gateway.server.passwords import verify_password
from gateway.spool import Spool

log = logging.getLogger("gateway.server")

# No controls (NUL, VT, DEL...) in the local part: a NUL was accepted at MAIL and then crashed
# every delivery attempt until the message was quarantined; \Z, not $ (which allows a final LF).
_ADDRESS = re.compile(r"^[^@\s<>()\[\],;:\"\x00-\x1f\x7f]+@[A-Za-z0-9.-]+\Z"
                      r"|^[^@\s\x00-\x1f\x7f]+@\[[0-9A-Fa-f:.]+\]\Z")
_COMMAND_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
AUTH_FAILURE_DELAY = 1.0
LISTEN_BACKLOG = 1024
#: Async check of one recipient at RCPT time: a refusal reason, or None to accept.
RcptCheck = Callable[[str], Awaitable[str | None]]


def _one_line(text: str, limit: int = 400) -> str:
    return " ".join(text.split())[:limit]


def has_bare_newline(data: bytes) -> bool:
    """A LF or CR that is not part of CRLF (SMTP smuggling, RFC 5321 2.3.8) — in C, ~1 ms per MB."""
    rest = data.replace(b"\r\n", b"")
    return b"\n" in rest or b"\r" in rest


def server_tls_context(listener: ListenerConfig) -> ssl.SSLContext | None:
    if listener.tls_cert is None or listener.tls_key is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
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
    """aiosmtpd's protocol with asynchronous, slowed-down AUTH verification."""

    def __init__(self, handler: GatewayHandler, **kwargs: Any) -> None:
        self.gateway_handler = handler
        super().__init__(handler, **kwargs)

    # aiosmtpd's address parser folds control characters as white space (`<dr@x.example\x0bY>`
    # became `dr@x.exampleY`, `<a@x.example\r>` became `a@x.example`): refuse them in the raw
    # command instead, so every component sees the same address (no parser differential).
    async def smtp_MAIL(self, arg: str | None) -> None:
        if arg and _COMMAND_CONTROL.search(arg):
            await self.push("501 5.5.4 Control character in command")
            return
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        if arg and _COMMAND_CONTROL.search(arg):
            await self.push("501 5.5.4 Control character in command")
            return
        await super().smtp_RCPT(arg)

    async def _verify(self, mechanism: str, login: bytes, password: bytes) -> AuthResult:
        ok = await self.gateway_handler.check_password(login, password)
        if ok:
            return AuthResult(success=True, auth_data=LoginPassword(login, b""))
        event(log, "auth-failed", logging.WARNING, listener=self.gateway_handler.listener.name,
              client=_peer_ip(self.session), mechanism=mechanism)
        await asyncio.sleep(AUTH_FAILURE_DELAY)
        return AuthResult(success=False, handled=False)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            blob = await self.challenge_auth("")
            if not isinstance(blob, bytes):
                return AuthResult(success=False)
        else:
            try:
                blob = b64decode(args[1].encode(), validate=True)
            except ValueError:
                await self.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
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
            try:
                login = b64decode(args[1].encode(), validate=True)
            except ValueError:
                await self.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        password = await self.challenge_auth(self.AuthLoginPasswordChallenge)
        if not isinstance(password, bytes):
            return AuthResult(success=False)
        return await self._verify("LOGIN", login, password)


for _name in ("smtp_MAIL", "smtp_RCPT"):  # keep aiosmtpd's HELP texts for the overridden commands
    for _attr in ("__smtp_syntax__", "__smtp_syntax_extended__", "__smtp_syntax_when__"):
        setattr(getattr(GatewaySMTP, _name), _attr, getattr(getattr(SMTP, _name), _attr))


def _peer_ip(session: Session | None) -> str:
    if session is None or not session.peer:
        return "?"
    return str(session.peer[0]) if isinstance(session.peer, tuple) else str(session.peer)


class GatewayHandler:
    """aiosmtpd hooks for one listener."""

    def __init__(self, config: GatewayConfig, listener: ListenerConfig, spool: Spool,
                 on_accept: Callable[[str], None] | None = None, rcpt_check: RcptCheck | None = None) -> None:
        self.config = config
        self.listener = listener
        self.spool = spool
        self.on_accept = on_accept
        self.rcpt_check = rcpt_check
        intake = getattr(config, "intake", None)
        address = intake.routing.smtp_address if intake is not None else None
        self.payload_address = address.lower() if address else None

    # -- helpers ----------------------------------------------------------------------------
    async def check_password(self, login: bytes, password: bytes) -> bool:
        try:
            username = login.decode("utf-8")
            secret = password.decode("utf-8")
        except UnicodeDecodeError:
            return False
        account = self.config.account(username)
        if account is None:
            return False
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, verify_password, account.password_hash, secret)

    def relay_allowed(self, session: Session) -> bool:
        """May this client send to non-local domains?"""
        if self.listener.kind == "submission":
            return bool(session.authenticated)
        ip = _peer_ip(session)
        try:
            addr = ipaddress.ip_address(ip)
            if any(addr in net for net in self.listener.allowed_networks):
                return True
        except ValueError:
            pass
        if self.listener.allowed_client_subjects:
            return subject_allowed(self.client_certificate(session), self.listener.allowed_client_subjects)
        return False

    @staticmethod
    def client_certificate(session: Session) -> bytes | None:
        """The client's DER certificate; None without one (CERT_OPTIONAL refuses unverifiable ones)."""
        if not session.ssl:
            return None
        ssl_object = session.ssl.get("ssl_object")
        return ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None

    # -- hooks ------------------------------------------------------------------------------
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
        return responses

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        if address != "<>" and not _ADDRESS.match(address):
            return "553 5.1.7 Malformed sender address"
        if self.listener.kind == "submission" and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if not _ADDRESS.match(address):
            return "553 5.1.3 Malformed recipient address"
        if len(envelope.rcpt_tos) >= self.listener.max_recipients:
            return "452 4.5.3 Too many recipients"
        domain = address.rpartition("@")[2].lower()
        if self.payload_address and address.lower() == self.payload_address:
            # Routing from content is for known systems only (authenticated, or a partner network).
            if not self.relay_allowed(session):
                return "550 5.7.1 Payload routing is for authenticated systems"
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 OK (routed from the payload)"
        if not self.config.is_local(domain) and not self.relay_allowed(session):
            event(log, "relay-denied", logging.WARNING, listener=self.listener.name, client=_peer_ip(session),
                  rcpt_domain=domain)
            return "550 5.7.1 Relaying denied"
        if self.rcpt_check is not None:
            refusal = await self.rcpt_check(address)
            if refusal is not None:
                event(log, "rcpt-refused", logging.WARNING, listener=self.listener.name, rcpt_domain=domain,
                      reason="no-protection")
                return f"550 5.7.1 {_one_line(refusal)}"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        if has_bare_newline(data):
            event(log, "refused", logging.WARNING, listener=self.listener.name, client=_peer_ip(session),
                  reason="bare-lf", size=len(data))
            return "550 5.5.2 Message refused: bare LF or CR in message data (RFC 5321 2.3.8)"
        data = self._received_header(server, session, envelope) + data
        auth_user = None
        if session.authenticated and isinstance(session.auth_data, LoginPassword):
            auth_user = session.auth_data.login.decode("utf-8", "replace")
        # aiosmtpd keeps the null reverse-path as the text "<>" (an empty one means "no MAIL yet").
        sender = "" if envelope.mail_from in (None, "<>") else envelope.mail_from
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        if self.payload_address and self.payload_address in (r.lower() for r in envelope.rcpt_tos):
            return await self._route_payload(session, sender, envelope.rcpt_tos, data)
        try:
            msg_id = await loop.run_in_executor(None, lambda: self.spool.accept(
                sender, envelope.rcpt_tos, data, lifetime=self.config.spool.max_queue_lifetime,
                listener=self.listener.name, client=_peer_ip(session), auth_user=auth_user))
        except GatewayError as exc:
            event(log, "spool-refused", logging.ERROR, listener=self.listener.name, client=_peer_ip(session),
                  size=len(data), reason=str(exc))
            code = "452" if exc.temporary else "554"
            return f"{code} {exc.status} {exc.reason}"
        except Exception as exc:  # noqa: BLE001 - never a stack trace to the client, never a 250
            event(log, "spool-crashed", logging.ERROR, listener=self.listener.name, exc_type=type(exc).__name__)
            return "451 4.3.0 Temporary failure, try again later"
        event(log, "accepted", msg=msg_id, listener=self.listener.name, client=_peer_ip(session),
              size=len(data), rcpts=len(envelope.rcpt_tos), tls=bool(session.ssl), auth=bool(auth_user),
              ms=round((time.monotonic() - started) * 1000, 1))
        if self.on_accept is not None:
            self.on_accept(msg_id)
        return f"250 2.0.0 OK queued as {msg_id}"

    async def _route_payload(self, session: Session, sender: str, rcpts: list[str], data: bytes) -> str:
        """A bare payload mailed to the routing address: its recipients come from its content."""
        from gateway.intake.smtp_payload import route_smtp_payload
        from gateway.routing.directory import directory_path

        others = [r for r in rcpts if r.lower() != self.payload_address]
        loop = asyncio.get_running_loop()
        try:
            ids = await loop.run_in_executor(None, lambda: route_smtp_payload(
                data, sender=sender, other_recipients=others, spool=self.spool,
                directory_path=directory_path(self.config), state_dir=self.config.state_dir,
                settings=self.config.intake.routing, lifetime=self.config.spool.max_queue_lifetime,
                client=_peer_ip(session)))
        except GatewayError as exc:
            event(log, "payload-refused", logging.WARNING, listener=self.listener.name, client=_peer_ip(session),
                  size=len(data), code=exc.code, temporary=exc.temporary)
            code = "451" if exc.temporary else "554"
            return f"{code} {exc.status} {_one_line(str(exc))}"
        event(log, "payload-routed", listener=self.listener.name, client=_peer_ip(session), size=len(data),
              copies=len(ids))
        for msg_id in ids:
            if self.on_accept is not None:
                self.on_accept(msg_id)
        return f"250 2.0.0 OK routed as {len(ids)} message(s)" + (f": {' '.join(ids)}" if ids else " (already sent)")

    def _received_header(self, server: SMTP, session: Session, envelope: Envelope) -> bytes:
        proto = "ESMTP" if session.extended_smtp else "SMTP"
        if session.ssl:
            proto += "S"
        if session.authenticated:
            proto += "A"
        rcpt = f"\r\n\tfor <{envelope.rcpt_tos[0]}>" if len(envelope.rcpt_tos) == 1 else ""
        helo = (session.host_name or "unknown")[:100]
        line = (f"Received: from {helo} ([{_peer_ip(session)}])\r\n\tby {self.config.hostname} (msgw) with {proto}"
                f"{rcpt}; {formatdate(localtime=False)}\r\n")
        return line.encode("ascii", "replace")


class SmtpServer:
    """All configured listeners, served on the running event loop."""

    def __init__(self, config: GatewayConfig, spool: Spool, on_accept: Callable[[str], None] | None = None,
                 rcpt_check: RcptCheck | None = None) -> None:
        self.config = config
        self.spool = spool
        self.on_accept = on_accept
        self.rcpt_check = rcpt_check
        self.servers: list[asyncio.base_events.Server] = []
        self.bound: dict[str, tuple[str, int]] = {}

    def _factory(self, listener: ListenerConfig) -> Callable[[], GatewaySMTP]:
        handler = GatewayHandler(self.config, listener, self.spool, self.on_accept, self.rcpt_check)
        tls = server_tls_context(listener)
        submission = listener.kind == "submission"

        def make() -> GatewaySMTP:
            return GatewaySMTP(
                handler, data_size_limit=listener.max_message_size, hostname=self.config.hostname,
                ident="msgw", tls_context=tls, require_starttls=listener.require_tls and tls is not None,
                timeout=listener.timeout, auth_required=submission, auth_require_tls=True,
                auth_exclude_mechanism=[] if submission else ["PLAIN", "LOGIN"],
                enable_SMTPUTF8=True)
        return make

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for listener in self.config.listeners:
            # A deeper accept queue than asyncio's 100: in a burst of connections, the ones the
            # kernel cannot queue are dropped after the handshake and hang until the client's
            # own timeout (seen with 500 concurrent clients; the kernel caps it at somaxconn).
            server = await loop.create_server(self._factory(listener), host=listener.address, port=listener.port,
                                              backlog=LISTEN_BACKLOG)
            self.servers.append(server)
            sock = server.sockets[0].getsockname()
            self.bound[listener.name] = (sock[0], sock[1])
            event(log, "listening", listener=listener.name, kind=listener.kind, address=sock[0], port=sock[1])

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
        for server in self.servers:
            await server.wait_closed()
        self.servers.clear()
