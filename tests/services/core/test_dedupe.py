"""Dedupe state of messages and detections: one bounded hash per (platform, user)."""

from __future__ import annotations

import json
import multiprocessing
from datetime import UTC, datetime
from typing import Any

import pytest

from models.envelopes import envelope_id
from services.bonds import ledger
from services.core import dedupe, keys
from services.core.health import compact_hash_limit
from services.core.settings import Settings
from services.envelopes import streams
from services.ingest.detector import LexiconDetector
from services.ingest.service import IngestService
from tests import builders
from tests.builders import message as msg
from tests.helpers import detection_state, message_state
from worker.settle import Ingest

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
NOW = T0.timestamp()


def detection(i: int, user: str = "u1", phase: str = "concern") -> dict[str, Any]:
    return builders.detection(
        i, user=user, observed_at=T0.isoformat(), phase=phase, risk_level="medium"
    )


def service(state_redis, db, settings: Settings, detector: Any = None) -> Ingest:
    return Ingest(IngestService(state_redis, settings, db, detector or LexiconDetector()))


def statuses(batch) -> list[str]:
    return [o["status"] for o in batch.outcomes]


def bond_stream(state_redis, settings) -> list[dict[str, Any]]:
    """Every bond envelope (of every shard on a cluster)."""
    return [
        json.loads(f["data"])
        for key in streams.stream_keys(settings, "bond")
        for _, f in state_redis.xrange(key)
    ]


def count(state_redis, settings, user: str = "u1") -> int:
    return ledger.load(state_redis, settings, user).daily_msg_count


def phase_changes(state_redis, settings, message_id: str = "m1") -> int:
    """Phase transitions published for one message."""
    return sum(
        1
        for e in bond_stream(state_redis, settings)
        if e["topic"] == "bond.phase_transition" and e["correlation_id"] == message_id
    )


def test_duplicates_within_the_window_publish_nothing_and_envelope_ids_are_unchanged(
    state_redis, db, settings
):
    svc = service(state_redis, db, settings)
    assert statuses(svc.messages([msg(1), msg(2)], now=NOW)) == ["accepted"] * 2
    published = bond_stream(state_redis, settings)
    later = NOW + settings.dedupe_window_s - 1
    assert statuses(svc.messages([msg(1), msg(2)], now=later)) == ["duplicate"] * 2
    assert bond_stream(state_redis, settings) == published and count(state_redis, settings) == 2
    # Envelope ids still derive from the pre-upgrade marker key name.
    marker = keys.message_marker(settings, "discord", "m1")
    phase = next(e for e in published if e["topic"] == "bond.phase_transition")
    assert phase["envelope_id"] == envelope_id(marker, "bond.phase_transition")
    # No per-message keys: one hash for the user holds both ids.
    assert state_redis.keys("vigil:seen:*") == []
    entry_key = keys.message_dedupe(settings, "discord", "u1")
    assert dedupe.states(state_redis, settings, entry_key, now=NOW) == {"m1": "done", "m2": "done"}


def test_detection_duplicates_are_keyed_by_user(state_redis, db, settings):
    svc = service(state_redis, db, settings)
    assert statuses(svc.detections([detection(1), detection(1)], now=NOW)) == [
        "accepted",
        "duplicate",
    ]
    assert statuses(svc.detections([detection(1)], now=NOW + 60)) == ["duplicate"]
    assert detection_state(state_redis, settings, "discord", "u1", "d1", now=NOW) == "done"
    # The same detection id for another user is that user's own detection.
    assert statuses(svc.detections([detection(1, user="u2")], now=NOW)) == ["accepted"]


def test_rate_limited_stays_rate_limited_on_redelivery(state_redis, db, settings):
    svc = service(state_redis, db, settings)
    ledger.set_cap(state_redis, settings, "u1", 1)
    assert statuses(svc.messages([msg(1), msg(2)], now=NOW)) == ["accepted", "rate_limited"]
    ledger.set_cap(state_redis, settings, "u1", 0)  # even with room now, m2 stays what it was
    assert statuses(svc.messages([msg(2)], now=NOW + 1)) == ["duplicate"]
    assert message_state(state_redis, settings, "discord", "u1", "m2", now=NOW) == "limited"
    limited = [
        e for e in bond_stream(state_redis, settings) if e["topic"] == "message.rate_limited"
    ]
    assert len(limited) == 1


def test_past_the_window_a_message_is_accepted_again(state_redis, db, settings):
    """Documented limit: an id is forgotten once it is dedupe_window_s old."""
    svc = service(state_redis, db, settings)
    svc.messages([msg(1)], now=NOW)
    again = NOW + settings.dedupe_window_s
    assert statuses(svc.messages([msg(1)], now=again)) == ["accepted"]
    assert count(state_redis, settings) == 1  # counted again, in that later day's count
    key = keys.message_dedupe(settings, "discord", "u1")
    assert 0 < state_redis.pttl(key) <= settings.dedupe_window_s * 1000  # idle users' hashes expire


