"""Redis key layout, in one place.

On one Redis (or behind Sentinel) the keys are the seed systems' own
(``abl:<user>``, ``abl:events:<user>``, ``ash:history:<guild>:<user>``), so
their data reads as-is. Ids are validated by ``models.payloads.ID_PATTERN``
before they get here: no ``:``, braces or glob characters, so no id can name
another user's key or pick a hash tag.

On a Redis Cluster every script must touch one hash slot, so users are spread
over ``VIGIL_REDIS_CLUSTER_SHARDS`` logical shards, each with one hash tag:
a user's keys carry their shard's tag right after the prefix
(``abl:{s3-17}:<user>``), and what is global on one Redis (the envelope
streams, the counters hash) is one key per shard with the same tag
(``vigil:stream:bond:{s3-17}``). A message's change and its envelope stay one
atomic script; readers read every shard (``shards``).
"""

from __future__ import annotations

import hashlib
import re
import zlib
from datetime import UTC, datetime
from functools import cache

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from services.core.settings import Settings

# On a Redis broker: messages on vigil's queues that are not Celery messages,
# set aside by the worker's transport with their reason (worker/broker.py).
BROKER_UNREADABLE = "unreadable"
DM_GUILD = "@dm"  # history of direct messages; '@' cannot start a valid guild id


_TAG = re.compile(r"\{([^{}]+)\}")


def shard_count(settings: Settings) -> int:
    """How many logical shards state is spread over: one unless on a cluster."""
    return settings.redis_cluster_shards if settings.redis_cluster_nodes else 1


def shards(settings: Settings) -> range:
    """Every shard, for the readers that must see all of them."""
    return range(shard_count(settings))


@cache
def _tags(count: int) -> tuple[str, ...]:
    """Shard i's hash tag: the first ``s<i>-<k>`` whose slot falls in the i-th
    of ``count`` equal slot ranges, so shards spread evenly over masters that
    own equal contiguous ranges (as ``redis-cli --cluster create`` assigns)."""
    tags = []
    for i in range(count):
        low = i * REDIS_CLUSTER_HASH_SLOTS // count
        high = (i + 1) * REDIS_CLUSTER_HASH_SLOTS // count
        k = 0
        while not low <= key_slot(f"s{i}-{k}".encode()) < high:
            k += 1
        tags.append(f"{{s{i}-{k}}}")
    return tuple(tags)


def shard_of(settings: Settings, user_id: str) -> int:
    """The user's shard: CRC-32 of the id, so every process agrees."""
    count = shard_count(settings)
    return 0 if count == 1 else zlib.crc32(user_id.encode()) % count


def shard_tag(settings: Settings, shard: int) -> str:
    """The shard's hash tag (``{s3-17}``); empty on one Redis."""
    return _tags(shard_count(settings))[shard] if settings.redis_cluster_nodes else ""


def shard_of_key(settings: Settings, key: str) -> int:
    """The shard a key carries the tag of (0 for an untagged key)."""
    if not settings.redis_cluster_nodes:
        return 0
    found = _TAG.search(key)
    if found is None:
        return 0
    return _tags(shard_count(settings)).index(found.group(0))


def sharded(settings: Settings, base: str, shard: int) -> str:
    """A per-shard key: ``base`` itself on one Redis, ``base:{tag}`` on a cluster."""
    tag = shard_tag(settings, shard)
    return f"{base}:{tag}" if tag else base


def _scope(settings: Settings, user_id: str) -> str:
    """What goes between a prefix and the user's part: the user's shard tag and
    ``:`` on a cluster, nothing on one Redis (the seed layout)."""
    if not settings.redis_cluster_nodes:
        return ""
    return shard_tag(settings, shard_of(settings, user_id)) + ":"


def bond(settings: Settings, user_id: str) -> str:
    return f"{settings.bond_prefix}{_scope(settings, user_id)}{user_id}"


def events(settings: Settings, user_id: str) -> str:
    return f"{settings.bond_prefix}events:{_scope(settings, user_id)}{user_id}"


def events_prefix(settings: Settings) -> str:
    """What every events key starts with, so a SCAN of bonds can leave them out."""
    return f"{settings.bond_prefix}events:"


def bond_stream(settings: Settings, user_id: str) -> str:
    """The bond stream's key for the user's envelopes (their shard's)."""
    return sharded(settings, settings.stream_bond, shard_of(settings, user_id))


def history(settings: Settings, guild_id: str | None, user_id: str) -> str:
    scope = _scope(settings, user_id)
    return f"{settings.history_prefix}{scope}{guild_id or DM_GUILD}:{user_id}"


def history_guild(settings: Settings, key: str, user_id: str) -> str | None:
    """The guild of one of the user's history keys (None for direct messages)."""
    head = f"{settings.history_prefix}{_scope(settings, user_id)}"
    guild = key[len(head) : -(len(user_id) + 1)]
    return None if guild == DM_GUILD else guild


def history_pattern(settings: Settings, user_id: str) -> str:
    return f"{settings.history_prefix}{_scope(settings, user_id)}*:{user_id}"


def message_marker(settings: Settings, platform: str, message_id: str) -> str:
    """The name of the per-message marker key used before dedupe moved to per-user
    hashes. No such key is written or read any more; a message's envelope ids
    still derive from this name, so they did not change."""
    return f"{settings.vigil_prefix}seen:msg:{platform}:{message_id}"


def detection_marker(settings: Settings, detection_id: str) -> str:
    """The per-detection marker key from before the upgrade; see ``message_marker``."""
    return f"{settings.vigil_prefix}seen:det:{detection_id}"


def message_dedupe(settings: Settings, platform: str, user_id: str) -> str:
    """Hash of the user's recently seen message ids: field ``dedupe_field(id)``,
    value ``stamp_ms * 4 + state`` (services/ingest/dedupe.py reads it)."""
    return f"{settings.vigil_prefix}dedupe:msg:{_scope(settings, user_id)}{platform}:{user_id}"


def detection_dedupe(settings: Settings, platform: str, user_id: str) -> str:
    """Hash of the user's recently applied detection ids, laid out as ``message_dedupe``."""
    return f"{settings.vigil_prefix}dedupe:det:{_scope(settings, user_id)}{platform}:{user_id}"


# Longer ids are hashed: a hash field over 64 bytes (hash-max-listpack-value)
# would turn the user's whole hash from a listpack into a table.
DEDUPE_FIELD_MAX = 40


def dedupe_field(item_id: str) -> str:
    """The field an id takes in a dedupe hash: the id itself (a numeric one is
    stored by Redis as an integer), or ``#`` and 24 hex digits of its SHA-1 when
    longer than ``DEDUPE_FIELD_MAX``; ``#`` cannot start a valid id."""
    if len(item_id) <= DEDUPE_FIELD_MAX:
        return item_id
    return "#" + hashlib.sha1(item_id.encode()).hexdigest()[:24]  # noqa: S324  (not a secret)


def metrics(settings: Settings, shard: int = 0) -> str:
    """The hash of pipeline counters (field -> count) shared by every worker:
    one on one Redis, one per shard on a cluster (readers add them up)."""
    return sharded(settings, f"{settings.vigil_prefix}metrics", shard)


def metrics_keys(settings: Settings) -> list[str]:
    return [metrics(settings, shard) for shard in shards(settings)]


def day_start(now: float) -> int:
    """Epoch seconds of the UTC midnight that starts the day containing ``now``."""
    d = datetime.fromtimestamp(now, UTC)
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp())
