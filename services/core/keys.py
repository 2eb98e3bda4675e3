"""Redis key layout, in one place.

The defaults are the seed systems' keys (``abl:{user_id}``,
``abl:events:{user_id}``, ``ash:history:{guild_id}:{user_id}``), so their data
reads as-is. Ids are validated by ``models.payloads.ID_PATTERN`` before they
get here: no ``:`` or glob characters, so no id can name another user's key.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from services.core.settings import Settings

# On a Redis broker: messages on vigil's queues that are not Celery messages,
# set aside by the worker's transport with their reason (worker/broker.py).
BROKER_UNREADABLE = "unreadable"
DM_GUILD = "@dm"  # history of direct messages; '@' cannot start a valid guild id


def bond(settings: Settings, user_id: str) -> str:
    return f"{settings.bond_prefix}{user_id}"


def events(settings: Settings, user_id: str) -> str:
    return f"{settings.bond_prefix}events:{user_id}"


def history(settings: Settings, guild_id: str | None, user_id: str) -> str:
    return f"{settings.history_prefix}{guild_id or DM_GUILD}:{user_id}"


def history_pattern(settings: Settings, user_id: str) -> str:
    return f"{settings.history_prefix}*:{user_id}"


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
    return f"{settings.vigil_prefix}dedupe:msg:{platform}:{user_id}"


def detection_dedupe(settings: Settings, platform: str, user_id: str) -> str:
    """Hash of the user's recently applied detection ids, laid out as ``message_dedupe``."""
    return f"{settings.vigil_prefix}dedupe:det:{platform}:{user_id}"


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


def metrics(settings: Settings) -> str:
    """The one hash of pipeline counters (field -> count), shared by every worker."""
    return f"{settings.vigil_prefix}metrics"


def day_start(now: float) -> int:
    """Epoch seconds of the UTC midnight that starts the day containing ``now``."""
    d = datetime.fromtimestamp(now, UTC)
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp())
