"""The consumer transport against a real asyncio MLLP listener standing for the DPI (plain and TLS),
a real drop folder and a real Maildir; its configuration table and its next hop."""

from __future__ import annotations

import email
import email.policy
import ssl
import tomllib
from pathlib import Path

import pytest

from gateway.config import ConfigError, GatewayConfig, parse_config
from gateway.delivery.consumer import INTEGRATED, ConsumerTransport
from gateway.delivery.nexthop import NextHopResolver
from gateway.delivery.transports import TRANSPORTS, Hop
from gateway.errors import DeliveryError
from gateway.lps.store import DeliveredStore
from gateway.routing.hl7 import parse_message
from gateway.routing.xdm import read_xdm
from tests.e2e.tlspki import TestCA
from tests.lps.samples import DOC_ID, cda, mail
from tests.lps.transport_support import DOCTOR, DOMAIN, MAILBOX, Dpi, ack, replacement, xdm_mail


# -- configuration ------------------------------------------------------------------------------
def config(tmp_path: Path, consumer: str, *, extra: str = "") -> GatewayConfig:
    text = f"""
[listeners.relay]
kind = "relay"
[spool]
path = "{tmp_path / 'spool'}"
[local]
domains = ["{DOMAIN}"]
maildir = "{tmp_path / 'maildir'}"
[delivery.consumers."{MAILBOX}"]
{consumer}
{extra}
"""
    return parse_config(tomllib.loads(text), source="t.toml", base=tmp_path)


def transport(cfg: GatewayConfig) -> ConsumerTransport:
    resolver = NextHopResolver(cfg)
    return ConsumerTransport(Hop(cfg, resolver.destination_for(MAILBOX), resolver))


def test_the_table_is_read_and_every_problem_collected(tmp_path: Path) -> None:
    cfg = config(tmp_path, 'mllp = "127.0.0.1:2575"\napplication = "DPI-X"\nfacility = "CHB"\n'
                           'organisation = "Service^^^^^120456789"\nack_timeout = "10s"\nno_xdm = "refuse"')
    (c,) = cfg.delivery.consumers
    assert (c.address, c.mllp_host, c.mllp_port, c.application, c.facility, c.ack_timeout, c.no_xdm) == (
        MAILBOX, "127.0.0.1", 2575, "DPI-X", "CHB", 10.0, "refuse")
    assert config(tmp_path, f'folder = "{tmp_path / "out"}"').delivery.consumers[0].no_xdm == "maildir"
    with pytest.raises(ConfigError) as caught:
        parse_config(tomllib.loads(f"""
[listeners.relay]
kind = "relay"
[local]
domains = ["{DOMAIN}"]
[delivery.consumers."dpi@elsewhere.test"]
mllp = "127.0.0.1:2575"
[delivery.consumers."{MAILBOX}"]
mllp = "nowhere"
folder = "out"
no_xdm = "drop"
colour = "blue"
"""), source="t.toml", base=tmp_path)
    text = str(caught.value)
    assert 'delivery.consumers."dpi@elsewhere.test": the address is not in a local domain' in text
    assert f'delivery.consumers."{MAILBOX}".mllp: expected host:port' in text
    assert "set exactly one of mllp (host:port) or folder" in text
    assert f'delivery.consumers."{MAILBOX}".no_xdm' in text and "colour" in text


def test_a_consumer_mailbox_is_its_own_destination_other_addresses_of_the_domain_are_local(tmp_path: Path) -> None:
    cfg = config(tmp_path, 'mllp = "127.0.0.1:2575"')
    resolver = NextHopResolver(cfg)
    dest = resolver.destination_for(MAILBOX.upper())
    assert (dest.key, dest.transport, dest.concurrency) == (f"consumer:{MAILBOX}", "consumer", 1)
    assert TRANSPORTS[dest.transport] is ConsumerTransport
    other = resolver.destination_for(f"secretariat@{DOMAIN}")
    assert (other.key, other.transport) == ("local", "maildir")


# -- MLLP -----------------------------------------------------------------------------------------
async def test_aa_delivers_and_records_the_document(tmp_path: Path) -> None:
    dpi = Dpi(ack("AA"))
    port = await dpi.start()
    cfg = config(tmp_path, f'mllp = "127.0.0.1:{port}"\napplication = "DPI-X"')
    results, remote = await transport(cfg).deliver(DOCTOR, [MAILBOX], xdm_mail())
    await dpi.stop()
    assert remote == f"mllp:127.0.0.1:{port}"
    assert (results[MAILBOX].code, results[MAILBOX].message) == (250, INTEGRATED)
    (sent,) = dpi.received
    msh = parse_message(sent)
    assert msh.value(msh.segments[0], 9, 2) == "T02" and msh.value(msh.segments[0], 5) == "DPI-X"
    unique_id = read_xdm_unique_id()
    store = DeliveredStore.beside(cfg.spool.path)
    assert store.previous(unique_id) is not None
    store.close()


