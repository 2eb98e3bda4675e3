"""State behind Redis Sentinel: the settings, the one state client, WAIT, and
a real worker fed by a plain Celery producer (stack/topologies.py starts the
master, replica and sentinels)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from pydantic import ValidationError

from services.core import clients, health, keys, scripts
from services.core.errors import TransientError
from services.core.settings import Settings
from services.metrics import counters
from stack.processes import WorkerProcess
from stack.topologies import MASTER_NAME, SentinelSetup, sentinel_env
from tasks.names import QUEUE_INGEST
from tests import builders
from tests.conftest import ROOT
from tests.faults.helpers import count_markers
from tests.helpers import send_plain, wait_for

CAP = 5


def sentinel_settings(setup: SentinelSetup, **extra: Any) -> Settings:
    return Settings(
        redis_url=None,
        redis_sentinels=setup.sentinel_setting,
        redis_sentinel_master=MASTER_NAME,
        **extra,
    )


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"redis_sentinels": "127.0.0.1:26379"}, "VIGIL_REDIS_SENTINEL_MASTER"),
        ({"redis_sentinel_master": "m"}, "VIGIL_REDIS_SENTINELS"),
        ({"redis_sentinels": "127.0.0.1", "redis_sentinel_master": "m"}, "VIGIL_REDIS_SENTINELS"),
        ({"redis_sentinels": "h:0,h:2", "redis_sentinel_master": "m"}, "VIGIL_REDIS_SENTINELS"),
        ({"redis_sentinels": "h:1,:2", "redis_sentinel_master": "m"}, "VIGIL_REDIS_SENTINELS"),
    ],
)
def test_sentinel_settings_are_refused_naming_the_setting(values, named, monkeypatch):
    monkeypatch.setenv("VIGIL_BROKER_URL", "redis://127.0.0.1:6379/1")
    with pytest.raises(ValidationError, match=named):
        Settings(**values)


def test_sentinel_settings_parse_and_keep_the_url_db_and_password(monkeypatch):
    monkeypatch.setenv("VIGIL_BROKER_URL", "redis://127.0.0.1:6379/1")
    settings = Settings(
        redis_sentinels="10.0.0.1:26379, [::1]:26380",
        redis_sentinel_master="m",
        redis_url="redis://ignored:1/4",
        redis_password="pw",
        redis_sentinel_password="spw",
    )
    assert settings.sentinel_addresses == [("10.0.0.1", 26379), ("::1", 26380)]
    assert clients.master_params(settings) == {"db": 4, "username": None, "password": "pw"}
    assert clients.result_backend(settings) == (
        "sentinel://:pw@10.0.0.1:26379/4;sentinel://:pw@[::1]:26380/4"
    )
    options = clients.result_backend_transport_options(settings)
    assert options["master_name"] == "m"
    assert options["sentinel_kwargs"]["password"] == "spw"
    url, redbeat = clients.redbeat_redis(settings)
    assert url.startswith("redis-sentinel")
    assert redbeat["service_name"] == "m" and redbeat["db"] == 4


def test_sentinel_needs_an_explicit_broker(monkeypatch):
    monkeypatch.delenv("VIGIL_BROKER_URL", raising=False)
    with pytest.raises(ValidationError, match="VIGIL_BROKER_URL"):
        Settings(redis_sentinels="h:1", redis_sentinel_master="m")


def test_state_client_reaches_the_master_the_sentinels_name(sentinel_setup, test_env):
    client = clients.get_redis(sentinel_settings(sentinel_setup))
    client.set("vigil:probe", "1")
    assert client.info("server")["tcp_port"] == sentinel_setup.master_port()
    assert client.info("replication")["role"] == "master"
    assert client.delete("vigil:probe") == 1


def test_wait_counts_replicas_in_the_same_round_trip(sentinel_setup, test_env, monkeypatch):
    """One replica holds the writes: WAIT 1 passes; WAIT 2 cannot, and the
    pipeline fails as transient (the buffer is retried, not acked)."""
    client = clients.get_redis(sentinel_settings(sentinel_setup))
    client.delete("vigil:wait-probe")
    shipped = scripts.source
    monkeypatch.setattr(
        scripts,
        "source",
        lambda name: "return redis.call('INCR', KEYS[1])" if name == "probe" else shipped(name),
    )
    scripts.sha.cache_clear()
    try:
        call = [(["vigil:wait-probe"], [])]
        assert scripts.run_many(client, "probe", call, wait=(1, 1000)) == [1]
        with pytest.raises(TransientError, match="1 of 2 replicas"):
            scripts.run_many(client, "probe", call, wait=(2, 100))
    finally:
        monkeypatch.undo()
        scripts.sha.cache_clear()
    assert int(client.get("vigil:wait-probe")) == 2


@pytest.fixture
def sentinel_worker(
    sentinel_setup, private_broker, migrated, celery_app, tmp_path
) -> Iterator[WorkerProcess]:
    private_broker.client(db=0).flushdb()
    clients.get_redis(sentinel_settings(sentinel_setup)).flushdb()
    env = sentinel_env(
        sentinel_setup,
        private_broker.url(0),
        VIGIL_DEFAULT_DAILY_CAP=str(CAP),
        VIGIL_REDIS_WAIT_REPLICAS="1",
    )
    worker = WorkerProcess(log_path=tmp_path / "worker.log", env=env, queues=(QUEUE_INGEST,))
    worker.start()
    try:
        ping_app = Celery(broker=private_broker.url(0))
        worker.wait_ready(ping_app)
        yield worker
    finally:
        worker.stop()


def test_worker_keeps_state_behind_sentinel_counts_exact(
    sentinel_setup, private_broker, sentinel_worker
):
    """A plain Celery producer, a worker whose only state setting is the
    sentinels: caps hold, every counter is exact, a resend changes nothing."""
    settings = sentinel_settings(sentinel_setup)
    state = clients.get_redis(settings)
    users, per_user = 20, 8
    burst = builders.spread(users, per_user, "s")
    send_plain(private_broker.url(0), burst)

    def outcomes() -> dict[str, int]:
        return counters.read_all(state, settings)

    wait_for(
        lambda: sum(v for k, v in outcomes().items() if k.startswith("messages:")) >= len(burst),
        timeout=60,
        what="every message counted",
    )
    got = outcomes()
    assert got.get("messages:accepted") == users * CAP
    assert got.get("messages:rate_limited") == users * (per_user - CAP)
    assert not got.get("messages:rejected")
    for n in range(users):
        bond = json.loads(state.get(keys.bond(settings, f"su{n}")))
        assert bond["daily_msg_count"] == CAP
    stream_before = state.xlen(settings.stream_bond)

    send_plain(private_broker.url(0), burst)
    wait_for(
        lambda: outcomes().get("messages:duplicate", 0) >= len(burst),
        timeout=60,
        what="the resend answered as duplicates",
    )
    again = outcomes()
    assert again.get("messages:accepted") == users * CAP
    assert again.get("messages:rate_limited") == users * (per_user - CAP)
    assert state.xlen(settings.stream_bond) == stream_before


@pytest.mark.faults
def test_master_killed_mid_burst_worker_follows_the_promoted_replica(
    sentinel_setup, private_broker, sentinel_worker
):
    """SIGKILL the master a third of the way into a paced burst, with
    VIGIL_REDIS_WAIT_REPLICAS=1: the worker (not restarted) follows the replica
    the sentinels promote, and within 60 s every message is counted once."""
    settings = sentinel_settings(sentinel_setup)
    users, per_user = 60, 10
    burst = builders.spread(users, per_user, "f")
    chunks = [burst[i : i + 20] for i in range(0, len(burst), 20)]
    old_master = sentinel_setup.master_port()
    assert old_master is not None
    worker_pid = sentinel_worker.pid
    killed_at = 0.0
    for n, chunk in enumerate(chunks):
        if n == len(chunks) // 3:
            sentinel_setup.node(old_master).kill()
            killed_at = time.monotonic()
        send_plain(private_broker.url(0), chunk)
        time.sleep(0.1)

    new_master = sentinel_setup.wait_failover(old_master)
    # The killed node comes back (as a supervisor restarts it) and the sentinels
    # make it the new master's replica: WAIT 1 can be met again.
    sentinel_setup.node(old_master).start()
    state = clients.get_redis(settings)

    def settled() -> bool:
        try:
            got = counters.read_all(state, settings)
        except (redis.ConnectionError, redis.TimeoutError):
            return False
        return got.get("messages:accepted", 0) + got.get("messages:rate_limited", 0) >= len(burst)

    wait_for(settled, timeout=60, what="every message counted after the failover")
    recovered_s = time.monotonic() - killed_at
    assert recovered_s < 60
    assert state.info("server")["tcp_port"] == new_master
    assert sentinel_worker.alive and sentinel_worker.pid == worker_pid

    got = counters.read_all(state, settings)
    assert got.get("messages:accepted") == users * CAP, got
    assert got.get("messages:rate_limited") == users * (per_user - CAP), got
    for n in range(users):
        bond = json.loads(state.get(keys.bond(settings, f"fu{n}")))
        assert bond["daily_msg_count"] == CAP, (n, bond["daily_msg_count"])
    marked = count_markers(state, settings)
    assert sum(marked.values()) == len(burst), marked
    envelope_ids = [
        json.loads(fields["data"])["envelope_id"]
        for _id, fields in state.xrange(settings.stream_bond)
    ]
    assert len(envelope_ids) == len(set(envelope_ids))
    sentinel_setup.wait_agreed(new_master)
    print(f"failover: every count right {recovered_s:.1f} s after the kill")


def test_results_and_beat_schedule_follow_the_sentinels(sentinel_setup, private_broker, tmp_path):
    """The worker's own Celery config behind Sentinel: a stored result reads back
    from the master, and redbeat's client reaches the same master."""
    probe = (
        "from tasks import app\n"
        "from redbeat.schedulers import get_redis\n"
        "app.backend.store_result('probe-task', {'status': 'ok'}, 'SUCCESS')\n"
        "print(app.backend.get_task_meta('probe-task')['result']['status'])\n"
        "print(get_redis(app).info('server')['tcp_port'])\n"
    )
    env = sentinel_env(sentinel_setup, private_broker.url(0))
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    status, port = done.stdout.split()
    assert status == "ok"
    assert int(port) == sentinel_setup.master_port()
    master = sentinel_setup.node(sentinel_setup.master_port()).client()
    assert master.exists("celery-task-meta-probe-task")


