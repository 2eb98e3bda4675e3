"""Celery configuration: the one place for serialization, routing, limits and beat.

Loaded with ``app.config_from_object("celeryconfig")``. Connection URLs come
from ``services.core.settings`` so workers, beat, the CLI and Flower agree.
"""

from __future__ import annotations

from celery.schedules import crontab

from services.core import clients as _clients
from services.core.clients import broker_url as _broker_url
from services.core.settings import get_settings, is_sentinel_url
from tasks import names
from vigil_client import is_amqp, publish_transport_options
from vigil_client import task_queues as _task_queues

_settings = get_settings()

broker_url = _broker_url(_settings)
# On a Redis broker, vigil's transport: one reused client per channel and late
# acks that survive a broker reconnect (worker/broker.py). amqp keeps
# kombu's default.
_broker_sentinels: list[str] = []
if broker_url.startswith(("redis://", "rediss://", "redis+socket://")):
    broker_transport = "worker.broker:Transport"
elif is_sentinel_url(broker_url):
    # Behind Sentinel, the same transport on the master the sentinels name. kombu
    # gets one sentinel:// URL (the first: its password and db are the master's)
    # and the transport every sentinel: given several URLs, kombu would move to
    # the next after a connection error by re-reading it, and so drop this
    # transport for its own (worker/broker.py).
    broker_transport = "worker.broker:SentinelTransport"
    _broker_sentinels = [f"{host}:{port}" for host, port in _settings.broker_sentinel_addresses]
    broker_url = broker_url.split(";", 1)[0]
    # A failover can answer with errors that are not connection errors: a
    # blocked command on a master demoted under it gets UNBLOCKED, a script
    # READONLY (Redis 6.2). Reconnect on those too rather than stop (celery#7946).
    broker_channel_error_retry = True
# Results are off by default (task_ignore_result); tasks that a caller waits on
# (the demo, tests, the CLI) store their small JSON outcome here: the state
# Redis, or behind Sentinel its master (Celery's sentinel:// backend, told the
# master's name and the sentinels' password by the transport options below);
# with state on a cluster, the broker's Redis or rpc:// (VIGIL_RESULT_BACKEND
# chooses otherwise).
result_backend = _clients.result_backend(_settings)
result_expires = 3600

# JSON only, both ways: a pickle message is refused before it is decoded.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

timezone = "UTC"
enable_utc = True

# Queues, routed by task-name prefix. On RabbitMQ they are declared as plain
# Celery clients declare them, and a worker adopts what the vhost already holds
# (worker/queues.py): for a quorum queue Celery then turns off
# global QoS (quorum queues refuse it), and retry countdowns wait in RabbitMQ's
# delay queues instead of in the worker.
task_queues = _task_queues()
worker_detect_quorum_queues = True
task_default_queue = names.QUEUE_INGEST
task_routes = {f"vigil.{queue}.*": {"queue": queue, "routing_key": queue} for queue in names.QUEUES}

# Delivery: every state-changing task is idempotent, so ack after the work and
# redeliver when a worker dies mid-task. Messages are persistent (written to
# disk by RabbitMQ; Redis keeps them as its persistence settings say).
task_acks_late = True
task_reject_on_worker_lost = True
task_default_delivery_mode = "persistent"
# Prefetch: buffered ingest tasks (worker/batching.py) need a full buffer
# reserved while every pool process runs one, so by default 2 x flush_every
# messages per process (never 0, which means unlimited).
worker_prefetch_multiplier = (
    _settings.ingest_prefetch_multiplier or 2 * _settings.ingest_flush_every
)
if is_amqp(broker_url):
    # Publisher confirms: a send (a retry, a replay, beat) returns once RabbitMQ has it.
    broker_transport_options: dict = publish_transport_options(broker_url)
else:
    # Redis: one visibility timeout for broker and result transport; settings
    # explain the bound it sets on time limits and retry countdowns, and check it.
    broker_transport_options = {
        "visibility_timeout": _settings.visibility_timeout,
        # kombu sweeps for expired unacked messages every interval x throttle seconds.
        "unacked_restore_interval": _settings.unacked_restore_interval,
        "unacked_restore_throttle": _settings.unacked_restore_throttle,
        # A worker killed during a sweep leaves the sweep lock held this long.
        "unacked_mutex_expire": _settings.unacked_mutex_expire,
        # A dead worker's tasks come back once it is silent this long (broker.py).
        "vigil_heartbeat_interval": _settings.broker_heartbeat_interval,
        "vigil_owner_timeout": _settings.broker_owner_timeout,
        # Behind Sentinel: the master's name, the sentinels and their password.
        **_clients.broker_transport_options(_settings),
    }
    if _broker_sentinels:
        broker_transport_options["vigil_sentinels"] = _broker_sentinels
result_backend_transport_options = _clients.result_backend_transport_options(_settings)
broker_connection_retry_on_startup = True

task_ignore_result = True
task_store_errors_even_if_ignored = False
# Every task's limits unless it sets lower ones; each fits under the visibility
# timeout with the longest retry countdown (checked by the settings).
task_time_limit = _settings.task_time_limit
task_soft_time_limit = _settings.task_soft_time_limit

# Flower shows tasks only with events; argsrepr/kwargsrepr are redacted by the
# task request class, so events never carry message text.
worker_send_task_events = True
task_send_sent_event = False
worker_hijack_root_logger = True
worker_redirect_stdouts = False

# Beat: celery-redbeat keeps the schedule in Redis behind a lock, so starting a
# second beat by mistake cannot double-fire a job.
beat_scheduler = "redbeat.RedBeatScheduler"
# Behind Sentinel, redbeat finds the master through the same sentinels.
redbeat_redis_url, _redbeat_options = _clients.redbeat_redis(_settings)
if _redbeat_options is not None:
    redbeat_redis_options = _redbeat_options
# On a cluster every redbeat key carries one hash tag, so its scripts touch one slot.
redbeat_key_prefix = (
    f"{_settings.vigil_prefix}{'{redbeat}' if _settings.redis_cluster_nodes else 'redbeat'}:"
)
redbeat_lock_timeout = 300
beat_max_loop_interval = 5

beat_schedule = {
    "correlate-multi-actor": {
        "task": names.PERIODIC_CORRELATE,
        "schedule": _settings.correlator_interval_s,
        "options": {"expires": _settings.correlator_interval_s},
    },
    "reset-daily-caps": {
        "task": names.PERIODIC_RESET_CAPS,
        "schedule": crontab(minute=0, hour=0),
    },
    "relay-outbox": {
        "task": names.PERIODIC_RELAY_OUTBOX,
        "schedule": 15.0,
        "options": {"expires": 15.0},
    },
    "purge-expired": {
        "task": names.PERIODIC_PURGE_EXPIRED,
        "schedule": 3600.0,
    },
}
