"""Input bursts, the expected state computed in process, and state snapshots."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from celery import Celery

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
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
    out: list[list[dict[str, Any]]] = []
    n = 0
    for b in range(batches):
        batch = []
        for i in range(per_batch):
            batch.append(
                {
                    "message_id": f"{tag}{n}",
                    "platform": "discord",
                    "guild_id": f"g{b % 3}",
                    "channel_id": "c1",
                    "user_id": f"{tag}b{b}u{i % users_per_batch}",
                    "text": TEXTS[(i * 7 + b) % len(TEXTS)],
                    "sent_at": (T0 + timedelta(seconds=n)).isoformat(),
                }
            )
            n += 1
        out.append(batch)
    single = []
    for i in range(singles):
        single.append(
            {
                "message_id": f"{tag}{n}",
                "guild_id": None if i % 5 == 0 else "g1",
                "user_id": f"{tag}s{i}",
                "text": TEXTS[i % len(TEXTS)],
                "sent_at": (T0 + timedelta(seconds=n)).isoformat(),
            }
        )
        n += 1
    return out, single


def send_burst(
    app: Celery, batches: list[list[dict[str, Any]]], singles: list[dict[str, Any]]
) -> None:
    """Batches interleaved with singles, over one producer connection."""
    per = max(1, len(singles) // max(1, len(batches)))
    it = iter(singles)
    with app.producer_or_acquire() as producer:
        for batch in batches:
            app.send_task(
                "vigil.ingest.messages",
                kwargs={"messages": batch},
                queue="ingest",
                producer=producer,
            )
            for _ in range(per):
                m = next(it, None)
                if m is not None:
                    app.send_task(
                        "vigil.ingest.message", kwargs=m, queue="ingest", producer=producer
                    )
        for m in it:
            app.send_task("vigil.ingest.message", kwargs=m, queue="ingest", producer=producer)


def run_reference(stack, batches, singles) -> dict[str, Any]:
    """The same input through the same service and detector, in this process,
    one task at a time, on a Redis database of its own."""
    from services.core.clients import get_redis
    from services.ingest.detector import LexiconDetector
    from services.ingest.service import IngestService

    from .conftest import REFERENCE_DB

    settings = stack.settings(db=REFERENCE_DB)
    r = get_redis(settings)
    r.flushdb()
    svc = IngestService(r, settings, stack.sessions(), LexiconDetector())
    for batch in batches:
        svc.messages(batch)
    for m in singles:
        svc.messages([m])
    return snapshot(r, settings)


def snapshot(r: redis.Redis, settings) -> dict[str, Any]:
    """Everything vigil keeps in Redis for users, minus processing-time stamps."""
    from services.core import keys

    bonds: dict[str, Any] = {}
    events: dict[str, Any] = {}
    history: dict[str, Any] = {}
    markers: dict[str, str] = {}
    events_prefix = keys.events(settings, "")
    for key in r.scan_iter(count=2000):
        if key.startswith(events_prefix):
            events[key] = [_no_clock_event(json.loads(e)) for e in r.lrange(key, 0, -1)]
        elif key.startswith(settings.bond_prefix):
            bond = json.loads(r.get(key))
            for f in _BOND_CLOCK:
                bond.pop(f, None)
            bonds[key] = bond
        elif key.startswith(settings.history_prefix):
            history[key] = r.zrange(key, 0, -1, withscores=True)
        elif key.startswith(f"{settings.vigil_prefix}seen:"):
            markers[key] = r.get(key)
    stream: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for _id, fields in r.xrange(settings.stream_bond):
        env = json.loads(fields["data"])
        env.pop("published_at", None)
        stream[env["payload"].get("user_id", "")].append(env)
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


def count_markers(r: redis.Redis, settings) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    match = f"{settings.vigil_prefix}seen:msg:*"
    keys_ = list(r.scan_iter(match=match, count=5000))
    if keys_:
        for value in r.mget(keys_):
            out[str(value)] += 1
    return dict(out)


def diff(expected: dict[str, Any], got: dict[str, Any], limit: int = 5) -> list[str]:
    """A short, readable list of differences (ids only, no message text)."""
    out = []
    for part in expected:
        e, g = expected[part], got.get(part, {})
        missing = sorted(set(e) - set(g))
        extra = sorted(set(g) - set(e))
        changed = sorted(k for k in set(e) & set(g) if e[k] != g[k])
        if missing or extra or changed:
            out.append(
                f"{part}: {len(missing)} missing {missing[:limit]}, {len(extra)} extra "
                f"{extra[:limit]}, {len(changed)} differ {changed[:limit]}"
            )
    return out