async def test_a_replacement_passes_the_checks_once_its_first_version_was_delivered(tmp_path: Path) -> None:
    dpi = Dpi(ack("AA"))
    port = await dpi.start()
    cfg = config(tmp_path, f'mllp = "127.0.0.1:{port}"')
    first, _ = await transport(cfg).deliver(DOCTOR, [MAILBOX], xdm_mail())
    second, _ = await transport(cfg).deliver(DOCTOR, [MAILBOX], replacement())
    await dpi.stop()
    assert first[MAILBOX].ok and second[MAILBOX].ok
    triggers = [parse_message(m).value(parse_message(m).segments[0], 9, 2) for m in dpi.received]
    assert triggers == ["T02", "T10"]


async def test_a_replacement_that_changes_confidentiality_says_modif_conf_code(tmp_path: Path) -> None:
    """The transport gives the pure builder the delivered version: MODIF_CONF_CODE is Y only when the
    replacement's DMP confidentiality codes differ from what the DPI got before."""
    dpi = Dpi(ack("AA"))
    port = await dpi.start()
    cfg = config(tmp_path, f'mllp = "127.0.0.1:{port}"')
    await transport(cfg).deliver(DOCTOR, [MAILBOX], xdm_mail())
    hidden = mail(cda(version=2, doc="2", parent=DOC_ID), action="C", confidentiality=("INVISIBLE_PATIENT",),
                  message_id="<lettre-3@cabinet-imaginaire.mssante.test>").replace(b"\r\n", b"\n").replace(
                      b"\n", b"\r\n")
    results, _ = await transport(cfg).deliver(DOCTOR, [MAILBOX], hidden)
    await dpi.stop()
    assert results[MAILBOX].ok

    def flag(message: bytes, name: str) -> str:
        msg = parse_message(message)
        obx = next(o for o in msg.all("OBX") if msg.value(o, 3) == name)
        return msg.value(obx, 5)

    assert [flag(m, "MODIF_CONF_CODE") for m in dpi.received] == ["N", "Y"]
    assert [flag(m, "INVISIBLE_PATIENT") for m in dpi.received] == ["N", "Y"]


def read_xdm_unique_id() -> str:
    msg = email.message_from_bytes(xdm_mail(), policy=email.policy.default)
    zipped = next(p.get_content() for p in msg.iter_attachments())
    return read_xdm(zipped).documents[0].unique_id


async def test_ae_with_err_902_bounces_with_the_ans_code(tmp_path: Path) -> None:
    dpi = Dpi(ack("AE", "902^Identifiant patient inconnu"))
    port = await dpi.start()
    cfg = config(tmp_path, f'mllp = "127.0.0.1:{port}"')
    results, _ = await transport(cfg).deliver(DOCTOR, [MAILBOX], xdm_mail())
    await dpi.stop()
    res = results[MAILBOX]
    assert (res.code, res.status, res.ok, res.temporary) == (554, "5.6.0", False, False)
    assert res.message == "5.6.0 902^Identifiant patient inconnu"
    store = DeliveredStore.beside(cfg.spool.path)
    assert store.previous(read_xdm_unique_id()) is None  # not integrated: nothing recorded
    store.close()


async def test_ar_without_err_is_906(tmp_path: Path) -> None:
    dpi = Dpi(ack("AR"))
    port = await dpi.start()
    results, _ = await transport(config(tmp_path, f'mllp = "127.0.0.1:{port}"')).deliver(
        DOCTOR, [MAILBOX], xdm_mail())
    await dpi.stop()
    assert results[MAILBOX].message.startswith("5.6.0 906^")


async def test_no_answer_is_a_temporary_failure(tmp_path: Path) -> None:
    dpi = Dpi(lambda _mdm: None)
    port = await dpi.start()
    cfg = config(tmp_path, f'mllp = "127.0.0.1:{port}"\nack_timeout = 0.3')
    with pytest.raises(DeliveryError) as caught:
        await transport(cfg).deliver(DOCTOR, [MAILBOX], xdm_mail())
    await dpi.stop()
    assert caught.value.temporary and "no ACK" in str(caught.value)
    assert len(dpi.received) == 1


async def test_a_refused_connection_is_a_temporary_failure(tmp_path: Path, port_factory) -> None:
    cfg = config(tmp_path, f'mllp = "127.0.0.1:{port_factory()}"')
    with pytest.raises(DeliveryError) as caught:
        await transport(cfg).deliver(DOCTOR, [MAILBOX], xdm_mail())
    assert caught.value.temporary and caught.value.status.startswith("4.")


