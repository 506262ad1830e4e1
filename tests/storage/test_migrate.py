"""`msgw storage migrate`: a real single-node SQLite state (directory with a certificate, intake
duplicates, the CI-SIS ledger with owed ZAMs and ignored reports, LPS delivered documents) copied
into a real PostgreSQL by the real command; counts and content equal; a second run copies
nothing; ``--dry-run`` counts and leaves the database empty."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from gateway import storage
from gateway.cisis.ledger import ZamLedger
from gateway.cisis.returns import Return, parse_returns
from gateway.config import load_config
from gateway.config.storage import StorageConfig
from gateway.directory.certsources import HarvestStore
from gateway.directory.directory import SqliteDirectory, operator_item
from gateway.intake.dedup import DedupStore
from gateway.lps.model import Delivered
from gateway.lps.store import DeliveredStore
from tests.cisis.reports import mdn
from tests.cisis.zamdata import ORIGINAL
from tests.conftest import MSGW
from tests.smime.support import shared_pki
from tests.storage.conftest import split_password
from tests.storage.test_stores import _person

pytestmark = pytest.mark.postgresql

DOCTOR = "adam.hoda@test-ci-sis.mssante.fr"
KEY = ("hl7-oru", "ORD1#abc")
NOT_QUEUE = ["--only", "directory", "--only", "harvest", "--only", "dedup", "--only", "ledger", "--only", "lps"]
TABLES = ("dir_entry", "dir_address", "dir_certificate", "harvest_certificates", "dedup_sent", "zam_transmissions",
          "zam_copies", "zam_outbox", "zam_ignored", "lps_delivered")


def _single_node_state(spool: Path) -> None:
    cert = shared_pki().pki["person_encrypt"].cert.public_bytes(Encoding.DER)
    with SqliteDirectory(spool.parent / "directory.sqlite") as d:
        d.sync_source("csv", [_person("r1", "10000000001", "Martin", "m@a.test"),
                              _person("r2", "10000000002", "Durand", "d@b.test")])
        d.put(operator_item("m@a.test", "smime", certificates=(cert,), entity_key="pp:810000000001"))
    with HarvestStore(spool.parent / storage.HARVEST_FILE) as harvest:
        harvest.harvest("m@a.test", shared_pki().pki["person_sign"].cert, seen_at=time.time())
    with DedupStore(spool.parent / storage.DEDUP_FILE) as dedup:
        dedup.record(KEY, ["dr@x.test", "other@x.test"], now=1000.0)
    ledger = ZamLedger.beside(spool, clock=lambda: 100.0)
    ledger.record(ORIGINAL, "labo", {"ACK_RECEPTION": True, "ACK_LECTURE_MSS": True},
                  [("Q1", "<copy-1@pfi.test>", DOCTOR, "801234567897", "professional")])
    ledger.on_outcome("Q1", DOCTOR, True, "2.0.0", "250 ok")
    ledger.on_return(parse_returns(mdn())[0])
    ledger.on_return(Return("mdn", "never-sent@pfi.test", DOCTOR, True))
    ledger.close()
    lps = DeliveredStore.beside(spool, clock=lambda: 5.0)
    lps.record_all([Delivered("u1", "s1", 1, "810000000001", "INS1", "org", ("MASQUE_PS",)),
                    Delivered("u2", "s1", 2, "810000000001", "INS1", "org")])
    lps.close()


def _config(tmp_path: Path, dsn: str) -> Path:
    plain, password = split_password(dsn)
    (tmp_path / "pg.pass").write_text(password + "\n")
    path = tmp_path / "msgw.toml"
    path.write_text(f'[listeners.relay]\nkind = "relay"\n[spool]\npath = "{tmp_path}/var/spool"\n'
                    f'[storage]\nbackend = "postgresql"\ndsn = "{plain}"\npassword_file = "pg.pass"\n'
                    'node = "node-a"\n')
    return path


def _migrate(config: Path, *extra: str) -> dict:
    out = subprocess.run([MSGW, "storage", "migrate", "--config", str(config), "--json", *extra],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return {s["store"]: s for s in json.loads(out.stdout)["stores"]}


def _rows(pg_cluster, dbname: str) -> dict[str, int]:
    return {t: int(pg_cluster.psql(f"SELECT count(*) FROM {t}", dbname)) for t in TABLES}  # noqa: S608 - fixed names


def test_migrate_copies_everything_once_and_dry_run_changes_nothing(pg_cluster, pg_dsn, tmp_path: Path) -> None:
    spool = tmp_path / "var" / "spool"
    spool.mkdir(parents=True)
    _single_node_state(spool)
    config_path = _config(tmp_path, pg_dsn)
    dbname = urlsplit(pg_dsn).path.strip("/")

    dry = _migrate(config_path, "--dry-run", *NOT_QUEUE)
    # directory: 2 csv + 1 operator entries, 3 addresses, 1 certificate; ledger: 1 transmission,
    # 1 copy, 2 ZAMs owed (Z02, Z03), 1 ignored reason (unknown-message)
    assert (dry["directory"]["read"], dry["directory"]["copied"]) == (7, 7)
    assert (dry["dedup"]["read"], dry["dedup"]["copied"]) == (2, 2)
    assert (dry["harvest"]["read"], dry["harvest"]["copied"]) == (1, 1)
    assert (dry["lps"]["read"], dry["lps"]["copied"]) == (2, 2)
    assert (dry["ledger"]["read"], dry["ledger"]["copied"]) == (5, 5)
    assert set(_rows(pg_cluster, dbname).values()) == {0}  # rolled back

    first = _migrate(config_path, *NOT_QUEUE)
    assert {k: (v["read"], v["copied"], v["present"]) for k, v in first.items()} == \
        {k: (v["read"], v["copied"], 0) for k, v in dry.items()}
    rows = _rows(pg_cluster, dbname)
    assert rows["dir_entry"] + rows["dir_address"] + rows["dir_certificate"] == 7
    assert (rows["dedup_sent"], rows["lps_delivered"], rows["zam_transmissions"]) == (2, 2, 1)
    assert rows["harvest_certificates"] == 1

    second = _migrate(config_path, *NOT_QUEUE)  # idempotent: nothing twice
    assert {k: (v["copied"], v["present"]) for k, v in second.items()} == \
        {k: (0, v["read"]) for k, v in first.items()}
    assert _rows(pg_cluster, dbname) == rows

    # content equal: the same questions get the same answers from both backends
    config = load_config(config_path)
    local = SqliteDirectory(spool.parent / "directory.sqlite")
    shared = storage.open_directory(config)
    for rpps in ("10000000001", "10000000002"):
        assert shared.by_rpps(rpps) == local.by_rpps(rpps)
    assert shared.address("m@a.test") == local.address("m@a.test") and shared.address("m@a.test").certificates
    local.close()
    shared.close()
    with HarvestStore(spool.parent / storage.HARVEST_FILE) as old_h, storage.open_harvest_store(config) as new_h:
        assert new_h.certificates("m@a.test") == old_h.certificates("m@a.test") != []
    dedup = storage.open_dedup(config)
    assert dedup.seen(KEY, "other@x.test", now=1001.0) and not dedup.seen(KEY, "third@x.test", now=1001.0)
    dedup.close()
    old, new = ZamLedger.beside(spool), storage.open_zam_ledger(config)

    def outbox(ledger: ZamLedger) -> list[tuple]:
        return [(e.creator, e.control_id, e.data, e.attempts, e.created) for es in ledger.due(10**9).values()
                for e in es]

    assert outbox(new) == outbox(old) and len(outbox(new)) == 2
    assert new.ignored() == old.ignored() and new.known(ORIGINAL)
    assert new.on_outcome("Q1", DOCTOR, True, "2.0.0", "250 ok") == []  # its Z02 was owed once, on the old node
    old.close()
    new.close()
    lps_old, lps_new = DeliveredStore.beside(spool), storage.open_delivered_store(config)
    assert lps_new.previous("u1") == lps_old.previous("u1") and lps_new.previous("s1") == lps_old.previous("s1")
    lps_old.close()
    lps_new.close()


def test_migrate_refuses_without_a_postgresql_backend(tmp_path: Path) -> None:
    path = tmp_path / "msgw.toml"
    path.write_text(f'[listeners.relay]\nkind = "relay"\n[spool]\npath = "{tmp_path}/spool"\n')
    out = subprocess.run([MSGW, "storage", "migrate", "--config", str(path)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and 'backend = "postgresql"' in out.stderr
    assert StorageConfig().backend == "sqlite"
