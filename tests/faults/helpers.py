"""Input bursts, the expected state computed in process, and state snapshots."""

from __future__ import annotations

import json
from collections import defaultdict
from itertools import islice
from typing import Any

import redis
from celery import Celery

from services.core import dedupe
from tasks.names import INGEST_MESSAGE, INGEST_MESSAGES, QUEUE_INGEST
from tests import builders

TEXTS = (
    "hello there",
    "I feel sad today",
    "so lonely and scared",
    "I feel hopeless and worthless",
    "I want to die, I feel hopeless",
    "bad day but fine",
    "thanks, feeling better",
)
# Fields stamped with the processing time, which differs between two runs.
_BOND_CLOCK = ("phase_entered_at", "last_updated", "daily_msg_reset_at")


def burst(
    batches: int, per_batch: int, singles: int, users_per_batch: int = 10, tag: str = "m"
) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
    """Batches whose users appear in no other task, and single messages each for
    its own user: per-user outcomes then do not depend on task order, so a
    reference run in one process gives the state a correct run must end with."""
    batch_list: list[list[dict[str, Any]]] = []
    sequence = 0
    for batch_no in range(batches):
        batch = []
        for position in range(per_batch):
            batch.append(
                builders.message(
                    sequence,
                    TEXTS[(position * 7 + batch_no) % len(TEXTS)],
                    id=f"{tag}{sequence}",
                    user=f"{tag}b{batch_no}u{position % users_per_batch}",
                    guild=f"g{batch_no % 3}",
                    platform="discord",
                    channel_id="c1",
                )
            )
            sequence += 1
        batch_list.append(batch)
    single_list = []
    for position in range(singles):
        single_list.append(
            builders.message(
                sequence,
                TEXTS[position % len(TEXTS)],
                id=f"{tag}{sequence}",
                user=f"{tag}s{position}",
                guild=None if position % 5 == 0 else "g1",
            )
        )
        sequence += 1
    return batch_list, single_list


def send_burst(
    app: Celery, batches: list[list[dict[str, Any]]], singles: list[dict[str, Any]]
) -> None:
    """Batches interleaved with singles, over one producer connection, sent as
    VigilClient sends them: no answer kept (``ignore_result``)."""
    singles_per_batch = max(1, len(singles) // max(1, len(batches)))
    remaining = iter(singles)
    with app.producer_or_acquire() as producer:

        def send(task: str, kwargs: dict[str, Any]) -> None:
            app.send_task(
                task, kwargs=kwargs, queue=QUEUE_INGEST, producer=producer, ignore_result=True
            )

        for batch in batches:
            send(INGEST_MESSAGES, {"messages": batch})
            for message in islice(remaining, singles_per_batch):
                send(INGEST_MESSAGE, message)
        for message in remaining:
            send(INGEST_MESSAGE, message)


def run_reference(stack, batches, singles) -> dict[str, Any]:
    """The same input through the same service and detector, in this process,
    one task at a time, on a Redis database of its own."""
    from services.core.clients import get_redis
    from services.ingest.detector import LexiconDetector
    from services.ingest.service import IngestService
    from worker.settle import Ingest

    from .conftest import REFERENCE_DB

    settings = stack.settings(db=REFERENCE_DB)
    state_redis = get_redis(settings)
    state_redis.flushdb()
    service = Ingest(IngestService(state_redis, settings, stack.sessions(), LexiconDetector()))
    for batch in batches:
        service.messages(batch)
    for message in singles:
        service.messages([message])
    return snapshot(state_redis, settings)


def snapshot(state_redis: redis.Redis, settings) -> dict[str, Any]:
    """Everything vigil keeps in Redis for users, minus processing-time stamps."""
    from services.core import keys

    bonds: dict[str, Any] = {}
    events: dict[str, Any] = {}
    history: dict[str, Any] = {}
    markers: dict[str, str] = {}
    events_prefix = keys.events(settings, "")
    for key in state_redis.scan_iter(count=2000):
        if key.startswith(events_prefix):
            events[key] = [
                _no_clock_event(json.loads(event)) for event in state_redis.lrange(key, 0, -1)
            ]
        elif key.startswith(settings.bond_prefix):
            bond = json.loads(state_redis.get(key))
            for clock_field in _BOND_CLOCK:
                bond.pop(clock_field, None)
            bonds[key] = bond
        elif key.startswith(settings.history_prefix):
            history[key] = state_redis.zrange(key, 0, -1, withscores=True)
        elif key.startswith(f"{settings.vigil_prefix}dedupe:"):
            # Dedupe states (counted/limited/done), without their first-seen stamps.
            markers[key] = dedupe.states(state_redis, settings, key)
    stream: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for _id, fields in state_redis.xrange(settings.stream_bond):
        envelope = json.loads(fields["data"])
        envelope.pop("published_at", None)
        stream[envelope["payload"].get("user_id", "")].append(envelope)
    return {
        "bonds": bonds,
        "events": events,
        "history": history,
        "markers": markers,
        "stream": dict(stream),
    }


def _no_clock_event(event: dict[str, Any]) -> dict[str, Any]:
    event.pop("timestamp", None)
    return event


def count_markers(state_redis: redis.Redis, settings, kind: str = "msg") -> dict[str, int]:
    """How many message (or detection, ``kind="det"``) ids are in each dedupe state."""
    counts: dict[str, int] = defaultdict(int)
    match = f"{settings.vigil_prefix}dedupe:{kind}:*"
    for key in state_redis.scan_iter(match=match, count=5000):
        for state in dedupe.states(state_redis, settings, key).values():
            counts[state] += 1
    return dict(counts)


def diff(expected: dict[str, Any], got: dict[str, Any], limit: int = 5) -> list[str]:
    """A short, readable list of differences (ids only, no message text)."""
    differences = []
    for part in expected:
        want, have = expected[part], got.get(part, {})
        missing = sorted(set(want) - set(have))
        extra = sorted(set(have) - set(want))
        changed = sorted(key for key in set(want) & set(have) if want[key] != have[key])
        if missing or extra or changed:
            differences.append(
                f"{part}: {len(missing)} missing {missing[:limit]}, {len(extra)} extra "
                f"{extra[:limit]}, {len(changed)} differ {changed[:limit]}"
            )
    return differences