async def test_tls_checks_the_dpi_certificate(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "ca")
    pair = ca.issue("dpi.hopital-fictif.test", client=False)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(pair.cert), str(pair.key))
    dpi = Dpi(ack("AA"))
    port = await dpi.start(ctx)
    other = TestCA(tmp_path / "other", "TEST AC autre")
    untrusted = config(tmp_path, f'mllp = "127.0.0.1:{port}"\ntls = true\nca_file = "{other.ca_file}"')
    with pytest.raises(DeliveryError) as caught:
        await transport(untrusted).deliver(DOCTOR, [MAILBOX], xdm_mail())
    assert caught.value.temporary and dpi.received == []
    trusted = config(tmp_path, f'mllp = "127.0.0.1:{port}"\ntls = true\nca_file = "{ca.ca_file}"')
    results, remote = await transport(trusted).deliver(DOCTOR, [MAILBOX], xdm_mail())
    await dpi.stop()
    assert results[MAILBOX].ok and remote == f"mllps:127.0.0.1:{port}" and len(dpi.received) == 1


# -- before the DPI sees anything -------------------------------------------------------------------
async def test_a_failed_verification_is_906_and_never_reaches_the_dpi(tmp_path: Path) -> None:
    dpi = Dpi(ack("AA"))
    port = await dpi.start()
    cfg = config(tmp_path, f'mllp = "127.0.0.1:{port}"')
    data = xdm_mail(verification='fail; reason=smime-bad-signature; detail="signature invalid"')
    results, _ = await transport(cfg).deliver(DOCTOR, [MAILBOX], data)
    await dpi.stop()
    assert results[MAILBOX].message == "5.6.0 906^Signature invalide" and dpi.received == []


async def test_a_check_failure_bounces_with_its_code_and_the_dpi_sees_nothing(tmp_path: Path) -> None:
    dpi = Dpi(ack("AA"))
    port = await dpi.start()
    cfg = config(tmp_path, f'mllp = "127.0.0.1:{port}"')
    results, _ = await transport(cfg).deliver(DOCTOR, [MAILBOX], xdm_mail(document=cda(ins="")))
    await dpi.stop()
    assert results[MAILBOX].message == "5.6.0 903^INS non présent dans le document" and dpi.received == []


# -- folder, and mail without an archive --------------------------------------------------------------
async def test_folder_mode_writes_one_file_per_mdm(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = config(tmp_path, f'folder = "{out}"')
    results, remote = await transport(cfg).deliver(DOCTOR, [MAILBOX], xdm_mail())
    (written,) = sorted(out.glob("*.hl7"))
    assert results[MAILBOX].message == INTEGRATED and remote == f"folder:{out}"
    assert parse_message(written.read_bytes()).value(parse_message(written.read_bytes()).segments[0], 9, 1) == "MDM"
    assert [p.name for p in out.iterdir() if not p.name.endswith(".hl7")] == []  # no temporary left


async def test_without_archive_goes_to_the_maildir_or_is_refused(tmp_path: Path, port_factory) -> None:
    cfg = config(tmp_path, f'mllp = "127.0.0.1:{port_factory()}"')  # the DPI is not even asked
    results, remote = await transport(cfg).deliver(DOCTOR, [MAILBOX], xdm_mail(xdm=False))
    assert results[MAILBOX].ok and remote == "maildir" and INTEGRATED not in results[MAILBOX].message
    assert len(list((tmp_path / "maildir").rglob("new/*"))) == 1
    refusing = config(tmp_path, f'mllp = "127.0.0.1:{port_factory()}"\nno_xdm = "refuse"')
    results, _ = await transport(refusing).deliver(DOCTOR, [MAILBOX], xdm_mail(xdm=False))
    assert results[MAILBOX].code == 554 and results[MAILBOX].status == "5.6.0"


async def test_one_copy_for_the_dpi_mailbox_and_a_colleague_goes_two_ways(tmp_path: Path) -> None:
    """The delivery manager groups a copy's recipients by destination: the application mailbox
    by its address (its consumer), the other mailboxes of its domain by the domain (the Maildir)."""
    from gateway.delivery.manager import DeliveryManager
    from gateway.spool import RecipientState, Spool

    dpi = Dpi(ack("AA"))
    port = await dpi.start()
    cfg = config(tmp_path, f'mllp = "127.0.0.1:{port}"')
    spool = Spool(cfg.spool.path).open()
    spool.prepare_on_accept = "as-is"
    try:
        colleagues = [f"secretariat@{DOMAIN}", f"accueil@{DOMAIN}"]
        msg_id = spool.accept(DOCTOR, [colleagues[0], MAILBOX, colleagues[1]], xdm_mail(), lifetime=3600)
        await DeliveryManager(cfg, spool).run_once()
        msg = spool.get(msg_id)
        assert msg is None or all(r.state is RecipientState.DELIVERED for r in msg.recipients)
        assert len(dpi.received) == 1
        for colleague in colleagues:
            assert len(list((tmp_path / "maildir" / colleague / "new").iterdir())) == 1
    finally:
        spool.close()
        await dpi.stop()
