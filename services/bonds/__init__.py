"""Per-user bond state, events and message history in Redis."""
