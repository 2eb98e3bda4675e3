"""State on a Redis Cluster: the settings, the shard layout, and a real worker
fed by a plain Celery producer through a broker of its own, with the readers
of every shard (consumer groups, exporter, bond list, admin, erasure, the cap
reset) run against what it wrote (stack/topologies.py starts three masters
with a replica each)."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from pydantic import ValidationError

from services.bonds import ledger
from services.core import clients, health, keys
from services.core.scan import master_clients
from services.core.settings import Settings
from services.envelopes import consumers, streams
from services.erasure.service import erase_user
from services.metrics import collector, counters
from stack.processes import WorkerProcess
from stack.topologies import ClusterSetup, cluster_env
from tasks.names import QUEUE_INGEST
from tests import builders
from tests.faults.helpers import count_markers
from tests.helpers import send_plain, wait_for

CAP = 3


def cluster_settings(setup: ClusterSetup, broker_url: str, **extra: Any) -> Settings:
    return Settings(
        redis_url=None, redis_cluster_nodes=setup.nodes_setting, broker_url=broker_url, **extra
    )


def flush(state: Any) -> None:
    for master in master_clients(state):
        master.flushdb()


def envelope_ids(state: Any, settings: Settings) -> list[str]:
    return [
        json.loads(fields["data"])["envelope_id"]
        for key in streams.stream_keys(settings, "bond")
        for _id, fields in state.xrange(key)
    ]


@pytest.mark.parametrize(
    ("values", "named"),
    [
        (
            {"redis_cluster_nodes": "h:1", "redis_sentinels": "h:2", "redis_sentinel_master": "m"},
            "VIGIL_REDIS_SENTINELS",
        ),
        ({"redis_cluster_nodes": "h"}, "VIGIL_REDIS_CLUSTER_NODES"),
        ({"redis_cluster_nodes": "h:1", "redis_cluster_shards": 0}, "redis_cluster_shards"),
        ({"vigil_prefix": "v{x}:"}, "braces"),
    ],
)
def test_cluster_settings_are_refused_naming_the_setting(values, named, monkeypatch):
    monkeypatch.setenv("VIGIL_BROKER_URL", "redis://127.0.0.1:6379/1")
    with pytest.raises(ValidationError, match=named):
        Settings(**values)


def test_cluster_needs_a_broker_of_its_own(monkeypatch):
    monkeypatch.delenv("VIGIL_BROKER_URL", raising=False)
    with pytest.raises(ValidationError, match="VIGIL_BROKER_URL"):
        Settings(redis_cluster_nodes="h:1")


def test_results_go_to_the_broker_or_rpc_on_a_cluster(monkeypatch):
    monkeypatch.delenv("VIGIL_RESULT_BACKEND", raising=False)
    on_redis = Settings(redis_cluster_nodes="h:1", broker_url="redis://b:6379/2")
    assert clients.result_backend(on_redis) == "redis://b:6379/2"
    on_rabbit = Settings(redis_cluster_nodes="h:1", broker_url="amqp://guest@r//")
    assert clients.result_backend(on_rabbit) == "rpc://"
    chosen = Settings(
        redis_cluster_nodes="h:1", broker_url="amqp://r//", result_backend="redis://x:1/3"
    )
    assert clients.result_backend(chosen) == "redis://x:1/3"
    url, options = clients.redbeat_redis(
        Settings(redis_cluster_nodes="h:7000,h:7001", broker_url="amqp://r//", redis_password="p w")
    )
    assert url == "redis://:p%20w@h:7000/0" and options["cluster"] is True


def test_single_redis_layout_is_the_seed_layout(settings):
    """Without a cluster nothing is tagged: the seed systems' keys as they were."""
    assert keys.bond(settings, "42") == "abl:42"
    assert keys.events(settings, "42") == "abl:events:42"
    assert keys.history(settings, "g1", "42") == "ash:history:g1:42"
    assert keys.metrics(settings) == "vigil:metrics"
    assert streams.stream_keys(settings, "bond") == [settings.stream_bond]
    assert keys.history_guild(settings, "ash:history:g1:42", "42") == "g1"
    assert keys.history_guild(settings, "ash:history:@dm:42", "42") is None


