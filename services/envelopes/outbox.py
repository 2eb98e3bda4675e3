"""Transactional outbox: envelopes about changes made in PostgreSQL.

Which path an envelope takes depends on where the state it reports lives:

- Redis-side state (bonds, caps, history): the Lua script that changes the
  state also XADDs the envelope, so change and event are one atomic step and
  this module is not involved.
- PostgreSQL-side state (attribution states, correlator verdicts, erasure of
  PostgreSQL rows): ``enqueue`` inserts the envelope in the same transaction
  as the change, so a rolled-back change publishes nothing and a committed one
  cannot lose its event. ``relay`` publishes committed rows: the ingest
  path right after its commit, and the beat job ``vigil.periodic.relay_outbox``
  for whatever that misses (process died, Redis down).

Each row reaches its stream exactly once: the XADD runs in a Lua script that
first sets ``<vigil_prefix>outbox:sent:<envelope_id>`` with NX, so a relay that
dies between the XADD and its commit republishes nothing when the row is
relayed again. Concurrent relays take disjoint rows (FOR UPDATE SKIP LOCKED).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import redis
from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, sessionmaker

from models.envelopes import Envelope
from models.tables import Outbox
from services.core import keys, scripts
from services.core.settings import Settings
from services.envelopes.streams import stream_key_of, stream_key_of_topic

log = logging.getLogger(__name__)

SENT_MARKER_TTL_S = 7 * 86_400


def sent_marker_key(settings: Settings, envelope_id: str, stream: str | None = None) -> str:
    """The marker of one published row; on a cluster it carries the tag of the
    row's stream shard, so the publish script touches one slot."""
    shard = keys.shard_of_key(settings, stream or "")
    return keys.sharded(settings, f"{settings.vigil_prefix}outbox:sent:{envelope_id}", shard)


def enqueue(
    session: Session,
    settings: Settings,
    envelope: Envelope,
    identity_id: str | uuid.UUID | None = None,
) -> None:
    """Add ``envelope`` to the caller's transaction; the caller commits.

    Enqueueing the same envelope_id twice keeps the first row, so a retried
    transaction with deterministic ids does not publish twice.
    """
    if identity_id is not None and not isinstance(identity_id, uuid.UUID):
        identity_id = uuid.UUID(str(identity_id))
    session.execute(
        insert(Outbox)
        .values(
            envelope_id=uuid.UUID(envelope.envelope_id),
            stream=stream_key_of(settings, envelope),
            topic=envelope.topic,
            body=envelope.model_dump_json(),
            identity_id=identity_id,
        )
        .on_conflict_do_nothing(index_elements=[Outbox.envelope_id])
    )


def _claim(session: Session, limit: int, envelope_ids: list[str] | None) -> list[Any]:
    query = (
        select(Outbox.id, Outbox.envelope_id, Outbox.stream, Outbox.topic, Outbox.body)
        .where(Outbox.published_at.is_(None))
        .order_by(Outbox.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    if envelope_ids is not None:
        query = query.where(Outbox.envelope_id.in_([uuid.UUID(e) for e in envelope_ids]))
    return list(session.execute(query).all())


def _row_stream(settings: Settings, row: Any) -> str:
    """The stream key recorded with the row, unless it was recorded under the
    other layout (a row left pending across ``vigil migrate-state``)."""
    if ("{" in row.stream) == bool(settings.redis_cluster_nodes):
        return str(row.stream)
    return stream_key_of_topic(settings, row.topic, keys.shard_of(settings, str(row.envelope_id)))


def _publish(redis_client: redis.Redis, settings: Settings, rows: list[Any]) -> list[Any]:
    calls = []
    for row in rows:
        stream = _row_stream(settings, row)
        shard = keys.shard_of_key(settings, stream)
        calls.append(
            (
                (
                    sent_marker_key(settings, str(row.envelope_id), stream),
                    stream,
                    keys.metrics(settings, shard),
                ),
                (SENT_MARKER_TTL_S, settings.stream_maxlen, row.body, row.topic),
            )
        )
    return scripts.run_many(redis_client, "outbox_publish", calls)


def _mark_published(session: Session, ids: list[int]) -> None:
    session.execute(update(Outbox).where(Outbox.id.in_(ids)).values(published_at=func.now()))


def relay(
    session_factory: sessionmaker[Session],
    redis_client: redis.Redis,
    settings: Settings,
    limit: int = 500,
    *,
    envelope_ids: list[str] | None = None,
) -> dict[str, Any]:
    """Publish up to ``limit`` pending rows, oldest first, and mark them published.

    ``already_sent`` counts rows a previous relay had published but not marked.
    Redis or PostgreSQL errors propagate: the rows stay pending for the next run.
    """
    with session_factory() as session, session.begin():
        rows = _claim(session, limit, envelope_ids)
        if not rows:
            return {"status": "ok", "published": 0, "already_sent": 0}
        results = _publish(redis_client, settings, rows)
        _mark_published(session, [row.id for row in rows])
    published = sum(1 for result in results if result)
    return {"status": "ok", "published": published, "already_sent": len(rows) - published}


def pending_count(session: Session) -> int:
    return int(
        session.scalar(
            select(func.count()).select_from(Outbox).where(Outbox.published_at.is_(None))
        )
        or 0
    )


def purge_published(session: Session, *, older_than_days: int = 7) -> int:
    """Delete rows published long enough ago that no relay can still be holding them."""
    result = session.execute(
        delete(Outbox).where(
            Outbox.published_at < func.now() - func.make_interval(0, 0, 0, older_than_days)
        )
    )
    return int(result.rowcount or 0)
