"""`[storage]`: typed values, and every refusal names its key (never the secret it refused)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateway import storage
from gateway.config import ConfigError, GatewayConfig, StorageConfig, parse_config
from gateway.config.reader import Secret

RELAY = '[listeners.relay]\nkind = "relay"\n'
SECRET = "s3cr3t-TEST-only"  # noqa: S105 - a test value that must never be echoed


def _parse(text: str, base: Path = Path("/srv/msgw")) -> GatewayConfig:
    return parse_config(tomllib.loads(text + RELAY), source="t.toml", base=base)


def _problems(text: str, base: Path = Path("/srv/msgw")) -> list[tuple[str, str, str]]:
    with pytest.raises(ConfigError) as err:
        _parse(text, base)
    return err.value.problems


def test_default_is_sqlite_beside_the_spool() -> None:
    cfg = _parse("")
    assert cfg.storage == StorageConfig() and not cfg.storage.shared
    assert storage.describe(cfg.storage) == "sqlite"
    assert storage.queue_owner(cfg.storage, "w1") == "w1"


def test_postgresql_values_are_typed(tmp_path: Path) -> None:
    (tmp_path / "pg.pass").write_text(SECRET + "\n")
    cfg = _parse('[storage]\nbackend = "postgresql"\ndsn = "postgresql://msgw@db1:5433/msgw?sslmode=verify-full"\n'
                 'password_file = "pg.pass"\nlease = "90s"\nconnect_timeout = "3s"\npool_size = 8\nnode = "gw-a"\n',
                 tmp_path)
    s = cfg.storage
    assert (s.backend, s.lease, s.connect_timeout, s.pool_size, s.node) == ("postgresql", 90.0, 3.0, 8, "gw-a")
    assert s.password == Secret(file=tmp_path / "pg.pass") and storage.password(s) == SECRET
    assert storage.queue_owner(s, "w1") == "gw-a/w1" and storage.queue_owner(s) == "gw-a"
    assert storage.describe(s) == "postgresql db1:5433/msgw"


@pytest.mark.parametrize("dsn", [f"postgresql://msgw:{SECRET}@db1/msgw", f"postgres://msgw@db1/msgw?password={SECRET}",
                                 f"postgresql://msgw@db1/msgw?sslmode=require&PASSWORD={SECRET}"])
def test_a_password_in_the_dsn_is_refused_without_repeating_it(dsn: str) -> None:
    problems = _problems(f'[storage]\nbackend = "postgresql"\ndsn = "{dsn}"\npassword_env = "PGPASS_TEST"\n')
    assert [p[1] for p in problems] == ["storage.dsn"]
    assert "password" in problems[0][2] and SECRET not in repr(problems)


def test_unknown_backend_and_keys_and_not_a_uri() -> None:
    problems = _problems('[storage]\nbackend = "mysql"\ncolour = 1\n')
    assert ("t.toml", "storage.backend", "must be one of sqlite, postgresql") in problems
    assert ("t.toml", "storage.colour", "unknown key") in problems
    problems = _problems('[storage]\nbackend = "postgresql"\ndsn = "host=db1 dbname=msgw"\npassword_env = "X"\n')
    assert [p[1] for p in problems] == ["storage.dsn"]


def test_postgresql_needs_a_dsn_and_a_secret(tmp_path: Path) -> None:
    keys = {p[1] for p in _problems('[storage]\nbackend = "postgresql"\n')}
    assert keys == {"storage.dsn", "storage.password_file"}
    missing = _problems('[storage]\nbackend = "postgresql"\ndsn = "postgresql://msgw@db/msgw"\n'
                        'password_file = "nope.pass"\n', tmp_path)
    assert [p[1] for p in missing] == ["storage.password_file"]
    both = _problems('[storage]\nbackend = "postgresql"\ndsn = "postgresql://msgw@db/msgw"\n'
                     'password_file = "nope.pass"\npassword_env = "X"\n', tmp_path)
    assert {p[1] for p in both} == {"storage.password_file", "storage.password_env"}
    bad = _problems('[storage]\npool_size = 0\nlease = "0s"\nconnect_timeout = "soon"\nnode = "a b"\n'
                    'audit_retention = "30d"\nanchor_interval = "10m"\ntoken_check = "0s"\n')
    assert {p[1] for p in bad} == {"storage.pool_size", "storage.lease", "storage.connect_timeout", "storage.node",
                                   "storage.audit_retention", "storage.anchor_interval", "storage.token_check"}


def test_an_unset_password_variable_is_a_config_error_naming_the_key(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    monkeypatch.delenv("MSGW_TEST_PG_PASSWORD", raising=False)
    cfg = _parse('[storage]\nbackend = "postgresql"\ndsn = "postgresql://msgw@127.0.0.1:9/msgw"\n'
                 'password_env = "MSGW_TEST_PG_PASSWORD"\n', tmp_path)
    with pytest.raises(ConfigError) as err:
        storage.open_directory(cfg)  # refused before any connection is tried
    assert [p[1] for p in err.value.problems] == ["storage.password_env"]
    with pytest.raises(ConfigError) as err:
        storage.open_dedup(cfg)
    assert err.value.problems[0][:2] == ("t.toml", "storage.password_env")


def test_the_intake_dedup_file_name_is_the_services() -> None:
    from gateway.intake.service import DEDUP_FILE

    assert storage.DEDUP_FILE == DEDUP_FILE == "intake-dedup.sqlite"
