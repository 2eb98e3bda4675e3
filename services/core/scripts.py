"""Redis Lua scripts, loaded from ``services/core/redis_scripts``.

Scripts are sent as EVALSHA inside plain pipelines so a batch costs one round
trip; redis-py's own Script objects would add a SCRIPT EXISTS round trip per
pipeline. A NOSCRIPT reply (Redis restarted, cache flushed) loads the script
and re-runs only the calls that did not run.

With ``wait`` (``VIGIL_REDIS_WAIT_REPLICAS``), a pipeline ends with ``WAIT n
timeout`` on the same connection: fewer replicas holding its writes than n
raises ``TransientError``, so the caller retries (every script is idempotent)
instead of acking writes a failover could lose.

On a Redis Cluster every call's keys are in one slot (``services.core.keys``)
and redis-py's cluster pipelines do not run scripts, so the calls are grouped
by the master that owns their slot and each group is sent as a plain
pipeline on that master's connection. A slot that moved (MOVED, ASK), a
cluster mid-failover (CLUSTERDOWN, TRYAGAIN) or a master that stopped
answering refreshes the slot map and raises ``TransientError``: the caller's
backoff retries, and every script is idempotent, so a retried call never
counts twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)

from models.envelopes import ENVELOPE_ID_NAMESPACE
from services.core import keys as key_layout
from services.core.errors import TransientError
from services.core.settings import Settings

_DIR = Path(__file__).parent / "redis_scripts"
_HELPERS = "_bond.lua"
# Scripts that run without the bond helpers (the broker transport's, the lag
# count, the counters merge of ``vigil migrate-state``).
_STANDALONE = frozenset(
    {"broker_fetch", "broker_heartbeat", "broker_orphans", "stream_lag", "migrate_metrics"}
)


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


# Replies that mean the slot map this process holds is out of date.
_MOVED = (MovedError, AskError, ClusterDownError, TryAgainError)


def run(redis_client: redis.Redis, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
    return run_many(redis_client, name, [(keys, args)])[0]


def run_many(
    redis_client: redis.Redis | RedisCluster,
    name: str,
    calls: Sequence[Call],
    *,
    wait: Wait = None,
) -> list[Any]:
    """Run one script for many key/arg sets in a single round trip (one per
    master on a cluster).

    Calls run independently (no MULTI), so a script error is raised only after
    every call has had its turn. With ``wait``, the round trip ends with WAIT."""
    if not calls:
        return []
    if isinstance(redis_client, RedisCluster):
        return _run_on_cluster(redis_client, name, calls, wait)
    return _run_on(redis_client, name, calls, wait)


def _run_on_cluster(
    cluster: RedisCluster, name: str, calls: Sequence[Call], wait: Wait
) -> list[Any]:
    """``run_many`` on a cluster: each master's calls as one pipeline on it."""
    groups: dict[str, tuple[Any, list[int]]] = {}
    try:
        for i, (call_keys, _) in enumerate(calls):
            node = cluster.get_node_from_key(call_keys[0])
            groups.setdefault(node.name, (node, []))[1].append(i)
    except (redis.ConnectionError, redis.TimeoutError, RedisClusterException, *_MOVED) as exc:
        _refresh(cluster)
        raise TransientError(f"{name}: no slot map ({type(exc).__name__}); retried") from exc
    results: list[Any] = [None] * len(calls)
    for node, positions in groups.values():
        client = cluster.get_redis_connection(node)
        try:
            replies = _run_on(client, name, [calls[i] for i in positions], wait)
        except TransientError:
            # WAIT refused or short: the node may be a replica now (a master
            # that came back after its replica's promotion).
            _refresh(cluster)
            raise
        except (redis.ConnectionError, redis.TimeoutError, *_MOVED) as exc:
            _refresh(cluster)
            raise TransientError(
                f"{name}: master {node.name} unavailable ({type(exc).__name__}); retried"
            ) from exc
        for i, reply in zip(positions, replies, strict=True):
            results[i] = reply
    return results


def _refresh(cluster: RedisCluster) -> None:
    """Ask the cluster for its slot map again (after a failover or a reshard)."""
    # Every seed unreachable for now: the retry asks again.
    with contextlib.suppress(redis.RedisError, RedisClusterException):
        cluster.nodes_manager.initialize()


def _run_on(redis_client: redis.Redis, name: str, calls: Sequence[Call], wait: Wait) -> list[Any]:
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
        if isinstance(reply, _MOVED):
            raise reply
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
    redis_client: redis.Redis | RedisCluster,
    name: str,
    items: Sequence[Item],
    *,
    shared: dict[str, Any],
    settings: Settings | None = None,
    wait: Wait = None,
) -> list[Any]:
    """Run a batch script (``ingest_gate``, ``apply_detection``) over many items.

    The script takes every item's keys in order, one JSON array of the items'
    own arguments and one JSON doc of what they all share (``shared``: the time,
    settings, the envelope id namespace), so packing, decoding and dispatch are
    paid per call, not per item. A reply ``['error', reason]`` comes back as a
    ``ResponseError`` in that item's slot, in the items' order.

    With ``settings``, items are grouped by shard (their first key's; one group
    on one Redis) and each call also gets its shard's counters hash last and
    ARGV[2] ``'metrics'``, and the script counts outcomes in it. ``wait``: see
    ``run_many``."""
    by_shard: dict[int, list[int]] = {}
    for i, (item_keys, _) in enumerate(items):
        shard = key_layout.shard_of_key(settings, item_keys[0]) if settings else 0
        by_shard.setdefault(shard, []).append(i)
    calls: list[Call] = []
    order: list[int] = []
    shared_json = json.dumps({**shared, "envelope_ns": ENVELOPE_ID_NAMESPACE.hex})
    for shard, positions in by_shard.items():
        for start in range(0, len(positions), BATCH_CHUNK):
            chunk = [items[i] for i in positions[start : start + BATCH_CHUNK]]
            order.extend(positions[start : start + BATCH_CHUNK])
            call_keys = [k for item_keys, _ in chunk for k in item_keys]
            if settings is not None:
                call_keys.append(key_layout.metrics(settings, shard))
            args = [
                json.dumps([doc for _, doc in chunk]),
                "metrics" if settings is not None else "",
                shared_json,
            ]
            calls.append((call_keys, args))
    out: list[Any] = [None] * len(items)
    flat = (item for reply in run_many(redis_client, name, calls, wait=wait) for item in reply)
    for i, item in zip(order, flat, strict=True):
        if isinstance(item, list) and item and item[0] == "error":
            out[i] = ResponseError(str(item[1])[:200])
        else:
            out[i] = item
    return out
