"""Process settings: one pydantic-settings class, env prefix ``VIGIL_``.

Every secret may come from the environment or from a ``*_FILE`` path
(Docker-secrets style). Invalid settings stop start-up with an error that
names the setting, never a half-configured worker.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.payloads import DEFAULT_MAX_TEXT_CHARS, MAX_BATCH
from models.types import SEVERITY_ORDER, Severity

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/vigil"

_URL_FIELDS = ("broker_url", "redis_url", "database_url")


class Settings(BaseSettings):
    """Everything a worker, beat, the CLI and the tests need to agree on."""

    model_config = SettingsConfigDict(env_prefix="VIGIL_", extra="ignore", frozen=True)

    # Connections. Unset means "the default, or embedded if nothing answers there".
    broker_url: str | None = None
    redis_url: str | None = None
    database_url: str | None = None
    redis_password: str | None = Field(default=None, repr=False)
    # Workers refuse a state Redis whose maxmemory-policy evicts keys: it loses
    # bonds and dedupe state silently. This accepts it anyway.
    redis_allow_eviction: bool = False
    database_password: str | None = Field(default=None, repr=False)
    # State behind Redis Sentinel: comma-separated host:port of the sentinels and
    # the name they know the master by. The master's password and db number come
    # from VIGIL_REDIS_PASSWORD / VIGIL_REDIS_URL as for a single Redis (whose
    # host and port are then unused); the sentinels' own password is separate.
    redis_sentinels: str | None = None
    redis_sentinel_master: str | None = None
    redis_sentinel_password: str | None = Field(default=None, repr=False)
    # A Redis broker behind Sentinel: VIGIL_BROKER_URL=sentinel://host:port;sentinel://...
    # (a password or db number in the first URL is the master's). The name the
    # sentinels know the broker's master by, and their own password; for a broker
    # on the state's own sentinels (the same host:port list) these default to
    # VIGIL_REDIS_SENTINEL_MASTER and VIGIL_REDIS_SENTINEL_PASSWORD.
    broker_sentinel_master: str | None = None
    broker_sentinel_password: str | None = Field(default=None, repr=False)
    # State on a Redis Cluster: comma-separated host:port of some of its nodes
    # (redis-py's RedisCluster finds the rest). VIGIL_REDIS_PASSWORD applies to
    # every node. Users are spread over a fixed number of logical shards, each
    # one hash tag: a user's keys and their shard's stream and counters share a
    # slot, so each message's scripts stay atomic. Changing the number of shards
    # moves users to other keys: set it once (``vigil migrate-state`` copies a
    # single Redis into this layout).
    redis_cluster_nodes: str | None = None
    redis_cluster_shards: int = Field(default=12, ge=1, le=256)
    # Where Celery keeps the results a sender asks for (off unless asked).
    # Unset: the state Redis, its master behind Sentinel; on a Cluster, which
    # Celery's backends cannot use, the broker when it is a Redis, else rpc://.
    result_backend: str | None = None
    # WAIT for this many replicas to hold a buffer's writes before its tasks are
    # acked (0: do not wait), up to redis_wait_timeout_ms; fewer acknowledging
    # replicas fail the buffer, which is retried (the scripts are idempotent).
    redis_wait_replicas: int = Field(default=0, ge=0, le=100)
    redis_wait_timeout_ms: int = Field(default=1000, ge=1, le=60_000)

    # Key layout. The defaults are the seed systems' own, so their data reads as-is.
    bond_prefix: str = "abl:"
    history_prefix: str = "ash:history:"
    vigil_prefix: str = "vigil:"

    # Streams: topic groups, each with its own self-contained contract.
    stream_bond: str = "vigil:stream:bond"
    stream_attribution: str = "vigil:stream:attribution"
    stream_user: str = "vigil:stream:user"
    stream_maxlen: int = Field(default=100_000, ge=100)
    stream_max_deliveries: int = Field(default=5, ge=1)

    # Message history (seed 004).
    history_min_severity: Severity = "low"
    history_max_messages: int = Field(default=100, ge=1, le=10_000)
    history_ttl_days: int = Field(default=14, ge=1)
    history_text_chars: int = Field(default=500, ge=1)
    history_context_limit: int = Field(default=20, ge=0, le=100)

    # Bond ledger (seed 000).
    events_max: int = Field(default=500, ge=1)
    notes_max: int = Field(default=20, ge=1)
    default_daily_cap: int = Field(default=0, ge=0)

    # Payload bounds.
    # The task schemas (schemas/tasks/) state these defaults.
    max_text_chars: int = Field(default=DEFAULT_MAX_TEXT_CHARS, ge=1)
    max_batch: int = Field(default=MAX_BATCH, ge=1, le=5000)
    dedupe_ttl_days: int = Field(default=7, ge=1)

    # Detector.
    detector: Literal["builtin", "http"] = "builtin"
    detector_url: str | None = None
    detector_timeout_s: float = Field(default=2.0, gt=0, le=30)

    # Attribution thresholds (DECNET reference engine).
    attribution_window: int = Field(default=5, ge=2)
    attribution_min_observations: int = Field(default=3, ge=1)
    attribution_majority: int = Field(default=4, ge=1)
    attribution_ewma_alpha: float = Field(default=0.3, gt=0, le=1)
    attribution_cv_conflicted: float = Field(default=1.0, gt=0)
    attribution_drift_shift: float = Field(default=0.30, gt=0)
    attribution_hash_window_s: int = Field(default=86_400, ge=60)
    correlator_interval_s: float = Field(default=60.0, gt=0)

    # Dedupe state: one hash per (platform, user), not one key per message. An id
    # is recognised as seen for dedupe_window_s and while it is among the user's
    # last dedupe_max_per_user ids; keep max * 1.25 within Redis's
    # hash-max-listpack-entries (hash-max-ziplist-entries on Redis 6.2; 128 by
    # default) so each hash stays compact; `vigil health` warns otherwise.
    dedupe_window_s: int = Field(default=7 * 86_400, ge=60)
    dedupe_max_per_user: int = Field(default=100, ge=4, le=100_000)
    # Whatever a user's rate, every id seen in the last dedupe_horizon_s is
    # kept (it covers a broker's redelivery and the retries), up to
    # dedupe_flood_max_per_user ids, a bound only a flood reaches.
    dedupe_horizon_s: int = Field(default=900, ge=60)
    dedupe_flood_max_per_user: int = Field(default=5_000, ge=4, le=1_000_000)

    # Dead letters.
    dead_letter_retention_days: int = Field(default=30, ge=1)

    # Where "the usual local servers" are; a test (or an unusual machine) can say
    # "nothing runs at the defaults" without stopping anything.
    default_redis_url: str = "redis://127.0.0.1:6379"
    default_database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    # Embedded services (used only when nothing is configured and nothing answers).
    data_dir: Path = Path(".vigil")
    embedded: Literal["auto", "never", "always"] = "auto"
    embedded_redis_port: int = 6391
    embedded_postgres_port: int = 5441

    # Delivery. With a Redis broker a message a worker took but did not ack is
    # redelivered once it has been unacked for visibility_timeout seconds. The
    # clock starts at delivery: time in the worker's prefetch buffer, and a
    # retry's countdown (an ETA task is held unacked until it runs), count too.
    # So a task's time limit plus the longest retry countdown must fit under it,
    # or a task still running (or waiting to retry) is delivered a second time.
    # kombu sweeps for expired messages every unacked_restore_interval x
    # unacked_restore_throttle seconds under a lock that a killed worker may
    # leave held for unacked_mutex_expire seconds. RabbitMQ ignores all of this:
    # the broker itself redelivers when the consumer's connection drops.
    visibility_timeout: int = Field(default=100, ge=1)
    unacked_restore_interval: int = Field(default=5, ge=1)
    unacked_restore_throttle: int = Field(default=1, ge=1)
    unacked_mutex_expire: int = Field(default=15, ge=1)
    # Faster than the visibility timeout, for a worker that died: each worker
    # beats every broker_heartbeat_interval seconds, and every sweep puts back
    # what workers silent for broker_owner_timeout seconds held. A pause that
    # long (a stalled VM) gets a live worker's tasks delivered again, which the
    # tasks' idempotence absorbs; a busy worker keeps beating from its own thread.
    broker_heartbeat_interval: float = Field(default=2.0, gt=0)
    broker_owner_timeout: float = Field(default=10.0, gt=0)
    # Every task's hard limit (the pool child is killed) and soft limit
    # (SoftTimeLimitExceeded is raised in the task), unless a task sets lower ones.
    task_time_limit: int = Field(default=60, ge=1)
    task_soft_time_limit: int = Field(default=50, ge=1)
    # Retries of transient errors: exponential backoff capped at this countdown.
    # Countdowns are jittered (uniform between 0 and the cap, so retries after an
    # outage do not arrive together), which halves the expected wait: 40 retries
    # ride out about ten minutes of a store being away.
    retry_backoff_max: int = Field(default=30, ge=1)
    retry_max_retries: int = Field(default=40, ge=0)

    # Buffered single-message ingest (worker/batching.py). A worker holds
    # vigil.ingest.message / vigil.ingest.detection requests and runs the
    # pipeline once per buffer: when it holds ingest_flush_every requests, and
    # every ingest_flush_interval_s for what it holds. Under load buffers fill
    # by count (the transport takes up to 100 tasks at once), and while every
    # pool process runs a buffer the interval flush waits for one to return;
    # the interval is the most a lone message waits. benchmarks/flush_interval.py: throughput
    # is the same within noise from 5 to 50 ms, p99 at half load is not
    # (10 ms: 38 ms; 50 ms: 238 ms; 5 ms: no better than 10).
    ingest_flush_every: int = Field(default=100, ge=1, le=500)
    ingest_flush_interval_s: float = Field(default=0.01, gt=0, le=5)
    # Messages a worker reserves per pool process (Celery's prefetch
    # multiplier). Unset: 2 x ingest_flush_every, so a full buffer waits while
    # every process works on one. Reserved messages are unacked, so their wait
    # counts toward the visibility timeout.
    ingest_prefetch_multiplier: int | None = Field(default=None, ge=1, le=10_000)
    # Flower's view of buffered ingest: one task-succeeded event per request
    # (each message is its own task, found by its id) or one per buffer (a
    # synthetic task naming how many requests it ran). benchmarks/ measures both.
    ingest_task_events: Literal["per_request", "per_buffer"] = "per_request"

    # Metrics exporter (`vigil metrics serve`, started by `vigil up`). Loopback by
    # default; bound anywhere else it needs metrics_token (or
    # VIGIL_METRICS_TOKEN_FILE), sent as a bearer token or a basic-auth password.
    metrics_address: str = "127.0.0.1"
    metrics_port: int = Field(default=9808, ge=0, le=65_535)
    metrics_token: str | None = Field(default=None, repr=False, min_length=16)

    # Flower.
    flower_address: str = "127.0.0.1"
    flower_port: int = 5555
    flower_basic_auth: str | None = Field(default=None, repr=False)
    # Flower without a login, allowed only on loopback (worker/flower_guard.py).
    flower_local_only: bool = False

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: dict) -> dict:
        """``VIGIL_X_FILE=/run/secrets/x`` fills ``x`` when ``VIGIL_X`` is unset."""
        if not isinstance(data, dict):
            return data
        for key, value in list(os.environ.items()):
            if not (key.startswith("VIGIL_") and key.endswith("_FILE")):
                continue
            name = key[len("VIGIL_") : -len("_FILE")].lower()
            if name in cls.model_fields and data.get(name) is None:
                path = Path(value)
                if not path.is_file():
                    raise ValueError(f"{key}: secret file {value!r} does not exist")
                data[name] = path.read_text().strip()
        return data

    @field_validator(*_URL_FIELDS)
    @classmethod
    def _check_url(cls, value: str | None, info) -> str | None:
        if value is None or value == "":
            return None
        schemes = {
            "broker_url": {
                "redis",
                "rediss",
                "redis+socket",
                "sentinel",
                "amqp",
                "amqps",
                "pyamqp",
            },
            "redis_url": {"redis", "rediss", "unix"},
            "database_url": {"postgresql", "postgresql+psycopg", "postgres"},
        }[info.field_name]
        scheme = urlsplit(value).scheme
        if scheme not in schemes:
            raise ValueError(
                f"VIGIL_{info.field_name.upper()}: scheme {scheme!r} not one of {sorted(schemes)}"
            )
        if info.field_name == "database_url" and scheme != "postgresql+psycopg":
            # One driver everywhere: psycopg 3.
            value = "postgresql+psycopg" + value[len(scheme) :]
        return value

    @model_validator(mode="after")
    def _check_delivery(self) -> Settings:
        """Refuse limits under which a running or retrying task is delivered twice."""
        if self.task_soft_time_limit >= self.task_time_limit:
            raise ValueError(
                f"VIGIL_TASK_SOFT_TIME_LIMIT ({self.task_soft_time_limit} s) must be below "
                f"VIGIL_TASK_TIME_LIMIT ({self.task_time_limit} s)"
            )
        for name, seconds in (
            ("task_time_limit", self.task_time_limit),
            ("retry_backoff_max", self.retry_backoff_max),
            ("unacked_mutex_expire", self.unacked_mutex_expire),
        ):
            if seconds >= self.visibility_timeout:
                raise ValueError(
                    f"VIGIL_{name.upper()} ({seconds} s) must be below VIGIL_VISIBILITY_TIMEOUT "
                    f"({self.visibility_timeout} s): lower it or raise the visibility timeout"
                )
        if self.broker_owner_timeout < 3 * self.broker_heartbeat_interval:
            raise ValueError(
                f"VIGIL_BROKER_OWNER_TIMEOUT ({self.broker_owner_timeout} s) must be at least "
                f"three VIGIL_BROKER_HEARTBEAT_INTERVAL ({self.broker_heartbeat_interval} s): "
                "one late heartbeat must not get a live worker's tasks delivered again"
            )
        if self.dedupe_flood_max_per_user < self.dedupe_max_per_user:
            raise ValueError(
                f"VIGIL_DEDUPE_FLOOD_MAX_PER_USER ({self.dedupe_flood_max_per_user}) must be at "
                f"least VIGIL_DEDUPE_MAX_PER_USER ({self.dedupe_max_per_user})"
            )
        if self.dedupe_horizon_s > self.dedupe_window_s:
            raise ValueError(
                f"VIGIL_DEDUPE_HORIZON_S ({self.dedupe_horizon_s} s) must be within "
                f"VIGIL_DEDUPE_WINDOW_S ({self.dedupe_window_s} s)"
            )
        if self.task_time_limit + self.retry_backoff_max > self.visibility_timeout:
            raise ValueError(
                f"VIGIL_TASK_TIME_LIMIT ({self.task_time_limit} s) + VIGIL_RETRY_BACKOFF_MAX "
                f"({self.retry_backoff_max} s) exceed VIGIL_VISIBILITY_TIMEOUT "
                f"({self.visibility_timeout} s): a retried task is held unacked through its "
                "countdown and then runs, so it would be delivered twice; lower either or "
                "raise the visibility timeout"
            )
        return self

    @field_validator("redis_sentinels")
    @classmethod
    def _check_sentinels(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parse_addresses(value, "VIGIL_REDIS_SENTINELS")
        return value

    @model_validator(mode="after")
    def _check_sentinel_pair(self) -> Settings:
        """Sentinels without a master name (or the reverse) is half a configuration."""
        master = (self.redis_sentinel_master or "").strip()
        if bool(self.redis_sentinels) != bool(master):
            missing = (
                "VIGIL_REDIS_SENTINEL_MASTER" if self.redis_sentinels else "VIGIL_REDIS_SENTINELS"
            )
            raise ValueError(
                "VIGIL_REDIS_SENTINELS and VIGIL_REDIS_SENTINEL_MASTER go together: "
                f"{missing} is not set"
            )
        if self.redis_sentinels and not self.broker_url:
            raise ValueError(
                "VIGIL_BROKER_URL must be set with VIGIL_REDIS_SENTINELS: RabbitMQ, a Redis, "
                "or sentinel://host:port;sentinel://host:port for a Redis broker behind Sentinel"
            )
        if self.redis_sentinels and self.redis_url and urlsplit(self.redis_url).scheme == "unix":
            raise ValueError(
                "VIGIL_REDIS_URL is a unix socket, which Sentinel cannot name as a master; "
                "with VIGIL_REDIS_SENTINELS it may only carry the db number and password"
            )
        return self

    @model_validator(mode="after")
    def _check_broker_sentinel(self) -> Settings:
        """A sentinel:// broker needs its master's name; a master name without a
        sentinel:// broker is a mistake, not a default."""
        if not self.broker_url or not is_sentinel_url(self.broker_url):
            if self.broker_sentinel_master:
                raise ValueError(
                    "VIGIL_BROKER_SENTINEL_MASTER is set but VIGIL_BROKER_URL is not "
                    "sentinel://: set VIGIL_BROKER_URL=sentinel://host:port;sentinel://host:port"
                )
            return self
        sentinel_url_addresses(self.broker_url, "VIGIL_BROKER_URL")
        if not self.broker_master_name:
            raise ValueError(
                "VIGIL_BROKER_SENTINEL_MASTER must be set with a sentinel:// VIGIL_BROKER_URL "
                "(the name in the sentinels' `sentinel monitor`)"
            )
        return self

    @field_validator("redis_cluster_nodes")
    @classmethod
    def _check_cluster_nodes(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parse_addresses(value, "VIGIL_REDIS_CLUSTER_NODES")
        return value

    @model_validator(mode="after")
    def _check_cluster(self) -> Settings:
        """One state topology at a time, and a broker of its own."""
        if not self.redis_cluster_nodes:
            return self
        if self.redis_sentinels:
            raise ValueError(
                "VIGIL_REDIS_CLUSTER_NODES and VIGIL_REDIS_SENTINELS are two topologies: set one"
            )
        if not self.broker_url:
            raise ValueError(
                "VIGIL_BROKER_URL must be set with VIGIL_REDIS_CLUSTER_NODES: RabbitMQ, a Redis, "
                "or sentinel://host:port;sentinel://host:port (a cluster cannot be a broker)"
            )
        return self

    @field_validator("bond_prefix", "history_prefix", "vigil_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        # Braces would make a cluster hash tag of the prefix.
        if not value or any(c in value for c in "*?[]{} "):
            raise ValueError(
                f"key prefix {value!r} must be non-empty without glob characters or braces"
            )
        return value

    @property
    def cluster_addresses(self) -> list[tuple[str, int]]:
        """The cluster's seed nodes as (host, port); empty without a cluster."""
        if not self.redis_cluster_nodes:
            return []
        return parse_addresses(self.redis_cluster_nodes, "VIGIL_REDIS_CLUSTER_NODES")

    @property
    def state_topology(self) -> str:
        """``redis``, ``sentinel`` or ``cluster``: where state lives."""
        if self.redis_cluster_nodes:
            return "cluster"
        return "sentinel" if self.redis_sentinels else "redis"

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """The sentinels as (host, port); empty without Sentinel."""
        if not self.redis_sentinels:
            return []
        return parse_addresses(self.redis_sentinels, "VIGIL_REDIS_SENTINELS")

    @property
    def broker_sentinel_addresses(self) -> list[tuple[str, int]]:
        """The broker's sentinels as (host, port); empty unless VIGIL_BROKER_URL is
        sentinel://."""
        if not self.broker_url or not is_sentinel_url(self.broker_url):
            return []
        return sentinel_url_addresses(self.broker_url, "VIGIL_BROKER_URL")

    @property
    def _broker_on_state_sentinels(self) -> bool:
        addresses = self.broker_sentinel_addresses
        return bool(addresses) and set(addresses) == set(self.sentinel_addresses)

    @property
    def broker_master_name(self) -> str | None:
        """The name the broker's sentinels know its master by."""
        if not self.broker_sentinel_addresses:
            return None
        name = (self.broker_sentinel_master or "").strip()
        if not name and self._broker_on_state_sentinels:
            name = (self.redis_sentinel_master or "").strip()
        return name or None

    @property
    def broker_sentinels_password(self) -> str | None:
        """The password of the broker's sentinels themselves (not the master's)."""
        if self.broker_sentinel_password:
            return self.broker_sentinel_password
        if self._broker_on_state_sentinels:
            return self.redis_sentinel_password
        return None

    @property
    def history_ttl_s(self) -> int:
        return self.history_ttl_days * 86_400

    @property
    def unacked_restore_period_s(self) -> int:
        """How often kombu actually sweeps for expired unacked messages."""
        return self.unacked_restore_interval * self.unacked_restore_throttle

    @property
    def dead_worker_redelivery_bound_s(self) -> float:
        """Worst case, on a Redis broker, from a worker's death to the redelivery
        of what it held: its silence judged dead, then one sweep period."""
        return self.broker_owner_timeout + self.unacked_restore_interval

    @property
    def redelivery_bound_s(self) -> int:
        """Worst case, on a Redis broker, from a worker's death to the redelivery of
        what it held: expiry (or a stale sweep lock) plus one sweep period."""
        return max(self.visibility_timeout, self.unacked_mutex_expire) + (
            self.unacked_restore_period_s
        )

    @property
    def min_severity_rank(self) -> int:
        return SEVERITY_ORDER.index(self.history_min_severity)


def parse_addresses(value: str, setting: str) -> list[tuple[str, int]]:
    """``host:port,host:port`` (an IPv6 host in brackets) as pairs; a bad entry
    raises naming ``setting``."""
    out: list[tuple[str, int]] = []
    for raw in value.split(","):
        entry = raw.strip()
        host, sep, port = entry.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65_536:
            raise ValueError(f"{setting}: {entry!r} is not host:port (port 1-65535)")
        out.append((host, int(port)))
    return out


def is_sentinel_url(url: str) -> bool:
    """True for kombu's ``sentinel://`` broker URL (one or more, ``;``-separated)."""
    return urlsplit(url.split(";", 1)[0].strip()).scheme == "sentinel"


def sentinel_url_addresses(url: str, setting: str) -> list[tuple[str, int]]:
    """The (host, port) of each ``sentinel://host:port`` of a ``;``-separated URL;
    a part that is not one raises naming ``setting``."""
    out: list[tuple[str, int]] = []
    for raw in url.split(";"):
        part = raw.strip()
        parts = urlsplit(part)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme != "sentinel" or not parts.hostname or not port:
            raise ValueError(
                f"{setting}: {part!r} is not sentinel://host:port (each sentinel, "
                "';'-separated, with its port)"
            )
        out.append((parts.hostname, port))
    return out


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings of this process; tests build their own ``Settings`` instead."""
    return Settings()
