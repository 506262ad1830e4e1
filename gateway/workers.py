"""msgw on every core: a master and N worker processes (issue 15, items 6 and 7).

Why processes: the event-loop thread does two thirds of a message's CPU (CMS, parsing, SMTP) and
the GIL keeps it on one core. With ``[gateway] workers = N`` (``"auto"``: one per core) `msgw
serve` becomes a **master** that runs the start-up checks and the spool recovery once, then
starts N workers; each runs the whole `Gateway` (SMTP sessions, runner, delivery) with its own
claims on the shared spool (``Spool(owner="w<i>")``). The master binds and listens on the SMTP
ports itself (no ``SO_REUSEPORT``) and hands each accepted connection to the worker with the
fewest open sessions (`gateway.server.handoff`: ``SCM_RIGHTS`` over a socketpair per worker); the
kernel's hash of ``SO_REUSEPORT`` left 8/2 splits of long sessions. With N = 1 there is no master:
one process binds, as before.

How workers start: ``subprocess`` runs ``python -m gateway.workers`` (fork + exec, i.e. the
``spawn`` model) rather than ``os.fork()``: the master has already run an event loop for the key
checks, may have loaded a PKCS#11 library and opened SQLite; none of that survives an exec, so
every worker opens its own tokens, sessions and connections. Each worker reloads the same
configuration file itself (nothing is pickled across).

Workers never outlive the master: each sets ``PR_SET_PDEATHSIG`` (SIGKILL) at start and checks
that its parent is still the master (a master killed before the ``prctl`` is seen at once), and it
watches a pipe whose write end only the master holds: EOF means the master is gone. A ``kill -9``
of the master therefore frees the ports at once, as the crash tests need to restart on them.

Singletons run in worker 0 only (``primary``): the intake doors (MLLP, drop folders, payload
address), the CI-SIS ZAM sender's outbox loop and the metrics listener (`gateway.ops.httpd`:
every worker writes its counters to the folder the master names in ``PROMETHEUS_MULTIPROC_DIR``,
`gateway.ops.metrics.prepare_worker_metrics`, and worker 0 serves their sum). The ZAM ledger and
the LPS stores are SQLite files in WAL mode with a busy timeout (`gateway.sqlitefile`), written
from any worker. The AUTH failure throttle (`gateway.server.throttle`) is per worker: a guesser
spread over N workers gets at most N times ``auth.max_failures`` before each locks it out.

Readiness (issue 16): each worker writes one byte on a pipe (``MSGW_READY_FD``) once its
listeners accept connections (the master hands it connections from then on); the master tells
systemd ``READY=1`` when every worker has done so (`gateway.sdnotify`), and ``STOPPING=1`` on
SIGTERM/SIGINT. Workers get no ``NOTIFY_SOCKET``.

Supervision: a worker that dies is started again after a backoff (1 s doubling to 30 s, back to
1 s once a worker ran a minute); its claims are released by the new worker's ``Spool.open``; the
sockets queued to it are closed (their clients retry) and the listening sockets stay in the
master, so the ports never close: with no worker ready the kernel queues the connections.
The master's loop is one thread on ``selectors`` (accepts, channel reports, readiness pipes, a
tick every 100 ms for supervision); it never reads a byte of SMTP.
SIGTERM/SIGINT to the master are forwarded; workers stop gracefully within
``spool.shutdown_grace`` (the master waits that long plus a margin, then kills what is left).

The event loop (item 7): ``[gateway] event_loop = "auto"`` runs uvloop when it is importable
(``pip install msgw[fast]``), else asyncio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway import sdnotify
from gateway.server.handoff import (
    HANDOFF_FD_ENV,
    HANDOFF_LISTENERS_ENV,
    Dispatcher,
    HandoffReceiver,
    Listening,
    listeners_env,
)

log = logging.getLogger("gateway")

PR_SET_PDEATHSIG = 1
#: The environment variable naming a worker's readiness pipe (write end).
READY_FD_ENV = "MSGW_READY_FD"
#: Backoff before a dead worker is started again: doubles from the first to the last value.
RESTART_BACKOFF = (1.0, 30.0)
#: A worker that ran this long resets the backoff (its death is not a crash loop).
HEALTHY_AFTER = 60.0
#: Threads of the loop's default executor (`asyncio.to_thread`, `run_in_executor(None, ...)`).
#: Why more than asyncio's min(32, cores + 4): the spool's calls spend most of their time waiting
#: for a group commit or an fsync (they hold no CPU, nor the GIL), and each holds a thread while it
#: waits; with 6 threads on 2 cores every thread was taken under a closed loop of 10 sessions, so
#: new accepts queued in the executor instead of joining the commit under way (issue 15, third
#: round: `bench/worker_waits.py`).
EXECUTOR_THREADS = 32


def worker_count(setting: int | None, override: int | None = None) -> int:
    """``--workers`` wins over ``[gateway] workers``; ``None`` ("auto") is one per core."""
    if override is not None:
        return max(1, override)
    if setting is not None:
        return setting
    return max(1, os.cpu_count() or 1)


def loop_factory(choice: str) -> tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]:
    """The event loop to run on: ``(name, factory)``; ``None`` is asyncio's default loop.

    ``auto`` takes uvloop when it is installed; ``uvloop`` demands it (ImportError otherwise)."""
    if choice == "asyncio":
        return "asyncio", None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise
        return "asyncio", None
    return "uvloop", uvloop.new_event_loop


def run_on_loop(main: Callable[[], Coroutine[Any, Any, object]], choice: str) -> None:
    """``asyncio.run(main())`` on the chosen loop (`asyncio.Runner` takes a loop factory)."""
    _, factory = loop_factory(choice)
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.get_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=EXECUTOR_THREADS, thread_name_prefix="msgw-io"))
        runner.run(main())


# -- the master ----------------------------------------------------------------------------------------

@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    pipe_w: int | None = None
    #: read end of the worker's readiness pipe (one byte once its listeners are up)
    ready_r: int | None = None
    ready: bool = False
    started: float = 0.0
    restarts: int = 0
    backoff: float = RESTART_BACKOFF[0]
    next_start: float = 0.0


@dataclass
class Supervisor:
    """The master's loop: start N workers, start again the ones that die, stop them all on a signal.

    Runs in the master's main thread without an event loop or other threads (the death signal is
    tied to the thread that forked the worker, so the forking thread must live as long as the master)."""

    count: int
    config_path: str | None
    log_format: str | None = None
    shutdown_grace: float = 20.0
    #: `msgw serve --listen-base`: the embedded default's ports, moved (None: as written).
    listen_base: int | None = None
    cwd: Path = field(default_factory=Path.cwd)
    #: The SMTP listening sockets the master bound (`handoff.bind_listeners`): the master accepts
    #: and hands each connection to a worker. Empty: the workers bind their own ports.
    listening: list[Listening] = field(default_factory=list)
    _workers: list[_Worker] = field(default_factory=list)
    _stopping: bool = False
    _announced: bool = False
    _selector: selectors.BaseSelector | None = None
    dispatcher: Dispatcher | None = None

    def command(self, index: int, fd: int) -> list[str]:
        cmd = [sys.executable, "-m", "gateway.workers", "--index", str(index), "--count", str(self.count),
               "--master", str(os.getpid()), "--fd", str(fd)]
        if self.config_path:
            cmd += ["--config", self.config_path]
        if self.log_format:
            cmd += ["--log-format", self.log_format]
        if self.listen_base is not None:
            cmd += ["--listen-base", str(self.listen_base)]
        return cmd

    def _start(self, worker: _Worker) -> None:
        read, write = os.pipe()  # both ends close-on-exec; the child gets only `read`
        ready_r, ready_w = os.pipe()  # the child gets only `ready_w`
        os.set_blocking(ready_r, False)
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}  # only the master notifies
        env[READY_FD_ENV] = str(ready_w)
        fds = [read, ready_w]
        if self.dispatcher is not None:  # the worker's end of its hand-off channel
            channel = self.dispatcher.add_worker(worker.index)
            fds.append(channel)
            env[HANDOFF_FD_ENV] = str(channel)
            env[HANDOFF_LISTENERS_ENV] = listeners_env(self.listening)
        try:
            worker.proc = subprocess.Popen(self.command(worker.index, read), cwd=self.cwd, pass_fds=fds, env=env)
        except OSError as exc:
            os.close(write)
            os.close(ready_r)
            if self.dispatcher is not None:
                self.dispatcher.worker_gone(worker.index)
            event_log("worker-start-failed", logging.ERROR, worker=f"w{worker.index}", reason=exc.strerror)
            worker.proc = None
            worker.next_start = time.monotonic() + worker.backoff
            worker.backoff = min(worker.backoff * 2, RESTART_BACKOFF[1])
            return
        finally:
            for fd in fds:
                os.close(fd)
        worker.pipe_w = write
        worker.ready_r, worker.ready = ready_r, False
        if self._selector is not None:
            self._selector.register(ready_r, selectors.EVENT_READ, lambda _mask: self._read_ready(worker))
        worker.started = time.monotonic()
        event_log("worker-started", worker=f"w{worker.index}", pid=worker.proc.pid, restarts=worker.restarts)

    def _reap(self, worker: _Worker, code: int) -> None:
        if self.dispatcher is not None:
            self.dispatcher.worker_gone(worker.index)
        if worker.pipe_w is not None:
            os.close(worker.pipe_w)
            worker.pipe_w = None
        self._close_ready(worker)
        worker.ready = False
        worker.proc = None
        if self._stopping:
            return
        ran = time.monotonic() - worker.started
        if ran >= HEALTHY_AFTER:
            worker.backoff = RESTART_BACKOFF[0]
        worker.next_start = time.monotonic() + worker.backoff
        event_log("worker-died", logging.WARNING, worker=f"w{worker.index}", code=code,
                  ran=round(ran, 1), restart_in=worker.backoff)
        worker.backoff = min(worker.backoff * 2, RESTART_BACKOFF[1])
        worker.restarts += 1

    def _signal(self, signum: int, _frame: object) -> None:
        if not self._stopping:
            self._stopping = True
            sdnotify.stopping()
            event_log("stopping", signal=signal.Signals(signum).name)
            if self.dispatcher is not None:
                return  # the loop closes the listening sockets first, then forwards (`_forward`)
        self._forward()

    def _forward(self) -> None:
        for worker in self._workers:
            if worker.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(signal.SIGTERM)

    def run(self) -> int:
        """Supervise until SIGTERM/SIGINT, then stop the workers; 0 once they are all gone."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._signal)
        selector = self._selector = selectors.DefaultSelector()
        if self.listening:
            self.dispatcher = Dispatcher(self.listening, selector)
        self._workers = [_Worker(i) for i in range(self.count)]
        try:
            for worker in self._workers:
                self._start(worker)
            next_tick = time.monotonic()
            while not self._stopping:
                for key, mask in selector.select(max(0.0, next_tick - time.monotonic())):
                    key.data(mask)
                if time.monotonic() >= next_tick:
                    self._tick()
                    next_tick = time.monotonic() + 0.1
            if self.dispatcher is not None:  # stop accepting first, as one process closes its listeners
                self.dispatcher.close()
                self._forward()
            return self._stop_all()
        finally:
            if self.dispatcher is not None:
                self.dispatcher.close()
            selector.close()

    def _tick(self) -> None:
        now = time.monotonic()
        for worker in self._workers:
            if worker.proc is not None:
                self._read_ready(worker)
                code = worker.proc.poll()
                if code is not None:
                    self._reap(worker, code)
            elif not self._stopping and now >= worker.next_start:
                self._start(worker)
        if self.dispatcher is not None:
            self.dispatcher.tick()

    def _close_ready(self, worker: _Worker) -> None:
        if worker.ready_r is None:
            return
        if self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(worker.ready_r)
        os.close(worker.ready_r)
        worker.ready_r = None

    def _read_ready(self, worker: _Worker) -> None:
        """A byte from the worker: its listeners are up. Once all are, READY=1 (only the first time:
        a worker started again later changes the status line, not the readiness)."""
        if worker.ready or worker.ready_r is None:
            return
        try:
            data = os.read(worker.ready_r, 16)
        except BlockingIOError:
            return
        self._close_ready(worker)  # one byte, or EOF (the worker died first): the pipe said all it will
        if not data:
            return
        worker.ready = True
        if self.dispatcher is not None:
            self.dispatcher.worker_ready(worker.index)
        event_log("worker-ready", worker=f"w{worker.index}")
        up = sum(w.ready for w in self._workers)
        if up == len(self._workers) and not self._announced:
            self._announced = True
            sdnotify.ready(f"{up} workers serving")
        elif self._announced:
            sdnotify.notify(f"STATUS={up} of {len(self._workers)} workers serving")

    def _stop_all(self) -> int:
        deadline = time.monotonic() + self.shutdown_grace + 10.0
        while any(w.proc is not None for w in self._workers) and time.monotonic() < deadline:
            for worker in self._workers:
                if worker.proc is not None and worker.proc.poll() is not None:
                    self._reap(worker, worker.proc.returncode)
            time.sleep(0.05)
        for worker in self._workers:
            if worker.proc is not None:
                event_log("worker-killed", logging.WARNING, worker=f"w{worker.index}")
                worker.proc.kill()
                worker.proc.wait()
                self._reap(worker, -9)
        event_log("stopped")
        return 0


