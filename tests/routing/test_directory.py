"""Directory store: records, capabilities, lookups and source priority."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from gateway.directory.directory import (
    LOCAL,
    SMIME,
    TRUSTED_DOMAIN,
    Activity,
    AddressInput,
    DirectoryItem,
    DirectoryStore,
    DirectoryUnavailable,
    Identity,
    InvalidRecord,
    SqliteDirectory,
    check_capability,
    directory_path,
    fold,
    operator_item,
)
from gateway.errors import GatewayError, PermanentError

RPPS = "10000000017"


def _person_item(address: str, rpps: str = RPPS, *, capability: str = TRUSTED_DOMAIN, postcode: str = "29200",
                 certs: tuple[bytes, ...] = (), last: str = "KERVELLA", first: str = "Gaëlle") -> DirectoryItem:
    ident = Identity(kind="person", national_id="8" + rpps, rpps=rpps, civility="DR", last_name=last, first_name=first,
                     dematerialisation=True)
    act = Activity(source="mssante-extraction", profession_code="10", profession_label="Médecin",
                   speciality_code="SM54", postcode=postcode, organisation="CABINET TEST")
    return DirectoryItem(rkey="bal:" + address, entity_key="pp:8" + rpps, identity=ident, activity=act,
                         address=AddressInput(address=address, capability=capability, mailbox_type="PER",
                                              certificates=certs))


def test_sqlite_store_implements_the_protocol(store: SqliteDirectory) -> None:
    def needs_store(s: DirectoryStore) -> DirectoryStore:
        return s

    assert needs_store(store) is store


def test_put_and_lookups(store: SqliteDirectory) -> None:
    store.put(_person_item("g.kervella@mssante.test"), source="mssante-extraction")
    by_rpps = store.by_rpps(RPPS)
    assert by_rpps is not None
    assert by_rpps.entity.last_name == "KERVELLA" and by_rpps.entity.kind == "person"
    assert by_rpps.entity.dematerialisation is True
    assert [a.address for a in by_rpps.addresses] == ["g.kervella@mssante.test"]
    assert by_rpps.addresses[0].capability == TRUSTED_DOMAIN
    assert by_rpps.addresses[0].mailbox_type == "PER"
    assert store.by_national_id("8" + RPPS) == by_rpps
    # addresses are case-insensitive
    assert store.by_address("G.Kervella@MSSANTE.test") == by_rpps
    assert store.address("G.KERVELLA@mssante.test").domain == "mssante.test"
    assert store.by_rpps("10000000025") is None
    assert store.by_address("nobody@mssante.test") is None
    assert store.address("nobody@mssante.test") is None


def test_adeli_and_finess_lookups(store: SqliteDirectory) -> None:
    ident = Identity(kind="person", national_id="0291234567", adeli="291234567", last_name="PÉRON")
    act = Activity(source="csv", finess="290000017", postcode="29000")
    store.put(DirectoryItem(rkey="addr:x@lab.test", entity_key="pp:0291234567", identity=ident, activity=act,
                            address=AddressInput("x@lab.test", "legacy:apicrypt1")), source="csv")
    c = store.by_adeli("291234567")
    assert c is not None and c.addresses[0].legacy_codec == "apicrypt1"
    assert [x.entity.key for x in store.by_finess("290000017")] == ["pp:0291234567"]


def test_name_search_with_postcode(store: SqliteDirectory) -> None:
    store.put(_person_item("a@mssante.test", "10000000017", postcode="29200"), source="mssante-extraction")
    store.put(_person_item("b@mssante.test", "10000000025", postcode="75013", first="Hervé"),
              source="mssante-extraction")
    store.put(_person_item("c@mssante.test", "10000000033", last="ROUSSEL"), source="mssante-extraction")
    assert {c.entity.rpps for c in store.find_by_name("kervella")} == {"10000000017", "10000000025"}
    assert [c.entity.rpps for c in store.find_by_name("Kervella", "29")] == ["10000000017"]
    assert [c.entity.rpps for c in store.find_by_name("herve KERVELLA")] == ["10000000025"]
    assert [c.entity.rpps for c in store.find_by_name("Kervella Hervé")] == ["10000000025"]
    assert store.find_by_name("cabinet test")  # organisation of the activity
    assert store.find_by_name("nobody") == []
    assert fold("Gaëlle  Le-Maître") == "GAELLE LE MAITRE"


def test_smime_address_keeps_several_certificates(store: SqliteDirectory, cert_pair) -> None:
    item = operator_item("dr.smime@hopital.test", SMIME, certificates=cert_pair,
                         identity=Identity(kind="person", national_id="8" + RPPS, rpps=RPPS, last_name="ISNARD"))
    store.put(item)
    addr = store.address("dr.smime@hopital.test")
    assert addr is not None and addr.capability == SMIME
    assert set(addr.certificates) == set(cert_pair)
    assert store.by_rpps(RPPS).addresses[0].certificates == addr.certificates
    # replacing the entry replaces its certificates
    store.put(operator_item("dr.smime@hopital.test", SMIME, certificates=cert_pair[:1]))
    assert store.address("dr.smime@hopital.test").certificates == cert_pair[:1]


def test_local_capability_carries_key_ref(store: SqliteDirectory) -> None:
    store.put(operator_item("secretariat@msgw.test", LOCAL, key_ref="keys.cabinet", mailbox_type="ORG",
                            identity=Identity(kind="organisation", organisation="CABINET TEST")))
    addr = store.address("secretariat@msgw.test")
    assert addr.capability == LOCAL and addr.key_ref == "keys.cabinet"
    c = store.by_address("secretariat@msgw.test")
    assert c.entity.kind == "organisation" and c.entity.organisation == "CABINET TEST"
    assert store.remove("addr:secretariat@msgw.test") is True
    assert store.address("secretariat@msgw.test") is None
    assert store.remove("addr:secretariat@msgw.test") is False


def test_operator_entry_overrides_import_and_certificate_upgrades_trusted_domain(store: SqliteDirectory,
                                                                                 cert_pair) -> None:
    store.put(_person_item("p@mssante.test"), source="mssante-extraction")
    assert store.address("p@mssante.test").capability == TRUSTED_DOMAIN
    # a certificate known for an MSSanté address (from a CSV) makes it smime
    store.put(DirectoryItem(rkey="cert:p@mssante.test", entity_key="pp:8" + RPPS, identity=Identity(),
                            address=AddressInput("p@mssante.test", SMIME, certificates=cert_pair[:1])), source="csv")
    addr = store.address("p@mssante.test")
    assert addr.capability == SMIME and addr.source == "csv"
    store.put(operator_item("p@mssante.test", LOCAL, key_ref="k1", entity_key="pp:8" + RPPS))
    addr = store.address("p@mssante.test")
    assert addr.capability == LOCAL and addr.source == "operator"
    c = store.by_rpps(RPPS)
    assert c.entity.last_name == "KERVELLA" and set(c.entity.sources) == {"mssante-extraction", "csv", "operator"}


@pytest.mark.parametrize(("capability", "kwargs", "ok"), [
    (SMIME, {}, False), (SMIME, {"certificates": [b"x"]}, True), (LOCAL, {}, False),
    (LOCAL, {"key_ref": "k"}, True), (TRUSTED_DOMAIN, {}, True), ("legacy:apicrypt1", {}, True),
    ("legacy:", {}, False), ("legacy:Bad Codec", {}, False), ("clear", {}, False),
])
def test_capability_rules(capability: str, kwargs: dict, ok: bool) -> None:
    if ok:
        check_capability(capability, **kwargs)
    else:
        with pytest.raises(InvalidRecord):
            check_capability(capability, **kwargs)


def test_invalid_records_are_typed_and_say_no_value(store: SqliteDirectory) -> None:
    with pytest.raises(InvalidRecord) as exc:
        operator_item("not an address", TRUSTED_DOMAIN)
    assert isinstance(exc.value, PermanentError) and isinstance(exc.value, GatewayError)
    assert "not an address" not in str(exc.value)
    bad = _person_item("x@mssante.test", rpps="123")
    with pytest.raises(InvalidRecord):
        store.put(bad)
    with pytest.raises(InvalidRecord):
        store.put(_person_item("x@mssante.test"), source="somewhere-else")


def test_unusable_database_is_a_temporary_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(DirectoryUnavailable) as exc:
        SqliteDirectory(tmp_path / "file" / "directory.sqlite")
    assert exc.value.temporary


def test_concurrent_readers_and_writer(store: SqliteDirectory) -> None:
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(200):
                store.put(operator_item(f"w{i}@msgw.test", TRUSTED_DOMAIN))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def reader() -> None:
        try:
            for i in range(200):
                store.address(f"w{i}@msgw.test")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.address("w199@msgw.test") is not None


def test_directory_path_from_config(tmp_path: Path) -> None:
    from gateway.config import load_config
    from tests.e2e.harness import write_config

    setup = write_config(tmp_path / "a", sink_port=2525)
    cfg = load_config(setup.config)
    assert directory_path(cfg) == setup.spool.parent / "directory.sqlite"
    setup = write_config(tmp_path / "b", sink_port=2525, extra='[directory]\npath = "db/dir.sqlite"\n')
    assert directory_path(load_config(setup.config)) == (tmp_path / "b" / "db" / "dir.sqlite")


def test_operator_entry_under_another_key_still_listed_with_the_entity(store: SqliteDirectory, cert_pair) -> None:
    store.put(_person_item("p@mssante.test"), source="mssante-extraction")
    store.put(operator_item("p@mssante.test", SMIME, certificates=cert_pair[:1]))  # no identity given
    c = store.by_rpps(RPPS)
    assert [(a.address, a.capability) for a in c.addresses] == [("p@mssante.test", SMIME)]


def test_database_errors_become_directory_unavailable(store: SqliteDirectory) -> None:
    store._db.execute("DROP TABLE address")  # simulate a broken database
    with pytest.raises(DirectoryUnavailable):
        store.put(_person_item("p@mssante.test"), source="mssante-extraction")
