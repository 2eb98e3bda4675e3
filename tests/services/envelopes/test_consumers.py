from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from models.envelopes import EXAMPLE_PAYLOADS, make_envelope
from services.envelopes import consumers, streams
from tests.services.envelopes.test_streams import example_envelope, malformed_entries

ROOT = Path(__file__).resolve().parents[3]


def test_reclaim_only_takes_idle_entries(redis_client, settings):
    streams.publish(redis_client, settings, example_envelope("user.erased"))
    assert len(consumers.consume(redis_client, settings, "g", "a", "user", block_ms=None)) == 1
    assert consumers.reclaim(redis_client, settings, "g", "b", "user", min_idle_ms=3_600_000) == []
    pending = redis_client.xpending_range(settings.stream_user, "g", "-", "+", 10)
    assert pending[0]["consumer"] == "a"
    assert len(consumers.reclaim(redis_client, settings, "g", "b", "user", min_idle_ms=0)) == 1
    pending = redis_client.xpending_range(settings.stream_user, "g", "-", "+", 10)
    assert pending[0]["consumer"] == "b"


def test_consumer_loop_survives_malformed_entries(redis_client, bytes_client, settings):
    good = [example_envelope("bond.phase_transition"), example_envelope("bond.admin_action")]
    bytes_client.xadd(settings.stream_bond, {"data": good[0].model_dump_json()})
    for fields in malformed_entries(settings):
        bytes_client.xadd(settings.stream_bond, fields)
    bytes_client.xadd(settings.stream_bond, {"data": good[1].model_dump_json()})

    seen = []
    consumer = consumers.Consumer(
        redis_client,
        settings,
        "bond",
        "alerts",
        "c1",
        lambda _id, envelope: seen.append(envelope),
        count=5,
        block_ms=10,
    )
    for _ in range(len(malformed_entries(settings)) // 5 + 3):
        consumer.step()
    assert seen == good
    quarantined = consumers.read_quarantine(redis_client, settings, "bond")
    assert len(quarantined) == len(malformed_entries(settings))
    assert {fields["reason"] for _, fields in quarantined} == {"undecodable"}
    assert redis_client.xpending(settings.stream_bond, "alerts")["pending"] == 0


def test_consumer_groups_fan_out_and_consumers_share(redis_client, settings):
    sent = [example_envelope("user.erased") for _ in range(6)]
    key = settings.stream_user
    assert consumers.ensure_consumer_group(redis_client, key, "a") is True
    assert consumers.ensure_consumer_group(redis_client, key, "a") is False
    for envelope in sent:
        streams.publish(redis_client, settings, envelope)
    a1 = consumers.consume(redis_client, settings, "a", "a1", "user", count=3, block_ms=None)
    a2 = consumers.consume(redis_client, settings, "a", "a2", "user", count=10, block_ms=None)
    # Consumer group "b" is created here.
    b1 = consumers.consume(redis_client, settings, "b", "b1", "user", count=10, block_ms=None)
    assert [envelope for _, envelope in a1 + a2] == sent
    assert [envelope for _, envelope in b1] == sent
    acked_ids = [entry_id for entry_id, _ in a1 + a2]
    assert consumers.ack(redis_client, settings, "a", "user", acked_ids) == 6
    assert redis_client.xpending(key, "a")["pending"] == 0
    assert redis_client.xpending(key, "b")["pending"] == 6


def test_consumer_group_created_late_still_gets_the_backlog(redis_client, settings):
    """Entries published while no consumer runs are not lost (unlike following '$')."""
    sent = example_envelope("attribution.profile.state_changed")
    streams.publish(redis_client, settings, sent)
    got = consumers.consume(redis_client, settings, "dash", "d1", "attribution", block_ms=None)
    assert [envelope for _, envelope in got] == [sent]


def test_entry_of_a_consumer_that_died_before_ack_is_reclaimed(redis_client, settings, test_env):
    sent = example_envelope("bond.risk_change")
    consumers.ensure_consumer_group(redis_client, settings.stream_bond, "alerts")
    streams.publish(redis_client, settings, sent)
    code = (
        "import os\n"
        "from services.envelopes import consumers\n"
        "from services.core.clients import get_redis\n"
        "from services.core.settings import Settings\n"
        "settings = Settings()\n"
        "got = consumers.consume(\n"
        "    get_redis(settings), settings, 'alerts', 'doomed', 'bond', block_ms=None\n"
        ")\n"
        "assert len(got) == 1, got\n"
        "os._exit(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=60)
    assert proc.returncode == 3, proc.stderr.decode()[-2000:]
    [pending] = redis_client.xpending_range(settings.stream_bond, "alerts", "-", "+", 10)
    assert pending["consumer"] == "doomed"

    seen = []
    survivor = consumers.Consumer(
        redis_client,
        settings,
        "bond",
        "alerts",
        "survivor",
        lambda _id, envelope: seen.append(envelope),
        min_idle_ms=0,
    )
    assert survivor.step(reclaim_now=True) == {"handled": 1, "failed": 0}
    assert seen == [sent]
    assert redis_client.xpending(settings.stream_bond, "alerts")["pending"] == 0


def test_failing_entry_is_retried_then_quarantined_then_replayed(redis_client, settings):
    limited = settings.model_copy(update={"stream_max_deliveries": 3})
    sent = example_envelope("message.rate_limited")
    streams.publish(redis_client, limited, sent)
    calls = []

    def broken(_id, envelope):
        calls.append(envelope)
        raise RuntimeError("downstream unavailable")

    consumer = consumers.Consumer(
        redis_client, limited, "bond", "alerts", "c1", broken, min_idle_ms=0, block_ms=10
    )
    for _ in range(5):
        consumer.step(reclaim_now=True)
    assert calls == [sent] * 3
    assert redis_client.xpending(limited.stream_bond, "alerts")["pending"] == 0
    [(_, quarantined)] = consumers.read_quarantine(redis_client, limited, "bond")
    assert quarantined["reason"] == "max_deliveries"
    assert quarantined["deliveries"] == "3"
    assert quarantined["group"] == "alerts"
    assert streams.decode(quarantined, stream_name="bond") == sent

    assert consumers.replay_quarantine(redis_client, limited, "bond") == {
        "status": "ok",
        "replayed": 1,
        "kept": 0,
    }
    assert consumers.read_quarantine(redis_client, limited, "bond") == []
    seen = []
    consumer.handler = lambda _id, envelope: seen.append(envelope)
    consumer.step(reclaim_now=True)
    assert seen == [sent]


def test_quarantine_keeps_the_dead_key_suffix(redis_client, settings):
    """Stored layout: quarantined entries of stream key K live at ``K:dead``."""
    assert consumers.quarantine_key(settings.stream_bond) == settings.stream_bond + ":dead"


def test_handler_failure_leaves_entry_pending_for_a_retry(redis_client, settings):
    sent = example_envelope("user.erased")
    streams.publish(redis_client, settings, sent)
    outcomes = iter([RuntimeError("once"), None])
    seen = []

    def flaky(_id, envelope):
        outcome = next(outcomes)
        if outcome:
            raise outcome
        seen.append(envelope)

    consumer = consumers.Consumer(
        redis_client, settings, "user", "g", "c", flaky, min_idle_ms=0, block_ms=10
    )
    assert consumer.step(reclaim_now=False) == {"handled": 0, "failed": 1}
    assert redis_client.xpending(settings.stream_user, "g")["pending"] == 1
    assert consumer.step(reclaim_now=True) == {"handled": 1, "failed": 0}
    assert seen == [sent]
    assert redis_client.xpending(settings.stream_user, "g")["pending"] == 0


def test_run_stops_on_event(redis_client, settings):
    stop = threading.Event()
    seen = []

    def handler(_id, envelope):
        seen.append(envelope)
        stop.set()

    streams.publish(
        redis_client, settings, example_envelope("user.erased", envelope_id=str(uuid.uuid4()))
    )
    consumer = consumers.Consumer(redis_client, settings, "user", "g", "c", handler, block_ms=50)
    consumer.run(stop, max_steps=100)
    assert len(seen) == 1


def test_consumer_on_every_topology_gets_each_envelope_once(state):
    """Envelopes of many users (every shard on a cluster): a consumer group gets
    each once, a second group fans out, an entry whose consumer died is
    reclaimed, and the newest-first read merges the shards in time order."""
    client, settings = state
    sent = [
        make_envelope("user.erased", {**EXAMPLE_PAYLOADS["user.erased"], "user_id": f"e{n}"})
        for n in range(60)
    ]
    for n, envelope in enumerate(sent):
        streams.publish(client, settings, envelope)
        if n >= len(sent) - 11:
            time.sleep(0.002)  # shards order by time to the millisecond only

    def member(group: str, name: str, into: list, **options) -> consumers.Consumer:
        return consumers.Consumer(
            client, settings, "user", group, name, lambda _id, env: into.append(env), **options
        )

    seen: list = []
    first = member("ops", "c1", seen, count=25, block_ms=50)
    while len(seen) < len(sent):
        assert first.step()["failed"] == 0
    assert sorted(e.envelope_id for e in seen) == sorted(e.envelope_id for e in sent)
    assert first.step()["handled"] == 0

    fanned: list = []
    dying = member("audit", "d1", fanned, count=100, block_ms=50)
    dying.handler = lambda _id, env: (_ for _ in ()).throw(RuntimeError("died"))
    dying.step()
    assert fanned == []
    heir = member("audit", "d2", fanned, count=100, block_ms=50, min_idle_ms=0)
    while len(fanned) < len(sent):
        heir.step(reclaim_now=True)
    assert sorted(e.envelope_id for e in fanned) == sorted(e.envelope_id for e in sent)

    latest = streams.read_latest(client, settings, "user", 10)
    assert [env.envelope_id for _, env in latest] == [e.envelope_id for e in sent[-10:]][::-1]
