"""vigil's Redis broker transport against the test Redis (and a real worker).

Each test uses its own queue and unacked keys, so the shared worker on the same
broker database never touches them.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from kombu import Connection, Exchange, Queue

from tasks import names
from worker import broker

TRANSPORT = "worker.broker:Transport"


@pytest.fixture
def keys() -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    return {
        "queue": f"test-broker-{tag}",
        "unacked_key": f"test-broker-unacked-{tag}",
        "unacked_index_key": f"test-broker-unacked-index-{tag}",
        "unacked_mutex_key": f"test-broker-unacked-mutex-{tag}",
        "vigil_unreadable_key": f"test-broker-unreadable-{tag}",
    }


@pytest.fixture
def broker_redis(test_env, keys) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(test_env["VIGIL_BROKER_URL"])
    yield client
    client.delete(*keys.values())
    owned = list(client.scan_iter(match=f"{keys['unacked_key']}:*"))
    if owned:
        client.delete(*owned)
    client.close()


@pytest.fixture
def queue(keys) -> Queue:
    name = keys["queue"]
    return Queue(name, Exchange(name, "direct"), routing_key=name)


@pytest.fixture
def connect(test_env, keys):
    """Connections on the test broker with this test's unacked keys."""
    opened: list[Connection] = []
    options = {k: v for k, v in keys.items() if k != "queue"}

    def open_(transport: str | None = TRANSPORT) -> Connection:
        conn = Connection(
            test_env["VIGIL_BROKER_URL"], transport=transport, transport_options=options
        )
        opened.append(conn)
        return conn

    yield open_
    for conn in opened:
        conn.release()


@pytest.fixture
def client_builds(monkeypatch) -> list[int]:
    """Counts every redis.Redis constructed from now on."""
    built = [0]
    original = redis.Redis.__init__

    def counting(self, *args, **kwargs):
        built[0] += 1
        original(self, *args, **kwargs)

    monkeypatch.setattr(redis.Redis, "__init__", counting)
    return built


def publish(connect, queue: Queue, count: int) -> None:
    with connect(None) as conn, conn.Producer() as producer:
        for i in range(count):
            producer.publish(
                {"i": i}, exchange=queue.exchange, routing_key=queue.routing_key, declare=[queue]
            )


def test_celeryconfig_selects_it_for_redis_only(celery_app):
    assert celery_app.conf.broker_url.startswith("redis")
    assert celery_app.conf.broker_transport == TRANSPORT
    with celery_app.connection_for_write() as conn:
        assert isinstance(conn.transport, broker.Transport)


def test_one_client_reused_and_none_built_per_message(
    connect, queue, keys, broker_redis, client_builds
):
    count = 50
    publish(connect, queue, count)
    channel = connect().default_channel
    client = channel._create_client()
    assert channel._create_client() is client
    # BRPOP / pub-sub client: a different client on a different pool.
    assert channel.client is not client
    assert channel.client.connection_pool is not client.connection_pool
    bound = queue(channel)
    bound.get(no_ack=False).ack()  # warm-up
    before = client_builds[0]
    for _ in range(count - 1):
        message = bound.get(no_ack=False)
        assert broker_redis.hlen(keys["unacked_key"]) == 1
        message.ack()
    assert client_builds[0] == before, "a redis.Redis was built per get/ack"
    assert channel._create_client() is client
    assert broker_redis.llen(keys["queue"]) == 0
    assert broker_redis.hlen(keys["unacked_key"]) == 0
    assert broker_redis.zcard(keys["unacked_index_key"]) == 0


def test_new_pool_gets_new_client(connect):
    channel = connect().default_channel
    old = channel._create_client()
    channel._disconnect_pools()  # what a fork or close does
    assert channel._create_client() is not old