def event_log(name: str, level: int = logging.INFO, **fields: Any) -> None:
    from gateway.logs import event

    event(log, name, level, **fields)


# -- a worker ------------------------------------------------------------------------------------------

def die_with_master(master: int, fd: int | None) -> None:
    """Make this process die when the master dies, even by SIGKILL (see the module docstring)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != master:  # the master died before the prctl: nobody would signal us
        os._exit(70)


def watch_master(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    """EOF on the master's pipe: the master is gone; go at once and free the ports (what is
    accepted is durable, what is not was never answered 250: exactly a kill -9)."""
    os.set_blocking(fd, False)

    def readable() -> None:
        try:
            data = os.read(fd, 64)
        except BlockingIOError:
            return
        if not data:
            os._exit(70)

    loop.add_reader(fd, readable)


class _WorkerName(logging.Filter):
    """Every log line of a worker carries its name (``worker=w1``)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.worker = name

    def filter(self, record: logging.LogRecord) -> bool:
        fields = dict(getattr(record, "fields", None) or {})
        fields.setdefault("worker", self.worker)
        record.fields = fields
        return True


def name_log_lines(name: str) -> None:
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerName(name))


def worker_main(argv: list[str] | None = None) -> int:
    """``python -m gateway.workers``: one worker, started by the master (never by hand)."""
    ap = argparse.ArgumentParser(prog="msgw-worker")
    ap.add_argument("--index", type=int, required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--master", type=int, required=True)
    ap.add_argument("--fd", type=int, required=True)
    ap.add_argument("--config")
    ap.add_argument("--log-format")
    ap.add_argument("--listen-base", type=int)
    args = ap.parse_args(argv)
    die_with_master(args.master, args.fd)

    from gateway.app import Gateway
    from gateway.config import load_config, load_default_config
    from gateway.logs import setup_logging

    config = load_config(args.config) if args.config else load_default_config(listen_base=args.listen_base)
    setup_logging(args.log_format or config.log.format, config.log.level, config.log.file)
    name = f"w{args.index}"
    name_log_lines(name)
    gateway = Gateway(config, owner=name, primary=args.index == 0, workers=args.count,
                      handoff=HandoffReceiver.from_env())

    ready_fd = int(os.environ.pop(READY_FD_ENV, "-1"))

    def ready() -> None:
        """Tell the master this worker's listeners are up (then the pipe is of no more use)."""
        if ready_fd >= 0:
            with contextlib.suppress(OSError):
                os.write(ready_fd, b"R")
                os.close(ready_fd)

    async def main() -> None:
        watch_master(asyncio.get_running_loop(), args.fd)
        await gateway.serve_forever(on_ready=ready)

    run_on_loop(main, config.event_loop)
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
