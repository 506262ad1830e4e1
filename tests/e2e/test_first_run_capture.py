"""The capture transport on its own: the exact bytes, the envelope beside them, a folder per
domain that nothing climbs out of, and a write that fails is temporary (the copy waits)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.config import load_default_config
from gateway.default_setup import prepare_default_files
from gateway.delivery.capture import CaptureTransport
from gateway.delivery.nexthop import NextHopResolver
from gateway.delivery.transports import TRANSPORTS, Hop
from gateway.errors import DeliveryError


@pytest.fixture(scope="module")
def default_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("default")
    prepare_default_files(base / "var" / "default")
    return base


@dataclass(frozen=True)
class _Dest:
    domain: str


@dataclass(frozen=True)
class _Hop:
    config: object
    destination: _Dest


def test_the_default_captures_every_domain_without_a_route(default_dir: Path) -> None:
    config = load_default_config(default_dir)
    assert config.delivery.capture == default_dir / "var" / "outbox"
    resolver = NextHopResolver(config)
    dest = resolver.destination("cabinet-parc.sante.test")
    assert (dest.transport, dest.key, dest.local) == ("capture", "capture:cabinet-parc.sante.test", False)
    assert resolver.destination("msgw.localhost").transport == "maildir"  # local mail stays local
    assert TRANSPORTS["capture"] is CaptureTransport


def test_capture_writes_the_exact_bytes_and_the_envelope(default_dir: Path) -> None:
    config = load_default_config(default_dir)
    dest = NextHopResolver(config).destination("cabinet-parc.sante.test")
    data = b"From: <a@b.test>\r\nSubject: x\r\n\r\n.line starting with a dot\r\n" + bytes(range(256))
    rcpts = ["jean.test-dupont@cabinet-parc.sante.test", "other@cabinet-parc.sante.test"]
    results, remote = asyncio.run(TRANSPORTS["capture"](Hop(config, dest, NextHopResolver(config)))
                                  .deliver("labo@labo-tests.sante.test", rcpts, data))
    assert remote == "capture" and all(r.code == 250 for r in results.values()) and set(results) == set(rcpts)
    box = default_dir / "var" / "outbox" / "cabinet-parc.sante.test"
    [eml] = box.glob("*.eml")
    assert eml.read_bytes() == data  # no header added, no dot-stuffing, no line-ending change
    envelope = json.loads(eml.with_name(eml.name.removesuffix(".eml") + ".envelope.json").read_text())
    assert envelope == {"sender": "labo@labo-tests.sante.test", "recipients": rcpts,
                        "domain": "cabinet-parc.sante.test"}
    assert not [p for p in box.iterdir() if p.name.startswith(".")]  # no temporary file left
    assert oct(eml.stat().st_mode & 0o777) == "0o600"


def test_a_domain_cannot_climb_out_of_the_capture_folder(default_dir: Path, tmp_path: Path) -> None:
    config = load_default_config(default_dir)
    folder = config.delivery.capture
    assert folder is not None
    hostile = CaptureTransport(_Hop(config, _Dest("../../escaped")))  # type: ignore[arg-type]
    with pytest.raises(DeliveryError) as refused:
        asyncio.run(hostile.deliver("a@b.test", ["x@y"], b"data"))
    assert not refused.value.temporary
    odd = CaptureTransport(_Hop(config, _Dest("a/b")))  # type: ignore[arg-type]
    asyncio.run(odd.deliver("a@b.test", ["x@a/b"], b"data"))
    assert (folder / "a%2Fb").is_dir() and not (folder / "a").exists()


def test_a_capture_folder_that_cannot_be_written_defers(default_dir: Path) -> None:
    config = load_default_config(default_dir)
    folder = config.delivery.capture
    assert folder is not None
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "blocked.test").write_bytes(b"a file where the domain's folder would be")  # even root cannot
    with pytest.raises(DeliveryError) as deferred:
        asyncio.run(CaptureTransport(_Hop(config, _Dest("blocked.test")))  # type: ignore[arg-type]
                    .deliver("a@b.test", ["x@blocked.test"], b"data"))
    assert deferred.value.temporary and deferred.value.status == "4.3.0"
