"""Transports are chosen by name from the next-hop table, and adding one is a class plus one
line in `TRANSPORTS` (issue 12, item 4): the delivery manager does not change. Delivery never
imports the pipeline (it moves prepared bytes only)."""

from __future__ import annotations

import ast
import asyncio
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.delivery import transports
from gateway.delivery.nexthop import Destination, NextHopResolver
from gateway.delivery.smtp_client import RecipientResult
from gateway.delivery.transports import Hop, LmtpTransport, MaildirTransport, SmtpTransport, transport_for
from gateway.errors import DeliveryError
from gateway.runner import QueueService
from gateway.spool import RecipientState, Spool
from tests.conftest import ROOT
from tests.e2e.harness import write_config


def test_the_next_hop_table_names_the_transport(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path / "gw", sink_port=9).config)
    resolver = NextHopResolver(config)
    local, remote = resolver.destination("msgw.test"), resolver.destination("cabinet.example")
    assert (local.transport, remote.transport) == ("maildir", "smtp")
    assert isinstance(transport_for(Hop(config, local, resolver)), MaildirTransport)
    assert isinstance(transport_for(Hop(config, remote, resolver)), SmtpTransport)
    assert isinstance(transport_for(Hop(config, replace(local, transport="lmtp"), resolver)), LmtpTransport)
    with pytest.raises(DeliveryError) as err:  # our configuration's fault: the mail waits
        transport_for(Hop(config, replace(remote, transport="pigeon"), resolver))
    assert err.value.temporary


class _Recording:
    """A transport added the documented way: one class, one entry in TRANSPORTS."""

    given: list[tuple[str, list[str], bytes]] = []

    def __init__(self, hop: Hop) -> None:
        self.hop = hop

    async def deliver(self, sender: str, recipients: Sequence[str], data: bytes):
        self.given.append((sender, list(recipients), data))
        return {r: RecipientResult(250, "2.0.0 taken") for r in recipients}, f"recording:{self.hop.destination.key}"


class _DpiResolver(NextHopResolver):
    def destination(self, domain: str) -> Destination:
        dest = super().destination(domain)
        return replace(dest, transport="recording") if domain == "dpi.example" else dest


def test_a_new_transport_is_one_class_and_one_registration(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(transports.TRANSPORTS, "recording", _Recording)
    config = load_config(write_config(tmp_path / "gw", sink_port=9).config)
    spool = Spool(config.spool.path).open()
    data = b"From: lab@lab.example\r\nSubject: s\r\n\r\nORU^R01\r\n"
    msg_id = spool.accept("lab@lab.example", ["dpi@dpi.example"], data, lifetime=3600)
    audit: list[dict] = []
    asyncio.run(QueueService(config, spool, resolver=_DpiResolver(config),
                             audit=lambda **kw: audit.append(kw)).run_once())
    assert _Recording.given == [("lab@lab.example", ["dpi@dpi.example"], data)]
    assert spool.get(msg_id) is None
    assert audit[-1]["outcome"].startswith(RecipientState.DELIVERED.value)
    assert audit[-1]["next_hop"] == "recording:smarthost"


def test_delivery_never_imports_the_pipeline() -> None:
    for path in (ROOT / "gateway" / "delivery").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for module in modules:
                assert not module.startswith(("gateway.pipeline", "gateway.stages", "gateway.runner")), \
                    f"{path.name} imports {module}"


def _with_route(setup_config: Path, route: str) -> None:
    text = setup_config.read_text()
    setup_config.write_text(text + "\n" + route + "\n")


def test_a_route_names_its_transport_and_lmtp_goes_to_the_route_host(tmp_path: Path) -> None:
    """The next-hop table is configurable (Postfix transport(5)): `[delivery.routes."d"] transport`
    sends that domain's copies through the named transport, here LMTP to the route's own host
    (a hospital's Dovecot), while other domains keep SMTP to the smart host."""
    from tests.conftest import free_port
    from tests.unit.test_local_delivery import LMTPController, LMTPHandler

    handler = LMTPHandler()
    handler.refuse_rcpt = {}
    handler.after_data = {}
    lmtp = LMTPController(handler, hostname="127.0.0.1", port=free_port())
    lmtp.start()
    try:
        setup = write_config(tmp_path / "gw", sink_port=9)
        _with_route(setup.config, f'[delivery.routes."chu.example"]\nhost = "127.0.0.1"\nport = {lmtp.port}\n'
                                  'tls = "none"\ntransport = "lmtp"\n')
        config = load_config(setup.config)
        assert config.delivery.route_for("chu.example").transport == "lmtp"  # type: ignore[union-attr]
        spool = Spool(config.spool.path).open()
        data = b"From: lab@lab.example\r\nSubject: s\r\n\r\nresult\r\n"
        msg_id = spool.accept("lab@lab.example", ["dr.b@chu.example"], data, lifetime=3600)
        audit: list[dict] = []
        asyncio.run(QueueService(config, spool, audit=lambda **kw: audit.append(kw)).run_once())
        assert [(r[1], r[2]) for r in handler.received] == [(["dr.b@chu.example"], data)]
        assert spool.get(msg_id) is None
        assert audit[-1]["next_hop"] == "lmtp:127.0.0.1"
    finally:
        lmtp.stop()


def test_a_route_naming_an_unknown_transport_stops_check_and_serve(tmp_path: Path) -> None:
    import subprocess
    import sys

    from gateway.config import ConfigError

    setup = write_config(tmp_path / "gw", sink_port=9)
    _with_route(setup.config, '[delivery.routes."dpi.example"]\nhost = "127.0.0.1"\ntransport = "mllp"\n')
    msgw = Path(sys.executable).with_name("msgw")
    for command in ("check", "serve"):
        run = subprocess.run([str(msgw), command, "--config", str(setup.config)], capture_output=True, text=True,
                             timeout=60, check=False)
        assert run.returncode == 2, (command, run.stdout, run.stderr)
        assert "delivery.routes.\"dpi.example\".transport: no transport named 'mllp'" in run.stderr, command
    # A name that is not even a name is a configuration problem with its key.
    _with_route(setup.config, '[delivery.routes."x.example"]\nhost = "127.0.0.1"\ntransport = "Smtp; rm"\n')
    with pytest.raises(ConfigError) as err:
        load_config(setup.config)
    assert any(key == 'delivery.routes."x.example".transport' for _, key, _ in err.value.problems)
