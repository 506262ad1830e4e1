"""Shared test helpers: tool requirements (fail in CI, skip elsewhere) and free ports."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ROOT = Path(__file__).resolve().parent.parent
MSGW = str(Path(sys.executable).with_name("msgw"))


def require_tool(name: str) -> str:
    """Path of an external tool; a missing tool fails the test in CI and skips it elsewhere."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if path is None:
        if IN_CI:
            pytest.fail(f"required tool {name!r} is not installed (CI must install it)")
        pytest.skip(f"tool {name!r} not installed (allowed outside CI only)")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def port_factory():
    return free_port


def corpus_dir() -> Path:
    """The public samples folder (`MSGW_CORPUS`, set by .ci/run): required in CI, optional elsewhere."""
    value = os.environ.get("MSGW_CORPUS", "")
    if not value or not Path(value).is_dir():
        if IN_CI:
            pytest.fail(f"MSGW_CORPUS must point at ../shared/samples in CI (got {value!r})")
        pytest.skip("MSGW_CORPUS not set: the public samples are read in CI")
    return Path(value)
