"""``vigil migrate-state``'s copy: a single Redis filled by vigil's own ingest
pipeline (bonds, events, history, dedupe hashes, counters, bond envelopes read
in part by a consumer group, quarantined entries), copied into the 3-master
cluster of tests/topologies.py and read back through the cluster layout."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from services.bonds import history, ledger
from services.core import clients, keys
from services.core.scan import master_clients
from services.core.settings import Settings
from services.envelopes import consumers, streams
from services.envelopes.outbox import SENT_MARKER_TTL_S, sent_marker_key
from services.ingest.detector import LexiconDetector
from services.ingest.service import IngestService
from services.metrics import counters
from services.migration.service import (
    KINDS,
    MigrationError,
    migrate,
    parse,
    progress_key,
    target_key,
    verify,
)
from tests import builders
from worker.settle import Ingest

USERS = 24
GROUP = "audit"
READ = 10  # entries the group had read before the copy
# A TTL is read, then restored relative: it may gain the copy's round trips.
TTL_SLACK_MS = 10_000
ENVELOPE_ID = "0b7e3f0e-8f35-4c1e-9a57-3c2d8f6b1a20"


class Interrupted(Exception):
    """Stands for a copy killed midway."""


@pytest.fixture
def cluster(cluster_setup) -> Settings:
    return Settings(
        redis_url=None,
        redis_cluster_nodes=cluster_setup.nodes_setting,
        broker_url="redis://127.0.0.1:1/0",  # unused: no task is sent
    )


@pytest.fixture
def target(cluster) -> Iterator[Any]:
    client = clients.get_redis(cluster)
    for master in master_clients(client):
        master.flushdb()
    yield client


@pytest.fixture
def filled(state_redis, db, settings) -> dict[str, Any]:
    """A single Redis as vigil leaves it: what the pipeline writes, a consumer
    group part-way through the bond stream with one entry pending and one
    quarantined, an undecodable quarantined entry, a sent marker and redbeat."""
    svc = Ingest(IngestService(state_redis, settings, db, LexiconDetector()))
    svc.messages(builders.spread(USERS, 4, "mig"))
    svc.messages(
        [
            builders.message(100 + i, "I feel so alone", id=f"dm{i}", user=f"migu{i}", guild=None)
            for i in range(4)
        ]
    )
    svc.detections(
        [builders.detection(200 + i, id=f"det{i}", user=f"migu{i}") for i in range(USERS)]
    )
    bond = streams.stream_key(settings, "bond")
    assert state_redis.xlen(bond) > READ + 5
    consumers.ensure_consumer_group(state_redis, bond, GROUP)
    read = consumers.consume(state_redis, settings, GROUP, "c1", "bond", count=READ, block_ms=None)
    assert len(read) == READ
    pending_id, _ = read[-1]
    poisoned_id, _ = read[-2]
    raw = streams.execute_raw(state_redis, "XRANGE", bond, poisoned_id, poisoned_id)[0][1]
    consumers.quarantine(
        state_redis, settings, bond, GROUP, poisoned_id, raw, reason="max_deliveries"
    )
    consumers.ack(state_redis, settings, GROUP, "bond", [entry_id for entry_id, _ in read[:-2]])
    state_redis.xadd(consumers.quarantine_key(bond), {"reason": "undecodable", "data": "{not json"})
    state_redis.set(sent_marker_key(settings, ENVELOPE_ID), "1", ex=SENT_MARKER_TTL_S)
    state_redis.hset(f"{settings.vigil_prefix}redbeat:reset-daily-caps", "meta", "{}")
    last_read = read[-1][0]
    unread = [
        json.loads(fields["data"])["envelope_id"]
        for entry_id, fields in state_redis.xrange(bond)
        if streams.id_order(entry_id) > streams.id_order(last_read)
    ]
    users = sorted({f"migu{i}" for i in range(USERS)})
    return {"users": users, "unread": unread, "pending": pending_id}


def same_user_state(source, settings, target, cluster, user: str) -> None:
    """Everything of ``user`` reads the same through both layouts, TTLs included."""
    assert ledger.load(target, cluster, user) == ledger.load(source, settings, user)
    assert ledger.get_events(target, cluster, user, 500) == ledger.get_events(
        source, settings, user, 500
    )
    for guild in ("g1", None):
        assert history.get(target, cluster, guild, user, 100) == history.get(
            source, settings, guild, user, 100
        )
    pairs = [
        (keys.history(settings, guild, user), keys.history(cluster, guild, user))
        for guild in ("g1", None)
    ] + [
        (
            keys.message_dedupe(settings, "discord", user),
            keys.message_dedupe(cluster, "discord", user),
        ),
        (
            keys.detection_dedupe(settings, "discord", user),
            keys.detection_dedupe(cluster, "discord", user),
        ),
    ]
    for old, new in pairs:
        if not source.exists(old):
            assert not target.exists(new)
            continue
        if source.type(old) == "hash":
            assert target.hgetall(new) == source.hgetall(old)
        ttl = source.pttl(old)
        assert ttl > 0 and abs(target.pttl(new) - ttl) <= TTL_SLACK_MS, (old, new)


def test_every_kind_is_copied_into_the_cluster_layout(
    state_redis, settings, filled, target, cluster
):
    before = counters.read_all(state_redis, settings)
    report = migrate(state_redis, target, cluster, batch=50)
    assert report.ok, [c for c in report.checks if not c.ok]
    assert all(report.copied[kind] for kind in KINDS)
    assert report.not_copied["redbeat"] == 1 and report.counters_added
    for user in filled["users"]:
        same_user_state(state_redis, settings, target, cluster, user)
    assert counters.read_all(target, cluster) == before
    marker = target_key(cluster, "outbox_sent", (ENVELOPE_ID,))
    assert target.get(marker) == "1" and target.ttl(marker) > SENT_MARKER_TTL_S - 60
    assert not [k for k in target.scan_iter("*redbeat*")]
    # Entries went to their users' shards, more than one of them.
    bond_keys = streams.stream_keys(cluster, "bond")
    used = [key for key in bond_keys if target.xlen(key)]
    assert len(used) > 3
    for key in used:
        for _id, fields in target.xrange(key):
            envelope = streams.decode(fields)
            assert streams.stream_key_of(cluster, envelope) == key
    # Quarantined entries too; one that does not decode goes to shard 0.
    reasons = {}
    for shard, key in enumerate(bond_keys):
        for _id, fields in target.xrange(consumers.quarantine_key(key)):
            envelope = streams.decode(fields)
            assert shard == (0 if envelope is None else streams.envelope_shard(cluster, envelope))
            reasons[fields["reason"]] = shard
    assert set(reasons) == {"max_deliveries", "undecodable"}


def test_the_group_delivers_what_it_had_not_read_and_keeps_its_pending_entry(
    state_redis, settings, filled, target, cluster
):
    source_pending = state_redis.xpending_range(
        streams.stream_key(settings, "bond"), GROUP, "-", "+", 10
    )
    migrate(state_redis, target, cluster)
    delivered: list[str] = []
    reader = consumers.Consumer(
        target,
        cluster,
        "bond",
        GROUP,
        "c2",
        lambda _id, envelope: delivered.append(envelope.envelope_id),
        block_ms=10,
        min_idle_ms=3_600_000,
    )
    while reader.step(reclaim_now=False)["handled"]:
        pass
    assert sorted(delivered) == sorted(filled["unread"])
    pending = [
        item
        for key in streams.stream_keys(cluster, "bond")
        for item in target.xpending_range(key, GROUP, "-", "+", 10)
    ]
    assert [(p["message_id"], p["consumer"], p["times_delivered"]) for p in pending] == [
        (filled["pending"], "c1", source_pending[0]["times_delivered"])
    ]
    # Reclaimed as on the single Redis once idle long enough.
    again = consumers.Consumer(
        target, cluster, "bond", GROUP, "c3", lambda _id, _env: None, min_idle_ms=0, block_ms=10
    )
    assert again.step(reclaim_now=True)["handled"] == 1
    # Entries added later sort after the source's last id on every shard.
    last = state_redis.xinfo_stream(streams.stream_key(settings, "bond"))["last-generated-id"]
    for key in streams.stream_keys(cluster, "bond"):
        assert target.xinfo_stream(key)["last-generated-id"] == last


def test_an_interrupted_copy_completes_on_the_next_run_without_counting_twice(
    state_redis, settings, filled, target, cluster
):
    before = counters.read_all(state_redis, settings)

    def stop_in(phase: str, after: int):
        def progress(seen: str, done: int) -> None:
            if seen == phase and done >= after:
                raise Interrupted

        return progress

    with pytest.raises(Interrupted):
        migrate(state_redis, target, cluster, batch=5, progress=stop_in("keys", 20))
    with pytest.raises(Interrupted):
        bond = streams.stream_key(settings, "bond")
        migrate(state_redis, target, cluster, batch=5, progress=stop_in(bond, 10))
    assert not all(check.ok for check in verify(state_redis, target, cluster))
    report = migrate(state_redis, target, cluster, batch=5)
    assert report.ok, [c for c in report.checks if not c.ok]
    assert not report.counters_added
    bond_copy = report.streams[0]
    assert bond_copy.already_there >= 10 and bond_copy.added > 0
    assert counters.read_all(target, cluster) == before
    for user in filled["users"]:
        same_user_state(state_redis, settings, target, cluster, user)
    # A run after a whole copy changes nothing.
    again = migrate(state_redis, target, cluster)
    assert again.ok and again.streams[0].added == 0
    assert counters.read_all(target, cluster) == before
    assert target.hget(progress_key(cluster), "verified_at")


def test_counts_that_differ_are_reported(state_redis, settings, filled, target, cluster):
    migrate(state_redis, target, cluster)
    target.delete(keys.bond(cluster, filled["users"][0]))
    target.hincrby(keys.metrics(cluster, 5), "messages:accepted", 1)
    failed = {check.what for check in verify(state_redis, target, cluster) if not check.ok}
    assert failed == {"bond keys", "counters: sum of every field", "counters: fields equal"}


def test_refused_without_a_cluster_target(state_redis, settings):
    with pytest.raises(MigrationError, match="VIGIL_REDIS_CLUSTER_NODES"):
        migrate(state_redis, state_redis, settings)


def test_refused_when_the_cluster_already_holds_state(state_redis, settings, target, cluster):
    state_redis.set(keys.bond(settings, "u1"), "{}")
    target.set(keys.bond(cluster, "u2"), "{}")
    with pytest.raises(MigrationError, match="already holds vigil state"):
        migrate(state_redis, target, cluster)
    assert not target.exists(progress_key(cluster))


def test_refused_when_the_cluster_holds_a_copy_from_elsewhere(
    state_redis, settings, target, cluster
):
    target.hset(progress_key(cluster), "source", "10.0.0.9:6379/0")
    with pytest.raises(MigrationError, match=re.escape("10.0.0.9:6379/0")):
        migrate(state_redis, target, cluster)


def test_a_dump_the_cluster_cannot_read_is_named(state_redis, settings, target, cluster):
    """A RESTORE the cluster refuses (a newer Redis's DUMP, here a corrupt one)
    stops the copy with the reason."""
    state_redis.set(keys.bond(settings, "u1"), "{}")

    class CorruptDumps(redis.Redis):
        def pipeline(self, transaction=True, shard_hint=None):
            pipe = super().pipeline(transaction, shard_hint)
            pipe.dump = lambda key: pipe.execute_command("ECHO", b"\x00bad")
            return pipe

    source = CorruptDumps.from_url(clients.redis_url(settings), decode_responses=True)
    with pytest.raises(MigrationError, match="refused a RESTORE"):
        migrate(source, target, cluster)


@pytest.mark.parametrize("kind", KINDS)
def test_a_key_maps_to_its_cluster_name_and_back(settings, cluster, kind):
    parts = {
        "history": ("@dm", "u-7"),
        "message_dedupe": ("discord", "u-7"),
        "detection_dedupe": ("discord", "u-7"),
    }.get(kind, ("u-7",))
    new = target_key(cluster, kind, parts)
    assert parse(cluster, new) == (kind, parts)
    old = target_key(settings, kind, parts)
    assert parse(settings, old) == (kind, parts)
    assert "{" in new and "{" not in old
    assert parse(settings, f"{settings.bond_prefix}a:b:c") is None
    assert parse(settings, f"{settings.bond_prefix}{{x}}") is None