def test_transactional_option_keeps_stock_bookkeeping(connect, queue, keys, broker_redis):
    publish(connect, queue, 3)
    conn = connect()
    conn.transport_options["vigil_transactional_unacked"] = True
    channel = conn.default_channel
    assert channel.vigil_transactional_unacked is True
    bound = queue(channel)
    for _ in range(3):
        bound.get(no_ack=False).ack()
    assert broker_redis.hlen(keys["unacked_key"]) == 0
    assert broker_redis.zcard(keys["unacked_index_key"]) == 0


def test_unacked_restored_on_close(connect, queue, keys, broker_redis):
    publish(connect, queue, 5)
    conn = connect()
    bound = queue(conn.default_channel)
    messages = [bound.get(no_ack=False) for _ in range(3)]
    messages[0].ack()
    assert broker_redis.llen(keys["queue"]) == 2
    assert broker_redis.hlen(keys["unacked_key"]) == 2
    conn.release()  # closes the channel, which restores its unacked messages
    assert broker_redis.llen(keys["queue"]) == 4
    assert broker_redis.hlen(keys["unacked_key"]) == 0
    assert broker_redis.zcard(keys["unacked_index_key"]) == 0


@pytest.mark.parametrize("transport", [None, TRANSPORT], ids=["stock", "vigil"])
def test_late_ack_on_detached_channel(connect, queue, keys, broker_redis, transport):
    """After a broker connection loss Celery collects the connection while
    acks_late tasks still run; their ack then goes through the detached channel."""
    publish(connect, queue, 2)
    conn = connect(transport)
    channel = conn.default_channel
    bound = queue(channel)
    first, second = bound.get(no_ack=False), bound.get(no_ack=False)
    first.ack()
    channel.do_restore = False  # as when the restore already ran
    conn.collect()
    channel._pool = None
    assert channel.connection is None
    if transport is None:
        with pytest.raises(AttributeError):
            second.ack()
        return
    second.ack()
    assert broker_redis.hlen(keys["unacked_key"]) == 0
    assert broker_redis.zcard(keys["unacked_index_key"]) == 0


def test_restore_on_detached_channel_keeps_the_message(connect, queue, keys, broker_redis):
    publish(connect, queue, 1)
    conn = connect()
    channel = conn.default_channel
    message = queue(channel).get(no_ack=False)
    qos = channel.qos
    channel.do_restore = False
    conn.collect()
    with pytest.raises(redis.ConnectionError):
        qos.restore_by_tag(message.delivery_tag)
    assert broker_redis.hlen(keys["unacked_key"]) == 1
    assert broker_redis.zcard(keys["unacked_index_key"]) == 1


def test_real_worker_uses_it_and_acks(celery_app, worker, test_env):
    stats = celery_app.control.inspect(timeout=5).stats() or {}
    assert stats, "no worker answered"
    for info in stats.values():
        assert info["broker"]["transport"] == TRANSPORT
    results = [celery_app.send_task(names.ADMIN_PING) for _ in range(20)]
    for result in results:
        assert result.get(timeout=30)["status"] == "ok"
    broker_db = redis.Redis.from_url(test_env["VIGIL_BROKER_URL"])
    assert broker_db.llen(names.QUEUE_ADMIN) == 0
    assert broker_db.hlen("unacked") == 0


def consume(conn: Connection, queue: Queue, prefetch: int) -> list:
    """A consumer on ``conn`` with ``prefetch``; returns the list it fills."""
    received: list = []
    consumer = conn.Consumer([queue], callbacks=[lambda _body, message: received.append(message)])
    consumer.qos(prefetch_count=prefetch)
    consumer.consume()
    return received


def one_cycle(connect, queue: Queue, published: int, prefetch: int, **options) -> tuple:
    """``published`` messages, then one BRPOP cycle of a consumer with
    ``prefetch`` (and these transport options); returns (connection, received)."""
    publish(connect, queue, published)
    conn = connect()
    conn.transport_options.update(options)
    received = consume(conn, queue, prefetch=prefetch)
    conn.drain_events(timeout=5)  # stock kombu: one message per call
    return conn, received