def test_shards_spread_over_every_master_and_a_user_stays_in_one_slot(cluster_setup):
    settings = cluster_settings(cluster_setup, "redis://127.0.0.1:1/0")
    state = clients.get_redis(settings)
    owners = Counter(
        state.get_node_from_key(keys.metrics(settings, shard)).port
        for shard in keys.shards(settings)
    )
    assert sorted(owners.values()) == [4, 4, 4]
    for user in ("1", "u-9", "x" * 128):
        user_keys = [
            keys.bond(settings, user),
            keys.events(settings, user),
            keys.history(settings, "g", user),
            keys.history(settings, None, user),
            keys.message_dedupe(settings, "discord", user),
            keys.detection_dedupe(settings, "discord", user),
            keys.bond_stream(settings, user),
            keys.metrics(settings, keys.shard_of(settings, user)),
        ]
        assert len({state.keyslot(key) for key in user_keys}) == 1, user_keys
        assert keys.history_guild(settings, keys.history(settings, "g", user), user) == "g"
        assert keys.history_guild(settings, keys.history(settings, None, user), user) is None


@pytest.fixture
def cluster_worker(
    cluster_setup, private_broker, migrated, celery_app, tmp_path
) -> Iterator[WorkerProcess]:
    private_broker.client(db=0).flushdb()
    flush(clients.get_redis(cluster_settings(cluster_setup, private_broker.url(0))))
    env = cluster_env(
        cluster_setup,
        private_broker.url(0),
        VIGIL_DEFAULT_DAILY_CAP=str(CAP),
        VIGIL_REDIS_WAIT_REPLICAS="1",
    )
    worker = WorkerProcess(log_path=tmp_path / "worker.log", env=env, queues=(QUEUE_INGEST,))
    worker.start()
    try:
        worker.wait_ready(Celery(broker=private_broker.url(0)))
        yield worker
    finally:
        worker.stop()


def _settled(state: Any, settings: Settings, total: int) -> dict[str, int] | None:
    try:
        got = counters.read_all(state, settings)
    except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterError):
        return None
    done = got.get("messages:accepted", 0) + got.get("messages:rate_limited", 0)
    return got if done >= total else None


def test_worker_on_a_cluster_counts_exact_and_every_reader_sees_every_shard(
    cluster_setup, private_broker, cluster_worker, db
):
    """300 users from a plain Celery producer: caps exact, bonds on all three
    masters, a resend changes no count and publishes nothing; then the readers
    of every shard: exporter, consumer group, newest-first read, bond list,
    admin, erasure and the daily cap reset."""
    settings = cluster_settings(cluster_setup, private_broker.url(0))
    state = clients.get_redis(settings)
    users, per_user = 300, 4
    burst = builders.spread(users, per_user, "c")
    send_plain(private_broker.url(0), burst)
    got = wait_for(lambda: _settled(state, settings, len(burst)), 90, "every message counted")
    assert got.get("messages:accepted") == users * CAP
    assert got.get("messages:rate_limited") == users * (per_user - CAP)
    assert not got.get("messages:rejected")
    homes = Counter()
    for n in range(users):
        key = keys.bond(settings, f"cu{n}")
        assert json.loads(state.get(key))["daily_msg_count"] == CAP
        homes[state.get_node_from_key(key).port] += 1
    assert len(homes) == 3 and min(homes.values()) > users // 6, homes
    published = envelope_ids(state, settings)
    assert len(published) == len(set(published)) >= users * (per_user - CAP)

    send_plain(private_broker.url(0), burst)
    wait_for(
        lambda: counters.read_all(state, settings).get("messages:duplicate", 0) >= len(burst),
        timeout=90,
        what="the resend answered as duplicates",
    )
    again = counters.read_all(state, settings)
    assert again.get("messages:accepted") == users * CAP
    assert again.get("messages:rate_limited") == users * (per_user - CAP)
    assert envelope_ids(state, settings) == published
    assert sum(count_markers(state, settings).values()) == len(burst)

    # The exporter adds every shard's counters and streams up.
    reg = collector.registry(collector.for_settings(settings, (QUEUE_INGEST,)))
    sample = reg.get_sample_value
    assert sample("vigil_messages_total", {"outcome": "accepted"}) == users * CAP
    assert sample("vigil_messages_total", {"outcome": "duplicate"}) == len(burst)
    assert sample("vigil_stream_length", {"stream": "bond"}) == len(published)

    # A consumer group reads every shard, once each.
    seen: list[str] = []
    member = consumers.Consumer(
        state,
        settings,
        "bond",
        "ops",
        "c1",
        lambda _id, env: seen.append(env.envelope_id),
        count=500,
        block_ms=100,
    )
    while len(seen) < len(published):
        assert member.step()["failed"] == 0
    assert sorted(seen) == sorted(published)
    assert member.step()["handled"] == 0
    snap_groups = reg.get_sample_value(
        "vigil_stream_group_pending", {"stream": "bond", "group": "ops"}
    )
    assert snap_groups == 0
    latest = streams.read_latest(state, settings, "bond", 50)
    assert len(latest) == 50
    stamps = [streams.id_order(entry_id) for entry_id, _ in latest]
    assert stamps == sorted(stamps, reverse=True)

    # Bond list pages through every master.
    listed, cursor = set(), 0
    while True:
        cursor, page = ledger.list_bonds(state, settings, cursor=cursor, count=64)
        listed |= {bond.user_id for bond in page}
        if cursor == 0:
            break
    assert listed == {f"cu{n}" for n in range(users)}

    # Admin and erasure touch one user's slot; the envelope lands in their shard.
    bond = ledger.set_cap(state, settings, "cu7", 10, request_id="req-cap")
    assert bond.daily_msg_cap == 10
    shard_stream = keys.bond_stream(settings, "cu7")
    assert json.loads(state.xrevrange(shard_stream, count=1)[0][1]["data"])["topic"] == (
        "bond.admin_action"
    )
    erased = erase_user(
        state, settings, db, user_id="cu8", platform="discord", request_id="req-erase"
    )
    assert erased["removed"]["bond"] == 1
    assert state.get(keys.bond(settings, "cu8")) is None
    assert not state.exists(keys.message_dedupe(settings, "discord", "cu8"))

    # The daily reset reaches every master's bonds.
    reset = ledger.reset_daily_caps(state, settings, now=time.time() + 86_400, batch=50)
    assert reset["reset"] == users - 1 and reset["cursor"] == 0
    report = health.check_redis(settings)
    assert report["ok"] and report["cluster_masters"] == 3 and not report["problems"]


