"""Every attribution query. Functions take the caller's Session and never commit.

Writes are single statements that cannot race: upserts use ``INSERT ... ON
CONFLICT`` (never select-then-insert), sets of rows go in one statement through
``unnest``, and readers of a series read a bounded, index-ordered slice of it.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from services.attribution.aggregate import Obs

STATE_COLUMNS = (
    "identity_id, primitive, kind, current_value, state, confidence, observation_count,"
    " last_change_ts, last_observation_ts, schema_version, updated_at"
)


@dataclass(frozen=True, slots=True)
class StateRecord:
    identity_id: uuid.UUID
    primitive: str
    kind: str
    current_value: str | None
    state: str
    confidence: float
    observation_count: int
    last_change_ts: datetime | None
    last_observation_ts: datetime | None
    schema_version: int = 1
    updated_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["identity_id"] = str(self.identity_id)
        for key in ("last_change_ts", "last_observation_ts", "updated_at"):
            out[key] = out[key].isoformat() if out[key] is not None else None
        return out


@dataclass(frozen=True, slots=True)
class InsertedObservation:
    identity_id: uuid.UUID
    primitive: str
    kind: str
    evidence_ref: str
    observed_at: datetime


def lock_key(*parts: str) -> int:
    """A signed 64-bit advisory-lock key, the same in every process."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


CORRELATOR_LOCK = lock_key("vigil", "attribution", "correlator")


def state_lock_key(identity_id: uuid.UUID, primitive: str) -> int:
    return lock_key("vigil", "attribution", "state", str(identity_id), primitive)


# --- actors and identities ---------------------------------------------------------

_UPSERT_ACTORS = text(
    """
    INSERT INTO actors AS a (platform, user_id, identity_id, first_seen_at, last_seen_at)
    SELECT * FROM unnest(
        CAST(:platforms AS text[]), CAST(:user_ids AS text[]),
        CAST(:identity_ids AS uuid[]), CAST(:seen AS timestamptz[]), CAST(:seen AS timestamptz[])
    )
    ON CONFLICT ON CONSTRAINT uq_actors_platform_user DO UPDATE
        SET first_seen_at = least(a.first_seen_at, excluded.first_seen_at),
            last_seen_at = greatest(a.last_seen_at, excluded.last_seen_at)
    RETURNING platform, user_id, identity_id
    """
)

_INSERT_IDENTITIES = text(
    """
    INSERT INTO identities (id)
    SELECT unnest(CAST(:ids AS uuid[]))
    ON CONFLICT (id) DO NOTHING
    """
)


def ensure_actor_identities(
    session: Session, actors: Iterable[tuple[str, str, datetime]]
) -> dict[tuple[str, str], uuid.UUID]:
    """Identity of each (platform, user_id), creating actor and stub identity as needed.

    The actor upsert proposes a fresh uuid and returns whichever identity won;
    the identity row is then inserted for the returned ids (a no-op for existing
    ones). The actor's FK to identities is deferred, so the order is legal, and
    a concurrent first sighting waits on the unique index instead of creating a
    second identity.
    """
    seen: dict[tuple[str, str], datetime] = {}
    for platform, user_id, at in actors:
        key = (platform, user_id)
        seen[key] = min(seen[key], at) if key in seen else at
    if not seen:
        return {}
    # Sorted so two batches lock shared actor rows in the same order (no deadlock).
    keys = sorted(seen)
    rows = session.execute(
        _UPSERT_ACTORS,
        {
            "platforms": [k[0] for k in keys],
            "user_ids": [k[1] for k in keys],
            "identity_ids": [uuid.uuid4() for _ in keys],
            "seen": [seen[k] for k in keys],
        },
    ).all()
    result = {(row.platform, row.user_id): row.identity_id for row in rows}
    session.execute(_INSERT_IDENTITIES, {"ids": sorted(set(result.values()))})
    return result


def ensure_actor_identity(
    session: Session, platform: str, user_id: str, seen_at: datetime
) -> uuid.UUID:
    return ensure_actor_identities(session, [(platform, user_id, seen_at)])[(platform, user_id)]


def identity_of_actor(session: Session, platform: str, user_id: str) -> uuid.UUID | None:
    return session.execute(
        text("SELECT identity_id FROM actors WHERE platform = :p AND user_id = :u"),
        {"p": platform, "u": user_id},
    ).scalar_one_or_none()


def actors_of_identity(session: Session, identity_id: uuid.UUID) -> list[tuple[str, str]]:
    rows = session.execute(
        text(
            "SELECT platform, user_id FROM actors WHERE identity_id = :i ORDER BY platform, user_id"
        ),
        {"i": identity_id},
    ).all()
    return [(row.platform, row.user_id) for row in rows]


