"""The counters hash (``keys.metrics``): field names, and increments made in Python.

Most counts are made inside the Lua scripts that already run for each message
(``count_metric`` in ``_bond.lua``), so counting costs no extra round trip and
every worker on every machine adds to the same hash. What happens outside a
script (rejections, correlator runs, cap resets) is counted here with one
HINCRBY, off the accepted message path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis

from services.core import keys
from services.core.settings import Settings

log = logging.getLogger(__name__)

# Families of per-item outcomes; a field is "<family>:<outcome>".
MESSAGES = "messages"
DETECTIONS = "detections"
MESSAGE_OUTCOMES = ("accepted", "duplicate", "rate_limited", "rejected")
DETECTION_OUTCOMES = ("accepted", "duplicate", "rejected")

# Fields written by the Lua scripts with a variable part.
PHASE_PREFIX = "phase:"
RISK_PREFIX = "risk:"
ENVELOPES_PREFIX = "envelopes:"

HISTORY_STORED = "history_stored"
CORRELATOR_RUNS = "correlator_runs"
CAP_RESETS = "cap_resets"


def outcome(family: str, name: str) -> str:
    return f"{family}:{name}"


@dataclass(frozen=True)
class Counter:
    """One field of the counters hash and the client that increments it."""

    redis_client: redis.Redis
    key: str
    field: str

    def add(self, amount: int = 1) -> None:
        """HINCRBY; a failure is logged, not raised: the counted work is already done."""
        if amount <= 0:
            return
        try:
            self.redis_client.hincrby(self.key, self.field, amount)
        except redis.RedisError as exc:
            log.warning("metrics counter %s not incremented (%s)", self.field, type(exc).__name__)


def counter(redis_client: redis.Redis, settings: Settings, field: str) -> Counter:
    return Counter(redis_client, keys.metrics(settings), field)


def read_all(redis_client: redis.Redis, settings: Settings) -> dict[str, int]:
    """Every counter, by field (one HGETALL; one per shard on a cluster, added up)."""
    pipe = redis_client.pipeline(transaction=False)
    for key in keys.metrics_keys(settings):
        pipe.hgetall(key)
    totals: dict[str, int] = {}
    for raw in pipe.execute():
        for k, v in raw.items():
            totals[_text(k)] = totals.get(_text(k), 0) + int(v)
    return totals


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