@pytest.mark.faults
def test_master_killed_mid_burst_nothing_missing_or_doubled(
    cluster_setup, private_broker, cluster_worker
):
    """SIGKILL one master a third of the way into a paced burst, with
    VIGIL_REDIS_WAIT_REPLICAS=1: its replica is promoted, the worker (not
    restarted) follows the new slot map, and within 60 s every message is
    counted once."""
    settings = cluster_settings(cluster_setup, private_broker.url(0))
    state = clients.get_redis(settings)
    users, per_user = 90, 8
    burst = builders.spread(users, per_user, "k")
    chunks = [burst[i : i + 20] for i in range(0, len(burst), 20)]
    victim = cluster_setup.node(state.get_node_from_key(keys.bond(settings, "ku0")).port)
    worker_pid = cluster_worker.pid
    killed_at = 0.0
    for n, chunk in enumerate(chunks):
        if n == len(chunks) // 3:
            victim.kill()
            killed_at = time.monotonic()
        send_plain(private_broker.url(0), chunk)
        time.sleep(0.1)
    # The killed node comes back (as a supervisor restarts it) as the promoted
    # replica's replica: WAIT 1 can be met again on its shards.
    wait_for(lambda: victim.port not in cluster_setup.master_ports(), 60, "a promotion")
    victim.start()

    try:
        got = wait_for(
            lambda: _settled(state, settings, len(burst)),
            60,
            "every message counted after the kill",
        )
    except AssertionError:
        print("DEBUG", counters.read_all(state, settings), cluster_setup.master_ports())
        raise
    recovered_s = time.monotonic() - killed_at
    assert recovered_s < 60
    assert cluster_worker.alive and cluster_worker.pid == worker_pid
    assert got.get("messages:accepted") == users * CAP, got
    assert got.get("messages:rate_limited") == users * (per_user - CAP), got
    for n in range(users):
        bond = json.loads(state.get(keys.bond(settings, f"ku{n}")))
        assert bond["daily_msg_count"] == CAP, (n, bond["daily_msg_count"])
    assert sum(count_markers(state, settings).values()) == len(burst)
    published = envelope_ids(state, settings)
    assert len(published) == len(set(published))
    cluster_setup.wait_healthy()
    print(f"cluster failover: every count right {recovered_s:.1f} s after the kill")


def test_one_evicting_master_is_named(cluster_setup):
    """The eviction check reads every master: one set to evict is enough."""
    settings = cluster_settings(cluster_setup, "redis://127.0.0.1:1/0")
    master = cluster_setup.node(cluster_setup.master_ports()[1]).client()
    master.config_set("maxmemory-policy", "allkeys-lru")
    try:
        report = health.check_redis(settings)
    finally:
        master.config_set("maxmemory-policy", "noeviction")
    assert report["ok"] and report["topology"] == "cluster"
    assert any("maxmemory-policy allkeys-lru" in problem for problem in report["problems"])
    assert not health.check_redis(settings)["problems"]