# --- observations -------------------------------------------------------------------

_INSERT_OBSERVATIONS = text(
    """
    INSERT INTO observations (identity_id, primitive, kind, value, evidence_ref, observed_at)
    SELECT * FROM unnest(
        CAST(:identity_ids AS uuid[]), CAST(:primitives AS text[]), CAST(:kinds AS text[]),
        CAST(:vals AS text[]), CAST(:refs AS text[]), CAST(:observed AS timestamptz[])
    )
    ON CONFLICT ON CONSTRAINT uq_observations_evidence_primitive DO NOTHING
    RETURNING identity_id, primitive, kind, evidence_ref, observed_at
    """
)


def insert_observations(
    session: Session,
    rows: Sequence[tuple[uuid.UUID, str, str, str, str, datetime]],
) -> list[InsertedObservation]:
    """Insert (identity_id, primitive, kind, value, evidence_ref, observed_at) rows;
    return only those that were new. A redelivered detection returns nothing."""
    unique = {(r[4], r[1]): r for r in reversed(rows)}
    ordered = [unique[k] for k in sorted(unique)]
    if not ordered:
        return []
    result = session.execute(
        _INSERT_OBSERVATIONS,
        {
            "identity_ids": [r[0] for r in ordered],
            "primitives": [r[1] for r in ordered],
            "kinds": [r[2] for r in ordered],
            "vals": [r[3] for r in ordered],
            "refs": [r[4] for r in ordered],
            "observed": [r[5] for r in ordered],
        },
    ).all()
    return [InsertedObservation(*row) for row in result]


def lock_states(session: Session, keys: Iterable[tuple[uuid.UUID, str]]) -> None:
    """Transaction-level advisory locks on (identity, primitive) pairs, in key order
    so two transactions wanting overlapping sets cannot deadlock."""
    lock_keys = sorted({state_lock_key(i, p) for i, p in keys})
    if lock_keys:
        session.execute(
            text("SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:keys AS bigint[])) AS k"),
            {"keys": lock_keys},
        ).all()


_READ_LATEST = text(
    """
    SELECT value, observed_at FROM observations
    WHERE identity_id = :i AND primitive = :p AND kind = :k
    ORDER BY observed_at DESC, id DESC
    LIMIT :n
    """
)

_READ_SINCE_NEWEST = text(
    """
    SELECT value, observed_at FROM observations
    WHERE identity_id = :i AND primitive = :p AND kind = :k
      AND observed_at >= (
        SELECT max(observed_at) FROM observations
        WHERE identity_id = :i AND primitive = :p AND kind = :k
      ) - make_interval(secs => :s)
    ORDER BY observed_at DESC, id DESC
    LIMIT :n
    """
)


def read_latest(
    session: Session, identity_id: uuid.UUID, primitive: str, kind: str, limit: int
) -> list[Obs]:
    """The newest ``limit`` observations, returned oldest first."""
    rows = session.execute(
        _READ_LATEST, {"i": identity_id, "p": primitive, "k": kind, "n": limit}
    ).all()
    return [Obs(row.value, row.observed_at) for row in reversed(rows)]


def read_since_newest(
    session: Session,
    identity_id: uuid.UUID,
    primitive: str,
    kind: str,
    window_s: int,
    limit: int,
) -> list[Obs]:
    """Observations within ``window_s`` of the newest one (at most ``limit``), oldest first."""
    rows = session.execute(
        _READ_SINCE_NEWEST,
        {"i": identity_id, "p": primitive, "k": kind, "s": window_s, "n": limit},
    ).all()
    return [Obs(row.value, row.observed_at) for row in reversed(rows)]


# --- attribution state --------------------------------------------------------------

_UPSERT_STATE = text(
    f"""
    INSERT INTO attribution_state AS s ({STATE_COLUMNS})
    VALUES (:identity_id, :primitive, :kind, :current_value, :state, :confidence,
            :observation_count, :last_change_ts, :last_observation_ts, :schema_version, now())
    ON CONFLICT (identity_id, primitive) DO UPDATE SET
        kind = excluded.kind,
        current_value = excluded.current_value,
        state = excluded.state,
        confidence = excluded.confidence,
        observation_count = excluded.observation_count,
        last_change_ts = excluded.last_change_ts,
        last_observation_ts = excluded.last_observation_ts,
        schema_version = excluded.schema_version,
        updated_at = now()
    RETURNING {STATE_COLUMNS}
    """  # noqa: S608 (column list is a constant)
)


