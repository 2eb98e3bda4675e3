"""PostgreSQL tables (SQLAlchemy 2). Alembic migrations are the source of the schema;
``tests/alembic`` checks that these models and the migrations agree."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _now() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class Identity(Base):
    """A behavioural identity. v0: one stub per actor; a clusterer may merge later."""

    __tablename__ = "identities"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    schema_version: Mapped[int] = mapped_column(Integer, nullable=False, server_default="1")
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class Actor(Base):
    """A platform account. The FK to its identity is deferred so actor and stub
    identity can be written in either order inside one transaction."""

    __tablename__ = "actors"
    __table_args__ = (UniqueConstraint("platform", "user_id", name="uq_actors_platform_user"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    platform: Mapped[str] = mapped_column(Text, nullable=False)
    user_id: Mapped[str] = mapped_column(Text, nullable=False)
    identity_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True),
        ForeignKey("identities.id", ondelete="CASCADE", deferrable=True, initially="DEFERRED"),
        nullable=False,
        index=True,
    )
    first_seen_at: Mapped[datetime] = _now()
    last_seen_at: Mapped[datetime] = _now()


class Observation(Base):
    """One attribution observation. Unique on (evidence_ref, primitive): a
    redelivered detection inserts nothing."""

    __tablename__ = "observations"
    __table_args__ = (
        UniqueConstraint("evidence_ref", "primitive", name="uq_observations_evidence_primitive"),
        Index(
            "ix_observations_identity_primitive_recent",
            "identity_id",
            "primitive",
            text("observed_at DESC"),
            text("id DESC"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    identity_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("identities.id", ondelete="CASCADE"), nullable=False
    )
    primitive: Mapped[str] = mapped_column(Text, nullable=False)
    kind: Mapped[str] = mapped_column(Text, nullable=False)
    value: Mapped[str] = mapped_column(Text, nullable=False)
    evidence_ref: Mapped[str] = mapped_column(Text, nullable=False)
    observed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    created_at: Mapped[datetime] = _now()


class AttributionState(Base):
    """Aggregated state per (identity, primitive), the columns of the seed's row."""

    __tablename__ = "attribution_state"
    __table_args__ = (
        # The correlator reads only multi_actor rows; this keeps that read tiny on 1M rows.
        Index(
            "ix_attribution_state_multi_actor",
            "identity_id",
            "primitive",
            postgresql_where=text("state = 'multi_actor'"),
        ),
    )

    identity_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True),
        ForeignKey("identities.id", ondelete="CASCADE"),
        primary_key=True,
    )
    primitive: Mapped[str] = mapped_column(Text, primary_key=True)
    kind: Mapped[str] = mapped_column(Text, nullable=False)
    current_value: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(Text, nullable=False)
    confidence: Mapped[float] = mapped_column(Double, nullable=False)
    observation_count: Mapped[int] = mapped_column(Integer, nullable=False)
    last_change_ts: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_observation_ts: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    schema_version: Mapped[int] = mapped_column(Integer, nullable=False, server_default="1")
    updated_at: Mapped[datetime] = _now()


class CorrelatorFired(Base):
    """What the correlator last announced per identity; survives restarts."""

    __tablename__ = "correlator_fired"

    identity_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("identities.id", ondelete="CASCADE"), primary_key=True
    )
    primitives: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False)
    fired_at: Mapped[datetime] = _now()


class Outbox(Base):
    """Envelopes about PostgreSQL-side changes, committed with the change and
    relayed to Redis Streams afterwards."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_pending", "id", postgresql_where=text("published_at IS NULL")),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    envelope_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False, unique=True)
    stream: Mapped[str] = mapped_column(Text, nullable=False)
    topic: Mapped[str] = mapped_column(Text, nullable=False)
    body: Mapped[str] = mapped_column(Text, nullable=False)
    identity_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), index=True)
    created_at: Mapped[datetime] = _now()
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class DeadLetter(Base):
    """A payload that can never succeed, kept with its reason for replay or purge."""

    __tablename__ = "dead_letters"
    # The scrape-time gauge counts rows by (task, reason) and listings filter by
    # task: both read this index, not the table (services/metrics/queries.py).
    __table_args__ = (Index("ix_dead_letters_task_name_reason", "task_name", "reason"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    task_name: Mapped[str] = mapped_column(Text, nullable=False)
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    details: Mapped[str] = mapped_column(Text, nullable=False, server_default="[]")
    payload: Mapped[str] = mapped_column(Text, nullable=False)
    payload_truncated: Mapped[bool] = mapped_column(nullable=False, server_default=text("false"))
    user_id: Mapped[str | None] = mapped_column(Text, index=True)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now(), index=True
    )
    replayed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    replay_count: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
