"""The behaviour of each store on both backends (SQLite beside the spool, the shared PostgreSQL):
the same calls give the same answers, and what one instance (one node) writes, another reads."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.cisis.ledger import LedgerError
from gateway.cisis.model import ZamEvent
from gateway.cisis.returns import Return, parse_returns
from gateway.cisis.zam import build_zam, parse_zam
from gateway.directory.directory import Activity, DirectoryItem, Identity, InvalidRecord, operator_item
from gateway.lps.model import Delivered
from tests.cisis.reports import dsn, mdn
from tests.cisis.zamdata import NOW, ORIGINAL
from tests.storage.conftest import Backend

DAY = 86400.0
KEY = ("hl7-oru", "ORD1#abc")
DOCTOR = "adam.hoda@test-ci-sis.mssante.fr"
PATIENT = "2770763220829106@patient.mssante.fr"
BOTH = {"ACK_RECEPTION": True, "ACK_LECTURE_MSS": True}
INS = "248039912345615^^^&1.2.250.1.213.1.4.10&ISO"


# -- the intake duplicate store ----------------------------------------------------------------

def test_dedup_window_recipient_and_another_node(backend: Backend) -> None:
    with backend.dedup(window=7 * DAY) as store:
        assert not store.seen(KEY, "dr@x.test", now=1000.0)
        store.record(KEY, ["Dr@X.test", "other@x.test"], now=1000.0)
        assert store.seen(KEY, "dr@x.test", now=1000.0 + DAY)
        assert not store.seen(KEY, "dr@x.test", now=1000.0 + 8 * DAY)
        assert store.seen(KEY, "dr@x.test", now=1000.0 + 8 * DAY, window=9 * DAY)
        assert not store.seen(("hl7-oru", "ORD2#abc"), "dr@x.test", now=1000.0)
        assert not store.seen(KEY, "third@x.test", now=1000.0)
        store.record(KEY, "dr@x.test", now=2000.0)  # sent again: the window starts again
    with backend.dedup(window=7 * DAY) as again:  # durable, and shared with another instance
        assert again.seen(KEY, "DR@x.test", now=2000.0 + 6.5 * DAY)
        assert again.seen(KEY, "other@x.test", now=1000.0 + 6.5 * DAY)


# -- the directory ------------------------------------------------------------------------------

def _person(rkey: str, rpps: str, last: str, address: str, capability: str = "trusted-domain",
            postcode: str = "75011", certificates: tuple[bytes, ...] = ()) -> DirectoryItem:
    ident = Identity(kind="person", national_id="8" + rpps, rpps=rpps, last_name=last, first_name="Zoé")
    act = Activity(postcode=postcode, finess="750000001", organisation="Clinique Test")
    from gateway.directory.directory import AddressInput

    return DirectoryItem(rkey=rkey, entity_key="pp:8" + rpps, identity=ident, activity=act,
                         address=AddressInput(address=address, capability=capability, certificates=certificates))


def test_directory_lookups_merge_and_operator_priority(backend: Backend) -> None:
    from tests.smime.support import shared_pki

    cert = shared_pki().pki["person_encrypt"].cert.public_bytes(Encoding.DER)
    with backend.directory() as directory:
        counts = directory.sync_source("csv", [_person("r1", "10000000001", "Élodie-Martin", "e.martin@a.test"),
                                               _person("r2", "10000000002", "Durand", "durand@b.test")])
        assert (counts.added, counts.removed, counts.swept) == (2, 0, True)
        directory.put(operator_item("e.martin@a.test", "smime", certificates=(cert,),
                                    entity_key="pp:810000000001"))
        found = directory.by_rpps("10000000001")
        assert found is not None and found.entity.last_name == "Élodie-Martin"
        [addr] = found.addresses
        assert (addr.capability, addr.source, addr.certificates) == ("smime", "operator", (cert,))
        assert directory.address("E.Martin@A.test") == addr
        assert directory.by_national_id("810000000002").entity.rpps == "10000000002"
        assert {c.entity.rpps for c in directory.by_finess("750000001")} == {"10000000001", "10000000002"}
        assert [c.entity.rpps for c in directory.find_by_name("elodie martin")] == ["10000000001"]
        assert [c.entity.rpps for c in directory.find_by_name("DURAND", postcode="75")] == ["10000000002"]
        assert directory.find_by_name("durand", postcode="69") == []
        assert directory.by_address("durand@b.test").entity.rpps == "10000000002"
        assert directory.address("nobody@a.test") is None
        assert directory.counts() == {"csv": 2, "operator": 1}
        with pytest.raises(InvalidRecord):
            directory.put(operator_item("x@a.test", "trusted-domain"), source="nope")
    with backend.directory() as other:  # another node sees it at once (no stale cache)
        assert other.address("e.martin@a.test").capability == "smime"
        assert other.remove("addr:e.martin@a.test")
        assert not other.remove("addr:e.martin@a.test")
        assert other.address("e.martin@a.test").capability == "trusted-domain"


def test_directory_reimport_updates_removes_and_never_wipes_on_empty(backend: Backend) -> None:
    with backend.directory() as directory:
        first = [_person("r1", "10000000001", "Martin", "m@a.test"), _person("r2", "10000000002", "Durand", "d@b.test"),
                 _person("r2", "10000000002", "Dupont", "d@b.test")]
        counts = directory.sync_source("csv", first, batch_size=1)
        assert (counts.added, counts.duplicates) == (2, 1)
        again = directory.sync_source("csv", [_person("r1", "10000000001", "Martin", "m@a.test"),
                                              _person("r3", "10000000003", "Petit", "p@c.test", postcode="69001")])
        assert (again.added, again.unchanged, again.removed, again.updated) == (1, 1, 1, 0)
        assert directory.address("d@b.test") is None and directory.by_rpps("10000000002") is None
        changed = directory.sync_source("csv", [_person("r1", "10000000001", "Martin", "m2@a.test"),
                                                _person("r3", "10000000003", "Petit", "p@c.test", postcode="69001")])
        assert (changed.updated, changed.unchanged) == (1, 1)
        assert directory.address("m@a.test") is None and directory.address("m2@a.test") is not None
        empty = directory.sync_source("csv", [])
        assert empty.swept is False and directory.counts() == {"csv": 2}
        assert directory.sync_source("csv", [], allow_empty=True).removed == 2
        assert directory.counts() == {}


# -- harvested certificates ------------------------------------------------------------------

def test_harvested_certificates_newest_first_bounded_and_expired(backend: Backend) -> None:
    from tests.smime.support import shared_pki

    pki = shared_pki().pki
    enc, sign = pki["person_encrypt"].cert, pki["person_sign"].cert
    der = {c: c.public_bytes(Encoding.DER) for c in (enc, sign)}
    clock = [1000.0]
    store = backend.harvest(max_age=500.0, max_per_address=1, clock=lambda: clock[0])
    store.harvest("Dr@X.test", enc, seen_at=900.0)
    assert store.certificates("dr@x.test") == [der[enc]]
    store.harvest("dr@x.test", sign, seen_at=950.0)  # at most one per address: the newest
    assert store.certificates("DR@x.test ") == [der[sign]] and store.count() == 1
    store.close()
    other = backend.harvest(max_age=500.0, clock=lambda: clock[0])  # another node learns from it
    other.harvest("dr@x.test", enc, seen_at=980.0)
    assert other.certificates("dr@x.test") == [der[enc], der[sign]]
    other.harvest("dr@x.test", enc, seen_at=10.0)  # an older sighting does not age a row
    assert other.certificates("dr@x.test") == [der[enc], der[sign]]
    clock[0] = 1460.0
    assert other.certificates("dr@x.test") == [der[enc]]  # sign seen 510 s ago: past max_age
    assert other.expire() == 1 and other.count() == 1
    other.close()


# -- the CI-SIS ZAM ledger ----------------------------------------------------------------------

@pytest.fixture
def ledger(backend: Backend):
    store = backend.ledger(retry_schedule=(10.0, 60.0), lifetime=1000.0, clock=lambda: 100.0)
    store.record(ORIGINAL, "labo", BOTH, [("Q1", "<copy-1@pfi.test>", DOCTOR, "801234567897", "professional"),
                                          ("Q2", "<copy-2@pfi.test>", PATIENT, "277076322082910", "patient")])
    yield store
    store.close()


def _pending(store) -> list[dict[str, str]]:
    return [parse_zam(e.data) for e in store.due(10**9).get("labo", [])]


def test_ledger_outcomes_and_reports_owe_each_zam_once(ledger, backend: Backend) -> None:
    [z02] = ledger.on_outcome("Q1", DOCTOR.upper(), True, "2.0.0", "250 ok")
    assert parse_zam(z02)["OBX[1]-5"] == "Y^^HL70136"
    assert ledger.on_outcome("Q1", DOCTOR, True, "2.0.0", "250 ok") == []
    [no] = ledger.on_outcome("Q2", PATIENT, False, "5.1.1", "550 5.1.1 <x> unknown user")
    assert parse_zam(no)["ERR[1]-5"] == "550^5.1.1 <x> unknown user^SMTPERRORCODE"
    [ret] = parse_returns(dsn())
    [corrected] = ledger.on_return(ret)
    assert parse_zam(corrected)["ERR[1]-5"] == "550^5.1.1 user unknown^SMTPERRORCODE"
    assert ledger.on_return(ret) == []
    [z03] = ledger.on_return(parse_returns(mdn())[0])
    assert parse_zam(z03)["MSH-9"] == "ZAM^Z03^ZAM_Z01"
    assert ledger.on_return(parse_returns(mdn())[0]) == []
    assert ledger.on_return(parse_returns(mdn(recipient="intrus@ailleurs.mssante.fr"))[0]) == []
    assert ledger.on_return(Return("mdn", "never-sent@pfi.test", DOCTOR, True)) == []
    assert ledger.on_return(Return("mdn", "never-sent@pfi.test", DOCTOR, True)) == []
    assert ledger.ignored() == {"dsn-nothing-owed": 1, "mdn-nothing-owed": 1, "recipient-not-on-copy": 1,
                                "unknown-message": 2}
    assert [f["MSH-10"] for f in _pending(ledger)] == [parse_zam(z)["MSH-10"] for z in (z02, no, corrected, z03)]
    assert len({f["MSH-10"] for f in _pending(ledger)}) == 4
    assert ledger.known(ORIGINAL) and not ledger.known(ORIGINAL, digest="other")
    other = backend.ledger()  # another node: the same facts, nothing owed twice
    assert other.on_outcome("Q1", DOCTOR, True, "2.0.0", "250 ok") == []
    assert other.pending_count() == 4
    other.close()


def test_ledger_outbox_order_backoff_expiry_and_owed_at_record(ledger, backend: Backend) -> None:
    first = ledger.on_outcome("Q1", DOCTOR, True, "2.0.0", None, now=100.0)
    second = ledger.on_return(parse_returns(mdn())[0], now=101.0)
    entries = ledger.due(200.0)["labo"]
    assert [e.data for e in entries] == first + second
    ledger.failed(entries[0].id, now=200.0)
    assert ledger.due(205.0) == {}
    assert [e.id for e in ledger.due(210.0)["labo"]] == [entries[0].id, entries[1].id]
    ledger.sent(entries[0].id)
    assert [e.id for e in ledger.due(210.0)["labo"]] == [entries[1].id]
    for t in (300.0, 400.0, 700.0, 1100.0):
        ledger.failed(entries[1].id, now=t)
    [gone] = ledger.expired()
    assert gone.id == entries[1].id and gone.state == "expired"
    z01 = build_zam(ZamEvent.DMP_RECEPTION, ORIGINAL, ok=False, control_id="C1", now=NOW,
                    error=("DMPClosed", "DMP fermé", "DMPERRORCODE"))
    ledger.record(ORIGINAL, "dpi", {}, [], [z01], now=5.0)
    [entry] = ledger.due(5.0)["dpi"]
    assert (entry.control_id, entry.data) == ("C1", z01)
    assert ledger.pending_count() == 1
    assert issubclass(LedgerError, Exception)


# -- the LPS delivered-documents store ---------------------------------------------------------

def _doc(unique: str, version: int, *, set_id: str = "1.2.3.set", author: str = "810000000001") -> Delivered:
    return Delivered(unique_id=unique, set_id=set_id, version=version, author=author, patient=INS,
                     organisation="990000123", confidentiality=("MASQUE_PS",))


def test_delivered_previous_by_id_then_latest_version_and_idempotent(backend: Backend) -> None:
    clock = [1000.0]
    store = backend.delivered(clock=lambda: clock[0])
    assert store.previous("1.2.3.v1") is None
    store.record(_doc("1.2.3.v1", 1))
    clock[0] += 1
    store.record_all([_doc("1.2.3.v2", 2, author="810000000002"), _doc("b", 1, set_id="other")])
    store.record(_doc("1.2.3.v1", 1))  # an ACK lost, the MDM sent again: the same row
    assert store.previous("1.2.3.v1") == _doc("1.2.3.v1", 1)
    assert store.previous("1.2.3.set") == _doc("1.2.3.v2", 2, author="810000000002")
    store.close()
    other = backend.delivered()
    assert other.previous("other") == _doc("b", 1, set_id="other")
    assert other.previous("another") is None
    other.close()
