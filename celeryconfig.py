"""Celery configuration: the one place for serialization, routing, limits and beat.

Loaded with ``app.config_from_object("celeryconfig")``. Connection URLs come
from ``services.core.settings`` so workers, beat, the CLI and Flower agree.
"""

from __future__ import annotations

import os

from celery.schedules import crontab
from kombu import Exchange, Queue

from services.core.clients import broker_url as _broker_url
from services.core.clients import redis_url as _redis_url
from services.core.settings import get_settings

_settings = get_settings()

broker_url = _broker_url(_settings)
# Results are off by default (task_ignore_result); tasks that a caller waits on
# (the demo, tests, the CLI) store their small JSON outcome here.
result_backend = _redis_url(_settings)
result_expires = 3600

# JSON only, both ways: a pickle message is refused before it is decoded.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

timezone = "UTC"
enable_utc = True

# Queues, routed by task-name prefix.
task_queues = (
    Queue("ingest", Exchange("ingest"), routing_key="ingest"),
    Queue("admin", Exchange("admin"), routing_key="admin"),
    Queue("periodic", Exchange("periodic"), routing_key="periodic"),
)
task_default_queue = "ingest"
task_routes = {
    "vigil.ingest.*": {"queue": "ingest", "routing_key": "ingest"},
    "vigil.admin.*": {"queue": "admin", "routing_key": "admin"},
    "vigil.periodic.*": {"queue": "periodic", "routing_key": "periodic"},
}

# Delivery: every state-changing task is idempotent, so ack after the work and
# redeliver when a worker dies mid-task.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 4
# One visibility timeout for broker and result transport; it must exceed the
# longest task (time limits below) and the longest retry countdown (300 s).
# Fault tests lower it so redelivery after a killed worker happens in seconds.
_visibility_timeout = int(os.environ.get("VIGIL_VISIBILITY_TIMEOUT", "3600"))
broker_transport_options: dict = {"visibility_timeout": _visibility_timeout}
if "VIGIL_UNACKED_RESTORE_INTERVAL" in os.environ:
    # kombu sweeps for expired unacked messages every interval x throttle seconds
    # (100 s by default); a short visibility timeout needs a short sweep too.
    broker_transport_options |= {
        "unacked_restore_interval": int(os.environ["VIGIL_UNACKED_RESTORE_INTERVAL"]),
        "unacked_restore_throttle": 1,
    }
result_backend_transport_options = {"visibility_timeout": _visibility_timeout}
broker_connection_retry_on_startup = True

task_ignore_result = True
task_store_errors_even_if_ignored = False
task_time_limit = 300
task_soft_time_limit = 240

# Flower shows tasks only with events; argsrepr/kwargsrepr are redacted by the
# task request class, so events never carry message text.
worker_send_task_events = True
task_send_sent_event = False
worker_hijack_root_logger = True
worker_redirect_stdouts = False

# Beat: celery-redbeat keeps the schedule in Redis behind a lock, so starting a
# second beat by mistake cannot double-fire a job.
beat_scheduler = "redbeat.RedBeatScheduler"
redbeat_redis_url = _redis_url(_settings)
redbeat_key_prefix = f"{_settings.vigil_prefix}redbeat:"
redbeat_lock_timeout = 300
beat_max_loop_interval = 5

beat_schedule = {
    "correlate-multi-actor": {
        "task": "vigil.periodic.correlate_multi_actor",
        "schedule": _settings.correlator_interval_s,
        "options": {"expires": _settings.correlator_interval_s},
    },
    "reset-daily-caps": {
        "task": "vigil.periodic.reset_daily_caps",
        "schedule": crontab(minute=0, hour=0),
    },
    "relay-outbox": {
        "task": "vigil.periodic.relay_outbox",
        "schedule": 15.0,
        "options": {"expires": 15.0},
    },
    "purge-expired": {
        "task": "vigil.periodic.purge_expired",
        "schedule": 3600.0,
    },
}
