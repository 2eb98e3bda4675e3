"""What events, Flower and logs may show of a task's arguments: ids and sizes,
never message text."""

from __future__ import annotations

from typing import Any

_ID_KEYS = ("message_id", "detection_id", "platform", "guild_id", "user_id", "severity")


def redact_kwargs(kwargs: Any) -> str:
    """Ids as they are; every other value as its type or size."""
    if not isinstance(kwargs, dict):
        return "<redacted>"
    shown: dict[str, str] = {}
    for key, value in list(kwargs.items())[:20]:
        name = str(key)[:40]
        if name in _ID_KEYS and isinstance(value, (str, int)) and not isinstance(value, bool):
            shown[name] = str(value)[:64]
        elif isinstance(value, list):
            shown[name] = f"<list of {len(value)}>"
        elif isinstance(value, dict):
            shown[name] = f"<object with {len(value)} keys>"
        else:
            shown[name] = f"<{type(value).__name__}>"
    return repr(shown)


def safe_redact(kwargs: Any) -> str:
    """:func:`redact_kwargs` that never raises: a hostile body must not stop
    the worker, its events or its logs."""
    try:
        return redact_kwargs(kwargs)
    except Exception:
        return "<redacted>"
