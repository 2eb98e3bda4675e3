"""SCAN over every master: one Redis, or each primary of a Redis Cluster in turn.

A cluster has no keyspace-wide SCAN: each master scans its own keys. The
cursor handed back is one integer either way, so callers that page (``bond
list``, the daily cap reset) resume the same way on both: on a cluster it
holds which master (in name order) and that master's own cursor.
"""

from __future__ import annotations

from collections.abc import Iterator

import redis
from redis.cluster import RedisCluster

# Redis's own SCAN cursor is an unsigned 64-bit integer.
_NODE_STRIDE = 2**64


def scan_page(
    redis_client: redis.Redis | RedisCluster, cursor: int, match: str, count: int
) -> tuple[int, list[str]]:
    """One SCAN step from ``cursor``; the next cursor (0 when done) and the keys."""
    if not isinstance(redis_client, RedisCluster):
        next_cursor, found = redis_client.scan(cursor=cursor, match=match, count=count)
        return int(next_cursor), list(found)
    nodes = sorted(redis_client.get_primaries(), key=lambda node: node.name)
    index, node_cursor = divmod(int(cursor), _NODE_STRIDE)
    if index >= len(nodes):
        return 0, []
    node_client = redis_client.get_redis_connection(nodes[index])
    next_cursor, found = node_client.scan(cursor=node_cursor, match=match, count=count)
    if int(next_cursor) == 0:
        index += 1
        return (0 if index >= len(nodes) else index * _NODE_STRIDE), list(found)
    return index * _NODE_STRIDE + int(next_cursor), list(found)


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
    nodes = sorted(redis_client.get_primaries(), key=lambda node: node.name)
    return [redis_client.get_redis_connection(node) for node in nodes]