def test_one_brpop_cycle_delivers_many_each_recorded_as_unacked(connect, queue, keys, broker_redis):
    conn, received = one_cycle(connect, queue, published=50, prefetch=100)
    assert [m.decode()["i"] for m in received] == list(range(50))
    assert broker_redis.llen(keys["queue"]) == 0
    assert broker_redis.hlen(keys["unacked_key"]) == 50
    assert broker_redis.zcard(keys["unacked_index_key"]) == 50
    # Recorded as kombu records it, so restore paths read it unchanged.
    raw, exchange, routing_key = json.loads(
        broker_redis.hget(keys["unacked_key"], received[7].delivery_tag)
    )
    assert raw == received[7]._raw
    assert (exchange, routing_key) == (queue.exchange.name, queue.routing_key)

    qos = conn.default_channel.qos
    with qos.acks_together():
        for message in received:
            message.ack()
        assert broker_redis.hlen(keys["unacked_key"]) == 50  # written at the end
    assert broker_redis.hlen(keys["unacked_key"]) == 0
    assert broker_redis.zcard(keys["unacked_index_key"]) == 0
    assert qos.can_consume_max_estimate() == 100


def test_fetch_stays_within_the_prefetch_limit(connect, queue, keys, broker_redis):
    _, received = one_cycle(connect, queue, published=50, prefetch=10)
    assert len(received) == 10
    assert broker_redis.llen(keys["queue"]) == 40
    assert broker_redis.hlen(keys["unacked_key"]) == 10


def test_fetched_unacked_messages_are_restored_on_close(connect, queue, keys, broker_redis):
    conn, received = one_cycle(connect, queue, published=20, prefetch=100)
    assert len(received) == 20
    for message in received[:5]:
        message.ack()
    conn.release()
    assert broker_redis.llen(keys["queue"]) == 15
    assert broker_redis.hlen(keys["unacked_key"]) == 0
    assert broker_redis.zcard(keys["unacked_index_key"]) == 0


def unreadable(broker_redis, keys) -> list[tuple[dict, bytes]]:
    """The unreadable list's entries, oldest first: (header, raw bytes)."""
    entries = broker_redis.lrange(keys["vigil_unreadable_key"], 0, -1)
    out = []
    for entry in reversed(entries):
        header, _, raw = entry.partition(b"\n")
        out.append((json.loads(header), raw))
    return out


def test_a_message_that_is_not_kombus_is_kept_aside_with_its_reason(
    connect, queue, keys, broker_redis
):
    publish(connect, queue, 2)
    broker_redis.lpush(keys["queue"], b"not json \xff")
    broker_redis.lpush(keys["queue"], b'{"properties": {"delivery_tag": ""}}')
    publish(connect, queue, 2)
    conn = connect()
    received = consume(conn, queue, prefetch=100)
    conn.drain_events(timeout=5)
    assert [m.decode()["i"] for m in received] == [0, 1, 0, 1]
    assert broker_redis.llen(keys["queue"]) == 0
    assert broker_redis.hlen(keys["unacked_key"]) == 4
    # Python judges what cjson cannot decode; the script sets aside the rest.
    assert sorted(unreadable(broker_redis, keys), key=lambda entry: entry[1]) == [
        ({"queue": keys["queue"], "reason": "not a kombu message"}, b"not json \xff"),
        (
            {"queue": keys["queue"], "reason": "no properties.delivery_tag"},
            b'{"properties": {"delivery_tag": ""}}',
        ),
    ]


def test_fetch_many_one_is_stock(connect, queue, keys, broker_redis):
    _, received = one_cycle(connect, queue, published=5, prefetch=100, vigil_fetch_many=1)
    assert len(received) == 1
    assert broker_redis.llen(keys["queue"]) == 4


