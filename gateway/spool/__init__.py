"""Durable queue: message bytes and per-recipient state, crash recovery."""

from gateway.spool.base import QueueStore, StoreUnavailable
from gateway.spool.store import (
    PENDING,
    DamagedCopy,
    NewCopy,
    Outcome,
    PreparedCopy,
    QueuedMessage,
    QueuedRecipient,
    RecipientState,
    Spool,
    new_message_id,
)

__all__ = ["PENDING", "DamagedCopy", "NewCopy", "Outcome", "PreparedCopy", "QueuedMessage", "QueuedRecipient",
           "QueueStore", "RecipientState", "StoreUnavailable",
           "Spool", "new_message_id"]
