"""vigil's Redis broker behind Sentinel: the settings, the transport on a real
master/replica/sentinels deployment of its own (stack/topologies.py, ports
26500-26599), a real worker fed the plain Celery way, and a failover of the
broker's master mid-burst with what it loses measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Connection, Exchange, Queue
from pydantic import ValidationError

from services.core import clients, health, keys
from services.core.settings import Settings
from services.metrics import counters
from services.metrics.snapshot import BrokerQueues
from stack.processes import HOST, WorkerProcess
from stack.topologies import BROKER_MASTER_NAME, BROKER_PORT_RANGE, SentinelSetup
from tasks.names import INGEST_MESSAGE, QUEUE_INGEST
from tests import builders
from tests.conftest import ROOT
from tests.faults.helpers import count_markers
from tests.helpers import send_messages, wait_for
from vigil_client import sender_app
from worker import broker

TRANSPORT = "worker.broker:SentinelTransport"
CAP = 5


# -- settings and configuration (no servers) ------------------------------------


def test_a_sentinel_broker_url_is_accepted_with_its_master_name():
    url = "sentinel://:pw@10.0.0.1:26379/3;sentinel://10.0.0.2:26380/3"
    settings = Settings(broker_url=url, broker_sentinel_master="b")
    assert settings.broker_sentinel_addresses == [("10.0.0.1", 26379), ("10.0.0.2", 26380)]
    assert settings.broker_master_name == "b"
    assert clients.broker_url(settings) == url
    options = clients.broker_transport_options(settings)
    assert options["master_name"] == "b"
    assert "password" not in options["sentinel_kwargs"]


def test_the_redis_password_goes_to_every_sentinel_url_without_one():
    settings = Settings(
        broker_url="sentinel://h1:1;sentinel://h2:2", broker_sentinel_master="b", redis_password="p"
    )
    assert clients.broker_url(settings) == "sentinel://:p@h1:1;sentinel://:p@h2:2"


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"broker_url": "sentinel://h1:1;sentinel://h2:2"}, "VIGIL_BROKER_SENTINEL_MASTER"),
        (
            {"broker_url": "sentinel://h1:1;redis://h2:2", "broker_sentinel_master": "b"},
            "VIGIL_BROKER_URL",
        ),
        ({"broker_url": "sentinel://h1", "broker_sentinel_master": "b"}, "VIGIL_BROKER_URL"),
        (
            {"broker_url": "redis://h1:1/0", "broker_sentinel_master": "b"},
            "VIGIL_BROKER_SENTINEL_MASTER",
        ),
    ],
)
def test_half_a_sentinel_broker_is_refused_naming_the_setting(values, named):
    with pytest.raises(ValidationError, match=named):
        Settings(**values)


def test_a_broker_on_the_states_sentinels_takes_their_master_name_and_password():
    shared = Settings(
        redis_sentinels="h1:1,h2:2",
        redis_sentinel_master="state",
        redis_sentinel_password="spw",
        broker_url="sentinel://h2:2;sentinel://h1:1",
    )
    assert shared.broker_master_name == "state"
    assert shared.broker_sentinels_password == "spw"
    assert clients.broker_transport_options(shared)["sentinel_kwargs"]["password"] == "spw"
    apart = Settings(
        redis_sentinels="h1:1,h2:2",
        redis_sentinel_master="state",
        redis_sentinel_password="spw",
        broker_url="sentinel://h3:3",
        broker_sentinel_master="b",
    )
    assert apart.broker_master_name == "b"
    assert apart.broker_sentinels_password is None
    with pytest.raises(ValidationError, match="VIGIL_BROKER_SENTINEL_MASTER"):
        Settings(
            redis_sentinels="h1:1",
            redis_sentinel_master="state",
            broker_url="sentinel://h3:3",
        )


def test_celeryconfig_picks_the_sentinel_transport_with_one_url(tmp_path):
    probe = (
        "import json, celeryconfig as c\n"
        "print(json.dumps([c.broker_transport, c.broker_url, c.broker_channel_error_retry,"
        " c.broker_transport_options]))\n"
    )
    env = {
        **_clean_env(),
        "VIGIL_BROKER_URL": "sentinel://10.0.0.1:26379/2;sentinel://10.0.0.2:26379/2",
        "VIGIL_BROKER_SENTINEL_MASTER": "b",
        "VIGIL_BROKER_SENTINEL_PASSWORD": "spw",
        "VIGIL_REDIS_URL": "redis://127.0.0.1:6379/0",
    }
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
    transport, url, channel_retry, options = json.loads(done.stdout)
    assert transport == TRANSPORT
    # One URL: kombu re-reads the next of several after a connection error and
    # would take its own transport for it.
    assert url == "sentinel://10.0.0.1:26379/2"
    assert channel_retry is True
    assert options["master_name"] == "b"
    assert options["sentinel_kwargs"]["password"] == "spw"
    assert options["vigil_sentinels"] == ["10.0.0.1:26379", "10.0.0.2:26379"]
    assert options["vigil_owner_timeout"] == 10.0


def test_vigil_client_needs_the_master_name_for_a_sentinel_broker():
    url = "sentinel://127.0.0.1:26379;sentinel://127.0.0.1:26380"
    with pytest.raises(ValueError, match="master_name"):
        sender_app(url)
    app = sender_app(url, broker_transport_options={"master_name": "b"})
    assert app.conf.broker_transport_options == {"master_name": "b"}


def test_kombu_switching_urls_drops_a_configured_transport():
    """Why celeryconfig gives kombu one sentinel:// URL: after a connection
    error kombu moves to the next URL by re-reading it, scheme and all."""
    conn = Connection("sentinel://10.0.0.1:1;sentinel://10.0.0.2:2", transport=TRANSPORT)
    assert conn.transport_cls == TRANSPORT
    conn.maybe_switch_next()
    assert conn.transport_cls == "sentinel"
    single = Connection("sentinel://10.0.0.1:1", transport=TRANSPORT)
    single.maybe_switch_next()
    assert single.transport_cls == TRANSPORT


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}


# -- a real Sentinel deployment for the broker ---------------------------------


@pytest.fixture(scope="module")
def broker_sentinel(tmp_path_factory) -> Iterator[SentinelSetup]:
    """A broker master, its replica and three sentinels, on ports 26500-26599."""
    setup = SentinelSetup(
        tmp_path_factory.mktemp("broker-sentinel"),
        port_range=BROKER_PORT_RANGE,
        master_name=BROKER_MASTER_NAME,
    ).start()
    try:
        yield setup
    finally:
        setup.stop()


def master_client(setup: SentinelSetup) -> redis.Redis:
    port = setup.master_port()
    assert port is not None
    return setup.node(port).client()


@pytest.fixture
def qkeys() -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    return {
        "queue": f"test-sbroker-{tag}",
        "unacked_key": f"test-sbroker-unacked-{tag}",
        "unacked_index_key": f"test-sbroker-unacked-index-{tag}",
        "unacked_mutex_key": f"test-sbroker-unacked-mutex-{tag}",
        "vigil_unreadable_key": f"test-sbroker-unreadable-{tag}",
    }


def connection(setup: SentinelSetup, qkeys: dict[str, str], **extra: Any) -> Connection:
    """A kombu connection as celeryconfig makes it: one sentinel:// URL, every
    sentinel in the transport options."""
    first = setup.broker_url().split(";", 1)[0]
    options = {k: v for k, v in qkeys.items() if k != "queue"}
    options.update(
        master_name=setup.master_name,
        vigil_sentinels=[f"{HOST}:{node.port}" for node in setup.sentinels],
        **extra,
    )
    return Connection(first, transport=TRANSPORT, transport_options=options)


def test_the_transport_reaches_the_master_and_keeps_its_guarantees(broker_sentinel, qkeys):
    """Every client of the channel (its own, BRPOP's, the heartbeat's) is on the
    master the sentinels name; a fetch records what it takes; acks, late acks
    on a detached channel and the heartbeat go to the master."""
    setup = broker_sentinel
    queue = Queue(qkeys["queue"], Exchange(qkeys["queue"], "direct"), routing_key=qkeys["queue"])
    master = master_client(setup)
    try:
        with (
            Connection(
                setup.broker_url(), transport_options={"master_name": setup.master_name}
            ) as plain,
            plain.Producer() as producer,
        ):
            for i in range(5):
                producer.publish(
                    {"i": i},
                    exchange=queue.exchange,
                    routing_key=queue.routing_key,
                    declare=[queue],
                )
        assert master.llen(qkeys["queue"]) == 5

        conn = connection(setup, qkeys)
        channel = conn.default_channel
        assert isinstance(channel, broker.SentinelChannel)
        assert channel.sentinels() == [(HOST, node.port) for node in setup.sentinels]
        own = channel._create_client()
        assert own.info("server")["tcp_port"] == setup.master_port()
        beat = channel.heartbeat_client()
        try:
            assert beat.info("server")["tcp_port"] == setup.master_port()
        finally:
            channel.close_heartbeat_client(beat)

        received: list = []
        consumer = conn.Consumer([queue], callbacks=[lambda _body, m: received.append(m)])
        consumer.qos(prefetch_count=10)
        consumer.consume()
        conn.drain_events(timeout=5)
        assert len(received) == 5  # one fetch took all five
        assert master.hlen(qkeys["unacked_key"]) == 5
        owned = master.hlen(f"{qkeys['unacked_key']}:owned:{channel.consumer_id}")
        assert owned == 5
        received[0].ack()
        # Celery collects the connection after a broker error while tasks run on.
        channel.do_restore = False
        conn.collect()
        assert channel.connection is None
        for message in received[1:]:
            message.ack()
        assert master.hlen(qkeys["unacked_key"]) == 0
        assert master.llen(qkeys["queue"]) == 0
    finally:
        master.delete(*qkeys.values())
        for key in master.scan_iter(match=f"{qkeys['unacked_key']}:*"):
            master.delete(key)
        master.close()


def test_health_checks_the_broker_through_its_sentinels(broker_sentinel, test_env):
    settings = Settings(
        broker_url=broker_sentinel.broker_url(), broker_sentinel_master=BROKER_MASTER_NAME
    )
    report = health.check_broker(settings)
    assert report["ok"], report
    assert report["sentinel_master"] == f"{HOST}:{broker_sentinel.master_port()}"
    assert report["problems"] == []
    wrong = Settings(broker_url=broker_sentinel.broker_url(), broker_sentinel_master="nobody")
    assert not health.check_broker(wrong)["ok"]


def test_queue_depths_are_read_on_the_master(broker_sentinel):
    master = master_client(broker_sentinel)
    name = f"test-sbroker-depth-{uuid.uuid4().hex[:8]}"
    try:
        master.rpush(name, "a", "b")
        queues = BrokerQueues(
            broker_sentinel.broker_url(), [name], {"master_name": broker_sentinel.master_name}
        )
        try:
            assert queues.depths() == {name: 2}
        finally:
            queues.close()
    finally:
        master.delete(name)
        master.close()


# -- a real worker -------------------------------------------------------------


def plain_app(setup: SentinelSetup) -> Celery:
    """A frontend's Celery: the broker URL and the master's name, nothing of vigil."""
    return Celery(
        broker=setup.broker_url(),
        broker_transport_options={"master_name": setup.master_name},
    )


def send_plain(setup: SentinelSetup, batch: list[dict[str, Any]]) -> None:
    app = plain_app(setup)
    try:
        send_messages(app, batch)
    finally:
        app.close()


@pytest.fixture
def sentinel_broker_worker(
    broker_sentinel, state_redis, test_env, migrated, tmp_path
) -> Iterator[WorkerProcess]:
    master = master_client(broker_sentinel)
    master.flushdb()
    master.close()
    env = {
        **test_env,
        "VIGIL_BROKER_URL": broker_sentinel.broker_url(),
        "VIGIL_BROKER_SENTINEL_MASTER": BROKER_MASTER_NAME,
        "VIGIL_DEFAULT_DAILY_CAP": str(CAP),
    }
    worker = WorkerProcess(
        log_path=tmp_path / "worker.log", env={**os.environ, **env}, queues=(QUEUE_INGEST,)
    )
    worker.start()
    try:
        worker.wait_ready(plain_app(broker_sentinel))
        yield worker
    finally:
        worker.stop()


def outcomes(state: redis.Redis, settings: Settings) -> dict[str, int]:
    got = counters.read_all(state, settings)
    return {k: v for k, v in got.items() if k.startswith("messages:")}


def test_a_worker_behind_sentinel_applies_plain_celery_sends(
    broker_sentinel, sentinel_broker_worker, state_redis, settings
):
    users, per_user = 20, 8
    burst = builders.spread(users, per_user, "p")
    send_plain(broker_sentinel, burst)
    wait_for(
        lambda: sum(outcomes(state_redis, settings).values()) >= len(burst),
        timeout=60,
        what="every message counted",
    )
    got = outcomes(state_redis, settings)
    assert got.get("messages:accepted") == users * CAP
    assert got.get("messages:rate_limited") == users * (per_user - CAP)
    stats = plain_app(broker_sentinel).control.inspect(timeout=5).stats() or {}
    assert [info["broker"]["transport"] for info in stats.values()] == [TRANSPORT]
    master = master_client(broker_sentinel)
    try:
        wait_for(lambda: master.hlen("unacked") == 0, timeout=30, what="every message acked")
        assert master.llen(QUEUE_INGEST) == 0
    finally:
        master.close()


class PacedSender:
    """Sends a burst the plain Celery way from a thread of its own, a chunk at a
    time, as a frontend would: one app and producer while the broker answers; a
    send that fails (the master is gone) is tried again, from a new app, until
    it returns. Records when each message's send returned."""

    def __init__(self, setup: SentinelSetup, burst: list[dict[str, Any]], chunk: int) -> None:
        self.setup = setup
        self.chunks = [burst[i : i + chunk] for i in range(0, len(burst), chunk)]
        self.confirmed: dict[str, float] = {}
        self.failed_sends = 0
        self.thread = threading.Thread(target=self._run, name="paced-sender", daemon=True)

    def _run(self) -> None:
        app = plain_app(self.setup)
        try:
            for chunk in self.chunks:
                for message in chunk:
                    app = self._send(app, message)
                    self.confirmed[message["message_id"]] = time.monotonic()
                time.sleep(0.02)
        finally:
            app.close()

    def _send(self, app: Celery, message: dict[str, Any]) -> Celery:
        deadline = time.monotonic() + 60
        while True:
            try:
                app.send_task(
                    INGEST_MESSAGE, kwargs=message, queue=QUEUE_INGEST, ignore_result=True
                )
                return app
            except Exception:  # the broker away: a frontend tries again
                self.failed_sends += 1
                if time.monotonic() > deadline:
                    raise
                app.close()
                time.sleep(0.2)
                app = plain_app(self.setup)


