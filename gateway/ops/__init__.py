"""Operations (issue 16): what an operator sees — metrics, health, the status of keys and trust.

Nothing here decides about a message; it reads the state others keep and reports it, without
health content (ids, sizes, addresses, decisions, reasons only)."""