def test_past_the_cap_the_oldest_ids_are_accepted_again(state_redis, db):
    """Documented limit: past the horizon, only a user's last dedupe_max_per_user
    ids are kept for sure."""
    small = Settings(dedupe_max_per_user=8)  # pruned past 8 + 2 back to the newest 8
    svc = service(state_redis, db, small)
    svc.messages([msg(i) for i in range(11)], now=NOW)
    key = keys.message_dedupe(small, "discord", "u1")
    # All within the horizon: every one is kept, whatever the cap.
    assert set(state_redis.hkeys(key)) == {f"m{i}" for i in range(11)}
    later = NOW + small.dedupe_horizon_s + 1
    svc.messages([msg(11), msg(12)], now=later)
    assert set(state_redis.hkeys(key)) == {f"m{i}" for i in range(5, 13)}
    assert (
        statuses(svc.messages([msg(i) for i in range(5, 13)], now=later + 1)) == ["duplicate"] * 8
    )
    assert statuses(svc.messages([msg(0)], now=later + 2)) == ["accepted"]


def test_a_replay_within_the_horizon_is_recognised_whatever_the_rate(state, db):
    """One user's 1,000 messages (cap 100) sent, then the same 1,000 again: the
    second time every one is a duplicate, nothing counts and nothing is
    published again, though 1,000 is ten times the per-user cap of ids. On
    every topology."""
    state_redis, settings = state
    ledger.set_cap(state_redis, settings, "u1", 100)
    svc = service(state_redis, db, settings)
    burst = [msg(i, text="hello") for i in range(1_000)]
    first = [statuses(svc.messages(burst[i : i + 100], now=NOW)) for i in range(0, 1_000, 100)]
    assert sum(s.count("accepted") for s in first) == 100
    published = bond_stream(state_redis, settings)
    assert [e["topic"] for e in published].count("message.rate_limited") == 900
    replay_at = NOW + settings.dedupe_horizon_s - 60
    again = [
        statuses(svc.messages(burst[i : i + 100], now=replay_at)) for i in range(0, 1_000, 100)
    ]
    assert all(s == ["duplicate"] * 100 for s in again)
    assert bond_stream(state_redis, settings) == published
    assert count(state_redis, settings) == 100


def test_a_flood_is_bounded_by_the_flood_cap(state_redis, db):
    small = Settings(dedupe_max_per_user=8, dedupe_flood_max_per_user=20)
    svc = service(state_redis, db, small)
    svc.messages([msg(i, text="hello") for i in range(50)], now=NOW)
    key = keys.message_dedupe(small, "discord", "u1")
    kept = set(state_redis.hkeys(key))
    # At most the flood cap plus one slack's worth, and the newest are the ones kept.
    assert 20 <= len(kept) <= 22 and {f"m{i}" for i in range(30, 50)} <= kept


def test_pruning_keeps_arrival_order_across_batches(state_redis, db):
    small = Settings(dedupe_max_per_user=8)
    svc = service(state_redis, db, small)
    for i in range(20):  # one message a call, a quarter of the horizon apart
        svc.messages([msg(i)], now=NOW + i * small.dedupe_horizon_s / 4)
    key = keys.message_dedupe(small, "discord", "u1")
    kept = set(state_redis.hkeys(key))
    assert len(kept) <= 10 and {f"m{i}" for i in range(12, 20)} <= kept


class WorkerKilled(BaseException):
    """Stands for the process dying: nothing after the gate runs."""


class DiesAfterGate(LexiconDetector):
    """A worker killed between the gate and the apply: the gate has counted."""

    def detect(self, m, context):
        raise WorkerKilled


def test_redelivery_between_gate_and_apply_counts_once(state_redis, db, settings):
    """A capped user's message is counted by the gate: a redelivery does not count it again."""
    ledger.set_cap(state_redis, settings, "u1", 10)
    with pytest.raises(WorkerKilled):
        service(state_redis, db, settings, DiesAfterGate()).messages(
            [msg(1, text="I feel hopeless")]
        )
    assert message_state(state_redis, settings, "discord", "u1", "m1") == "counted"
    assert count(state_redis, settings) == 1 and phase_changes(state_redis, settings) == 0
    svc = service(state_redis, db, settings)
    assert statuses(svc.messages([msg(1, text="I feel hopeless")])) == ["accepted"]
    assert statuses(svc.messages([msg(1, text="I feel hopeless")])) == ["duplicate"]
    assert count(state_redis, settings) == 1
    assert message_state(state_redis, settings, "discord", "u1", "m1") == "done"
    assert phase_changes(state_redis, settings) == 1


