"""A listener may not be named after the gateway's own HTTP listeners (issue 18, item 7): the
console's actions are audited with ``listener="console"``, the metrics listener logs as
``metrics``, and the inventory lists the console's certificate as ``tls``/``console``; an SMTP
listener of the same name would be indistinguishable there. Refused with the key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.errors import ConfigError


@pytest.mark.parametrize("name", ["console", "metrics"])
def test_a_listener_named_like_the_gateways_own_is_refused_with_its_key(tmp_path: Path, name: str) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(f'[listeners.{name}]\nkind = "relay"\nport = 2525\n[spool]\npath = "spool"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert any(key == f"listeners.{name}" for _, key, _ in err.value.problems), err.value.problems
