"""Attribution: apply detections' observations to per-(identity, primitive) state.

Everything runs in the caller's transaction (the caller opens the session and
commits). Recomputes of one (identity, primitive) are serialised across workers
by a transaction-level advisory lock taken after the observations are inserted,
so the last transaction to take it reads every committed observation: the final
state is the one a serial run gives, whatever the interleaving.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from models.envelopes import envelope_id, make_envelope
from models.payloads import DetectionIn, ObservationIn
from services.attribution import repository as repo
from services.attribution.aggregate import (
    HASH_MAX_ROWS,
    Thresholds,
    aggregate,
    format_numeric,
    parse_numeric,
)
from services.attribution.repository import StateRecord
from services.core.settings import Settings
from services.envelopes import outbox

STATE_CHANGED = "attribution.profile.state_changed"


def observation_value(obs: ObservationIn) -> str | None:
    """The stored text of an observation, or None when its kind cannot use it."""
    if obs.kind == "numeric":
        number = parse_numeric(obs.value) if isinstance(obs.value, str) else obs.value
        return None if number is None else format_numeric(float(number))
    return obs.value if isinstance(obs.value, str) else format_numeric(obs.value)


@dataclass
class _Touched:
    kind: str
    count: int
    newest_at: datetime
    detection_id: str


def apply_detections(
    session: Session, settings: Settings, items: Sequence[DetectionIn]
) -> list[dict[str, Any]]:
    """Record the observations of ``items`` and recompute what they touched.

    Returns one entry per recomputed (identity, primitive) and one per unusable
    observation (a numeric value that is not a finite number). A redelivered
    detection inserts nothing, so it recomputes nothing and returns nothing.
    """
    results: list[dict[str, Any]] = []
    usable: list[tuple[DetectionIn, ObservationIn, str]] = []
    for det in items:
        for obs in det.observations:
            value = observation_value(obs)
            if value is None:
                results.append(
                    {
                        "detection_id": det.detection_id,
                        "primitive": obs.primitive,
                        "status": "rejected",
                        "reasons": [f"observations.{obs.primitive}: not a finite number"],
                        "changed": False,
                    }
                )
            else:
                usable.append((det, obs, value))
    if not usable:
        return results

    identities = repo.ensure_actor_identities(
        session, [(d.platform, d.user_id, d.observed_at) for d, _, _ in usable]
    )
    actor_of = {ident: actor for actor, ident in identities.items()}
    inserted = repo.insert_observations(
        session,
        [
            (
                identities[(d.platform, d.user_id)],
                o.primitive,
                o.kind,
                value,
                d.detection_id,
                d.observed_at,
            )
            for d, o, value in usable
        ],
    )
    touched = _group(inserted)
    repo.lock_states(session, touched)

    t = Thresholds.from_settings(settings)
    for key in sorted(touched, key=lambda k: (str(k[0]), k[1])):
        result = _recompute(session, settings, t, key, touched[key], actor_of.get(key[0]))
        results.append(result)
    return results


def _group(inserted: list[repo.InsertedObservation]) -> dict[tuple[uuid.UUID, str], _Touched]:
    touched: dict[tuple[uuid.UUID, str], _Touched] = {}
    for row in sorted(inserted, key=lambda r: (r.observed_at, r.evidence_ref)):
        key = (row.identity_id, row.primitive)
        prev = touched.get(key)
        count = prev.count + 1 if prev is not None and prev.kind == row.kind else 1
        touched[key] = _Touched(row.kind, count, row.observed_at, row.evidence_ref)
    return touched


def _recompute(
    session: Session,
    settings: Settings,
    thresholds: Thresholds,
    key: tuple[uuid.UUID, str],
    touched: _Touched,
    actor: tuple[str, str] | None,
) -> dict[str, Any]:
    identity_id, primitive = key
    kind = touched.kind
    old = repo.get_state(session, identity_id, primitive)
    if kind == "hash":
        window = repo.read_since_newest(
            session, identity_id, primitive, kind, thresholds.hash_window_s, HASH_MAX_ROWS
        )
    else:
        window = repo.read_latest(session, identity_id, primitive, kind, 2 * thresholds.window)
    same_kind = old is not None and old.kind == kind
    count = (old.observation_count if same_kind else 0) + touched.count
    result = aggregate(kind, window, thresholds, count)  # type: ignore[arg-type]
    newest = window[-1].observed_at if window else touched.newest_at
    if old is not None and old.last_observation_ts is not None and same_kind:
        newest = max(newest, old.last_observation_ts)
    old_state = old.state if old is not None else "unknown"
    changed = result.state != old_state
    record = repo.upsert_state(
        session,
        StateRecord(
            identity_id=identity_id,
            primitive=primitive,
            kind=kind,
            current_value=result.current_value,
            state=result.state,
            confidence=result.confidence,
            observation_count=count,
            last_change_ts=newest if changed else (old.last_change_ts if old else None),
            last_observation_ts=newest,
        ),
    )
    if changed:
        _enqueue_state_changed(session, settings, record, old_state, touched.detection_id, actor)
    return {
        "detection_id": touched.detection_id,
        "identity_id": str(identity_id),
        "primitive": primitive,
        "status": "applied",
        "state": record.state,
        "previous_state": old_state,
        "changed": changed,
    }


def _enqueue_state_changed(
    session: Session,
    settings: Settings,
    record: StateRecord,
    old_state: str,
    detection_id: str,
    actor: tuple[str, str] | None,
) -> None:
    platform, user_id = actor if actor is not None else (None, None)
    envelope = make_envelope(
        STATE_CHANGED,
        {
            "identity_id": str(record.identity_id),
            "platform": platform,
            "user_id": user_id,
            "primitive": record.primitive,
            "kind": record.kind,
            "old_state": old_state,
            "new_state": record.state,
            "current_value": record.current_value,
            "confidence": record.confidence,
            "observation_count": record.observation_count,
        },
        correlation_id=detection_id,
        envelope_id=envelope_id(detection_id, record.primitive, "state_changed"),
    )
    outbox.enqueue(session, settings, envelope, identity_id=record.identity_id)


# --- reads for the CLI --------------------------------------------------------------


def states_of_identity(session: Session, identity_id: uuid.UUID | str) -> list[dict[str, Any]]:
    """Every primitive's state of one identity, ordered by primitive."""
    return [s.to_json() for s in repo.get_states(session, uuid.UUID(str(identity_id)))]


def identity_of(session: Session, platform: str, user_id: str) -> dict[str, Any] | None:
    """An actor's identity with its states, or None for an actor never observed."""
    identity_id = repo.identity_of_actor(session, platform, user_id)
    if identity_id is None:
        return None
    return {
        "identity_id": str(identity_id),
        "actors": [
            {"platform": p, "user_id": u} for p, u in repo.actors_of_identity(session, identity_id)
        ],
        "states": states_of_identity(session, identity_id),
    }


def flagged_identities(session: Session) -> list[dict[str, Any]]:
    """Identities suspected of being shared (>= 2 primitives in multi_actor), with
    what the correlator last announced for each."""
    fired = repo.list_fired(session)
    out = []
    for identity_id, primitives in repo.list_multi_actor_identities(session):
        announced = fired.get(identity_id)
        out.append(
            {
                "identity_id": str(identity_id),
                "primitives": primitives,
                "actors": [
                    {"platform": p, "user_id": u}
                    for p, u in repo.actors_of_identity(session, identity_id)
                ],
                "announced_primitives": announced[0] if announced else None,
                "announced_at": announced[1].isoformat() if announced else None,
            }
        )
    return out
