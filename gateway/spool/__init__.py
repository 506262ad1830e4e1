"""Durable queue: message bytes and per-recipient state, crash recovery."""

from gateway.spool.store import (
    PENDING,
    Outcome,
    QueuedMessage,
    QueuedRecipient,
    RecipientState,
    Spool,
    new_message_id,
)

__all__ = ["PENDING", "Outcome", "QueuedMessage", "QueuedRecipient", "RecipientState", "Spool", "new_message_id"]
