"""Task and queue names: the wire contract, spelled once.

Frontends in any language send these strings; they never change. Everything in
vigil that names a task (definitions, routes, the beat schedule, the Python
client, the demo, the CLI, the benchmarks) imports it from here.
"""

from __future__ import annotations

INGEST_MESSAGE = "vigil.ingest.message"
INGEST_MESSAGES = "vigil.ingest.messages"
INGEST_DETECTION = "vigil.ingest.detection"

ADMIN_PING = "vigil.admin.ping"
ADMIN_SET_CAP = "vigil.admin.set_cap"
ADMIN_ADD_NOTE = "vigil.admin.add_note"
ADMIN_CLEAR_HISTORY = "vigil.admin.clear_history"
ADMIN_ERASE_USER = "vigil.admin.erase_user"
ADMIN_REPLAY_DEAD_LETTERS = "vigil.admin.replay_dead_letters"

PERIODIC_CORRELATE = "vigil.periodic.correlate_multi_actor"
PERIODIC_RESET_CAPS = "vigil.periodic.reset_daily_caps"
PERIODIC_RELAY_OUTBOX = "vigil.periodic.relay_outbox"
PERIODIC_PURGE_EXPIRED = "vigil.periodic.purge_expired"

# Routing: a task's queue is the second part of its name.
QUEUE_INGEST = "ingest"
QUEUE_ADMIN = "admin"
QUEUE_PERIODIC = "periodic"
QUEUES = (QUEUE_INGEST, QUEUE_ADMIN, QUEUE_PERIODIC)