def test_an_uncapped_users_message_is_counted_by_the_apply(state_redis, db, settings):
    """Without a cap the gate writes nothing: a worker killed after it leaves no trace,
    and the redelivery counts the message once."""
    with pytest.raises(WorkerKilled):
        service(state_redis, db, settings, DiesAfterGate()).messages(
            [msg(1, text="I feel hopeless")]
        )
    assert message_state(state_redis, settings, "discord", "u1", "m1") is None
    assert (
        ledger.load(state_redis, settings, "u1") is None
        and bond_stream(state_redis, settings) == []
    )
    svc = service(state_redis, db, settings)
    batch = [msg(1, text="I feel hopeless"), msg(2), msg(1, text="I feel hopeless")]
    assert statuses(svc.messages(batch)) == ["accepted", "accepted", "duplicate"]
    assert statuses(svc.messages([msg(1, text="I feel hopeless")])) == ["duplicate"]
    assert count(state_redis, settings) == 2
    assert message_state(state_redis, settings, "discord", "u1", "m1") == "done"
    assert phase_changes(state_redis, settings) == 1


class CapSetDuringDetection(LexiconDetector):
    """An operator sets a cap while the detector runs; a second delivery of the
    same message then passes the gate under that cap."""

    def __init__(self, state_redis, db, settings: Settings, cap: int) -> None:
        self.state_redis, self.db, self.settings, self.cap = state_redis, db, settings, cap

    def detect(self, m, context):
        ledger.set_cap(self.state_redis, self.settings, m.user_id, self.cap)
        self.second = statuses(
            service(self.state_redis, self.db, self.settings).messages([_dump(m)])
        )
        return super().detect(m, context)


def _dump(m) -> dict[str, Any]:
    return m.model_dump(mode="json")


@pytest.mark.parametrize(("cap", "second", "counted"), [(5, "accepted", 2), (1, "rate_limited", 1)])
def test_a_cap_set_between_gate_and_apply_counts_the_message_once(
    state_redis, db, settings, cap, second, counted
):
    """The first delivery passed the gate uncapped; the second, under the new cap,
    was counted (or rate-limited) by its gate: the first's apply counts nothing more."""
    svc = service(state_redis, db, settings)
    assert statuses(svc.messages([msg(0)])) == ["accepted"]  # the user has one message today
    racing = CapSetDuringDetection(state_redis, db, settings, cap)
    first = statuses(
        service(state_redis, db, settings, racing).messages([msg(1, text="I feel hopeless")])
    )
    assert racing.second == [second]
    assert first == ["duplicate"]
    assert count(state_redis, settings) == counted
    state = message_state(state_redis, settings, "discord", "u1", "m1")
    assert state == ("done" if second == "accepted" else "limited")
    topics = [e["topic"] for e in bond_stream(state_redis, settings)]
    assert topics.count("message.rate_limited") == (second == "rate_limited")


def test_marker_keys_from_before_the_per_user_hashes_are_not_read(state_redis, db, settings):
    """They expired within the dedupe window of that upgrade; a key by that name
    now means nothing (README, upgrade notes)."""
    state_redis.set(keys.message_marker(settings, "discord", "old-done"), "done", ex=600)
    state_redis.set(keys.detection_marker(settings, "old-det"), "done", ex=600)
    svc = service(state_redis, db, settings)
    assert statuses(svc.messages([{**msg(0), "message_id": "old-done"}])) == ["accepted"]
    assert count(state_redis, settings) == 1
    old_detection = {**detection(0), "detection_id": "old-det"}
    assert statuses(svc.detections([old_detection])) == ["accepted"]


def test_a_long_id_takes_a_short_field(state_redis, db, settings):
    long_id = "x" * 128
    svc = service(state_redis, db, settings)
    assert statuses(svc.messages([{**msg(1), "message_id": long_id}])) == ["accepted"]
    assert statuses(svc.messages([{**msg(1), "message_id": long_id}])) == ["duplicate"]
    [field] = state_redis.hkeys(keys.message_dedupe(settings, "discord", "u1"))
    assert field == keys.dedupe_field(long_id) and len(field) == 25


