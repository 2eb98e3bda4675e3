"""Redis Lua scripts, loaded from ``services/core/redis_scripts``.

Scripts are sent as EVALSHA inside plain pipelines so a batch costs one round
trip; redis-py's own Script objects would add a SCRIPT EXISTS round trip per
pipeline. A NOSCRIPT reply (Redis restarted, cache flushed) loads the script
and re-runs only the calls that did not run.

With ``wait`` (``VIGIL_REDIS_WAIT_REPLICAS``), a pipeline ends with ``WAIT n
timeout`` on the same connection: fewer replicas holding its writes than n
raises ``TransientError``, so the caller retries (every script is idempotent)
instead of acking writes a failover could lose.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import redis
from redis.exceptions import NoScriptError, ResponseError

from models.envelopes import ENVELOPE_ID_NAMESPACE
from services.core.errors import TransientError
from services.core.settings import Settings

_DIR = Path(__file__).parent / "redis_scripts"
_HELPERS = "_bond.lua"
# Scripts that run without the bond helpers (the broker transport's, the lag count).
_STANDALONE = frozenset({"broker_fetch", "broker_heartbeat", "broker_orphans", "stream_lag"})


@cache
def source(name: str) -> str:
    body = (_DIR / f"{name}.lua").read_text()
    if name.startswith("_") or name in _STANDALONE:
        return body
    return (_DIR / _HELPERS).read_text() + "\n" + body


@cache
def sha(name: str) -> str:
    return hashlib.sha1(source(name).encode()).hexdigest()  # noqa: S324  (Redis's own id)


Call = tuple[Sequence[str], Sequence[Any]]
# (replicas, timeout in ms) for WAIT; None waits for none.
Wait = tuple[int, int] | None
Item = tuple[Sequence[str], dict[str, Any]]

# Items per script call: one call blocks Redis while it runs, so a batch is
# split into calls of this size, all still sent in one round trip.
BATCH_CHUNK = 100


def wait_of(settings: Settings) -> Wait:
    """The WAIT a per-message pipeline ends with, from the settings."""
    if settings.redis_wait_replicas <= 0:
        return None
    return settings.redis_wait_replicas, settings.redis_wait_timeout_ms


def run(redis_client: redis.Redis, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
    return run_many(redis_client, name, [(keys, args)])[0]


def run_many(
    redis_client: redis.Redis, name: str, calls: Sequence[Call], *, wait: Wait = None
) -> list[Any]:
    """Run one script for many key/arg sets in a single round trip.

    Calls run independently (no MULTI), so a script error is raised only after
    every call has had its turn. With ``wait``, the round trip ends with WAIT."""
    if not calls:
        return []
    digest = sha(name)
    pending = list(range(len(calls)))
    results: list[Any] = [None] * len(calls)
    for attempt in range(2):
        pipe = redis_client.pipeline(transaction=False)
        for i in pending:
            keys, args = calls[i]
            pipe.evalsha(digest, len(keys), *keys, *args)
        if wait is not None:
            pipe.execute_command("WAIT", *wait)
        replies = pipe.execute(raise_on_error=False)
        if wait is not None:
            _check_wait(name, wait, replies.pop())
        missing = []
        for i, reply in zip(pending, replies, strict=True):
            if isinstance(reply, NoScriptError):
                missing.append(i)
            else:
                results[i] = reply
        if not missing:
            break
        if attempt == 1:
            raise NoScriptError(f"script {name} could not be loaded")
        redis_client.script_load(source(name))
        pending = missing
    for reply in results:
        if isinstance(reply, ResponseError):
            if _demoted(reply):
                _forget_master(redis_client)
                raise TransientError(f"{name}: the state Redis is a replica now; retried")
            raise reply
    return results


def _demoted(reply: ResponseError) -> bool:
    """READONLY from inside a script: the master this connection reached was
    demoted. Redis 7 replies ``-READONLY`` (redis-py's Sentinel connections turn
    that into a ConnectionError themselves); Redis 6.2 wraps it in ``ERR Error
    running script``."""
    return "READONLY" in str(reply)


def _forget_master(redis_client: redis.Redis) -> None:
    """Drop the pool's connections, so the next command asks the sentinels
    where the master is now."""
    redis_client.connection_pool.disconnect()


def _check_wait(name: str, wait: tuple[int, int], reply: Any) -> None:
    """Fewer replicas than asked hold the writes: not acked, retried later."""
    if isinstance(reply, Exception):
        # WAIT is refused only by a replica: the master was demoted under us.
        raise TransientError(f"{name}: WAIT refused ({str(reply)[:120]}); retried")
    wanted, timeout_ms = wait
    if int(reply) < wanted:
        raise TransientError(
            f"{name}: {reply} of {wanted} replicas acknowledged the writes within "
            f"{timeout_ms} ms (VIGIL_REDIS_WAIT_REPLICAS); retried"
        )


def run_batch(
    redis_client: redis.Redis,
    name: str,
    items: Sequence[Item],
    *,
    shared: dict[str, Any],
    metrics_key: str | None = None,
    wait: Wait = None,
) -> list[Any]:
    """Run a batch script (``ingest_gate``, ``apply_detection``) over many items.

    The script takes every item's keys in order, one JSON array of the items'
    own arguments and one JSON doc of what they all share (``shared``: the time,
    settings, the envelope id namespace), so packing, decoding and dispatch are
    paid per call, not per item. A reply ``['error', reason]`` comes back as a
    ``ResponseError`` in that item's slot. With ``metrics_key`` (the counters
    hash) each call also gets that key last and ARGV[2] ``'metrics'``, and the
    script counts outcomes in it. ``wait``: see ``run_many``."""
    calls: list[Call] = []
    shared_json = json.dumps({**shared, "envelope_ns": ENVELOPE_ID_NAMESPACE.hex})
    for start in range(0, len(items), BATCH_CHUNK):
        chunk = items[start : start + BATCH_CHUNK]
        keys = [k for item_keys, _ in chunk for k in item_keys]
        if metrics_key is not None:
            keys.append(metrics_key)
        args = [
            json.dumps([doc for _, doc in chunk]),
            "metrics" if metrics_key is not None else "",
            shared_json,
        ]
        calls.append((keys, args))
    out: list[Any] = []
    for reply in run_many(redis_client, name, calls, wait=wait):
        for item in reply:
            if isinstance(item, list) and item and item[0] == "error":
                out.append(ResponseError(str(item[1])[:200]))
            else:
                out.append(item)
    return out
