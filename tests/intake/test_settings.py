"""[intake] parsing: values, defaults, and every problem reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.intake.settings import parse_intake


def _keys(exc: ConfigError) -> set[str]:
    return {k for _src, k, _msg in exc.problems}


def test_full_table(tmp_path: Path) -> None:
    codes = tmp_path / "codes.csv"
    codes.write_text("lab_sender,lab_code,rpps\nLABX,DRZEP,19900000044\nlis@labo-fictif.test,K9,19900000011\n")
    raw = {"intake": {
        "mllp": {"port": 0, "sender": "LIS@labo-fictif.test", "max_frame": "2MB", "timeout": "30s",
                 "allowed_networks": ["10.1.0.0/16"]},
        "drop": {"lab1": {"path": "drop1", "sender": "lis@labo-fictif.test", "complete": "ok-marker",
                          "poll_interval": "2s"}},
        "routing": {"unrouted": {"lis@labo-fictif.test": "tri@labo-fictif.test"}, "dedup_window": "7d",
                    "lab_codes": "codes.csv", "xdm_source_id": "1.2.250.9999.7"},
    }}
    cfg = parse_intake(raw, source="gw.toml", base=tmp_path)
    assert cfg.enabled
    assert cfg.mllp is not None and cfg.mllp.sender == "lis@labo-fictif.test" and cfg.mllp.max_frame == 2_000_000
    assert cfg.mllp.timeout == 30 and cfg.mllp.allows("10.1.2.3") and not cfg.mllp.allows("192.0.2.1")
    drop = cfg.drops[0]
    assert drop.path == tmp_path / "drop1" and drop.done == tmp_path / "drop1" / "done"
    assert drop.error == tmp_path / "drop1" / "error" and drop.complete == "ok-marker" and drop.poll_interval == 2
    assert cfg.routing.dedup_window == 7 * 86400
    assert cfg.routing.lab_codes == {("labx", "DRZEP"): "19900000044", ("lis@labo-fictif.test", "K9"): "19900000011"}
    assert cfg.routing.unrouted_for("LIS@labo-fictif.test") == "tri@labo-fictif.test"


def test_table_alone_and_defaults(tmp_path: Path) -> None:
    cfg = parse_intake({}, source="gw.toml", base=tmp_path)
    assert not cfg.enabled and cfg.routing.xdm
    cfg = parse_intake({"mllp": {"sender": "a@b.test"}, "routing": {"unrouted_default": "t@b.test"}},
                       source="gw.toml", base=tmp_path)
    assert cfg.mllp is not None and cfg.mllp.port == 2575 and cfg.mllp.allows("127.0.0.1")
    assert not cfg.mllp.allows("192.0.2.1")  # loopback only by default: MLLP has no authentication


def test_every_problem_is_reported(tmp_path: Path) -> None:
    codes = tmp_path / "codes.csv"
    codes.write_text("lab_sender,lab_code,rpps\nLABX,DRZEP,123\nLABX\n")
    raw = {"intake": {
        "mllp": {"port": 70000, "timeout": "soon", "allowed_networks": ["not-a-net"], "tls_cert": "missing.pem",
                 "colour": "blue", "client_ca": "missing-ca.pem", "allowed_client_subjects": "lis"},
        "drop": {"bad name!": {"sender": "nobody", "complete": "whenever", "done": "../elsewhere",
                               "poll_interval": 0, "pdf_wait": "-1"}},
        "routing": {"unrouted": {"lis@x.test": 3}, "dedup_window": "forever", "lab_codes": "codes.csv",
                    "xdm_source_id": "abc"},
        "extra": 1,
    }}
    with pytest.raises(ConfigError) as err:
        parse_intake(raw, source="gw.toml", base=tmp_path)
    keys = _keys(err.value)
    expected = {
        "intake.extra", "intake.mllp.port", "intake.mllp.timeout", "intake.mllp.allowed_networks[0]",
        "intake.mllp.tls_cert", "intake.mllp.tls_key", "intake.mllp.colour", "intake.mllp.sender",
        "intake.mllp.client_ca", "intake.mllp.allowed_client_subjects", "intake.drop.bad name!.pdf_wait",
        "intake.drop.bad name!", "intake.drop.bad name!.path", "intake.drop.bad name!.sender",
        "intake.drop.bad name!.complete", "intake.drop.bad name!.done", "intake.drop.bad name!.poll_interval",
        "intake.routing.unrouted.lis@x.test", "intake.routing.dedup_window", "intake.routing.lab_codes",
        "intake.routing.xdm_source_id",
    }
    assert expected <= keys, expected - keys
    assert all(src == "gw.toml" for src, _k, _m in err.value.problems)
    messages = [m for _s, k, m in err.value.problems if k == "intake.routing.lab_codes"]
    assert any("line 2" in m for m in messages) and any("line 3" in m for m in messages)


def test_sender_without_unrouted_mailbox_is_an_error(tmp_path: Path) -> None:
    raw = {"drop": {"lab1": {"path": "d", "sender": "lis@labo-fictif.test"}},
           "routing": {"unrouted": {"other@labo-fictif.test": "tri@labo-fictif.test"}}}
    with pytest.raises(ConfigError) as err:
        parse_intake(raw, source="gw.toml", base=tmp_path)
    assert _keys(err.value) == {"intake.drop.lab1.sender"}


def test_lab_code_file_needs_its_header(tmp_path: Path) -> None:
    (tmp_path / "codes.csv").write_text("LABX,DRZEP,19900000044\n")
    raw = {"routing": {"lab_codes": "codes.csv"}}
    with pytest.raises(ConfigError, match="header"):
        parse_intake(raw, source="gw.toml", base=tmp_path)
