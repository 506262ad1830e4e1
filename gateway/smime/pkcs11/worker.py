"""One dedicated thread per PKCS#11 module, on which every call into the module runs.

python-pkcs11 initialises modules with `C_Initialize(NULL)`: no mutexes, so the module is not
thread-safe, and two threads using SoftHSM at once crash the process (double free, SIGSEGV).
Each module therefore gets a single-thread executor; asyncio code reaches it through
`loop.run_in_executor`, so a smart card that takes 500 ms per signature never blocks the
event loop, and synchronous callers (the CLI, start-up checks) use `run_sync`. State that
belongs to the module (the loaded library, the sessions of its tokens) is only touched from
that thread; `assert_on_thread` guards it.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pkcs11

from gateway.smime.pkcs11.errors import ModuleError

T = TypeVar("T")

#: Minimum seconds between two re-initialisations of a module looking for an absent token.
#: Each one makes the other tokens of the module log in again (with their known-good PIN),
#: so it is not done at every request while a card stays out of its reader.
DEFAULT_RESCAN_INTERVAL = 10.0

_workers: dict[str, ModuleWorker] = {}
_workers_lock = threading.Lock()


def module_key(module_path: str | os.PathLike[str]) -> str:
    """Canonical name of a module, so two spellings of one path share one worker."""
    return os.path.realpath(os.fspath(module_path))


def get_worker(module_path: str | os.PathLike[str]) -> ModuleWorker:
    """The process-wide worker of a module (created on first use, never two per module)."""
    key = module_key(module_path)
    with _workers_lock:
        worker = _workers.get(key)
        if worker is None:
            worker = _workers[key] = ModuleWorker(key)
        return worker


class ModuleWorker:
    """Owns one PKCS#11 module and the only thread allowed to call it."""

    def __init__(self, module_path: str, rescan_interval: float = DEFAULT_RESCAN_INTERVAL) -> None:
        self.module_path = module_path
        self.rescan_interval = rescan_interval
        name = os.path.basename(module_path).split(".")[0] or "module"
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"pkcs11-{name}")
        self._thread_id: int | None = None
        self._lib: Any = None
        #: Bumped at every (re)initialisation: sessions opened under an older one are dead.
        self.generation = 0
        self._last_reinit = float("-inf")
        #: Token states by selector (see session.TokenState); worker thread only.
        self.tokens: dict[Any, Any] = {}
        #: Number of C_Login calls made through this worker (all tokens), for audits and tests.
        self.login_calls = 0

    # -- reaching the thread -------------------------------------------------------------
    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the module thread without blocking the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._enter, fn, args)

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the module thread and wait (for synchronous callers)."""
        if threading.get_ident() == self._thread_id:
            return fn(*args)
        return self._executor.submit(self._enter, fn, args).result()

    def _enter(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        if self._thread_id is None:
            self._thread_id = threading.get_ident()
        return fn(*args)

    def adopt_current_thread(self) -> None:
        """Make the calling thread the module thread (a worker process's only task thread,
        which already runs every call in turn); must happen before any other call."""
        if self._thread_id is not None and self._thread_id != threading.get_ident():
            raise RuntimeError("the module already has its thread")
        self._thread_id = threading.get_ident()

    def assert_on_thread(self) -> None:
        """Fail loudly if module state is touched from the wrong thread (a crash otherwise)."""
        if threading.get_ident() != self._thread_id:
            raise RuntimeError("PKCS#11 call outside the module's dedicated thread")

    # -- the library (worker thread only) ------------------------------------------------
    @property
    def loaded(self) -> bool:
        """Whether the module was loaded (and initialised) in this process already."""
        return self._lib is not None

    @property
    def lib(self) -> Any:
        self.assert_on_thread()
        if self._lib is None:
            try:
                self._lib = pkcs11.lib(self.module_path)
            except (OSError, RuntimeError) as exc:
                raise ModuleError(f"cannot load PKCS#11 module {self.module_path}: "
                                  f"{type(exc).__name__}") from None
            self.generation += 1
        return self._lib

    def reinitialize(self, force: bool = False) -> bool:
        """C_Finalize + C_Initialize, so the module rescans its slots (SoftHSM only sees a
        re-created token that way). Every session of every token of this module dies; token
        states notice the new generation and log in again with their known-good PIN.
        Rate-limited unless `force`; returns whether it happened."""
        self.assert_on_thread()
        now = time.monotonic()
        if not force and now - self._last_reinit < self.rescan_interval:
            return False
        self._last_reinit = now
        lib = self.lib
        try:
            lib.reinitialize()
        except pkcs11.PKCS11Error:
            # Finalize failed half-way: try a plain initialise, the library tracks its state.
            try:
                lib.initialize()
            except pkcs11.PKCS11Error as exc:
                raise ModuleError(f"cannot re-initialise PKCS#11 module {self.module_path}: "
                                  f"{type(exc).__name__}") from None
        self.generation += 1
        return True

    def shutdown(self) -> None:
        """Stop the thread after pending calls (tests and clean exits)."""
        self._executor.shutdown(wait=True)