def test_one_users_dedupe_memory_is_bounded_whatever_the_message_count(state_redis, db, settings):
    svc = service(state_redis, db, settings)

    def send(user: str, first: int, n: int, now: float) -> None:
        batch = [
            {**msg(i, user=user, text="hello"), "message_id": str(1_187_654_321_000_000_000 + i)}
            for i in range(first, first + n)
        ]
        svc.messages(batch, now=now)

    # A steady user: 5,000 ids, 100 per horizon. The hash keeps the last 100 to 125.
    for n, start in enumerate(range(0, 5_000, 100)):
        send("u1", start, 100, NOW + n * (settings.dedupe_horizon_s + 1))
    key = keys.message_dedupe(settings, "discord", "u1")
    cap = settings.dedupe_max_per_user
    assert settings.dedupe_max_per_user <= state_redis.hlen(key) <= cap + cap // 4
    _setting, compact_limit = compact_hash_limit(state_redis)
    if compact_limit is not None and compact_limit >= cap + cap // 4:
        # listpack on Redis 7, ziplist on 6.2: the compact encoding either way.
        assert state_redis.object("encoding", key) in ("listpack", "ziplist")
        assert state_redis.memory_usage(key) < 3_000  # about 20 bytes an entry

    # A flood: 5,000 ids within the horizon are all kept (the flood cap), at a
    # cost measured here; once they are older than the horizon, new ids trim
    # the hash back to the last 100 to 125.
    flood = keys.message_dedupe(settings, "discord", "flood")
    for start in range(0, 5_000, 500):
        send("flood", start, 500, NOW + start / 10)
    assert state_redis.hlen(flood) == settings.dedupe_flood_max_per_user == 5_000
    flood_bytes = state_redis.memory_usage(flood)
    assert flood_bytes < 600_000, flood_bytes  # about 100 bytes an id
    send("flood", 5_000, 100, NOW + settings.dedupe_horizon_s + 600)
    assert cap <= state_redis.hlen(flood) <= cap + cap // 4
    assert state_redis.keys("vigil:seen:*") == []


def _race(env: dict[str, str], batches: list[list[dict[str, Any]]], start: Any, now: float) -> None:
    """One racing process: its own clients, the same message ids as the others."""
    import os

    os.environ.update(env)
    from services.core.clients import get_redis, session_factory

    settings = Settings()
    svc = Ingest(
        IngestService(get_redis(settings), settings, session_factory(settings), LexiconDetector())
    )
    start.wait()
    for batch in batches:
        svc.messages(batch, now=now)


def test_processes_racing_the_same_message_ids_count_each_once(state_redis, db, settings, test_env):
    users = [f"race{u}" for u in range(4)]
    texts = ["I feel sad", "hello", "I feel hopeless and worthless"]
    messages = [
        {**msg(i, user=users[i % 4], text=texts[i % 3]), "message_id": f"r{i}"} for i in range(200)
    ]
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(4)
    procs = []
    for p in range(4):
        ordered = messages if p % 2 == 0 else messages[::-1]
        batches = [ordered[i : i + 10 + p] for i in range(0, len(ordered), 10 + p)]
        procs.append(ctx.Process(target=_race, args=(test_env, batches, start, NOW)))
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    assert sum(count(state_redis, settings, u) for u in users) == 200
    for u in users:
        states = dedupe.states(
            state_redis, settings, keys.message_dedupe(settings, "discord", u), now=NOW
        )
        assert list(states.values()) == ["done"] * 50
    envelopes = bond_stream(state_redis, settings)
    ids = [e["envelope_id"] for e in envelopes]
    assert len(ids) == len(set(ids))  # nothing published twice
    for u in users:
        events = ledger.get_events(state_redis, settings, u, limit=500)
        transitions = [e for e in envelopes if e["payload"]["user_id"] == u]
        assert len(events) == len(transitions)


@pytest.mark.parametrize(
    "message_id",
    ["plain", "0", "A.b-c_9", "x" * 120],
)
def test_envelope_ids_computed_in_redis_equal_the_python_ones(
    state_redis, db, settings, message_id
):
    """apply_detection.lua and ingest_gate.lua compute envelope ids themselves,
    only for envelopes they publish; they must be models.envelopes.envelope_id."""
    ledger.set_cap(state_redis, settings, "u1", 1)
    svc = service(state_redis, db, settings)
    # Severity high: both the phase and the risk level move.
    first = msg(1, text="I want to die", message_id=message_id)
    second = msg(2, message_id=message_id + "-2")
    assert statuses(svc.messages([first, second], now=NOW)) == ["accepted", "rate_limited"]
    published = {e["topic"]: e for e in bond_stream(state_redis, settings)}
    first_marker = keys.message_marker(settings, "discord", message_id)
    second_marker = keys.message_marker(settings, "discord", message_id + "-2")
    expected = {
        "bond.phase_transition": envelope_id(first_marker, "bond.phase_transition"),
        "bond.risk_change": envelope_id(first_marker, "bond.risk_change"),
        "message.rate_limited": envelope_id(second_marker, "message.rate_limited"),
    }
    assert {topic: published[topic]["envelope_id"] for topic in expected} == expected
