"""TLS policies with real certificates: mutual TLS on the relay listener (partners allowed by
client certificate) and on delivery (route with TLS required, CA-checked, client certificate
presented); a hop whose certificate does not verify gets nothing, not even in clear. A copy
protected by trust-space TLS only goes out only over mutual TLS (issue 11, item 6)."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
import time
from dataclasses import replace
from pathlib import Path

from aiosmtpd.controller import Controller

from gateway.config import load_config
from gateway.pipeline import Outgoing, Pipeline, WorkItem
from gateway.runner import QueueService as DeliveryManager
from gateway.spool import RecipientState, Spool
from tests.conftest import free_port
from tests.e2e.harness import GatewayProcess, SinkHandler, make_message, queue_json, write_config
from tests.e2e.tlspki import TestCA


def _client_ctx(ca: TestCA, cert=None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca.ca_file))
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    return ctx


def test_relay_listener_allows_partner_by_client_certificate(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "pki")
    rogue = TestCA(tmp_path / "rogue", name="TEST AC rogue")
    server = ca.issue("localhost")
    partner = ca.issue("mss.partner.example")
    stranger = ca.issue("other.example")
    impostor = rogue.issue("mss.partner.example")
    sink_handler = SinkHandler()
    sink = Controller(sink_handler, hostname="127.0.0.1", port=free_port())
    sink.start()
    try:
        setup = write_config(tmp_path / "gw", sink_port=sink.port)
        text = setup.config.read_text().replace(
            'allowed_networks = []',
            f'allowed_networks = []\nclient_ca = "{ca.ca_file}"\nallowed_client_subjects = ["mss.partner.example"]')
        text = text.replace('tls_cert = "tls-cert.pem"\ntls_key = "tls-key.pem"\nallowed_networks',
                            f'tls_cert = "{server.cert}"\ntls_key = "{server.key}"\nallowed_networks')
        # the partner may use the addresses of its organisation's mail domain (bound sender)
        text += '\n[partners."mss.partner.example"]\nsenders = ["@partner.example"]\n'
        setup.config.write_text(text)
        with GatewayProcess(setup):
            def relay_with(cert) -> int:
                with smtplib.SMTP("127.0.0.1", setup.relay_port, timeout=10) as client:
                    client.ehlo("mx.partner.example")
                    client.starttls(context=_client_ctx(ca, cert))
                    client.ehlo("mx.partner.example")
                    client.mail("dr@partner.example")
                    code, _ = client.rcpt("dr@far.example")
                    if code == 250:
                        client.data(make_message("dr@partner.example", "dr@far.example", "s", "mTLS ok"))
                    return code

            assert relay_with(partner) == 250
            assert relay_with(None) == 550
            assert relay_with(stranger) == 550
            try:
                code = relay_with(impostor)
            except (ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError):
                code = -1  # handshake refused: a certificate from another CA is not accepted
            assert code in (-1, 550)
            deadline = time.monotonic() + 10
            while not sink_handler.snapshot() and time.monotonic() < deadline:
                time.sleep(0.1)
        got = sink_handler.snapshot()
        assert len(got) == 1 and got[0].recipients == ["dr@far.example"]
    finally:
        sink.stop()


class _MutualTlsSink(SinkHandler):
    """Refuses MAIL unless the client presented a certificate; records its subject."""

    def __init__(self) -> None:
        super().__init__()
        self.subjects: list[str] = []

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        peer = session.ssl.get("peercert") if session.ssl else None
        if not peer:
            return "530 5.7.0 Client certificate required"
        self.subjects.append(dict(x[0] for x in peer["subject"])["commonName"])
        envelope.mail_from = address
        return "250 OK"


def _tls_sink(ca: TestCA, name: str, handler: SinkHandler, *, ask_client_cert: bool = True) -> Controller:
    pair = ca.issue(name)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pair.cert), str(pair.key))
    if ask_client_cert:
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.load_verify_locations(cafile=str(ca.ca_file))
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), tls_context=ctx, require_starttls=True)
    controller.start()
    return controller


def test_route_with_required_mutual_tls(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "pki")
    ours = ca.issue("msgw.test")
    good = _MutualTlsSink()
    good_sink = _tls_sink(ca, "localhost", good)
    untrusted = SinkHandler()
    untrusted_sink = _tls_sink(TestCA(tmp_path / "other", name="TEST AC unknown"), "localhost", untrusted)
    try:
        delivery = f'''tls = "none"
smarthost = "127.0.0.1:{free_port()}"

[delivery.routes."partner.example"]
host = "localhost"
port = {good_sink.port}
tls = "required"
ca_file = "{ca.ca_file}"
client_cert = "{ours.cert}"
client_key = "{ours.key}"

[delivery.routes."untrusted.example"]
host = "localhost"
port = {untrusted_sink.port}
tls = "required"
ca_file = "{ca.ca_file}"
'''
        setup = write_config(tmp_path / "gw", delivery=delivery, relay_networks='["127.0.0.0/8"]')
        with GatewayProcess(setup):
            with smtplib.SMTP("127.0.0.1", setup.relay_port, timeout=10) as client:
                client.ehlo("lis.lab.example")
                for rcpt in ("dr@partner.example", "dr@untrusted.example"):
                    client.sendmail("lis@lab.example", [rcpt], make_message("lis@lab.example", rcpt, "s", "tls"))
            deadline = time.monotonic() + 15
            while not good.snapshot() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert [m.recipients for m in good.snapshot()] == [["dr@partner.example"]]
            assert good.subjects == ["msgw.test"]
            deadline = time.monotonic() + 10
            pending: list[dict] = []
            while time.monotonic() < deadline:
                pending = queue_json(setup)
                if pending and pending[0]["recipients"][0]["state"] == "deferred":
                    break
                time.sleep(0.1)
            assert len(pending) == 1
            rcpt = pending[0]["recipients"][0]
            assert rcpt["address"] == "dr@untrusted.example" and rcpt["state"] == "deferred"
            assert "TLS" in rcpt["last_error"]
        assert untrusted.snapshot() == []
    finally:
        good_sink.stop()
        untrusted_sink.stop()


async def _trust_space_tls_only(item: WorkItem) -> WorkItem:
    """The wrap stage's result for an MSSanté domain on the trust-space list: a signed copy that
    relies on mutual TLS (here for every recipient of a sender named "mss-...")."""
    protected = item.envelope.sender.startswith("mss-")
    copy = Outgoing(item.envelope.recipients, item.data, form="trust-space-tls" if protected else "as-is",
                    require_tls=protected)
    return replace(item, outgoing=(copy,))


def test_trust_space_copy_travels_only_over_mutual_tls(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "pki")
    ours = ca.issue("msgw.test")
    mutual = _MutualTlsSink()
    mutual_sink = _tls_sink(ca, "localhost", mutual)
    anonymous = SinkHandler()  # TLS required, verified, but would take mail from anyone
    anonymous_sink = _tls_sink(ca, "localhost", anonymous)
    no_ask = SinkHandler()  # never asks for a client certificate: ours would not be sent
    no_ask_sink = _tls_sink(ca, "localhost", no_ask, ask_client_cert=False)
    try:
        routes = [("mss.example", mutual_sink.port, True), ("nocert.example", anonymous_sink.port, False),
                  ("noask.example", no_ask_sink.port, True)]
        delivery = f'tls = "none"\nsmarthost = "127.0.0.1:{free_port()}"\n' + "".join(
            f'\n[delivery.routes."{domain}"]\nhost = "localhost"\nport = {port}\ntls = "required"\n'
            f'ca_file = "{ca.ca_file}"\n'
            + (f'client_cert = "{ours.cert}"\nclient_key = "{ours.key}"\n' if cert else "")
            for domain, port, cert in routes)
        setup = write_config(tmp_path / "gw", delivery=delivery)
        config = load_config(setup.config)
        spool = Spool(config.spool.path).open()
        sender = "mss-lab@lab.example"
        rcpts = ["dr@mss.example", "dr@nocert.example", "dr@noask.example"]
        protected = spool.accept(sender, rcpts, make_message(sender, rcpts[0], "s", "protected by TLS only"),
                                 lifetime=3600)
        plain = spool.accept("lab@lab.example", ["other@noask.example"],
                             make_message("lab@lab.example", "other@noask.example", "s", "ordinary"), lifetime=3600)
        audit: list[dict] = []
        manager = DeliveryManager(config, spool, Pipeline((_trust_space_tls_only,)),
                                  audit=lambda **kw: audit.append(kw))
        asyncio.run(manager.run_once())

        assert [m.recipients for m in mutual.snapshot()] == [["dr@mss.example"]]
        assert mutual.subjects == ["msgw.test"]
        assert anonymous.snapshot() == [], "a trust-space copy went out without a client certificate"
        assert [m.recipients for m in no_ask.snapshot()] == [["other@noask.example"]], \
            "only the ordinary copy may use a hop that did not ask for our certificate"
        assert spool.get(plain) is None
        states = {r.address: r for r in spool.get(protected).recipients}
        assert states["dr@mss.example"].state is RecipientState.DELIVERED
        nocert = states["dr@nocert.example"]
        assert nocert.state is RecipientState.BOUNCED and nocert.last_status == "5.7.10"
        assert "no client certificate" in (nocert.last_error or "")
        noask = states["dr@noask.example"]
        assert noask.state is RecipientState.DEFERRED and noask.last_status == "4.7.5"
        assert "client certificate" in (noask.last_error or "")
        assert {"recipient": "dr@nocert.example", "outcome": "bounced 5.7.10"}.items() <= \
            next(a for a in audit if a["recipient"] == "dr@nocert.example").items()
    finally:
        for controller in (mutual_sink, anonymous_sink, no_ask_sink):
            controller.stop()
