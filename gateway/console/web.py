"""The console's aiohttp application: login, sessions, CSRF, security headers and the pages.

Rules every handler follows (see also docs/architecture.md, the console section):
- Nothing of a message's content or of a patient's identity is read or shown: the queue pages
  read the spool's rows (ids, sizes, addresses, states, errors), never a message file; flows and
  refusals come from the audit trail, which holds none.
- Everything that blocks (spool, audit trail, password hash, certificate files) runs in the
  default executor: the console shares the gateway's event loop with the SMTP listeners.
- Every POST carries the session's CSRF token (the login form: a double-submit cookie), else 403;
  every operator action is written to the audit trail and the log with the operator's name.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web
from cryptography import x509
from cryptography.x509.oid import NameOID

from gateway.audit import AuditTrail
from gateway.config import GatewayConfig
from gateway.config.console import Operator
from gateway.console import charts, flows
from gateway.console.sessions import COOKIE, LOGIN_COOKIE, Session, Sessions, same_token
from gateway.logs import event
from gateway.server.passwords import hash_password, verify_password
from gateway.server.throttle import AuthThrottle
from gateway.spool import QueuedMessage, QueueStore
from gateway.storage import node_name

log = logging.getLogger("gateway.console")

#: On every response, errors and the stylesheet included.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Strict-Transport-Security": "max-age=31536000",
}
PUBLIC = frozenset({"/login", "/login/certificate", "/static/console.css", "/favicon.ico"})
_QUEUE_ID = re.compile(r"[0-9A-Za-z]{1,64}")
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")
#: The most records the flows and refusals pages read back from the end of the trail.
TRAIL_TAIL_BYTES = 32 * 1024 * 1024
#: The most messages the queue page lists after filtering.
QUEUE_PAGE_LIMIT = 500
_DONE = {"retry": "Retry scheduled.", "deleted": "Message deleted.", "none": "Nothing to retry."}

SESSION = web.RequestKey("session", Session)
AuditSink = Callable[..., None]
CertCheck = Callable[[bytes], Awaitable[Any]]


def sender_systems(config: GatewayConfig) -> dict[str, str]:
    """Addresses (and `@domain` patterns) → the sending system's name shown on the flows page."""
    out: dict[str, str] = {}
    for account in config.accounts:
        label = f"account {account.username}"
        out[account.username.lower()] = label
        for sender in account.senders:
            out.setdefault(sender.lower(), label)
    intake = config.intake
    if intake is not None:
        if intake.mllp is not None and intake.mllp.sender:
            out.setdefault(intake.mllp.sender, "door mllp")
        for drop in intake.drops:
            out.setdefault(drop.sender, f"door {drop.name}")
    return out


def read_trail_tail(path: Path, max_bytes: int = TRAIL_TAIL_BYTES) -> list[dict[str, Any]]:
    """The last records of the trail (at most `max_bytes` of it), unverified; blocking."""
    import json

    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, 2)
            start = max(0, size - max_bytes)
            fh.seek(start)
            data = fh.read()
    except FileNotFoundError:
        return []
    if start:
        data = data.partition(b"\n")[2]  # the first line is cut
    out = []
    for line in data.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def flows_view(path: Path, window: flows.Window, now: datetime, systems: Mapping[str, str]
               ) -> tuple[flows.Flows, list[flows.Outcome]]:
    """Blocking (read + aggregate, run in the executor: ~100k records must not stall the loop)."""
    records = read_trail_tail(path)
    return (flows.aggregate(records, end=now, window=window, systems=systems),
            flows.recent_outcomes(records, systems=systems))


def problems_view(path: Path, now: datetime) -> list[flows.Event]:
    """Blocking: the refusals and bounces of the last 7 days."""
    since = datetime.fromtimestamp(now.timestamp() - flows.DAYS.span, UTC)
    return flows.recent_problems(read_trail_tail(path), since=since)


def certificate_name(der: bytes) -> tuple[str, str, str]:
    """(RFC 4514 subject, CN, SHA-256 hex) of a client certificate."""
    cert = x509.load_der_x509_certificate(der)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return cert.subject.rfc4514_string(), str(cns[0].value) if cns else "", hashlib.sha256(der).hexdigest()


