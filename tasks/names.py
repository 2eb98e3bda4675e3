"""Task and queue names, from the frontend client's package: the wire contract
is spelled once, where frontends read it too (clients/python/vigil_client/names.py)."""

from vigil_client.names import (
    ADMIN_ADD_NOTE,
    ADMIN_CLEAR_HISTORY,
    ADMIN_ERASE_USER,
    ADMIN_PING,
    ADMIN_REPLAY_DEAD_LETTERS,
    ADMIN_SET_CAP,
    INGEST_DETECTION,
    INGEST_MESSAGE,
    INGEST_MESSAGES,
    PERIODIC_CORRELATE,
    PERIODIC_PURGE_EXPIRED,
    PERIODIC_RELAY_OUTBOX,
    PERIODIC_RESET_CAPS,
    QUEUE_ADMIN,
    QUEUE_INGEST,
    QUEUE_PERIODIC,
    QUEUES,
)

__all__ = [
    "ADMIN_ADD_NOTE",
    "ADMIN_CLEAR_HISTORY",
    "ADMIN_ERASE_USER",
    "ADMIN_PING",
    "ADMIN_REPLAY_DEAD_LETTERS",
    "ADMIN_SET_CAP",
    "INGEST_DETECTION",
    "INGEST_MESSAGE",
    "INGEST_MESSAGES",
    "PERIODIC_CORRELATE",
    "PERIODIC_PURGE_EXPIRED",
    "PERIODIC_RELAY_OUTBOX",
    "PERIODIC_RESET_CAPS",
    "QUEUES",
    "QUEUE_ADMIN",
    "QUEUE_INGEST",
    "QUEUE_PERIODIC",
]
