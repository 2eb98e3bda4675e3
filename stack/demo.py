"""A demo feed: a few chat communities pushed through the real pipeline.

It enqueues through ``VigilClient`` exactly as a frontend would (batches for
most, a few single messages), waits for each task's outcome, runs the
multi-actor correlator once, and reports what happened from the outcomes and
the streams. The report carries counts and ids only, never message text.

Cast, from ``plan``: a few users whose messages worsen over time (so their
phase climbs), a few with a small daily cap set first (so they get
rate-limited), some direct messages (no guild), a few hostile payloads (so
they are rejected and dead-lettered), re-sent messages (duplicates), and a few
accounts whose behavioural observations alternate between two values on two
primitives (so the correlator flags them as shared).
"""

from __future__ import annotations

import random
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from celery import Celery
from celery.exceptions import TimeoutError as ResultTimeout
from pydantic import BaseModel
from redis.client import NEVER_DECODE

from models.envelopes import STREAM_TOPICS
from services.core import clients
from services.core.settings import Settings
from services.envelopes import streams
from tasks import names
from vigil_client import VigilClient, answer, sender_app

GUILDS = ("night-owls", "speedrun-club", "study-hall", "pixel-artists")
BATCH_SIZE = 50
CAP = 3
CAPPED_MESSAGES = 6
OBSERVATIONS_PER_ACCOUNT = 6
CORRELATE_TASK = names.PERIODIC_CORRELATE
SET_CAP_TASK = names.ADMIN_SET_CAP

# Chat lines. The worrying ones use phrases of the built-in detector's lexicon
# (services/ingest/detector.py), so severities, phases and risk levels really vary.
SAFE_LINES = (
    "anyone up for ranked tonight?",
    "lol that clip was insane",
    "gg everyone, good run",
    "just finished the new chapter, no spoilers pls",
    "what time is the event on saturday?",
    "brb grabbing food",
    "that boss fight took me 40 tries",
    "can someone share the study notes from today",
    "new drawing is up in the showcase channel",
    "morning all",
    "who else is watching the finals",
    "my cat just walked over the keyboard",
    "ok the patch notes are wild",
    "thanks for the help yesterday!",
    "does anyone know a good tutorial for shading",
    "pizza or tacos, go",
    "finally hit diamond",
    "the server music bot is down again",
    "welcome to the new folks",
    "haha same",
)
MILD_LINES = (
    "ugh bad day at work",
    "kinda stressed about the exam tomorrow",
    "feeling a bit sad today tbh",
    "so tired of this group project",
    "anxious about the interview, wish me luck",
)
# One user's messages, in order: each a little worse than the one before.
ESCALATION = (
    "ugh, bad day again",
    "so stressed lately, can't sleep",
    "i feel so alone, nobody texts back",
    "been crying all night, i'm exhausted",
    "honestly feeling hopeless about everything",
    "i feel worthless, like nobody cares",
    "i just want to die",
    "i can't go on, i want to end it all",
)


class NoWorker(RuntimeError):
    """Nothing would process the feed: no worker answers a ping."""


class DemoReport(BaseModel):
    """What a demo run did: counts and ids only."""

    run_id: str
    users: int
    guilds: list[str]
    messages_sent: int
    detections_sent: int
    outcomes: dict[str, int]
    detection_outcomes: dict[str, int]
    phase_transitions: int
    capped_users: list[str]
    escalating_users: list[str]
    shared_accounts: list[str]
    envelopes: dict[str, int]
    flagged_identities: list[dict[str, Any]]
    correlator: dict[str, Any] | None
    unfinished_tasks: int


@dataclass
class Plan:
    run_id: str
    users: list[str]
    caps: dict[str, int]
    escalating: list[str]
    shared: list[str]
    batches: list[list[dict[str, Any]]]
    singles: list[dict[str, Any]]
    detections: list[dict[str, Any]]
    by_guild: Counter = field(default_factory=Counter)

    @property
    def messages_sent(self) -> int:
        return sum(len(b) for b in self.batches) + len(self.singles)


