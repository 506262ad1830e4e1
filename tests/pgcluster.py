"""A real PostgreSQL server for the tests (issue 18): ``initdb`` + ``pg_ctl`` in a temp dir.

One cluster per test session (starting one takes about a second); each test that asks for the
``pg_dsn`` fixture gets a database of its own, dropped afterwards. The server listens on a free
loopback port and on a Unix socket in its own directory, and requires a password
(``scram-sha-256``), so the code under test connects as production does: a DSN without the
password, the password from a file or an environment variable.

PostgreSQL refuses to run as root, which CI is: then the cluster belongs to ``nobody`` and its
directory lives under ``/tmp`` (pytest's ``tmp_path`` is private to root). The binaries come
from Debian's ``postgresql`` package (``/usr/lib/postgresql/<version>/bin``, not on ``PATH``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import free_port, unavailable

#: The role the tests connect as, and its (test-only) password.
PG_USER = "msgw"
PG_PASSWORD = "msgw-TEST-only-password"  # noqa: S105 - a throw-away test cluster


def pg_bin(name: str) -> str:
    """Path of a PostgreSQL server binary (Debian keeps them off PATH)."""
    for candidate in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True):
        return candidate
    found = shutil.which(name)
    if found is None:
        unavailable(f"PostgreSQL's {name!r} is not installed (Debian package postgresql)")
    return found


@dataclass
class PgCluster:
    """A running test cluster: where it is and how to reach it."""

    datadir: Path
    port: int
    socket_dir: Path
    run_as: str | None
    password_file: Path

    @property
    def admin_dsn(self) -> str:
        return self.dsn("postgres")

    def dsn(self, dbname: str, *, with_password: bool = True) -> str:
        """A libpq URI; without the password it is what a config file holds."""
        auth = f"{PG_USER}:{PG_PASSWORD}" if with_password else PG_USER
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"

    def _ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [pg_bin("pg_ctl"), "-D", str(self.datadir), *args]
        if self.run_as:
            cmd = ["runuser", "-u", self.run_as, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120)

    def start(self) -> None:
        """Start (or restart after ``stop``) the server and wait until it accepts connections."""
        self._ctl("-l", str(self.datadir / "server.log"), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``immediate`` is a crash: no shutdown checkpoint)."""
        self._ctl("-m", mode, "-w", "-t", "60", "stop", check=False)

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL with psql (an independent client), return its unaligned output."""
        env = {**os.environ, "PGPASSWORD": PG_PASSWORD}
        out = subprocess.run(
            [pg_bin("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
             "-p", str(self.port), "-U", PG_USER, "-d", dbname, "-c", sql],
            capture_output=True, text=True, env=env, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"psql failed: {out.stderr.strip()}")
        return out.stdout.strip()

    def create_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.psql(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def start_cluster() -> PgCluster:
    """initdb a new cluster in a fresh temp dir and start it."""
    initdb = pg_bin("initdb")
    run_as = "nobody" if os.geteuid() == 0 else None
    base = Path(tempfile.mkdtemp(prefix="msgw-pg-"))
    datadir, socket_dir = base / "data", base / "sock"
    socket_dir.mkdir()
    pwfile = base / "pwfile"
    pwfile.write_text(PG_PASSWORD + "\n")
    if run_as:
        entry = pwd.getpwnam(run_as)
        for path in (base, socket_dir, pwfile):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        base.chmod(0o700)
    cmd = [initdb, "-D", str(datadir), "-U", PG_USER, "--auth=scram-sha-256", f"--pwfile={pwfile}",
           "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]
    if run_as:
        cmd = ["runuser", "-u", run_as, "--", *cmd]
    subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120)
    port = free_port()
    with (datadir / "postgresql.conf").open("a") as conf:
        conf.write(
            f"\nlisten_addresses = '127.0.0.1'\nport = {port}\n"
            f"unix_socket_directories = '{socket_dir}'\n"
            "max_connections = 200\nfsync = on\nsynchronous_commit = on\n"
            "shared_buffers = 64MB\nlog_min_messages = warning\n")
    cluster = PgCluster(datadir=datadir, port=port, socket_dir=socket_dir, run_as=run_as,
                        password_file=base / "client-password")
    cluster.password_file.write_text(PG_PASSWORD + "\n")
    cluster.password_file.chmod(0o600)
    cluster.start()
    deadline = time.monotonic() + 30
    while True:
        try:
            cluster.psql("SELECT 1")
            break
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    return cluster


def remove_cluster(cluster: PgCluster) -> None:
    cluster.stop("immediate")
    shutil.rmtree(cluster.datadir.parent, ignore_errors=True)


@contextlib.contextmanager
def database(cluster: PgCluster) -> Iterator[str]:
    """A fresh database for one test; yields its DSN (with the password)."""
    name = cluster.create_database()
    try:
        yield cluster.dsn(name)
    finally:
        with contextlib.suppress(RuntimeError):
            cluster.drop_database(name)
