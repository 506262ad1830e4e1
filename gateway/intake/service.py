"""The intake service: MLLP listener and drop folders, started and stopped as one.

Why one object: ``gateway/app.py`` should need two lines (construct, ``await start()``) and one
on shutdown. The service owns the stores it opens (directory connection, duplicate store) and
closes them; the spool belongs to the app.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.config.storage import StorageConfig
from gateway.intake.dedup import DuplicateStore
from gateway.intake.door import IntakeDoor
from gateway.intake.dropfolder import DropFolderWatcher
from gateway.intake.mllp import MllpListener
from gateway.intake.settings import IntakeConfig
from gateway.logs import event
from gateway.storage import DEDUP_FILE as DEDUP_FILE
from gateway.storage import dedup_store, directory_store

log = logging.getLogger(__name__)

class IntakeService:
    """``IntakeService(config.intake, spool, directory_path, state_dir, on_accept, lifetime)``."""

    def __init__(self, intake_config: IntakeConfig, spool: Any, directory_path: str | Path, state_dir: str | Path,
                 on_accept: Callable[[str], None] | None, lifetime: float, *, directory: Any = None,
                 gestionnaire: Any = None, client_checks: Any = None,
                 storage: StorageConfig | None = None) -> None:
        self.config = intake_config
        self.spool = spool
        self.directory_path = Path(directory_path)
        self.state_dir = Path(state_dir)
        self.on_accept = on_accept
        self.lifetime = lifetime
        self.directory = directory
        #: The CI-SIS GESTIONNAIRE every door hands the profile's messages to (None: not served).
        self.gestionnaire = gestionnaire
        #: The gateway's client-certificate checks, shared with the SMTP listeners (issue 17).
        self.client_checks = client_checks
        self._own_directory = directory is None
        #: `[storage]` (None: SQLite beside the spool): where the directory and the duplicate store live.
        self.storage = storage or StorageConfig()
        self.dedup: DuplicateStore | None = None
        self.mllp: MllpListener | None = None
        self.watchers: list[DropFolderWatcher] = []
        #: Every door started, in start order (stopped in the same order).
        self.doors: list[IntakeDoor] = []

    async def start(self) -> None:
        if not self.config.enabled:
            return
        loop = asyncio.get_running_loop()
        if self.directory is None:
            self.directory = await loop.run_in_executor(None, directory_store, self.storage, self.directory_path)
        self.dedup = await loop.run_in_executor(None, lambda: dedup_store(
            self.storage, self.state_dir, window=self.config.routing.dedup_window))
        try:
            for door in self._build_doors():
                door.gestionnaire = self.gestionnaire
                self.doors.append(door)
                await door.start()
        except BaseException:
            await self.stop()
            raise
        event(log, "intake-started", mllp=self.mllp.bound if self.mllp else None, drops=len(self.watchers))

    def _build_doors(self) -> list[IntakeDoor]:
        """The configured doors, in start order: a new kind of door is built here (one line)."""
        common = (self.spool, self.directory, self.dedup, self.on_accept, self.lifetime)
        doors: list[IntakeDoor] = []
        if self.config.mllp is not None:
            self.mllp = MllpListener(self.config.mllp, *common, routing=self.config.routing,
                                     client_checks=self.client_checks)
            doors.append(self.mllp)
        self.watchers = [DropFolderWatcher(drop, *common, routing=self.config.routing) for drop in self.config.drops]
        doors.extend(self.watchers)
        return doors

    async def stop(self) -> None:
        for door in self.doors:
            await door.stop()
        self.doors = []
        self.mllp = None
        self.watchers = []
        if self.dedup is not None:
            self.dedup.close()
            self.dedup = None
        if self._own_directory and self.directory is not None:
            self.directory.close()
            self.directory = None


__all__ = ["DEDUP_FILE", "IntakeService"]
