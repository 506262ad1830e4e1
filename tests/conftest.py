"""Shared test helpers: tool requirements (fail in CI, skip elsewhere) and free ports."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ROOT = Path(__file__).resolve().parent.parent
MSGW = str(Path(sys.executable).with_name("msgw"))


def unavailable(reason: str) -> NoReturn:
    """A test cannot get what it needs: a failure in CI (CI must provide it), a skip elsewhere."""
    if IN_CI:
        pytest.fail(f"{reason} (CI must provide it)")
    pytest.skip(f"{reason} (a skip is allowed outside CI only)")


def require_tool(name: str) -> str:
    """Path of an external tool; a missing tool fails the test in CI and skips it elsewhere."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if path is None:
        unavailable(f"required tool {name!r} is not installed")
    return path


#: Ports this test process already handed out: the kernel may give the same free port to two
#: calls in a row (a gateway's submission and relay listeners then collide), so never twice.
_GIVEN_PORTS: set[int] = set()


def free_port() -> int:
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN_PORTS:
            _GIVEN_PORTS.add(port)
            return port
    raise RuntimeError("no fresh loopback port after 100 tries")


@pytest.fixture
def port_factory():
    return free_port


def corpus_dir() -> Path:
    """The public samples folder (`MSGW_CORPUS`, set by .ci/run): required in CI, optional elsewhere."""
    value = os.environ.get("MSGW_CORPUS", "")
    if not value or not Path(value).is_dir():
        unavailable(f"MSGW_CORPUS must point at ../shared/samples (got {value!r})")
    return Path(value)


@pytest.fixture
def tmpfs_factory(tmp_path: Path):
    """Mount small tmpfs filesystems: a real full disk, not a simulated one (root only; CI runs as root)."""
    mounts: list[Path] = []

    def mount(size: str = "4m") -> Path:
        target = tmp_path / f"tmpfs{len(mounts)}"
        target.mkdir()
        if os.geteuid() != 0:
            unavailable("mounting a tmpfs needs root")
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)],
                                capture_output=True)
        if result.returncode != 0:
            unavailable(f"cannot mount a tmpfs: {result.stderr!r}")
        mounts.append(target)
        return target

    yield mount
    for target in reversed(mounts):
        subprocess.run(["umount", "-l", str(target)], check=False)


@pytest.fixture(scope="session")
def pg_cluster():
    """One real PostgreSQL server for the session (issue 18): see tests/pgcluster.py."""
    from tests.pgcluster import remove_cluster, start_cluster

    cluster = start_cluster()
    yield cluster
    remove_cluster(cluster)


@pytest.fixture
def pg_dsn(pg_cluster):
    """A fresh database on the session's PostgreSQL server; its DSN includes the password."""
    from tests.pgcluster import database

    with database(pg_cluster) as dsn:
        yield dsn