def plan(
    n_users: int = 40,
    n_messages: int = 600,
    *,
    seed: int | None = None,
    now: datetime | None = None,
    run_id: str | None = None,
) -> Plan:
    """Decide every payload up front. The seed fixes the shape of the feed; ids
    are fresh per run (``run_id``) so a second run is not all duplicates."""
    rng = random.Random(seed)
    now = now or datetime.now(UTC)
    run_id = run_id or secrets.token_hex(3)
    base = 10**17 + int(run_id, 16) * 1000  # snowflake-like ids, distinct per run
    users = [str(base + i) for i in range(max(4, n_users))]
    home = {u: GUILDS[i % len(GUILDS)] for i, u in enumerate(users)}

    n_esc = max(1, len(users) // 10)
    n_cap = max(1, len(users) // 13)
    n_shared = max(1, len(users) // 20)
    escalating = users[:n_esc]
    capped = users[n_esc : n_esc + n_cap]
    shared = users[n_esc + n_cap : n_esc + n_cap + n_shared]
    control = users[n_esc + n_cap + n_shared]  # observed too, but consistently
    ordinary = users[n_esc + n_cap :]

    counter = iter(range(10**9))

    def message(user: str, text: str, guild: str | None) -> dict[str, Any]:
        return {
            "message_id": f"{run_id}-{next(counter):06d}",
            "platform": "discord",
            "guild_id": guild,
            "channel_id": f"{guild or 'dm'}-general",
            "user_id": user,
            "text": text,
        }

    hostile = [
        message("bad:user*", "hello", GUILDS[0]),  # id that would reach other keys
        message(ordinary[0], "a" * 9000, GUILDS[1]),  # over the text bound
        {**message(ordinary[-1], "hi", GUILDS[2]), "sent_at": "2026-01-01T10:00:00"},  # naive
        {**message(ordinary[0], "hi", GUILDS[3]), "role": "admin"},  # unknown field
    ]
    scripted: list[dict[str, Any]] = []
    for user in escalating:
        scripted += [message(user, line, home[user]) for line in ESCALATION]
    for user in capped:
        scripted += [
            message(user, rng.choice(SAFE_LINES), home[user]) for _ in range(CAPPED_MESSAGES)
        ]
    n_dupes = max(1, min(5, n_messages // 20))
    n_free = max(len(ordinary), n_messages - len(scripted) - len(hostile) - n_dupes)
    chatter = []
    for i in range(n_free):
        user = ordinary[i % len(ordinary)] if i < len(ordinary) else rng.choice(ordinary)
        mild = user not in shared and user != control and rng.random() < 0.08
        text = rng.choice(MILD_LINES if mild else SAFE_LINES)
        guild = None if rng.random() < 0.1 else home[user]
        chatter.append(message(user, text, guild))

    # Interleave so every community is busy at once, keeping each script in order.
    stream: list[dict[str, Any]] = []
    queues = [list(scripted), list(chatter)]
    while any(queues):
        pick = rng.choices([0, 1], weights=[len(queues[0]), len(queues[1])])[0]
        stream.append(queues[pick].pop(0))
    span = timedelta(hours=1)
    for i, msg in enumerate(stream):
        msg["sent_at"] = (now - span + span * (i / max(1, len(stream)))).isoformat()
    for msg in hostile:
        msg.setdefault("sent_at", now.isoformat())

    singles = [hostile[0], hostile[3], *chatter[-3:]]
    single_ids = {m["message_id"] for m in chatter[-3:]}
    batched = [m for m in stream if m["message_id"] not in single_ids]
    # Insert the other hostile payloads inside batches: they fail alone, the batch goes on.
    batched.insert(len(batched) // 3, hostile[1])
    batched.insert(2 * len(batched) // 3, hostile[2])
    dupes = [dict(m) for m in rng.sample(chatter[: len(chatter) - 3], n_dupes)]
    batches = [batched[i : i + BATCH_SIZE] for i in range(0, len(batched), BATCH_SIZE)]
    batches.append(dupes)  # re-sent by a retrying frontend

    detections = []
    alternating = {
        "typing_cadence": ("burst", "steady"),
        "client_locale": ("en-US", "pt-BR"),
    }
    for user in [*shared, control]:
        for k in range(OBSERVATIONS_PER_ACCOUNT):
            flip = k % 2 if user in shared else 0
            observations = [
                {"primitive": p, "kind": "categorical", "value": values[flip]}
                for p, values in alternating.items()
            ]
            observations.append(
                {"primitive": "active_hours", "kind": "categorical", "value": "evening"}
            )
            detections.append(
                {
                    "detection_id": f"{run_id}-det-{user[-4:]}-{k}",
                    "platform": "discord",
                    "user_id": user,
                    "guild_id": home[user],
                    "observed_at": (now - timedelta(minutes=30 - 5 * k)).isoformat(),
                    "severity": "safe",
                    "phase": "dormant",
                    "risk_level": "low",
                    "confidence": 0.7,
                    "signals": {"source": "behaviour"},
                    "observations": observations,
                }
            )

    by_guild = Counter(m.get("guild_id") or "(direct)" for b in batches for m in b)
    by_guild.update(m.get("guild_id") or "(direct)" for m in singles)
    return Plan(
        run_id=run_id,
        users=users,
        caps=dict.fromkeys(capped, CAP),
        escalating=escalating,
        shared=shared,
        batches=batches,
        singles=singles,
        detections=detections,
        by_guild=by_guild,
    )


def _release(app: Celery, results: list[Any]) -> None:
    """Unsubscribe from every answer now, while Redis is up. An AsyncResult does
    it when collected, which may be at exit, after the stack stopped Redis, where
    Celery's result consumer would retry reconnecting for each one."""
    for result in results:
        app.backend.remove_pending_result(result)
        result.backend = None


class _OutcomeCelery(Celery):
    """Ingest tasks keep no result by default; the demo asks for them per send
    (``ignore_result=False`` in the message), so it can report each outcome."""

    def send_task(self, name: str, *args: Any, **options: Any):
        options.setdefault("ignore_result", False)
        return super().send_task(name, *args, **options)


def make_app(settings: Settings) -> Celery:
    app = sender_app(
        clients.broker_url(settings),
        clients.result_backend(settings),
        name="vigil-demo",
        cls=_OutcomeCelery,
        broker_transport_options=clients.broker_transport_options(settings),
    )
    clients.configure_results(app, settings)
    return app


def _stream_marks(redis_client: redis.Redis, settings: Settings) -> dict[tuple[str, str], str]:
    """The newest entry id of each stream (each shard of it on a cluster)."""
    marks = {}
    for stream_name in STREAM_TOPICS:
        for key in streams.stream_keys(settings, stream_name):
            newest = redis_client.execute_command(
                "XREVRANGE", key, "+", "-", "COUNT", 1, **{NEVER_DECODE: []}
            )
            marks[(stream_name, key)] = newest[0][0].decode() if newest else "0-0"
    return marks


def envelopes_since(
    redis_client: redis.Redis, settings: Settings, marks: dict[tuple[str, str], str]
) -> dict[str, int]:
    """Envelopes per topic added after ``marks`` (one entry id per stream key)."""
    counts: Counter = Counter()
    for (stream_name, key), mark in marks.items():
        start = f"({mark}"
        while True:
            entries = redis_client.execute_command(
                "XRANGE", key, start, "+", "COUNT", 1000, **{NEVER_DECODE: []}
            )
            for raw_id, fields in entries:
                envelope = streams.decode(fields, stream_name=stream_name, entry_id=raw_id.decode())
                if envelope is not None:
                    counts[envelope.topic] += 1
            if len(entries) < 1000:
                break
            start = "(" + entries[-1][0].decode()
    return dict(sorted(counts.items()))


Progress = Callable[[str, int, int], None]


def _noop(_stage: str, _done: int, _total: int) -> None:
    return None


def run(
    settings: Settings,
    *,
    users: int = 40,
    messages: int = 600,
    seed: int | None = None,
    timeout_s: float = 300.0,
    progress: Progress = _noop,
    app: Celery | None = None,
) -> DemoReport:
    """Feed a planned demo through the workers and report what they did."""
    from services.attribution import service as attribution

    p = plan(users, messages, seed=seed)
    app = app or make_app(settings)
    if not app.control.ping(timeout=2.0, limit=1):  # the first worker to answer will do
        raise NoWorker("no vigil worker answers on this broker; start one with `vigil up`")
    client = VigilClient(app=app, keep_results=True)
    r = clients.get_redis(settings)
    deadline = time.monotonic() + timeout_s
    marks = _stream_marks(r, settings)

    # Caps first, so the capped users' messages meet them.
    cap_results = [
        app.send_task(SET_CAP_TASK, kwargs={"user_id": u, "cap": c}, queue="admin")
        for u, c in p.caps.items()
    ]
    for res in cap_results:
        answer(res, timeout=max(1.0, deadline - time.monotonic()))

    total = len(p.batches) + len(p.singles) + len(p.detections)
    pending: list[tuple[str, int, Any]] = []
    for batch in p.batches:
        (res,) = client.messages(batch, batch_size=len(batch))
        pending.append(("batch", len(batch), res))
        progress("feeding", len(pending), total)
    for msg in p.singles:
        pending.append(("single", 1, client.message(**msg)))
        progress("feeding", len(pending), total)
    for det in p.detections:
        pending.append(("detection", 1, client.detection(**det)))
        progress("feeding", len(pending), total)

    outcomes: Counter = Counter()
    det_outcomes: Counter = Counter()
    transitions = unfinished = 0
    for done, (kind, size, res) in enumerate(pending, start=1):
        try:
            value = answer(res, timeout=max(0.1, deadline - time.monotonic()))
        except ResultTimeout:
            unfinished += 1
            continue
        finally:
            progress("processing", done, len(pending))
        tally = det_outcomes if kind == "detection" else outcomes
        if not isinstance(value, dict):
            tally["failed"] += size
            continue
        results = value.get("results") if kind == "batch" else [value]
        if results is None:  # the whole batch was refused
            tally[value.get("status", "failed")] += size
            continue
        for item in results:
            tally[item.get("status", "unknown")] += 1
            transitions += bool(item.get("phase_changed"))

    correlator = None
    res = app.send_task(CORRELATE_TASK, queue="periodic")
    try:
        correlator = answer(res, timeout=max(1.0, deadline - time.monotonic()))
    except ResultTimeout:
        unfinished += 1
    progress("correlating", 1, 1)
    _release(app, [*cap_results, *(res for _, _, res in pending), res])

    with clients.session_factory(settings)() as session:
        ours = set(p.users)
        flagged = [
            {"identity_id": f["identity_id"], "user_ids": [a["user_id"] for a in f["actors"]]}
            for f in attribution.flagged_identities(session)
            if any(a["user_id"] in ours for a in f["actors"])
        ]
    return DemoReport(
        run_id=p.run_id,
        users=len(p.users),
        guilds=list(GUILDS),
        messages_sent=p.messages_sent,
        detections_sent=len(p.detections),
        outcomes=dict(sorted(outcomes.items())),
        detection_outcomes=dict(sorted(det_outcomes.items())),
        phase_transitions=transitions,
        capped_users=sorted(p.caps),
        escalating_users=p.escalating,
        shared_accounts=p.shared,
        envelopes=envelopes_since(r, settings, marks),
        flagged_identities=flagged,
        correlator=correlator if isinstance(correlator, dict) else None,
        unfinished_tasks=unfinished,
    )
