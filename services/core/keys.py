"""Redis key layout, in one place.

The defaults are the seed systems' keys (``abl:{user_id}``,
``abl:events:{user_id}``, ``ash:history:{guild_id}:{user_id}``), so their data
reads as-is. Ids are validated by ``models.payloads.ID_PATTERN`` before they
get here: no ``:`` or glob characters, so no id can name another user's key.
"""

from __future__ import annotations

from datetime import UTC, datetime

from services.core.settings import Settings

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
    return f"{settings.vigil_prefix}seen:msg:{platform}:{message_id}"


def detection_marker(settings: Settings, detection_id: str) -> str:
    return f"{settings.vigil_prefix}seen:det:{detection_id}"


def day_start(now: float) -> int:
    """Epoch seconds of the UTC midnight that starts the day containing ``now``."""
    d = datetime.fromtimestamp(now, UTC)
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp())