def counted_ids(state: redis.Redis, settings: Settings, users: list[str]) -> set[str]:
    seen: set[str] = set()
    for user in users:
        seen.update(state.hkeys(keys.message_dedupe(settings, "discord", user)))
    return seen


@pytest.mark.faults
def test_broker_master_killed_mid_burst_the_worker_follows_and_nothing_counts_twice(
    broker_sentinel, sentinel_broker_worker, state_redis, settings
):
    """SIGKILL the broker's master a third of the way into a paced burst. The
    worker (not restarted) follows the replica the sentinels promote; what the
    master acknowledged but had not replicated may be lost, nothing is counted
    twice, and the loss is measured."""
    setup = broker_sentinel
    users, per_user = 30, 10
    burst = builders.spread(users, per_user, "k")
    user_ids = sorted({m["user_id"] for m in burst})
    old_master = setup.master_port()
    assert old_master is not None
    worker_pid = sentinel_broker_worker.pid
    sender = PacedSender(setup, burst, chunk=10)
    sender.thread.start()
    wait_for(lambda: len(sender.confirmed) >= len(burst) // 3, timeout=60, what="a third sent")
    setup.node(old_master).kill()
    killed_at = time.monotonic()
    sent_before_kill = len(sender.confirmed)
    new_master = setup.wait_failover(old_master)
    promoted_s = time.monotonic() - killed_at
    # Restarted as a supervisor would; the sentinels make it the new master's replica.
    setup.node(old_master).start()
    sender.thread.join(timeout=120)
    assert not sender.thread.is_alive()
    assert len(sender.confirmed) == len(burst)

    # Everything that survived arrives; what was lost never does, so the wait
    # ends when every message is counted or nothing changed for longer than a
    # dead consumer's messages take to come back (owner timeout + one sweep).
    quiet_s = settings.dead_worker_redelivery_bound_s + 5
    counted: set[str] = set()
    last_change = time.monotonic()
    while len(counted) < len(burst) and time.monotonic() - last_change < quiet_s:
        now_counted = counted_ids(state_redis, settings, user_ids)
        if now_counted != counted:
            counted, last_change = now_counted, time.monotonic()
        time.sleep(0.25)
    recovered_s = last_change - killed_at
    assert sentinel_broker_worker.alive and sentinel_broker_worker.pid == worker_pid

    sent = set(sender.confirmed)
    assert counted <= sent
    lost = sorted(sent - counted, key=lambda mid: sender.confirmed[mid])
    # Only what the master acknowledged in the moment before it died can be lost.
    recent = {mid for mid, at in sender.confirmed.items() if killed_at - 1.0 <= at <= killed_at}
    assert set(lost) <= recent, (lost, sorted(recent))

    # Nothing counted twice: each counted id has one dedupe entry and one outcome.
    got = outcomes(state_redis, settings)
    marked = count_markers(state_redis, settings)
    assert sum(marked.values()) == len(counted), marked
    assert got.get("messages:accepted", 0) + got.get("messages:rate_limited", 0) == len(counted)
    user_of = {m["message_id"]: m["user_id"] for m in burst}
    for user in user_ids:
        mine = sum(1 for mid in counted if user_of[mid] == user)
        bond = json.loads(state_redis.get(keys.bond(settings, user)))
        assert bond["daily_msg_count"] == min(CAP, mine), user
    envelope_ids = [
        json.loads(fields["data"])["envelope_id"]
        for _id, fields in state_redis.xrange(settings.stream_bond)
    ]
    assert len(envelope_ids) == len(set(envelope_ids))
    assert master_client(setup).info("server")["tcp_port"] == new_master
    setup.wait_agreed(new_master)
    print(
        f"broker failover: {len(lost)} of {len(burst)} lost ({sent_before_kill} sent before the "
        f"kill, {len(recent)} in its last second), {sender.failed_sends} sends retried, "
        f"promoted {promoted_s:.1f} s and the last message counted "
        f"{recovered_s:.1f} s after the kill"
    )
