"""The PostgreSQL reads behind the scrape-time gauges and ``vigil top``, in one place.

Each is an aggregate over an index (dead letters by task and reason, pending
outbox rows, the correlator's announced identities), so a scrape stays cheap
however large the tables grow.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from models.tables import CorrelatorFired, DeadLetter, Outbox


@dataclass(frozen=True)
class StoreGauges:
    """Row counts and ages read at scrape time."""

    dead_letters: list[tuple[str, str, int]]  # (task name, reason, rows)
    dead_letters_created: int  # ever stored: the id sequence, which purges do not lower
    outbox_pending: int
    outbox_oldest_age_s: float
    multi_actor_suspects: int


# Dead letters by (task, reason): read through ix_dead_letters_task_name_reason.
DEAD_LETTER_COUNTS = (
    select(DeadLetter.task_name, DeadLetter.reason, func.count())
    .group_by(DeadLetter.task_name, DeadLetter.reason)
    .order_by(DeadLetter.task_name, DeadLetter.reason)
)


# Dead letters ever stored, for a rate an hourly purge cannot cancel: the id
# sequence's last value (0 before the first), one read whatever the table's size.
DEAD_LETTERS_CREATED = text(
    "SELECT coalesce(pg_sequence_last_value("
    "pg_get_serial_sequence('dead_letters', 'id')::regclass), 0)"
)


def store_gauges(session: Session) -> StoreGauges:
    dead = session.execute(DEAD_LETTER_COUNTS).all()
    created = session.execute(DEAD_LETTERS_CREATED).scalar()
    pending = Outbox.published_at.is_(None)
    row = session.execute(
        select(
            select(func.count()).select_from(Outbox).where(pending).scalar_subquery(),
            select(func.extract("epoch", func.now() - func.min(Outbox.created_at)))
            .where(pending)
            .scalar_subquery(),
            select(func.count()).select_from(CorrelatorFired).scalar_subquery(),
        )
    ).one()
    return StoreGauges(
        dead_letters=[(task, reason, int(n)) for task, reason, n in dead],
        dead_letters_created=int(created or 0),
        outbox_pending=int(row[0] or 0),
        outbox_oldest_age_s=max(0.0, float(row[1] or 0.0)),
        multi_actor_suspects=int(row[2] or 0),
    )


def suspected_identities(session: Session, limit: int = 20) -> list[uuid.UUID]:
    """Identities the correlator currently announces as multi-actor, newest first."""
    return list(
        session.scalars(
            select(CorrelatorFired.identity_id)
            .order_by(CorrelatorFired.fired_at.desc())
            .limit(limit)
        )
    )
