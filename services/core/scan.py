"""SCAN over every master: one Redis, or each primary of a Redis Cluster in turn.

A cluster has no keyspace-wide SCAN: each master scans its own keys. The
cursor handed back is one integer either way, so callers that page (``bond
list``, the daily cap reset) resume the same way on both: on a cluster it
holds which master (by the lowest slot it owns) and that master's own cursor.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import redis
from redis.cluster import RedisCluster

# Redis's own SCAN cursor is an unsigned 64-bit integer.
_NODE_STRIDE = 2**64


def _masters_by_first_slot(cluster: RedisCluster) -> list[tuple[int, Any]]:
    """Each master with the lowest slot it owns, in slot order. A master is
    named in the cursor by that slot, not its address, so a promotion (the
    replica takes the same slots) does not make a paged walk skip a master."""
    first: dict[str, tuple[int, Any]] = {}
    for slot, nodes in cluster.nodes_manager.slots_cache.items():
        primary = nodes[0]
        if primary.name not in first or slot < first[primary.name][0]:
            first[primary.name] = (slot, primary)
    return sorted(first.values(), key=lambda pair: pair[0])


def scan_page(
    redis_client: redis.Redis | RedisCluster, cursor: int, match: str, count: int
) -> tuple[int, list[str]]:
    """One SCAN step from ``cursor``; the next cursor (0 when done) and the keys."""
    if not isinstance(redis_client, RedisCluster):
        next_cursor, found = redis_client.scan(cursor=cursor, match=match, count=count)
        return int(next_cursor), list(found)
    masters = _masters_by_first_slot(redis_client)
    first_slot, node_cursor = divmod(int(cursor), _NODE_STRIDE)
    # The master that owns that first slot now, else (after a reshard) the next one.
    index = next((i for i, (slot, _) in enumerate(masters) if slot >= first_slot), len(masters))
    if index == len(masters):
        return 0, []
    if masters[index][0] != first_slot:
        node_cursor = 0
    node_client = redis_client.get_redis_connection(masters[index][1])
    next_cursor, found = node_client.scan(cursor=node_cursor, match=match, count=count)
    if int(next_cursor) != 0:
        return masters[index][0] * _NODE_STRIDE + int(next_cursor), list(found)
    if index + 1 == len(masters):
        return 0, list(found)
    # The next master from its start; its first slot is never 0, so the
    # cursor is not mistaken for the end.
    return masters[index + 1][0] * _NODE_STRIDE, list(found)


def scan_all(
    redis_client: redis.Redis | RedisCluster, match: str, count: int = 1000
) -> Iterator[str]:
    """Every key matching ``match`` on every master."""
    cursor = 0
    while True:
        cursor, found = scan_page(redis_client, cursor, match, count)
        yield from found
        if cursor == 0:
            return


def master_clients(redis_client: redis.Redis | RedisCluster) -> list[redis.Redis]:
    """A plain client per master: the one Redis, or each primary of a cluster
    (for what is per server: INFO, CONFIG)."""
    if not isinstance(redis_client, RedisCluster):
        return [redis_client]
    return [
        redis_client.get_redis_connection(node) for _, node in _masters_by_first_slot(redis_client)
    ]