def test_json_redis_refuses_but_python_reads_is_delivered_and_recorded(
    connect, queue, keys, broker_redis
):
    """Lua's cjson refuses a lone surrogate escape (a hostile frontend's text in a
    header); Python reads it: the message is delivered, recorded and owned."""
    publish(connect, queue, 1)
    with connect(None) as conn, conn.Producer() as producer:
        producer.publish(
            {"i": 1},
            exchange=queue.exchange,
            routing_key=queue.routing_key,
            declare=[queue],
            headers={"kwargsrepr": "\ud83d"},
        )
    conn = connect()
    received = consume(conn, queue, prefetch=100)
    conn.drain_events(timeout=5)
    assert [m.decode()["i"] for m in received] == [0, 1]
    channel = conn.default_channel
    owned = broker_redis.hgetall(channel._owned_key(channel.consumer_id))
    assert sorted(owned) == sorted(m.delivery_tag.encode() for m in received)
    odd = received[1]
    entry = broker_redis.hget(keys["unacked_key"], odd.delivery_tag)
    size = int(owned[odd.delivery_tag.encode()].split(b" ")[0])
    assert json.loads(entry[1 : 1 + size]) == odd._raw
    odd.ack()
    assert not broker_redis.hexists(keys["unacked_key"], odd.delivery_tag)
    assert broker_redis.llen(keys["vigil_unreadable_key"]) == 0


def test_a_dead_consumers_message_held_for_python_goes_back(connect, queue, keys, broker_redis):
    conn = connect()
    channel = conn.default_channel
    owners = f"{keys['unacked_key']}:owners"
    broker_redis.hset(f"{keys['unacked_key']}:owned:gone", "?1.2:0", f"{keys['queue']}\nraw\nbytes")
    broker_redis.zadd(owners, {"gone": time.time() - 600})
    assert channel.restore_orphans() == 1
    assert broker_redis.lrange(keys["queue"], 0, -1) == [b"raw\nbytes"]
    assert broker_redis.zscore(owners, "gone") is None


def test_a_message_only_redis_json_reads_is_kept_aside_unrecorded(
    connect, queue, keys, broker_redis
):
    """cjson in Redis accepts hex numbers, Python's json does not: such a message
    is not left recorded as unacked (a restore could never read it) but moved
    to the unreadable list in one transaction."""
    publish(connect, queue, 1)
    odd = (
        b'{"body": 0x10, "properties": {"delivery_tag": "odd-1",'
        b' "delivery_info": {"exchange": "", "routing_key": ""}}}'
    )
    broker_redis.lpush(keys["queue"], odd)
    publish(connect, queue, 1)
    conn = connect()
    received = consume(conn, queue, prefetch=100)
    conn.drain_events(timeout=5)
    assert len(received) == 2  # the ones either side of it
    assert broker_redis.llen(keys["queue"]) == 0
    assert not broker_redis.hexists(keys["unacked_key"], "odd-1")
    assert broker_redis.zscore(keys["unacked_index_key"], "odd-1") is None
    channel = conn.default_channel
    assert not broker_redis.hexists(channel._owned_key(channel.consumer_id), "odd-1")
    assert unreadable(broker_redis, keys) == [
        ({"queue": keys["queue"], "reason": "not JSON to Python"}, odd)
    ]


def test_no_ack_consumers_are_not_fetched_in_bulk(connect, queue, keys, broker_redis):
    """Celery's reply consumers (control.ping) take messages without acks:
    nothing would remove an unacked entry written for them."""
    publish(connect, queue, 10)
    conn = connect()
    received: list = []
    consumer = conn.Consumer(
        [queue], callbacks=[lambda _body, message: received.append(message)], no_ack=True
    )
    consumer.consume()
    while len(received) < 10:
        conn.drain_events(timeout=5)
    assert broker_redis.hlen(keys["unacked_key"]) == 0
    assert broker_redis.zcard(keys["unacked_index_key"]) == 0
    assert conn.default_channel._recorded_unacked == {}


