"""Periodic tasks (queue ``periodic``), scheduled by beat from ``celeryconfig.beat_schedule``.

Each is safe to run twice for the same slot: beat runs once (redbeat's lock),
and the work itself is idempotent in case a slot is redelivered. Each runs
under the app-wide time limit (``VIGIL_TASK_TIME_LIMIT``), which fits under
the visibility timeout; work that may take longer goes in chunks.
"""

from __future__ import annotations

from typing import Any

from services.attribution import correlator
from services.bonds import ledger
from services.core.clients import get_redis, session_factory
from services.core.settings import get_settings
from services.deadletters import store
from services.envelopes import outbox
from tasks import names
from tasks.app import app


@app.task(name=names.PERIODIC_CORRELATE)
def correlate_multi_actor() -> dict[str, Any]:
    settings = get_settings()
    return correlator.run(session_factory(settings), settings)


@app.task(name=names.PERIODIC_RESET_CAPS)
def reset_daily_caps(cursor: int = 0, day_start: float | None = None) -> dict[str, Any]:
    """Reset caps for half the soft time limit, then hand the rest to a new task.

    A million bonds do not fit one task's time limit. Each chunk resumes the
    SCAN where the last stopped, for the same day; the continuation is sent
    once per (day, cursor), so a redelivered chunk does not fork the chain."""
    settings = get_settings()
    state_redis = get_redis(settings)
    result = ledger.reset_daily_caps(
        state_redis,
        settings,
        now=day_start,
        cursor=cursor,
        budget_s=settings.task_soft_time_limit / 2,
    )
    next_cursor = int(result["cursor"])
    claim = f"{settings.vigil_prefix}reset_caps:{int(result['day_start'])}:{next_cursor}"
    if next_cursor and state_redis.set(claim, 1, nx=True, ex=86_400):
        reset_daily_caps.apply_async(
            kwargs={"cursor": next_cursor, "day_start": result["day_start"]}
        )
    return result


@app.task(name=names.PERIODIC_RELAY_OUTBOX)
def relay_outbox() -> dict[str, Any]:
    settings = get_settings()
    return outbox.relay(session_factory(settings), get_redis(settings), settings)


@app.task(name=names.PERIODIC_PURGE_EXPIRED)
def purge_expired() -> dict[str, Any]:
    """Drop dead letters past their retention and outbox rows long since published."""

    settings = get_settings()
    with session_factory(settings)() as session, session.begin():
        dead = store.purge(session, older_than_days=settings.dead_letter_retention_days)
        relayed = outbox.purge_published(session)
    return {"status": "ok", "dead_letters": dead, "outbox": relayed}
