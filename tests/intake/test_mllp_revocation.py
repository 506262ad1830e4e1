"""MLLP with mutual TLS (issue 17): the LIS's certificate is checked for revocation after the
handshake, before any frame is read. A revoked one, or one whose status cannot be had, is logged
(``mllp-refused``) and the connection closed without an ACK — the module's convention for a
certificate it does not accept (see gateway/intake/mllp.py)."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterator

import pytest

from gateway.intake.mllp import MllpListener
from gateway.routing.hl7 import mllp_frame
from gateway.server.clientcheck import ClientChecks
from gateway.smime.revocation import CrlSource, http_fetch
from gateway.smime.testpki import PARTNER_CN, PARTNER_REVOKED_CN, Issued
from tests.intake import samples as s
from tests.intake.test_mllp import _read_ack, _settings
from tests.server.cardpki import CardPki, card_pki


@pytest.fixture(scope="module")
def cards(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CardPki]:
    with card_pki(tmp_path_factory.mktemp("cards")) as served:
        yield served


async def test_revoked_lis_certificate_is_closed_without_ack(cards: CardPki, tmp_path, spool, directory, dedup,
                                                             routing, caplog) -> None:
    pki = cards.pki
    ca_file = tmp_path / "orgs-ca.pem"
    ca_file.write_bytes(pki.root.cert_path.read_bytes() + pki.orgs_ca.cert_path.read_bytes())
    server = pki["partner_tls"]  # the gateway's own side of the TLS (serverAuth)
    settings = _settings(tls_cert=server.cert_path, tls_key=server.key_path, client_ca=ca_file,
                         allowed_client_subjects=(PARTNER_CN, PARTNER_REVOKED_CN))
    checks = ClientChecks([], CrlSource(fetcher=http_fetch), None)  # the CRLs from their distribution points
    lst = MllpListener(settings, spool, directory, dedup, None, 3600.0, routing=routing, client_checks=checks)
    await lst.start()

    async def send(lis: Issued, control: str) -> dict[str, list[str]] | str:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.load_cert_chain(str(lis.cert_path), str(lis.key_path))
        reader, writer = await asyncio.open_connection("127.0.0.1", lst.bound, ssl=ctx)
        try:
            writer.write(mllp_frame(s.oru(control=control)))
            await writer.drain()
            return await _read_ack(reader)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError) as exc:
            return type(exc).__name__
        finally:
            writer.close()

    caplog.set_level(logging.INFO, logger="gateway.intake.mllp")
    try:
        refused = await send(pki["partner_revoked"], "CTRLREVOKED")
        assert isinstance(refused, str)  # no ACK at all: the connection was closed
        assert spool.list() == []
        reasons = [getattr(r, "fields", {}).get("reason") for r in caplog.records if r.getMessage() == "mllp-refused"]
        assert reasons == ["client certificate revoked"]
        ack = await send(pki["partner_tls"], "CTRLGOOD")
        assert not isinstance(ack, str) and ack["MSA"][1:3] == ["AA", "CTRLGOOD"]
        assert len(spool.list()) == 1
    finally:
        await lst.stop()