@pytest.mark.parametrize("setup", ["ack_emulation_off", "prefetch_disabled"])
def test_modes_that_take_one_at_a_time_are_kept(connect, queue, keys, broker_redis, setup):
    """kombu without ack emulation has no unacked hash, and Celery's
    worker_disable_prefetch replaces can_consume: both stay one per BRPOP."""
    publish(connect, queue, 5)
    conn = connect()
    if setup == "ack_emulation_off":
        conn.transport_options["ack_emulation"] = False
    received = consume(conn, queue, prefetch=100)
    if setup == "prefetch_disabled":
        qos = conn.default_channel.qos
        qos.can_consume = lambda: len(qos._delivered) - len(qos._dirty) < 1
    conn.drain_events(timeout=5)
    assert len(received) == 1
    assert broker_redis.llen(keys["queue"]) == 4


# -- no loss when a consumer dies, and its messages back within seconds -------


def test_every_fetched_message_is_recorded_and_owned_in_the_same_step(
    connect, queue, keys, broker_redis
):
    """The first message of a cycle too: nothing is ever only in the consumer."""
    conn, received = one_cycle(connect, queue, published=1, prefetch=100)
    assert len(received) == 1
    channel = conn.default_channel
    tag = received[0].delivery_tag
    entry = broker_redis.hget(keys["unacked_key"], tag)
    owned = broker_redis.hget(channel._owned_key(channel.consumer_id), tag).decode()
    size, source = owned.split(" ", 1)
    # The length of the message's own bytes inside the unacked entry, and its list.
    assert source == keys["queue"]
    assert json.loads(entry[1 : 1 + int(size)]) == received[0]._raw
    received[0].ack()
    assert broker_redis.hlen(channel._owned_key(channel.consumer_id)) == 0
    assert broker_redis.hlen(keys["unacked_key"]) == 0


def test_a_silent_consumers_messages_go_back_whole_and_a_live_ones_stay(
    connect, queue, keys, broker_redis
):
    dead_conn, dead_received = one_cycle(connect, queue, published=30, prefetch=100)
    dead = dead_conn.default_channel
    dead_received[0].ack()
    dead._heart.stop()
    live_conn = connect()
    live_received = consume(live_conn, queue, prefetch=100)
    publish(connect, queue, 5)
    live_conn.drain_events(timeout=5)
    assert len(live_received) == 5
    live = live_conn.default_channel
    owners = f"{keys['unacked_key']}:owners"
    # Not yet silent long enough: nothing moves.
    assert live.restore_orphans() == 0
    assert broker_redis.llen(keys["queue"]) == 0
    # Silent for longer than the owner timeout (its last beat moved back in time).
    broker_redis.zadd(owners, {dead.consumer_id: time.time() - dead.vigil_owner_timeout - 60})
    assert live.restore_orphans() == 29
    assert broker_redis.llen(keys["queue"]) == 29
    # The original bytes, back at the end consumers take from, in fetch order
    # (a hash this small keeps its insertion order).
    back = [json.loads(raw) for raw in broker_redis.lrange(keys["queue"], 0, -1)[::-1]]
    assert back == [m._raw for m in dead_received[1:]]
    assert broker_redis.hlen(keys["unacked_key"]) == 5  # the live consumer's
    assert broker_redis.zscore(owners, dead.consumer_id) is None
    assert not broker_redis.exists(dead._owned_key(dead.consumer_id))
    assert broker_redis.zscore(owners, live.consumer_id) is not None
    # A late ack from the one taken for dead finds nothing to delete and harms nothing.
    dead_received[1].ack()
    assert broker_redis.llen(keys["queue"]) == 29
    live_conn.drain_events(timeout=5)
    assert len(live_received) == 34


def test_the_heartbeat_keeps_a_consumer_alive_while_it_blocks(connect, queue, keys, broker_redis):
    conn = connect()
    conn.transport_options["vigil_heartbeat_interval"] = 0.2
    consume(conn, queue, prefetch=100)
    channel = conn.default_channel
    owners = f"{keys['unacked_key']}:owners"
    deadline = time.monotonic() + 5
    while broker_redis.zscore(owners, channel.consumer_id) is None:
        assert time.monotonic() < deadline, "no heartbeat"
        time.sleep(0.05)
    first = broker_redis.zscore(owners, channel.consumer_id)
    time.sleep(0.6)
    assert broker_redis.zscore(owners, channel.consumer_id) > first
    conn.release()
    assert broker_redis.zscore(owners, channel.consumer_id) is None


