"""Issue 12 item 6: every section typed and validated ([audit], [directory], [routing], [intake]
included), every problem reported at once with file and key, and no side effect on load."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateway.audit import audit_path
from gateway.cli import main
from gateway.config import (
    AuditConfig,
    ConfigError,
    DirectoryConfig,
    GatewayConfig,
    IntakeConfig,
    load_default_config,
    parse_config,
)
from gateway.default_setup import prepare_default_files
from gateway.directory.directory import directory_path

RELAY = '[listeners.relay]\nkind = "relay"\n'


def _parse(text: str, base: Path = Path("/srv/msgw")) -> GatewayConfig:
    return parse_config(tomllib.loads(text + RELAY), source="t.toml", base=base)


def _problems(text: str) -> list[tuple[str, str, str]]:
    with pytest.raises(ConfigError) as err:
        _parse(text)
    return err.value.problems


def test_audit_and_directory_paths_are_typed_values() -> None:
    cfg = _parse('[spool]\npath = "state/spool"\n')
    assert cfg.audit == AuditConfig(Path("/srv/msgw/state/audit.jsonl"))
    assert cfg.directory == DirectoryConfig(Path("/srv/msgw/state/directory.sqlite"))
    cfg = _parse('[audit]\npath = "trail/audit.jsonl"\n[directory]\npath = "/var/lib/msgw/dir.sqlite"\n')
    assert audit_path(cfg) == Path("/srv/msgw/trail/audit.jsonl")
    assert directory_path(cfg) == Path("/var/lib/msgw/dir.sqlite")


def test_unknown_key_in_audit_is_reported() -> None:
    assert ("t.toml", "audit.colour", "unknown key") in _problems('[audit]\ncolour = "blue"\n')


def test_wrong_types_in_directory_and_audit_are_reported() -> None:
    problems = _problems('[directory]\npath = 3\n[audit]\npath = ""\n')
    assert ("t.toml", "directory.path", "expected a string, got int") in problems
    assert ("t.toml", "audit.path", "must not be empty") in problems
    assert ("t.toml", "directory", "expected a table") in _problems('directory = "dir.sqlite"\n')


def test_keys_in_the_reserved_routing_table_are_reported() -> None:
    [(source, key, message)] = _problems('[routing]\nunrouted_default = "tri@x.test"\n')
    assert (source, key) == ("t.toml", "routing.unrouted_default")
    assert message.startswith("unknown key") and "[intake.routing]" in message


def test_intake_is_typed_and_its_problems_come_with_the_others() -> None:
    assert _parse("").intake == IntakeConfig()
    problems = _problems('[audit]\nextra = 1\n[directory]\npath = true\n[intake.routing]\nxdm = "yes"\n'
                         '[spool]\nretry_schedule = ["soon"]\n')
    keys = {key for _source, key, _message in problems}
    assert {"audit.extra", "directory.path", "intake.routing.xdm", "spool.retry_schedule[0]"} <= keys
    assert {source for source, _key, _message in problems} == {"t.toml"}


def test_msgw_check_lists_every_problem_with_file_and_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(RELAY + '[audit]\ncolour = "blue"\n[directory]\npath = 3\n[routing]\nx = 1\n')
    assert main(["check", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    for line in (f"{bad}: audit.colour: unknown key", f"{bad}: directory.path: expected a string, got int",
                 f"{bad}: routing.x: unknown key"):
        assert line in err, err
    assert "3 problem(s) in the configuration" in err


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")}


def test_loading_the_default_config_creates_no_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_default_config(tmp_path)
    assert list(tmp_path.iterdir()) == []  # no TLS pair, no demo account, no TEST PKI, no ./var
    [(source, _key, message)] = err.value.problems
    assert source == "<embedded default>" and "run `msgw init`" in message

    prepare_default_files(tmp_path / "var" / "default")  # what `msgw init` / `msgw serve` do first
    before = _tree(tmp_path)
    config = load_default_config(tmp_path)
    assert config.keys and config.trust is not None and config.legacy is not None
    assert _tree(tmp_path) == before
