"""Multi-actor correlation: announce identities whose flagged set of primitives changed.

An identity with at least two primitives in ``multi_actor`` is suspected of
being shared by several people. What was announced lives in
``correlator_fired`` (committed with the announcement through the outbox), so a
restarted correlator neither announces again nor forgets; an identity that drops
below two is deleted from it, which re-arms it.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import redis
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from models.envelopes import envelope_id, make_envelope
from services.attribution import repository as repo
from services.core.clients import get_redis
from services.core.errors import TransientError
from services.core.settings import Settings
from services.envelopes import outbox
from services.metrics import counters

logger = logging.getLogger(__name__)

MULTI_ACTOR_SUSPECTED = "attribution.profile.multi_actor_suspected"
MIN_PRIMITIVES = 2


def correlate(session: Session, settings: Settings) -> dict[str, Any]:
    """One correlation pass in the caller's transaction. A pass that finds another
    one running (the advisory lock is taken) does nothing."""
    if not repo.try_lock_correlator(session):
        return {"status": "busy", "suspected": 0, "fired": 0, "rearmed": 0}
    current = dict(repo.list_multi_actor_identities(session, MIN_PRIMITIVES))
    fired = repo.list_fired(session)
    n_fired = 0
    for identity_id in sorted(current, key=str):
        primitives = current[identity_id]
        previous = fired[identity_id][0] if identity_id in fired else []
        if previous == primitives:
            continue
        fired_at = repo.upsert_fired(session, identity_id, primitives)
        _enqueue(session, settings, identity_id, primitives, previous, fired_at.isoformat())
        n_fired += 1
    gone = sorted((i for i in fired if i not in current), key=str)
    rearmed = repo.delete_fired(session, gone)
    return {"status": "ok", "suspected": len(current), "fired": n_fired, "rearmed": rearmed}


def _enqueue(
    session: Session,
    settings: Settings,
    identity_id: uuid.UUID,
    primitives: list[str],
    previous: list[str],
    fired_at: str,
) -> None:
    # The id is derived from the correlator_fired row it is committed with, so the
    # same announcement always carries the same id, and a later re-fire of the same
    # set (after a re-arm) is a new announcement.
    env_id = envelope_id(
        str(identity_id), ",".join(primitives), ",".join(previous), fired_at, "multi_actor"
    )
    envelope = make_envelope(
        MULTI_ACTOR_SUSPECTED,
        {
            "identity_id": str(identity_id),
            "primitives": primitives,
            "previous_primitives": previous,
        },
        correlation_id=str(identity_id),
        envelope_id=env_id,
    )
    outbox.enqueue(session, settings, envelope, identity_id=identity_id)


def run(
    session_factory: sessionmaker[Session],
    settings: Settings,
    redis_client: redis.Redis | None = None,
) -> dict[str, Any]:
    """One correlator tick: correlate in one transaction, then relay the outbox.

    A relay failure leaves the envelopes committed in the outbox for the periodic
    relay; the result says so instead of claiming delivery.
    """

    with session_factory() as session, session.begin():
        result = correlate(session, settings)
    client = redis_client if redis_client is not None else get_redis(settings)
    counters.counter(client, settings, counters.CORRELATOR_RUNS).add()
    if result["fired"]:
        try:
            relayed = outbox.relay(session_factory, client, settings)
        except (redis.RedisError, SQLAlchemyError, TransientError) as exc:
            logger.warning("outbox relay deferred: %s", type(exc).__name__)
            result["relay"] = f"deferred: {type(exc).__name__}"
        else:
            result["relay"] = relayed
    return result
