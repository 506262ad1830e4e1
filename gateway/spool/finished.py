"""Messages a store removed while recording their last outcomes (`record_outcomes(finish=…)`),
for the delivery manager to learn "finished" without reading the message back (issue 15: one
executor trip per delivered message instead of two). Pure memory, shared by both backends.

Why bounded: a finish whose caller never asks (outcomes written late, after a full disk) must
not grow it for ever; a forgotten entry only costs the caller the read it used to make."""

from __future__ import annotations

import collections
import threading

#: How many finished ids are kept until taken (oldest dropped first).
FINISHED_KEPT = 4096


class FinishedMemo:
    """Thread-safe, bounded set of finished message ids, each taken once."""

    def __init__(self, limit: int = FINISHED_KEPT) -> None:
        self._ids: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def add(self, msg_id: str) -> None:
        with self._lock:
            self._ids[msg_id] = None
            while len(self._ids) > self._limit:
                self._ids.popitem(last=False)

    def take(self, msg_id: str) -> bool:
        """True once if `msg_id` was finished by a `record_outcomes` of this store."""
        with self._lock:
            return self._ids.pop(msg_id, 0) is None

    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)
