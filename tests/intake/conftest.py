"""Fixtures of the intake tests: a directory of invented professionals, a spool, a duplicate store."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.default_setup import make_self_signed
from gateway.directory.directory import AddressInput, DirectoryItem, Identity, SqliteDirectory
from gateway.intake.dedup import DedupStore
from gateway.intake.settings import RoutingSettings
from gateway.spool.store import Spool
from tests.intake import samples as s


@pytest.fixture(scope="session")
def cert_der() -> bytes:
    pem, _key = make_self_signed("enc.intake.test")
    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


def _person(rpps: str | None, address: AddressInput | None, *, adeli: str | None = None, rkey: str = "",
            last: str = "FICTIF") -> DirectoryItem:
    national = ("8" + rpps) if rpps else ("0" + adeli if adeli else None)
    ident = Identity(kind="person", national_id=national, rpps=rpps, adeli=adeli, last_name=last)
    return DirectoryItem(rkey=rkey or f"{national}:{address.address if address else '-'}", entity_key=f"pp:{national}",
                         identity=ident, address=address)


@pytest.fixture
def directory(tmp_path: Path, cert_der: bytes):
    d = SqliteDirectory(tmp_path / "directory.sqlite")
    d.put(_person(s.RPPS_LOCAL, AddressInput(s.ADDR_TRUSTED, "trusted-domain", mailbox_type="PER")))
    d.put(_person(s.RPPS_LOCAL, AddressInput(s.ADDR_LOCAL, "local", mailbox_type="PER", key_ref="alpha")))
    d.put(_person(s.RPPS_SMIME, AddressInput(s.ADDR_SMIME, "smime", mailbox_type="PER", certificates=(cert_der,))))
    d.put(_person(None, AddressInput(s.ADDR_ADELI, "trusted-domain", mailbox_type="PER"), adeli=s.ADELI_DOC))
    d.put(_person(s.RPPS_LABCODE, AddressInput(s.ADDR_LABCODE, "trusted-domain", mailbox_type="PER")))
    d.put(_person(s.RPPS_NOADDR, None))
    yield d
    d.close()


@pytest.fixture
def routing() -> RoutingSettings:
    return RoutingSettings(unrouted={s.LIS: s.UNROUTED}, lab_codes={("labx", "DRZEP"): s.RPPS_LABCODE},
                           dedup_window=7 * 86400.0, xdm_source_id="1.2.250.9999.7")


@pytest.fixture
def spool(tmp_path: Path):
    sp = Spool(tmp_path / "spool").open()
    yield sp
    sp.close()


@pytest.fixture
def dedup(tmp_path: Path):
    with DedupStore(tmp_path / "dedup.sqlite") as store:
        yield store
