"""Periodic tasks (queue ``periodic``), scheduled by beat from ``celeryconfig.beat_schedule``.

Each is safe to run twice for the same slot: beat runs once (redbeat's lock),
and the work itself is idempotent in case a slot is redelivered.
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


@app.task(name=names.PERIODIC_CORRELATE, time_limit=120, soft_time_limit=100)
def correlate_multi_actor() -> dict[str, Any]:
    settings = get_settings()
    return correlator.run(session_factory(settings), settings)


@app.task(name=names.PERIODIC_RESET_CAPS, time_limit=1800, soft_time_limit=1700)
def reset_daily_caps() -> dict[str, Any]:
    settings = get_settings()
    return ledger.reset_daily_caps(get_redis(settings), settings)


@app.task(name=names.PERIODIC_RELAY_OUTBOX, time_limit=120, soft_time_limit=100)
def relay_outbox() -> dict[str, Any]:
    settings = get_settings()
    return outbox.relay(session_factory(settings), get_redis(settings), settings)


@app.task(name=names.PERIODIC_PURGE_EXPIRED, time_limit=300)
def purge_expired() -> dict[str, Any]:
    """Drop dead letters past their retention and outbox rows long since published."""

    settings = get_settings()
    with session_factory(settings)() as session, session.begin():
        dead = store.purge(session, older_than_days=settings.dead_letter_retention_days)
        relayed = outbox.purge_published(session)
    return {"status": "ok", "dead_letters": dead, "outbox": relayed}
