"""Worker processes (issue 15, item 6) and the event loop (item 7): the settings, the death of the
workers with their master, and the master's supervision, with real processes and signals."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import pytest

from gateway.config import ConfigError, GatewayConfig, parse_config
from gateway.workers import Supervisor, loop_factory, run_on_loop, worker_count

RELAY = '[listeners.relay]\nkind = "relay"\n'


def _parse(text: str) -> GatewayConfig:
    return parse_config(tomllib.loads(text + RELAY), source="t.toml", base=Path("/srv/msgw"))


def _problems(text: str) -> list[tuple[str, str, str]]:
    with pytest.raises(ConfigError) as err:
        _parse(text)
    return err.value.problems


def test_workers_and_event_loop_settings() -> None:
    default = _parse("")
    assert (default.workers, default.event_loop) == (None, "auto")
    assert _parse('[gateway]\nworkers = "auto"\n').workers is None
    assert _parse("[gateway]\nworkers = 3\n").workers == 3
    assert _parse('[gateway]\nevent_loop = "asyncio"\n').event_loop == "asyncio"
    problems = _problems('[gateway]\nworkers = 0\nevent_loop = "trio"\n')
    assert ("t.toml", "gateway.workers", "expected a number of processes from 1 to 64") in problems
    assert ("t.toml", "gateway.event_loop", "must be one of auto, asyncio, uvloop") in problems
    for bad in ('"two"', "true", "1.5"):
        assert ("t.toml", "gateway.workers", 'expected "auto" or a number of processes') in \
            _problems(f"[gateway]\nworkers = {bad}\n")


def test_worker_count_auto_is_one_per_core_and_the_option_wins() -> None:
    assert worker_count(None) == (os.cpu_count() or 1)
    assert worker_count(3) == 3
    assert worker_count(3, 1) == 1
    assert worker_count(None, 2) == 2


def test_auto_event_loop_is_uvloop_when_installed() -> None:
    try:
        import uvloop
    except ImportError:
        assert loop_factory("auto") == ("asyncio", None)
        with pytest.raises(ImportError):
            loop_factory("uvloop")
        return
    assert loop_factory("auto") == ("uvloop", uvloop.new_event_loop)
    assert loop_factory("asyncio") == ("asyncio", None)
    seen: list[str] = []

    async def which() -> None:
        seen.append(type(asyncio.get_running_loop()).__module__)
    run_on_loop(which, "auto")
    run_on_loop(which, "asyncio")
    assert seen[0].startswith("uvloop") and seen[1].startswith("asyncio")


# A master stand-in: starts one child that calls die_with_master, prints the child's pid, sleeps.
_MASTER = textwrap.dedent("""
    import os, subprocess, sys, time
    r, w = os.pipe()
    child = subprocess.Popen([sys.executable, "-c", '''
    import asyncio, sys, time
    from gateway.workers import die_with_master, watch_master
    die_with_master(int(sys.argv[1]), int(sys.argv[2]))
    if sys.argv[3] == "pipe":  # only the pipe: what is left when the death signal is not there
        import ctypes; ctypes.CDLL(None).prctl(1, 0, 0, 0, 0)
        async def main():
            watch_master(asyncio.get_running_loop(), int(sys.argv[2]))
            await asyncio.sleep(60)
        asyncio.run(main())
    time.sleep(60)
    ''', str(os.getpid()), str(r), sys.argv[1]], pass_fds=(r,))
    os.close(r)
    print(child.pid, flush=True)
    time.sleep(60)
""")


@pytest.mark.parametrize("way", ["deathsig", "pipe"])
def test_a_worker_dies_with_its_master_killed_by_sigkill(way: str) -> None:
    master = subprocess.Popen([sys.executable, "-c", _MASTER, way], stdout=subprocess.PIPE)
    try:
        assert master.stdout is not None
        child = int(master.stdout.readline())
        time.sleep(0.5)  # the child is set up (death signal, or pipe watched by its loop)
        assert _alive(child)
        master.kill()
        master.wait()
        deadline = time.monotonic() + 5
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(child), f"the worker outlived its master ({way})"
    finally:
        if master.poll() is None:
            master.kill()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class _ScriptSupervisor(Supervisor):
    """The real supervision loop around a stand-in worker (a script), not the gateway."""

    script: str = ""

    def command(self, index: int, fd: int) -> list[str]:
        return [sys.executable, "-c", self.script, str(index), str(fd)]


_WORKER = textwrap.dedent("""
    import os, signal, sys, time
    index, out = sys.argv[1], os.environ["OUT"]
    with open(out, "a") as f:
        f.write(f"start {index} {os.getpid()}\\n")
    def term(*_):
        with open(out, "a") as f:
            f.write(f"term {index}\\n")
        sys.exit(0)
    signal.signal(signal.SIGTERM, term)
    time.sleep(60)
""")


def test_supervisor_restarts_a_dead_worker_and_forwards_sigterm(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    runner = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from tests.unit.test_workers import _ScriptSupervisor, _WORKER
        os.environ["OUT"] = {str(out)!r}
        sup = _ScriptSupervisor(2, None, shutdown_grace=1.0)
        sup.script = _WORKER
        sys.exit(sup.run())
    """)
    master = subprocess.Popen([sys.executable, "-c", runner])
    try:
        starts = _wait_lines(out, "start", 2)
        _, index, pid = starts[1].split()  # whichever wrote second
        os.kill(int(pid), signal.SIGKILL)
        starts = _wait_lines(out, "start", 3)  # started again after the backoff (1 s)
        assert starts[2].split()[1] == index and starts[2].split()[2] != pid
        master.send_signal(signal.SIGTERM)
        assert master.wait(timeout=15) == 0
        assert sorted(_wait_lines(out, "term", 2)) == ["term 0", "term 1"]
    finally:
        if master.poll() is None:
            master.kill()


def _wait_lines(path: Path, prefix: str, count: int, timeout: float = 15) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [ln for ln in path.read_text().splitlines() if ln.startswith(prefix)] if path.exists() else []
        if len(lines) >= count:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"{prefix}: {lines}")