def test_a_demoted_master_is_retried_not_rejected(sentinel_setup, test_env, monkeypatch):
    """A batch script reaching a replica (a master demoted under a live
    connection) fails as a whole with READONLY, on Redis 6.2 and 7 alike, so
    the buffer is retried rather than each item rejected."""
    master = sentinel_setup.master_port()
    replica = next(node for node in sentinel_setup.nodes if node.port != master).client()
    writes = "\nlocal function item(a, k) redis.call('SET', k, '1') return 1 end\n"
    body = scripts.source("_bond") + writes + "return run_batch(item, 1)"
    shipped = scripts.source
    monkeypatch.setattr(scripts, "source", lambda name: body if name == "probe" else shipped(name))
    scripts.sha.cache_clear()
    try:
        with pytest.raises(TransientError, match="replica"):
            scripts.run_batch(replica, "probe", [(["vigil:ro-probe"], {})], shared={})
    finally:
        monkeypatch.undo()
        scripts.sha.cache_clear()
        replica.close()


def test_health_names_the_master_the_sentinels_chose(sentinel_setup, test_env):
    report = health.check_redis(sentinel_settings(sentinel_setup))
    assert report["ok"], report
    assert report["sentinel_master"] == f"127.0.0.1:{sentinel_setup.master_port()}"
    assert report["problems"] == []