def upsert_state(session: Session, record: StateRecord) -> StateRecord:
    params = asdict(record)
    params.pop("updated_at")
    row = session.execute(_UPSERT_STATE, params).one()
    return StateRecord(*row)


def get_state(session: Session, identity_id: uuid.UUID, primitive: str) -> StateRecord | None:
    row = session.execute(
        text(
            f"SELECT {STATE_COLUMNS} FROM attribution_state"  # noqa: S608
            " WHERE identity_id = :i AND primitive = :p"
        ),
        {"i": identity_id, "p": primitive},
    ).one_or_none()
    return StateRecord(*row) if row is not None else None


def get_states(session: Session, identity_id: uuid.UUID) -> list[StateRecord]:
    rows = session.execute(
        text(
            f"SELECT {STATE_COLUMNS} FROM attribution_state"  # noqa: S608
            " WHERE identity_id = :i ORDER BY primitive"
        ),
        {"i": identity_id},
    ).all()
    return [StateRecord(*row) for row in rows]


# Shaped for the partial index on state = 'multi_actor': an index-only scan of the
# flagged rows, already in (identity, primitive) order.
_MULTI_ACTOR = text(
    """
    SELECT identity_id, array_agg(primitive ORDER BY primitive) AS primitives
    FROM attribution_state
    WHERE state = 'multi_actor'
    GROUP BY identity_id
    HAVING count(*) >= :at_least
    ORDER BY identity_id
    """
)


def list_multi_actor_identities(
    session: Session, at_least: int = 2
) -> list[tuple[uuid.UUID, list[str]]]:
    """Identities with at least ``at_least`` primitives in multi_actor, with those
    primitives sorted."""
    rows = session.execute(_MULTI_ACTOR, {"at_least": at_least}).all()
    return [(row.identity_id, list(row.primitives)) for row in rows]


# --- correlator memory --------------------------------------------------------------


def try_lock_correlator(session: Session) -> bool:
    return bool(
        session.execute(
            text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": CORRELATOR_LOCK}
        ).scalar_one()
    )


def list_fired(session: Session) -> dict[uuid.UUID, tuple[list[str], datetime]]:
    rows = session.execute(
        text("SELECT identity_id, primitives, fired_at FROM correlator_fired")
    ).all()
    return {row.identity_id: (list(row.primitives), row.fired_at) for row in rows}


def upsert_fired(session: Session, identity_id: uuid.UUID, primitives: list[str]) -> datetime:
    """Record what was announced; returns the firing time (the transaction's clock)."""
    return session.execute(
        text(
            """
            INSERT INTO correlator_fired AS f (identity_id, primitives, fired_at)
            VALUES (:i, CAST(:p AS text[]), now())
            ON CONFLICT (identity_id) DO UPDATE
                SET primitives = excluded.primitives, fired_at = excluded.fired_at
            RETURNING fired_at
            """
        ),
        {"i": identity_id, "p": primitives},
    ).scalar_one()


def delete_fired(session: Session, identity_ids: Sequence[uuid.UUID]) -> int:
    if not identity_ids:
        return 0
    result = session.execute(
        text("DELETE FROM correlator_fired WHERE identity_id = ANY(CAST(:ids AS uuid[]))"),
        {"ids": list(identity_ids)},
    )
    return result.rowcount


# --- erase --------------------------------------------------------------------------

_ERASE_ORDER = (
    ("observations", "DELETE FROM observations WHERE identity_id = :i"),
    ("attribution_state", "DELETE FROM attribution_state WHERE identity_id = :i"),
    ("correlator_fired", "DELETE FROM correlator_fired WHERE identity_id = :i"),
    ("outbox", "DELETE FROM outbox WHERE identity_id = :i"),
    ("actors", "DELETE FROM actors WHERE identity_id = :i"),
    ("identities", "DELETE FROM identities WHERE id = :i"),
)


def erase_actor(session: Session, platform: str, user_id: str) -> dict[str, int]:
    """Delete an actor, its identity and everything recorded under it; row counts
    per table. Unknown actors erase nothing (the counts are all zero)."""
    counts = dict.fromkeys((name for name, _ in _ERASE_ORDER), 0)
    identity_id = session.execute(
        text("SELECT identity_id FROM actors WHERE platform = :p AND user_id = :u FOR UPDATE"),
        {"p": platform, "u": user_id},
    ).scalar_one_or_none()
    if identity_id is None:
        return counts
    for name, sql in _ERASE_ORDER:
        counts[name] = session.execute(text(sql), {"i": identity_id}).rowcount
    return counts