def test_an_idle_consumer_blocks_without_popping_and_wakes_for_one_message(
    connect, queue, keys, broker_redis
):
    conn = connect()
    received = consume(conn, queue, prefetch=100)
    with pytest.raises(TimeoutError):
        conn.drain_events(timeout=1.5)  # fetch found nothing, then the wait timed out
    publish(connect, queue, 1)
    started = time.monotonic()
    while not received:
        conn.drain_events(timeout=5)
    assert time.monotonic() - started < 0.5
    assert broker_redis.hexists(keys["unacked_key"], received[0].delivery_tag)


def kombu_message(tag: str, **properties) -> bytes:
    """A message as kombu's Redis transport stores it, with ``properties`` changed."""
    return json.dumps(
        {
            "body": "eyJpIjogOX0=",
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {},
            "properties": {
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": ""},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": tag,
                **properties,
            },
        }
    ).encode()


@pytest.mark.parametrize(
    "hostile",
    [
        # kombu cannot build a Message: no such body encoding.
        kombu_message("bad-encoding", body_encoding="nope"),
        # Deeper than cjson and Python's json read: RecursionError in Python.
        b'{"properties": {"delivery_tag": "deep"}, "x": ' + b"[" * 1200 + b"]" * 1200 + b"}",
        # cjson reads 1e999 as infinity and cannot write it back.
        kombu_message("inf-exchange", delivery_info={"exchange": 1e999, "routing_key": ""}),
    ],
    ids=["body_encoding", "deep_nesting", "infinite_exchange"],
)
def test_a_message_no_consumer_can_take_is_set_aside_and_the_rest_flow(
    connect, queue, keys, broker_redis, hostile
):
    """Never back at the head of the queue (every worker would fail on it in
    turn), never lost, and the messages around it delivered."""
    pushed = hostile.replace(b"Infinity", b"1e999")
    publish(connect, queue, 1)
    broker_redis.lpush(keys["queue"], pushed)
    publish(connect, queue, 1)
    conn = connect()
    received = consume(conn, queue, prefetch=100)
    for _ in range(3):
        with contextlib.suppress(TimeoutError):
            conn.drain_events(timeout=1)
    assert len(received) == 2
    assert broker_redis.llen(keys["queue"]) == 0
    [(header, raw)] = unreadable(broker_redis, keys)
    assert header["queue"] == keys["queue"] and header["reason"]
    assert raw == pushed  # kept as it was sent
    assert broker_redis.hlen(keys["unacked_key"]) == 2  # the two delivered, nothing else


def test_the_sweep_leaves_a_tag_another_consumer_took_since(connect, queue, keys, broker_redis):
    """A holds T past the visibility timeout, T is put back and B takes it; when
    A then dies, the sweep must not touch B's copy."""
    a_conn, a_received = one_cycle(connect, queue, published=1, prefetch=100)
    a = a_conn.default_channel
    a._heart.stop()
    tag = a_received[0].delivery_tag
    # The visibility sweep's restore, as another channel makes it.
    b_conn = connect()
    b_received = consume(b_conn, queue, prefetch=100)
    b_conn.default_channel.qos.restore_by_tag(tag)
    b_conn.drain_events(timeout=5)
    assert [m.delivery_tag for m in b_received] == [tag]
    owners = f"{keys['unacked_key']}:owners"
    broker_redis.zadd(owners, {a.consumer_id: time.time() - 600})
    assert b_conn.default_channel.restore_orphans() == 0
    assert broker_redis.llen(keys["queue"]) == 0
    assert broker_redis.hexists(keys["unacked_key"], tag)  # still B's
    b_received[0].ack()
    assert broker_redis.hlen(keys["unacked_key"]) == 0