def operator_for_certificate(operators: tuple[Operator, ...], der: bytes) -> Operator | None:
    """The operator a (verified) certificate names: its fingerprint, else its subject or CN."""
    subject, cn, fingerprint = certificate_name(der)
    for op in operators:
        if op.certificate_fingerprint and op.certificate_fingerprint == fingerprint:
            return op
    for op in operators:
        if op.certificate_subject and op.certificate_subject in (subject, cn):
            return op
    return None


def _peer_der(request: web.Request) -> bytes | None:
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return der or None


def _client(request: web.Request) -> str:
    return request.remote or "?"


def _when(ts: float | None) -> str:
    if not ts:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


class Console:
    """The console of one gateway process: its spool, its audit sink, its operators."""

    def __init__(self, config: GatewayConfig, spool: QueueStore, *, audit: AuditSink | None = None,
                 wake: Callable[[], None] | None = None, cert_check: CertCheck | None = None) -> None:
        self.config = config
        self.settings = config.console
        self.spool = spool
        #: The node this console runs on (issue 18: on a shared queue, every node has its console;
        #: the queue pages show every node's messages and which node holds each lease).
        self.node = node_name(config.storage)
        self.audit_sink = audit
        self.wake = wake
        self.cert_check = cert_check
        self.sessions = Sessions(self.settings.session_lifetime)
        self.throttle = AuthThrottle(config.auth.max_failures, config.auth.window, config.auth.lockout)
        self.systems = sender_systems(config)
        self._dummy_hash: str | None = None
        self.env = jinja2.Environment(loader=jinja2.PackageLoader("gateway.console", "templates"),
                                      autoescape=True, undefined=jinja2.StrictUndefined, enable_async=False)
        self._css = resources.files("gateway.console").joinpath("static/console.css").read_text(encoding="utf-8")
        self.env.filters["when"] = _when
        self.env.filters["lease"] = _lease
        self.env.filters["stamp"] = lambda d: d.strftime("%Y-%m-%d %H:%M:%S") if d else ""

    # -- the application ---------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=64 * 1024)
        app.on_response_prepare.append(_security_headers)
        app.add_routes([
            web.get("/", self.index),
            web.get("/login", self.login_page),
            web.post("/login", self.login),
            web.post("/login/certificate", self.login_certificate),
            web.post("/logout", self.logout),
            web.get("/queue", self.queue_page),
            web.get("/queue/{id}", self.message_page),
            web.post("/queue/{id}/retry", self.retry),
            web.get("/queue/{id}/delete", self.delete_page),
            web.post("/queue/{id}/delete", self.delete),
            web.get("/refusals", self.refusals_page),
            web.get("/flows", self.flows_page),
            web.get("/certificates", self.certificates_page),
            web.get("/audit", self.audit_page),
            web.post("/audit/verify", self.audit_verify),
            web.get("/static/console.css", self.stylesheet),
            web.get("/favicon.ico", self.no_icon),
        ])
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
        """Login required outside PUBLIC; a POST (any method but GET/HEAD) without the right CSRF
        token is 403."""
        changes = request.method not in ("GET", "HEAD")
        if request.path in PUBLIC:
            if changes:
                form = await request.post()
                if not same_token(request.cookies.get(LOGIN_COOKIE), _text(form.get("csrf"))):
                    return self._refuse_csrf(request, None)
            return await handler(request)
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            if request.method in ("GET", "HEAD"):
                raise web.HTTPSeeOther("/login")
            raise web.HTTPForbidden(text="login required")
        if changes:
            form = await request.post()
            if not same_token(session.csrf, _text(form.get("csrf"))):
                return self._refuse_csrf(request, session)
        request[SESSION] = session
        return await handler(request)

    def _refuse_csrf(self, request: web.Request, session: Session | None) -> web.Response:
        event(log, "console-csrf-refused", logging.WARNING, path=request.path, client=_client(request),
              operator=session.operator if session else "")
        return web.Response(status=403, text="403: missing or wrong CSRF token\n")

    def render(self, request: web.Request, name: str, **values: Any) -> web.Response:
        session: Session | None = request.get(SESSION)
        html = self.env.get_template(name).render(session=session, page=name.removesuffix(".html"),
                                                  hostname=self.config.hostname, node=self.node, **values)
        return web.Response(text=html, content_type="text/html", charset="utf-8")

    async def stylesheet(self, request: web.Request) -> web.Response:
        return web.Response(text=self._css, content_type="text/css", charset="utf-8")

    async def no_icon(self, request: web.Request) -> web.Response:
        return web.Response(status=404, text="no icon\n")

    async def index(self, request: web.Request) -> web.Response:
        raise web.HTTPSeeOther("/queue")

    # -- login -------------------------------------------------------------------------------

    async def login_page(self, request: web.Request, *, error: str = "", status: int = 200,
                         offer_certificate: bool = True) -> web.Response:
        if self.sessions.get(request.cookies.get(COOKIE)) is not None:
            raise web.HTTPSeeOther("/queue")
        # Keep the browser's token if it has one: another tab, or the favicon request redirected
        # here, must not replace the token of a form already shown.
        token = request.cookies.get(LOGIN_COOKIE, "")
        if not _TOKEN.fullmatch(token):
            token = secrets.token_urlsafe(32)
        by_certificate, verdict = await self._certificate_operator(request) if offer_certificate else (None, None)
        offered = by_certificate.name if by_certificate is not None and verdict is not None and verdict.ok else ""
        response = self.render(request, "login.html", csrf=token, error=error, cert_operator=offered)
        response.set_status(status)
        response.set_cookie(LOGIN_COOKIE, token, secure=True, httponly=True, samesite="Strict", path="/",
                            max_age=3600)
        return response

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        name = _text(form.get("operator")).strip()[:64]
        password = _text(form.get("password"))[:1024]
        client = _client(request)
        if self.throttle.locked(client, name or None):
            known = name if self.settings.operator(name) is not None else "unknown"  # never echo a guess
            self._audit_login(False, known, client, "locked out after repeated failures")
            return await self.login_page(request, error="Too many failed logins: try again later.", status=429)
        operator = self.settings.operator(name) if name else None
        good = await asyncio.get_running_loop().run_in_executor(None, self._check_password, operator, password)
        if operator is None or not good:
            self.throttle.failure(client, name or None)
            self._audit_login(False, name if operator else "unknown", client,
                              "unknown operator" if operator is None else "wrong password")
            return await self.login_page(request, error="Wrong operator name or password.", status=401)
        self.throttle.success(operator.name)
        return self._open_session(request, operator, "password")

    async def login_certificate(self, request: web.Request) -> web.Response:
        operator, verdict = await self._certificate_operator(request)
        if operator is not None and verdict is not None and verdict.ok:
            return self._open_session(request, operator, "certificate")
        if operator is not None and verdict is not None:
            self._audit_login(False, operator.name, _client(request),
                              f"client certificate: {verdict.reason}{' (temporary)' if verdict.temporary else ''}")
            if verdict.temporary:  # a revocation source down: never a yes, try again later
                return await self.login_page(request, status=503, offer_certificate=False,
                                             error="The certificate's revocation status cannot be checked now: "
                                                   "try again later.")
        return await self.login_page(request, error="No operator certificate was accepted.", status=401,
                                     offer_certificate=False)

    async def _certificate_operator(self, request: web.Request) -> tuple[Operator | None, Any]:
        """The operator the TLS client certificate names and the verdict of the chain, usage and
        revocation check (`ClientCertChecker`, as the SMTP listeners use: CRL and OCSP, hard-fail)."""
        der = _peer_der(request)
        if der is None or self.cert_check is None:
            return None, None
        try:
            operator = operator_for_certificate(self.settings.operators, der)
        except ValueError:
            return None, None
        if operator is None:
            return None, None
        return operator, await self.cert_check(der)

    def _check_password(self, operator: Operator | None, password: str) -> bool:
        """Blocking (argon2/scrypt): the hash file is read at each login, so `msgw console passwd`
        takes effect without a restart. An unknown operator costs the same work as a known one."""
        stored = ""
        if operator is not None:
            stored = operator.password_hash
            if operator.password_hash_file is not None:
                try:
                    stored = operator.password_hash_file.read_text(encoding="utf-8").strip()
                except (OSError, UnicodeDecodeError):
                    stored = ""
        if not stored:
            if self._dummy_hash is None:
                self._dummy_hash = hash_password(secrets.token_urlsafe(16), "argon2")
            verify_password(self._dummy_hash, password)
            return False
        return verify_password(stored, password)

    def _open_session(self, request: web.Request, operator: Operator, method: str) -> web.Response:
        session = self.sessions.create(operator.name, method)
        self._audit_login(True, operator.name, _client(request), method)
        response = web.HTTPSeeOther("/queue")
        response.set_cookie(COOKIE, session.token, secure=True, httponly=True, samesite="Strict", path="/",
                            max_age=int(self.settings.session_lifetime))
        response.del_cookie(LOGIN_COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
        raise response

    async def logout(self, request: web.Request) -> web.Response:
        session: Session = request[SESSION]
        self.sessions.drop(session.token)
        self.record(request, "console-logout")
        response = web.HTTPSeeOther("/login")
        response.del_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
        raise response

    def _audit_login(self, ok: bool, name: str, client: str, reason: str) -> None:
        decision = "console-login" if ok else "console-login-failed"
        event(log, decision, logging.INFO if ok else logging.WARNING, operator=name or "unknown", client=client,
              reason=reason)
        self._audit(decision=decision, identity=name or "unknown", client=client, reason=reason)

    def record(self, request: web.Request, decision: str, message_id: str | None = None, reason: str = "") -> None:
        """An operator's action: the log and the audit trail, with the operator's name."""
        session: Session = request[SESSION]
        event(log, decision, operator=session.operator, client=_client(request), msg=message_id or "", reason=reason)
        self._audit(decision=decision, identity=session.operator, client=_client(request), message_id=message_id,
                    reason=reason or None)

    def _audit(self, **fields: Any) -> None:
        if self.audit_sink is None:
            return
        try:
            self.audit_sink(listener="console", **fields)
        except Exception as exc:  # noqa: BLE001 - the action is logged above; the trail reports its own faults
            event(log, "audit-failed", logging.ERROR, reason=f"{type(exc).__name__}")

    # -- queue -------------------------------------------------------------------------------

    async def _io(self, func: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, func, *args)

    async def queue_page(self, request: web.Request) -> web.Response:
        query = request.query
        state = query.get("state", "")
        address = query.get("address", "").strip().lower()[:256]
        domain = query.get("domain", "").strip().lower().lstrip("@")[:256]
        messages: list[QueuedMessage] = await self._io(self.spool.list)
        leases = await self._leases()
        shown = [m for m in messages if _matches(m, state, address, domain)]
        now = time.time()
        return self.render(request, "queue.html", messages=shown[:QUEUE_PAGE_LIMIT], total=len(messages),
                           leases=leases,
                           matched=len(shown), state=state, address=address, domain=domain,
                           done=_DONE.get(query.get("done", ""), ""),
                           by_destination=flows.queued_by(messages, now=now, systems=self.systems),
                           states=("", "queued", "deferred", "quarantined"))

    async def _leases(self) -> dict[str, tuple[str, float]]:
        """Which owner (``node/worker`` on a shared queue) holds each claimed message, and the
        seconds left on its lease (infinite on SQLite: a claim there lasts until released)."""
        rows: list[tuple[str, str, float]] = await self._io(self.spool.leases)
        return {msg_id: (owner, left) for msg_id, owner, left in rows}

    async def _message(self, request: web.Request) -> QueuedMessage:
        msg_id = request.match_info["id"]
        if not _QUEUE_ID.fullmatch(msg_id):
            raise web.HTTPNotFound(text="no such message\n")
        msg: QueuedMessage | None = await self._io(self.spool.get, msg_id)
        if msg is None:
            raise web.HTTPNotFound(text="no such message in the queue (delivered, bounced or deleted)\n")
        return msg

    async def message_page(self, request: web.Request) -> web.Response:
        msg = await self._message(request)
        forms = {c.id: c.form for c in msg.copies}
        lease = (await self._leases()).get(msg.id)
        return self.render(request, "message.html", msg=msg, forms=forms, lease=lease,
                           done=_DONE.get(request.query.get("done", ""), ""))

    async def retry(self, request: web.Request) -> web.Response:
        msg = await self._message(request)
        count: int = await self._io(self.spool.retry, msg.id)
        self.record(request, "console-retry", msg.id, f"{count} recipient(s)")
        if count and self.wake is not None:
            self.wake()
        raise web.HTTPSeeOther(f"/queue/{msg.id}?done={'retry' if count else 'none'}")

    async def delete_page(self, request: web.Request) -> web.Response:
        msg = await self._message(request)
        return self.render(request, "delete.html", msg=msg)

    async def delete(self, request: web.Request) -> web.Response:
        msg = await self._message(request)
        found: bool = await self._io(self.spool.delete, msg.id)
        if found:
            self.record(request, "console-delete", msg.id, f"{len(msg.pending)} pending recipient(s), no DSN")
        raise web.HTTPSeeOther("/queue?done=deleted")

    # -- refusals, flows ---------------------------------------------------------------------

    async def refusals_page(self, request: web.Request) -> web.Response:
        events = await self._io(problems_view, self.config.audit.path, datetime.now(UTC))
        return self.render(request, "refusals.html", events=events)

    async def flows_page(self, request: web.Request) -> web.Response:
        key = request.query.get("window", "24h")
        key = key if key in flows.WINDOWS else "24h"
        window = flows.WINDOWS[key]
        result, outcomes = await self._io(flows_view, self.config.audit.path, window, datetime.now(UTC),
                                          self.systems)
        starts = result.bucket_starts()
        label = "%H:%M" if window.bucket < 86400 else "%m-%d"

        def chart(series: flows.Series) -> Any:
            return charts.stacked_bars(f"{series.name}, {window.name}", starts,
                                       [(css, getattr(series, attr)) for attr, css, _ in charts.LAYERS],
                                       label_format=label)

        messages: list[QueuedMessage] = await self._io(self.spool.list)
        now = time.time()
        return self.render(request, "flows.html", flows=result, window_key=key, windows=flows.WINDOWS, chart=chart,
                           legend=charts.legend(), sources=_ordered(result.sources),
                           destinations=_ordered(result.destinations), outcomes=outcomes,
                           queued_dest=flows.queued_by(messages, now=now, systems=self.systems),
                           queued_src=flows.queued_by(messages, now=now, systems=self.systems, by="source"))

    # -- certificates, audit -----------------------------------------------------------------

    async def certificates_page(self, request: web.Request) -> web.Response:
        from gateway.ops.status import inventory

        found = await self._io(inventory, self.config)
        return self.render(request, "certificates.html", inv=found, now=found.taken_at)

    async def audit_page(self, request: web.Request) -> web.Response:
        return self.render(request, "audit.html", report=None, path=str(self.config.audit.path))

    async def audit_verify(self, request: web.Request) -> web.Response:
        trail = AuditTrail(self.config.audit.path)
        started = time.monotonic()
        report = await self._io(trail.verify)
        took = time.monotonic() - started
        self.record(request, "console-audit-verify", reason="intact" if report.ok else "broken")
        return self.render(request, "audit.html", report=report, took=took, path=str(self.config.audit.path))


def _lease(held: tuple[str, float] | None) -> str:
    """A lease for a person: its holder and the time left, or that it lapsed (any node may take it)."""
    if held is None:
        return "—"
    owner, left = held
    if left == float("inf"):
        return f"{owner} (until released)"
    if left > 0:
        return f"{owner} ({left:.0f} s left)"
    return f"{owner} (lapsed {-left:.0f} s ago: any node may take it)"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _matches(msg: QueuedMessage, state: str, address: str, domain: str) -> bool:
    if state == "quarantined" and not msg.quarantined:
        return False
    if state in ("queued", "deferred") and not any(r.state.value == state for r in msg.recipients):
        return False
    addresses = [msg.sender.lower(), *(r.address.lower() for r in msg.recipients)]
    if address and not any(address in a for a in addresses):
        return False
    return not domain or any(a.rpartition("@")[2] == domain for a in addresses)


def _ordered(table: Mapping[str, flows.Series]) -> list[flows.Series]:
    return sorted(table.values(), key=lambda s: (-s.total, s.name))


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
